"""Answers: the default responder, and the Message an answer is wrapped into.

A responder is ``responder(custom_id, params) -> str | dict``. A str is the answer text; for a
structured request (``output_config.format`` json_schema, or a forced ``tool_choice``) it is
the JSON text, which ``build_message`` turns into a text block or a ``tool_use`` block and
wraps into a full Message: a thinking block first when the request thinks (``_thinking``),
usage with its cache reads and writes (``_caching``), ``max_tokens``, ``stop_sequences`` and
the answer-shape faults applied. A dict is the whole ``result`` object of the results line and
is used as is. ``beta_message`` adds what the beta Message schema requires.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dsbatch._emulator._caching import CacheUse, input_tokens
from dsbatch._emulator._ids import canonical_json, prefixed_id, stable_hash
from dsbatch._emulator._params import structured_kind
from dsbatch._emulator._schema import generate_instance
from dsbatch._emulator._thinking import thinking_block, thinking_for

__all__ = [
    "Responder",
    "beta_message",
    "build_message",
    "default_responder",
    "errored_result",
    "spoil_answer",
]

Responder = Callable[[str, dict[str, Any]], "str | dict[str, Any]"]

_FILLER = [
    *("concise", "clear", "overall", "notable", "main", "brief", "key", "central"),
    *("useful", "general", "careful", "simple", "precise", "direct", "focused"),
]
_PREAMBLE = "Here is the JSON you asked for:\n\n"
_NO_JSON = (
    "I am not able to give this answer in the requested structure, so here it is in words: "
    "the input describes a few points worth noting, none of them conclusive."
)


def default_responder(custom_id: str, params: dict[str, Any]) -> str:
    """The built-in answer: derived from the params alone, so equal requests get equal answers.

    Structured requests get JSON text valid against the schema (``output_config.format`` or
    the forced tool's ``input_schema``); others get "Summary of: <first words of the last
    user message>" followed by a few words chosen by the hash of the params.
    """
    seed = stable_hash(canonical_json(params))
    kind = structured_kind(params)
    if kind is not None:
        name, spec = kind
        schema = spec if name == "json_schema" else spec.get("input_schema") or {}
        return json.dumps(generate_instance(schema, seed), ensure_ascii=False)
    words = _last_user_text(params).split()
    head = " ".join(words[:8]) + (" ..." if len(words) > 8 else "")
    tail = " ".join(_FILLER[(seed >> (4 * k)) % len(_FILLER)] for k in range(6))
    return f"Summary of: {head}\n\nIn short: {tail}."


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for block in content:
        if isinstance(block, dict):
            if isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif "content" in block:
                parts.append(_block_text(block["content"]))
    return "\n".join(parts)


def _last_user_text(params: dict[str, Any]) -> str:
    for message in reversed(params.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _block_text(message.get("content"))
    return ""


def spoil_answer(text: str, shape: str | None) -> str:
    """A native structured answer (``output_config.format``) as a fault shapes it: prose then
    the JSON in one text block, or prose only."""
    if shape == "preamble":
        return _PREAMBLE + text
    if shape == "no_json":
        return _NO_JSON
    return text


def _tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def build_message(
    params: dict[str, Any],
    text: str,
    *,
    message_id: str,
    shape: str | None = None,
    cache: CacheUse | None = None,
    redacted: bool = False,
    service_tier: str = "batch",
) -> dict[str, Any]:
    """The Message answering ``params`` with ``text`` (a tool call when a tool is forced).

    ``shape`` is how a fault spoils a structured answer. In native mode see ``spoil_answer``.
    In tool mode, as a model does: "preamble" says a sentence in a text block before the tool
    call, "no_json" answers in prose and calls no tool (stop_reason ``end_turn``). ``cache`` is
    what the request read from and wrote to the prompt cache; ``redacted`` makes its thinking
    block a ``redacted_thinking`` one.
    """
    kind = structured_kind(params)
    tool = kind[1] if kind is not None and kind[0] == "tool" else None
    prose = ""
    if tool is None:
        if kind is not None:
            text = spoil_answer(text, shape)
    elif shape == "no_json":
        text, tool = _NO_JSON, None
    elif shape == "preamble":
        prose = f"I'll record the answer with the {tool.get('name')} tool."

    seed = stable_hash(canonical_json(params))
    thinking = thinking_for(params, seed, " ".join(_last_user_text(params).split()[:12]))
    max_tokens = params["max_tokens"]
    content: list[dict[str, Any]] = []
    thought = 0
    if thinking is not None:
        # Thinking comes first and counts toward max_tokens: it may leave no room to answer.
        thought = min(thinking.tokens, max_tokens)
        cut_at = max_tokens * 4 if thinking.tokens > max_tokens else None
        content.append(thinking_block(thinking, redacted=redacted, max_chars=cut_at))
    room = max_tokens - thought

    # Stop sequences and max_tokens act on everything generated: the prose, then the call.
    generated = prose + text
    stop_reason = "end_turn"
    stop_sequence = None
    for sequence in params.get("stop_sequences") or ():
        at = generated.find(sequence) if isinstance(sequence, str) and sequence else -1
        if at >= 0:
            generated, stop_reason, stop_sequence = generated[:at], "stop_sequence", sequence
    output_tokens = _tokens(generated) if room > 0 else 0
    cut = room <= 0 or output_tokens > room
    if cut:
        generated, output_tokens, stop_reason, stop_sequence = (
            generated[: room * 4],
            room,
            "max_tokens",
            None,
        )
    call = generated[len(prose) :] if len(generated) > len(prose) else None
    tool_input = _json_object(call) if tool is not None and call is not None else None
    if room <= 0:
        pass  # the reasoning used every token: nothing else was said
    elif tool is not None and (tool_input is not None or (cut and call is not None)):
        if prose:
            content.append(_text_block(prose))
        content.append(
            {
                "type": "tool_use",
                "id": prefixed_id("toolu_", message_id),
                "name": tool["name"],
                # A call cut by max_tokens carries no usable arguments, as with the real API.
                "input": tool_input if tool_input is not None else {},
                "caller": {"type": "direct"},
            }
        )
        stop_reason = "max_tokens" if cut else "tool_use"
    else:
        content.append(_text_block(generated))
    cache = cache or CacheUse()
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "stop_details": None,
        "container": None,
        "usage": {
            "input_tokens": input_tokens(params) - cache.read - cache.creation,
            "output_tokens": thought + output_tokens,
            "cache_creation_input_tokens": cache.creation,
            "cache_read_input_tokens": cache.read,
            "cache_creation": {
                "ephemeral_1h_input_tokens": cache.write_1h,
                "ephemeral_5m_input_tokens": cache.write_5m,
            },
            "server_tool_use": None,
            "service_tier": service_tier,
            "inference_geo": None,
            "output_tokens_details": None if thinking is None else {"thinking_tokens": thought},
        },
    }


def beta_message(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` as the beta endpoints (``?beta=true``) answer it: with the fields the beta
    Message schema requires (``diagnostics``, ``context_management``, usage ``iterations`` and
    ``speed``), null as the API sends them for a plain request."""
    usage = {**message["usage"], "iterations": None, "speed": None}
    return {**message, "diagnostics": None, "context_management": None, "usage": usage}


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text, "citations": None}


def _json_object(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def errored_result(error_type: str, message: str) -> dict[str, Any]:
    """An ``errored`` result as the results file writes it. A real errored line carries the
    error with ``details`` null and no request id; the spec's ErrorResponse requires
    ``request_id`` (nullable), so it is there, null."""
    return {
        "type": "errored",
        "error": {
            "type": "error",
            "error": {"type": error_type, "message": message, "details": None},
            "request_id": None,
        },
    }
