"""Typed errors raised by core; the CLI turns each into one line on stderr and an exit code."""

from __future__ import annotations

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_ERROR = 1  # an error, or `check`: the model is not supported
EXIT_USAGE = 2  # bad command-line usage (Typer/Click's own code)
EXIT_MODEL = 3  # the model cannot be found or read


class LlmctlError(Exception):
    """Base class: a message for the user, an optional hint, and the exit code to use."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(LlmctlError):
    """The arguments do not make sense together."""

    exit_code = EXIT_USAGE


class InvalidValueError(UsageError, ValueError):
    """An argument's value is out of range or of the wrong type (a ValueError too, as vLLM raises)."""


class ModelNotFoundError(LlmctlError):
    """No local path, alias, hub repo or cached copy matches the name."""

    exit_code = EXIT_MODEL


class ModelReadError(LlmctlError):
    """The model was found but its files cannot be read (bad JSON, missing keys, broken GGUF)."""

    exit_code = EXIT_MODEL


class ConfigError(LlmctlError):
    """The llmctl YAML configuration is malformed."""

    exit_code = EXIT_USAGE


class UnsupportedModelError(LlmctlError):
    """The model can be read but llmctl cannot run it the way it was asked."""


class WeightLoadError(LlmctlError):
    """A checkpoint does not match its model definition (missing, unexpected or misshapen tensors)."""

    exit_code = EXIT_MODEL


class OutputError(LlmctlError):
    """The output cannot be written (a full disk, a file that cannot be created)."""
