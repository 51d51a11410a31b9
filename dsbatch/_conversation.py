"""Conversations: a request and its answer as the plain chat format fine-tuning libraries read.

``conversation_column="messages"`` gives each row a list of ``{"role", "content"}`` turns, every
content a str (what chat templates and TRL's ``SFTTrainer`` take): the request's system prompt
(when it has one) as a ``system`` turn, its messages in order, then the answer as one
``assistant`` turn. A turn's content blocks become text:

    block                         in the conversation
    text                          its text (a turn's text blocks joined by a blank line)
    tool_use                      its input as JSON text (as the output column holds a tool call)
    tool_result                   the text of its content
    thinking, redacted_thinking   left out (the reasoning has a column of its own)
    image, document, any other    refused before anything is sent: a text conversation cannot
                                  carry it, and training text about a picture nobody sees is
                                  worse than none

A request that ends with an assistant turn (a prefill) is answered by the continuation of that
turn: the answer is appended to it, so the conversation still ends with one assistant turn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from dsbatch._errors import PromptError

__all__ = ["CONVERSATION_TYPE", "conversation_turns", "conversations"]

CONVERSATION_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))

_SEPARATOR = "\n\n"
_LEFT_OUT = frozenset({"thinking", "redacted_thinking"})
_FIX = "pass conversation_column=None, or keep such blocks out of the prompt"


def conversation_turns(params: Mapping[str, Any]) -> list[dict[str, str]]:
    """The system prompt and messages of a request as ``{"role", "content"}`` turns (str
    content); PromptError for a block that has no text form."""
    turns: list[dict[str, str]] = []
    system = params.get("system")
    if system:
        text = _text(system, "the system prompt")
        if text:
            turns.append({"role": "system", "content": text})
    for i, message in enumerate(params.get("messages") or ()):
        role = message.get("role")
        content = _text(message.get("content"), f"message {i} ({role})")
        turns.append({"role": str(role), "content": content})
    return turns


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or ():
        kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
        if kind == "text":
            parts.append(block["text"])
        elif kind == "tool_use":
            parts.append(json.dumps(block.get("input"), ensure_ascii=False))
        elif kind == "tool_result":
            parts.append(_text(block.get("content") or "", f"a tool_result of {where}"))
        elif kind not in _LEFT_OUT:
            raise PromptError(
                f"{where} holds a {kind!r} block, and conversation_column makes text-only "
                f"conversations (role and content strings), which cannot carry it: {_FIX}"
            )
    return _SEPARATOR.join(parts)


def conversations(
    custom_ids: Sequence[str | None],
    answers: Sequence[str | None],
    bodies: Mapping[str, bytes],
) -> pa.Array:
    """The conversation of each request answered with ``answers`` (null without an answer);
    ``bodies`` maps each custom_id to the params it sent (samples share theirs)."""
    turns_of: dict[bytes, list[dict[str, str]]] = {}
    out: list[list[dict[str, str]] | None] = []
    for custom_id, answer in zip(custom_ids, answers, strict=True):
        if custom_id is None or answer is None:
            out.append(None)
            continue
        body = bodies[custom_id]
        turns = turns_of.get(body)
        if turns is None:
            try:
                turns = turns_of[body] = conversation_turns(json.loads(body))
            except PromptError as e:
                raise ValueError(f"the request {custom_id}: {e}") from None
        if turns and turns[-1]["role"] == "assistant":
            # A prefill: the answer continues that turn.
            conversation = [*turns[:-1], {**turns[-1], "content": turns[-1]["content"] + answer}]
        else:
            conversation = [*turns, {"role": "assistant", "content": answer}]
        out.append(conversation)
    return pa.array(out, CONVERSATION_TYPE)
