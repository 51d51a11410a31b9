"""Answers: the default responder, and the result objects an answer is wrapped into.

A responder is ``responder(custom_id, params) -> str | dict``. A str is the answer text; for a
structured request (``output_config.format`` json_schema, or a forced ``tool_choice``) it is
the JSON text, which ``result_from_text`` turns into a text block or a ``tool_use`` block and
wraps into a full Message (usage, ``max_tokens``, ``stop_sequences`` and answer-shape faults
applied). A dict is the whole ``result`` object of the results line and is used as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dsbatch._emulator._errors import error_body
from dsbatch._emulator._ids import canonical_json, prefixed_id, stable_hash
from dsbatch._emulator._schema import generate_instance
from dsbatch._emulator._validate import structured_kind

__all__ = [
    "Responder",
    "default_responder",
    "errored_result",
    "prompt_text",
    "result_from_text",
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


def prompt_text(params: dict[str, Any]) -> str:
    """Everything the model reads, as text: the basis of ``input_tokens``."""
    parts = [_block_text(params.get("system"))]
    parts.extend(
        _block_text(m.get("content")) for m in params.get("messages") or [] if isinstance(m, dict)
    )
    if params.get("tools"):
        parts.append(json.dumps(params["tools"]))
    return "\n".join(parts)


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


def result_from_text(
    custom_id: str,
    params: dict[str, Any],
    text: str,
    *,
    message_id: str,
    shape: str | None = None,
) -> dict[str, Any]:
    """A ``succeeded`` result whose message carries ``text`` (a tool call when forced).

    ``shape`` is how a fault spoils a structured answer. In native mode see ``spoil_answer``.
    In tool mode, as a model does: "preamble" says a sentence in a text block before the tool
    call, "no_json" answers in prose and calls no tool (stop_reason ``end_turn``).
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

    # Stop sequences and max_tokens act on everything generated: the prose, then the call.
    generated = prose + text
    max_tokens = params["max_tokens"]
    stop_reason = "end_turn"
    stop_sequence = None
    for sequence in params.get("stop_sequences") or ():
        at = generated.find(sequence) if isinstance(sequence, str) and sequence else -1
        if at >= 0:
            generated, stop_reason, stop_sequence = generated[:at], "stop_sequence", sequence
    output_tokens = _tokens(generated)
    cut = output_tokens > max_tokens
    if cut:
        generated, output_tokens, stop_reason, stop_sequence = (
            generated[: max_tokens * 4],
            max_tokens,
            "max_tokens",
            None,
        )
    content: list[dict[str, Any]] = []
    call = generated[len(prose) :] if len(generated) > len(prose) else None
    tool_input = _json_object(call) if tool is not None and call is not None else None
    if tool is not None and (tool_input is not None or (cut and call is not None)):
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
    return {
        "type": "succeeded",
        "message": {
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
                "input_tokens": _tokens(prompt_text(params)),
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
                "server_tool_use": None,
                "service_tier": "batch",
                "inference_geo": None,
                "output_tokens_details": None,
            },
        },
    }


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


def errored_result(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    """An ``errored`` result carrying an ErrorResponse, as the results file writes it."""
    return {"type": "errored", "error": error_body(error_type, message, request_id)}
