"""Ingest: a batch's results, downloaded whole and checked, as one Arrow row per custom_id.

The bytes are parsed by pyarrow's JSON reader with an explicit schema (about 3.5x faster than
one pydantic object per line). A file with a line of an unexpected shape (``content`` as a
string, a float token count) is read again line by line: such a line keeps its raw text, what
cannot be read is null, and ``problem`` says why. Only a line that is not JSON at all makes the
download unreadable.

A download is whole (as many lines as the batch has requests, the last one complete), else it
is fetched again; a batch whose results the API no longer has is gone.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pj

from dsbatch._backend import Backend, BatchInfo, is_transient
from dsbatch._errors import BatchAPIError
from dsbatch._records import RESULT_TYPES, USAGE_FIELDS
from dsbatch._retry import Retrying
from dsbatch._store import RESULT_SCHEMA, ResultsStore

__all__ = [
    "IncompleteDownload",
    "UnreadableResults",
    "fetch_results",
    "parse_results",
]

_USAGE = pa.struct([(name, pa.int64()) for name in USAGE_FIELDS])
_BLOCK = pa.struct([("type", pa.string()), ("text", pa.string())])
_MESSAGE = pa.struct(
    [("stop_reason", pa.string()), ("usage", _USAGE), ("content", pa.list_(_BLOCK))]
)
_ERROR = pa.struct([("error", pa.struct([("type", pa.string()), ("message", pa.string())]))])
_LINE_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        (
            "result",
            pa.struct([("type", pa.string()), ("message", _MESSAGE), ("error", _ERROR)]),
        ),
    ]
)
_PARSE = pj.ParseOptions(explicit_schema=_LINE_SCHEMA, unexpected_field_behavior="ignore")
_BLOCK_BYTES = 1 << 23  # the JSON reader's block: 8 MB, parsed in parallel


class IncompleteDownload(BatchAPIError):
    """The download holds fewer result lines than the batch has requests: fetch it again."""


class UnreadableResults(BatchAPIError):
    """A result line is not JSON at all: downloading again would not change it."""


# -- parsing -----------------------------------------------------------------------------------


def parse_results(
    data: bytes | pa.Buffer,
    *,
    batch_id: str,
    batch_created_at: float | None = None,
    use_threads: bool = True,
) -> pa.Table:
    """Parse a results download (bytes, or a memory-mapped buffer) into ``RESULT_SCHEMA`` rows,
    on every core (``use_threads``, as pyarrow's readers say it) or on one.

    Raises ``IncompleteDownload`` when the last line is cut, ``UnreadableResults`` naming the
    batch and line when another line is not JSON or names no custom_id.
    """
    buf = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    if buf.size == 0:
        return RESULT_SCHEMA.empty_table()
    raw = _raw_lines(buf, batch_id, use_threads)
    try:
        parsed = pj.read_json(
            pa.BufferReader(buf),
            read_options=_read_options(buf.size, raw, use_threads),
            parse_options=_PARSE,
        )
        if parsed.num_rows != len(raw) or parsed["custom_id"].null_count:
            raise pa.ArrowInvalid("a line is not a result")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return _parse_lenient(raw, batch_id, batch_created_at)
    result = parsed["result"].combine_chunks()
    message = pc.struct_field(result, "message")
    usage = pc.struct_field(message, "usage")
    error = pc.struct_field(pc.struct_field(result, "error"), "error")
    content = pc.struct_field(message, "content")
    kind = pc.struct_field(result, "type")
    n = parsed.num_rows
    unknown = pc.invert(pc.is_in(kind, value_set=pa.array(RESULT_TYPES)))
    return pa.table(
        {
            "custom_id": parsed["custom_id"].combine_chunks(),
            "type": kind,
            "error_type": pc.struct_field(error, "type"),
            "error_message": pc.struct_field(error, "message"),
            "stop_reason": pc.struct_field(message, "stop_reason"),
            "text": _joined_text(content),
            "tool_input": _tool_inputs(content, raw),
            **{name: pc.struct_field(usage, name) for name in USAGE_FIELDS},
            "batch_id": pa.array([batch_id] * n, pa.string()),
            "batch_created_at": pa.array([batch_created_at] * n, pa.float64()),
            "problem": pc.if_else(
                unknown.fill_null(True),
                # As the line-by-line path says it (``repr`` of the type).
                pc.if_else(
                    pc.is_null(kind),
                    "unknown result type None",
                    pc.binary_join_element_wise(
                        "unknown result type '", kind.cast(pa.string()), "'", ""
                    ),
                ),
                pa.nulls(n, pa.string()),
            ),
            "raw": raw,
        },
        schema=RESULT_SCHEMA,
    )


def _joined_text(content: pa.Array) -> pa.Array:
    """The text blocks of each message joined into one string (null when there is none)."""
    blocks = pc.list_flatten(content)
    types = pc.struct_field(blocks, "type")
    texts = pc.struct_field(blocks, "text")
    lengths = pc.list_value_length(content).fill_null(0)
    # The common case, one text block per message, stays in Arrow.
    if pc.all(pc.equal(lengths, 1)).as_py() and pc.all(pc.equal(types, "text")).as_py():
        return pc.if_else(pc.is_null(content), pa.nulls(len(content), pa.string()), texts)
    parents = pc.list_parent_indices(content).to_pylist()
    out: list[str | None] = [None] * len(content)
    for parent, kind, text in zip(parents, types.to_pylist(), texts.to_pylist(), strict=True):
        if kind == "text" and text is not None:
            out[parent] = text if out[parent] is None else out[parent] + text
    return pa.array(out, pa.string())


def _tool_inputs(content: pa.Array, raw: pa.ChunkedArray) -> pa.Array:
    """The first tool call's input of each message, as JSON text (null without one)."""
    blocks = pc.list_flatten(content)
    is_tool = pc.equal(pc.struct_field(blocks, "type"), "tool_use").fill_null(False)
    out: list[str | None] = [None] * len(content)
    if not pc.any(is_tool).as_py():
        return pa.array(out, pa.string())
    rows = pc.unique(pc.filter(pc.list_parent_indices(content), is_tool)).to_pylist()
    for row, line in zip(rows, raw.take(pa.array(rows)).to_pylist(), strict=True):
        out[row] = _message_parts(json.loads(line)["result"]["message"], [])[1]
    return pa.array(out, pa.string())


def _read_options(size: int, raw: pa.ChunkedArray, use_threads: bool) -> pj.ReadOptions:
    """Blocks of ``_BLOCK_BYTES`` (parsed on every core with ``use_threads``), each large enough
    for the longest line and its line end (a line is never split across blocks: the reader
    refuses that)."""
    longest = pc.max(pc.binary_length(raw)).as_py() or 0
    return pj.ReadOptions(
        use_threads=use_threads, block_size=min(size + 1, max(_BLOCK_BYTES, longest + 2))
    )


def _raw_lines(buf: pa.Buffer, batch_id: str, use_threads: bool) -> pa.ChunkedArray:
    """Each non-blank line as a string, split in C++: the CSV reader with a delimiter that JSON
    text never holds raw (control characters are always escaped in JSON) and no quoting. Kept
    in the reader's chunks: joining them would copy every byte of the download once more.
    UnreadableResults names a line that is not UTF-8 text."""
    try:
        table = pacsv.read_csv(
            pa.BufferReader(buf),
            read_options=pacsv.ReadOptions(
                use_threads=use_threads, column_names=["raw"], block_size=1 << 24
            ),
            parse_options=pacsv.ParseOptions(delimiter="\x01", quote_char=False, escape_char=False),
            convert_options=pacsv.ConvertOptions(column_types={"raw": pa.large_string()}),
        )
    except pa.ArrowInvalid:
        number = _first_not_utf8(buf)
        if number is None:
            raise
        raise UnreadableResults(
            f"results of batch {batch_id}: line {number} is not UTF-8 text", batch_id=batch_id
        ) from None
    raw = table["raw"]
    # Empty lines are skipped by the reader; only a line of spaces (e.g. "\r") is left to drop.
    blank = pc.utf8_is_space(raw)
    return raw.filter(pc.invert(blank)) if pc.any(blank).as_py() else raw


def _first_not_utf8(buf: pa.Buffer) -> int | None:
    """The number of the first line that is not UTF-8 text (None: every line is)."""
    for number, line in enumerate(buf.to_pybytes().splitlines(), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return number
    return None


def _parse_lenient(raw: pa.ChunkedArray, batch_id: str, batch_created_at: float | None) -> pa.Table:
    """Every line on its own: an odd shape costs that line's fields, never the batch."""
    lines = raw.to_pylist()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
        except ValueError:
            if number == len(lines):
                raise IncompleteDownload(
                    f"the results of batch {batch_id} end in a cut line {number}: the download "
                    "stopped early",
                    batch_id=batch_id,
                ) from None
            raise UnreadableResults(
                f"results of batch {batch_id}: line {number} is not JSON ({line[:80]!r})",
                batch_id=batch_id,
            ) from None
        custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
        if not isinstance(custom_id, str):
            raise UnreadableResults(
                f"results of batch {batch_id}: line {number} names no custom_id ({line[:80]!r})",
                batch_id=batch_id,
            )
        row = _lenient_row(obj.get("result"))
        row.update(
            custom_id=custom_id, batch_id=batch_id, batch_created_at=batch_created_at, raw=line
        )
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def _lenient_row(result: Any) -> dict[str, Any]:
    problems: list[str] = []
    row: dict[str, Any] = {}
    if not isinstance(result, dict):
        return {"problem": "the line's result is not an object"}
    kind = result.get("type")
    row["type"] = kind if isinstance(kind, str) else None
    if kind == "succeeded":
        message = result.get("message")
        if not isinstance(message, dict):
            problems.append("result.message is not an object")
            message = {}
        stop = message.get("stop_reason")
        row["stop_reason"] = stop if isinstance(stop, str) else None
        usage = message.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        for name in USAGE_FIELDS:
            row[name] = _count(usage.get(name), f"usage.{name}", problems)
        row["text"], row["tool_input"] = _message_parts(message, problems)
    elif kind == "errored":
        outer = result.get("error")
        inner = outer.get("error") if isinstance(outer, dict) else None
        if isinstance(inner, dict):
            row["error_type"] = _text(inner.get("type"))
            row["error_message"] = _text(inner.get("message"))
        else:
            problems.append("result.error has no error object")
    elif kind not in RESULT_TYPES:
        problems.append(f"unknown result type {kind!r}")
    row["problem"] = "; ".join(problems) or None
    return row


def _message_parts(message: dict[str, Any], problems: list[str]) -> tuple[str | None, str | None]:
    """(text blocks joined, first tool call's input as JSON) of a message's content."""
    content = message.get("content")
    if not isinstance(content, list):
        problems.append(f"message.content is a {type(content).__name__}, not a list of blocks")
        return None, None
    texts = [
        b["text"]
        for b in content
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    ]
    tools = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
    tool_input = json.dumps(tools[0].get("input"), ensure_ascii=False) if tools else None
    return ("".join(texts) if texts else None), tool_input


def _count(value: Any, where: str, problems: list[str]) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    problems.append(f"{where} is {value!r}, not a count")
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# -- fetching ----------------------------------------------------------------------------------


def fetch_results(
    backend: Backend,
    store: ResultsStore,
    info: BatchInfo,
    *,
    retrying: Retrying,
    use_threads: bool = True,
) -> pa.Table | None:
    """An ended batch's results, downloaded whole; None when the API no longer has them.
    ``use_threads``: parsed on every core, else on one (``parse_results``).

    Transient failures and incomplete downloads (a cut line, fewer lines than the batch has
    requests) are fetched again by ``retrying``; what still fails is raised. Whose results
    they are is for the caller to check against the batch's record.
    """

    def download() -> pa.Table:
        data = store.store_download(info.id, backend.download(info))
        table = parse_results(
            data, batch_id=info.id, batch_created_at=info.created_at, use_threads=use_threads
        )
        if table.num_rows < info.size:
            raise IncompleteDownload(
                f"the results of batch {info.id} hold {table.num_rows} lines for "
                f"{info.size} requests: the download stopped early",
                batch_id=info.id,
            )
        return table

    try:
        return retrying.call(download)
    except BatchAPIError as e:
        if e.status_code == 404:
            return None
        raise


def retry_download(error: BaseException) -> bool:
    """Worth downloading again: a transient failure or a cut download, never a bad line."""
    return is_transient(error) and not isinstance(error, UnreadableResults)
