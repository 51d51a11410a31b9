"""Reasoning traces: the text of an answer's thinking blocks, for the ``thinking`` column.

A request thinks when its ``thinking.type`` is "enabled" or "adaptive", or when its model always
thinks (``dsbatch._models``). A job whose requests think gets the column (``thinking_column``);
its values are read at join time from the raw result lines the cache keeps, so choosing or
renaming the column never pays again. Per row:

    the answer holds                 the thinking column
    thinking blocks                  their text (several joined by a blank line)
    a thinking block with no text    "" (the model thought, its text omitted: Opus 4.7+ and
                                     Fable omit it unless thinking.display is "summarized")
    a redacted_thinking block        ``REDACTED`` in its place (its data stays in the raw answer)
    no thinking block, or no answer  null
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from itertools import islice
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from dsbatch._models import model_facts

__all__ = ["REDACTED", "any_thinks", "request_thinks", "thinking_texts"]

REDACTED = "[redacted thinking]"

_SEPARATOR = "\n\n"
_KINDS = ("thinking", "redacted_thinking")
_THINKING_KEY = b'"thinking":{'
_MODEL = re.compile(rb'"model":"([^"\\]*)"')
_CHUNK = 4096
_BLOCK = pa.struct([("type", pa.string()), ("thinking", pa.string())])
_LINE = pa.schema(
    [
        ("custom_id", pa.string()),
        (
            "result",
            pa.struct([("message", pa.struct([("content", pa.list_(_BLOCK))]))]),
        ),
    ]
)
_PARSE = pj.ParseOptions(explicit_schema=_LINE, unexpected_field_behavior="ignore")


def request_thinks(params: dict[str, Any]) -> bool:
    """Whether the answer to these params starts with thinking."""
    thinking = params.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        return True
    model = params.get("model")
    return isinstance(model, str) and _always_thinks(model.encode())


@functools.lru_cache(maxsize=64)
def _always_thinks(model: bytes) -> bool:
    facts = model_facts(model.decode(errors="replace"))
    return facts is not None and facts.always_thinking


def any_thinks(bodies: Iterable[bytes]) -> bool:
    """Whether any of these canonical requests thinks. Read a few thousand at a time: only a
    chunk that names a ``thinking`` object or a model that always thinks is parsed."""
    it = iter(bodies)
    while chunk := list(islice(it, _CHUNK)):
        blob = b"\x00".join(chunk)
        maybe = _THINKING_KEY in blob or any(map(_always_thinks, _models_in(blob)))
        if maybe and any(request_thinks(json.loads(body)) for body in chunk):
            return True
    return False


def _models_in(blob: bytes) -> set[bytes]:
    """The model names a chunk of requests holds (more, never fewer)."""
    first = _MODEL.search(blob)
    if first is None:
        return set()
    # The usual chunk asks one model: counting is much faster than listing every match.
    if blob.count(first.group(0)) == blob.count(b'"model":"'):
        return {first.group(1)}
    return set(_MODEL.findall(blob))


def thinking_texts(lines: pa.Array) -> pa.Array:
    """The thinking column's value for each raw result line (see the module's table)."""
    lines = lines.cast(pa.large_string())
    # A line without the word holds no thinking block: most of a mixed job is never parsed.
    where = pc.indices_nonzero(pc.match_substring(lines, 'thinking"').fill_null(False))
    out: list[str | None] = [None] * len(lines)
    for i, value in zip(where.to_pylist(), _read(lines.take(where)), strict=True):
        out[i] = value
    return pa.array(out, pa.string())


def _read(lines: pa.Array) -> list[str | None]:
    if len(lines) == 0:
        return []
    # One buffer of newline-delimited lines, made in Arrow: no Python string per line.
    newline = pa.scalar("\n", pa.large_string())
    joined = pc.binary_join_element_wise(lines, newline, pa.scalar("", pa.large_string()))
    # A kernel's fresh result: its characters start at 0 and run on, line after line.
    size = pc.sum(pc.binary_length(joined)).as_py()
    try:
        table = pj.read_json(
            pa.BufferReader(joined.buffers()[2].slice(0, size)),
            read_options=pj.ReadOptions(block_size=max(1 << 20, min(size + 1, 1 << 26))),
            parse_options=_PARSE,
        )
        if table.num_rows != len(lines):
            raise pa.ArrowInvalid("a line is not one result")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return [_from_message(json.loads(line)) for line in lines.to_pylist()]  # odd shapes
    content = pc.struct_field(
        pc.struct_field(table["result"].combine_chunks(), "message"), "content"
    )
    blocks = pc.list_flatten(content)
    kinds = pc.struct_field(blocks, "type")
    keep = pc.is_in(kinds, value_set=pa.array(_KINDS)).fill_null(False)
    out: list[str | None] = [None] * len(lines)
    for parent, kind, text in zip(
        pc.filter(pc.list_parent_indices(content), keep).to_pylist(),
        pc.filter(kinds, keep).to_pylist(),
        pc.filter(pc.struct_field(blocks, "thinking"), keep).to_pylist(),
        strict=True,
    ):
        out[parent] = _joined(out[parent], kind, text)
    return out


def _from_message(line: Any) -> str | None:
    result = line.get("result") if isinstance(line, dict) else None
    message = result.get("message") if isinstance(result, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    text: str | None = None
    for block in content if isinstance(content, list) else ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in _KINDS:
            thought = block.get("thinking")
            text = _joined(text, kind, thought if isinstance(thought, str) else None)
    return text


def _joined(before: str | None, kind: str, text: str | None) -> str:
    piece = REDACTED if kind == "redacted_thinking" else (text or "")
    if not before:
        return piece
    return before + _SEPARATOR + piece if piece else before
