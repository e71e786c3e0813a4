"""`llmctl generate`: prompts in (arguments, a file or stdin), completions out, batched on llmctl's engine."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmctl.cli.generate_input import PromptItem, prompt_source
from llmctl.cli.lines import ListSource, check_option_text
from llmctl.cli.options import (
    DeviceOpt,
    DtypeOpt,
    EnforceEagerOpt,
    JsonOpt,
    MaxModelLenOpt,
    ModelImpl,
    ModelImplOpt,
    ModelOpt,
    RevisionOpt,
    SourceOpt,
    TrustRemoteCodeOpt,
    source_value,
)
from llmctl.cli.output import Output, warn
from llmctl.cli.stream import Ready, Writer, in_order, stdout_writer
from llmctl.core.errors import EXIT_ERROR, LlmctlError, UsageError

_S = "Sampling"
PREFETCH = 256  # prompts read before loading the model: a short input sizes the decode batch to itself
WINDOW_PER_SEQ = 4  # prompts in flight (queued, running, or done and waiting for an earlier one) per decode seat


def generate(
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="A prompt (repeat for several).", show_default=False)] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Prompts, one per line or JSONL with 'prompt'/'messages' ('-': stdin).", show_default=False)] = None,
    model: ModelOpt = None,
    chat: Annotated[Optional[bool], typer.Option("--chat/--no-chat", help="Apply the chat template (default: on when the model has one).", show_default=False)] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System message for chat prompts.", show_default=False)] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens to generate per prompt.", rich_help_panel=_S)] = 256,
    min_tokens: Annotated[int, typer.Option("--min-tokens", min=0, help="Generate at least this many before EOS/stop tokens.", rich_help_panel=_S)] = 0,
    temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0, help="0 = greedy.", rich_help_panel=_S)] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (0, 1].", rich_help_panel=_S)] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", help="Keep the k most likely tokens (0 = off).", rich_help_panel=_S)] = 0,
    min_p: Annotated[float, typer.Option("--min-p", help="Drop tokens below min_p x the top probability.", rich_help_panel=_S)] = 0.0,
    repetition_penalty: Annotated[float, typer.Option("--repetition-penalty", help="HF-style, over prompt and output (1 = off).", rich_help_panel=_S)] = 1.0,
    presence_penalty: Annotated[float, typer.Option("--presence-penalty", help="OpenAI-style, over output (0 = off).", rich_help_panel=_S)] = 0.0,
    frequency_penalty: Annotated[float, typer.Option("--frequency-penalty", help="OpenAI-style, over output (0 = off).", rich_help_panel=_S)] = 0.0,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string, not included in the text (repeatable).", rich_help_panel=_S, show_default=False)] = None,
    stop_token_id: Annotated[Optional[list[int]], typer.Option("--stop-token-id", help="Stop token id (repeatable).", rich_help_panel=_S, show_default=False)] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Keep going past EOS.", rich_help_panel=_S)] = False,
    include_stop_str: Annotated[bool, typer.Option("--include-stop-str-in-output", help="Keep the matched stop string in the text.", rich_help_panel=_S)] = False,
    skip_special_tokens: Annotated[bool, typer.Option("--skip-special-tokens/--keep-special-tokens", help="Drop special tokens from the text.", rich_help_panel=_S)] = True,
    logprobs: Annotated[Optional[int], typer.Option("--logprobs", min=0, help="Top-k logprobs per generated token (JSON output).", rich_help_panel=_S, show_default=False)] = None,
    prompt_logprobs: Annotated[Optional[int], typer.Option("--prompt-logprobs", min=0, help="Top-k logprobs per prompt token (JSON output).", rich_help_panel=_S, show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Per-request seed: same seed, same text.", rich_help_panel=_S, show_default=False)] = None,
    json_output: JsonOpt = False,
    stream: Annotated[Optional[bool], typer.Option("--stream/--no-stream", help="Stream tokens (default: one prompt on a TTY).", show_default=False)] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    max_model_len: MaxModelLenOpt = None,
    max_num_seqs: Annotated[Optional[int], typer.Option("--max-num-seqs", min=1, help="Most sequences decoded together (default: the number of prompts of a short input, else the engine's default: 512 on GPUs of 70 GiB or more, else 256).", show_default=False)] = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    model_impl: ModelImplOpt = ModelImpl.auto,
    enforce_eager: EnforceEagerOpt = False,
    revision: RevisionOpt = None,
    source: SourceOpt = None,
) -> None:
    """Generate text for one or more prompts, batched together on llmctl's engine.

    Prompts come from --prompt (repeatable), --file, or stdin, one per line; a line may be JSON with
    "prompt" or "messages". With --json, one JSON object per prompt, in input order. A prompt that
    cannot run (too long, empty, bad JSON, a line over 16 MiB) gets an error record; the others still
    run (exit 1 at the end). Input is read as it comes and each result is written (and flushed) as soon as
    it and every one before it are done, so pipelines flow and Ctrl-C keeps what finished.
    """
    from llmctl.core.engine.sampling_params import SamplingParams
    from llmctl.core.settings import load_settings

    check_option_text(("--system", system), *(("--stop", s) for s in stop or ()))
    inputs = prompt_source(prompt, file)
    total = inputs.prefetch(PREFETCH)  # the number of prompts when the input ends soon, else None
    if total == 0:
        raise UsageError("no prompts in the input")
    params = SamplingParams(
        temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty, seed=seed, stop=stop or None, stop_token_ids=stop_token_id or None,
        ignore_eos=ignore_eos, max_tokens=max_tokens, min_tokens=min_tokens, logprobs=logprobs,
        prompt_logprobs=prompt_logprobs, include_stop_str_in_output=include_stop_str,
        skip_special_tokens=skip_special_tokens,
    )
    settings = load_settings()
    llm = _load(
        model or settings.default_model, settings, dtype=dtype or settings.dtype, device=device or settings.device,
        max_model_len=max_model_len, max_num_seqs=max_num_seqs or (total if total is not None and total < 256 else None),
        trust_remote_code=trust_remote_code,
        model_impl=model_impl.value, enforce_eager=enforce_eager, revision=revision, source=source_value(source),
    )
    use_chat = _chat_mode(chat, llm)
    out = Output(json_output, json_when_piped=False)  # text stays text in a pipe; --json asks for records
    if stream is None:
        stream = total == 1 and not out.json_mode and sys.stdout.isatty()
    if stream and total == 1:
        item = inputs.take(1)[0]
        request = _request(item, llm, use_chat, system)
        if "error" not in request:
            _stream(llm, request, params, out.json_mode, item)
            return
        inputs = ListSource([item])

    def submit(item: PromptItem):
        request = _request(item, llm, use_chat, system)
        if "error" in request:
            return Ready({"index": item.index, "prompt": item.label, "error": request["error"]})
        return llm.add_request(request, params)

    def collect(request_ids) -> dict:
        return {result.request_id: result for result in llm.wait(request_ids, one_step=True)}

    window = WINDOW_PER_SEQ * llm.llm_engine.config.max_num_seqs
    writer = stdout_writer()
    count = failed = 0
    for item, result in in_order(inputs, submit, collect, window, abandon=llm.abort):
        record = result if isinstance(result, dict) else _record(item, result, params)
        count += 1
        failed += "error" in record
        _write(out, writer, record, many=total != 1)
    if failed:
        warn(f"{failed} of {count} prompt(s) failed; see their error records")
    if inputs.stopped:
        raise LlmctlError(inputs.stopped)
    if failed:
        raise typer.Exit(EXIT_ERROR)


def _load(name: str, settings, **kw: Any):
    from llmctl.core.engine.llm import LLM
    from llmctl.core.resolve import resolve_model

    src = resolve_model(name, revision=kw.pop("revision"), source=kw.pop("source"), settings=settings)
    path = src.materialize()
    kv = {"kv_cache_memory": settings.kv_cache_memory} if settings.kv_cache_memory else {}
    return LLM(str(path), seed=0, **kw, **kv)


def _chat_mode(chat: bool | None, llm) -> bool:
    has_template = bool(getattr(llm.get_tokenizer(), "chat_template", None))
    if chat and not has_template:
        raise UsageError("--chat: this model's tokenizer has no chat template", hint="use --no-chat")
    return has_template if chat is None else chat


def _request(item: PromptItem, llm, use_chat: bool, system: str | None) -> dict[str, Any]:
    from llmctl.core.engine.tokenizer import apply_chat_template
    from llmctl.core.errors import LlmctlError

    if item.error is not None:
        return {"error": item.error}
    messages = item.messages
    if messages is None and use_chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": item.prompt}]
    if messages is None:
        return {"prompt": item.prompt}
    try:
        text, ids = apply_chat_template(llm.get_tokenizer(), messages)
    except LlmctlError as err:
        return {"error": err.message}
    except Exception as err:  # a template that raises on this conversation
        return {"error": f"chat template failed: {err}"}
    return {"prompt": text, "prompt_token_ids": ids}


def _record(item: PromptItem, result, params) -> dict[str, Any]:
    if result.error is not None:
        return {"index": item.index, "prompt": item.label, "error": result.error}
    completion = result.outputs[0]
    metrics = result.metrics
    ttft = metrics.time_to_first_token if metrics else None
    duration = (metrics.finished_time - metrics.arrival_time) if metrics and metrics.finished_time else None
    record: dict[str, Any] = {
        "index": item.index,
        "prompt": item.label,
        "text": completion.text,
        "token_ids": completion.token_ids,
        "finish_reason": completion.finish_reason,
        "stop_reason": completion.stop_reason,
        "prompt_tokens": len(result.prompt_token_ids),
        "completion_tokens": len(completion.token_ids),
        "time_to_first_token": round(ttft, 4) if ttft is not None else None,
        "tokens_per_s": round(len(completion.token_ids) / duration, 2) if duration else None,
    }
    if params.logprobs is not None:
        record["logprobs"] = [_logprob_map(d) for d in completion.logprobs or []]
    if params.prompt_logprobs is not None:
        record["prompt_logprobs"] = [None if d is None else _logprob_map(d) for d in result.prompt_logprobs or []]
    return record


def _logprob_map(entry: dict) -> dict[str, float]:
    return {str(token): round(lp.logprob, 6) for token, lp in entry.items()}


def _write(out: Output, writer: Writer, record: dict[str, Any], many: bool) -> None:
    if out.json_mode:
        writer.record(json.dumps(record, ensure_ascii=False) + "\n")
        return
    if "error" in record:
        warn(f"prompt {record['index'] + 1}: {record['error']}")
        return
    if many and sys.stdout.isatty():
        from llmctl.cli.output import stdout_console

        stdout_console().rule(f"prompt {record['index'] + 1}", style="dim")
    writer.record(record["text"] + "\n")


def _stream(llm, request: dict[str, Any], params, json_mode: bool, item: PromptItem) -> None:
    """Print the text of one prompt as it grows; hold back what could still turn out to be a stop string."""
    writer = stdout_writer()
    hold = params.stop_buffer_length
    shown = 0
    final = None
    for partial in llm.stream(request, params):
        final = partial
        if partial.error is None and not json_mode:
            text = partial.outputs[0].text
            end = len(text) if partial.finished else max(len(text) - hold, shown)
            writer.record(text[shown:end])
            shown = end
    if final is None:
        return
    record = _record(item, final, params)
    if json_mode:
        writer.record(json.dumps(record, ensure_ascii=False) + "\n")
    elif "error" in record:
        warn(record["error"])
        raise typer.Exit(EXIT_ERROR)
    else:
        writer.record(final.outputs[0].text[shown:] + "\n")
