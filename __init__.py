"""llmctl: check, inspect and run language and embedding models."""

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str):
    # The engine pulls in torch; keep `import llmctl` (and so every metadata command) free of it.
    if name == "LLM":
        from llmctl.core.engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from llmctl.core.engine.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'llmctl' has no attribute {name!r}")
