"""Join: custom_id -> row; the new columns built with Arrow ``take``.

Each distinct request's result is turned into its columns once (status, answer text, structured
fields, thinking, conversation) and fanned out to every row that asked for it; ``parse(row,
message)`` runs per row.
Nothing here calls the API: a new ``parse`` or ``response_format`` validator re-runs the join
over the raw result lines the cache already holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dsbatch import _structured
from dsbatch._arrow import whole
from dsbatch._conversation import conversations
from dsbatch._records import RESULT_TYPES, USAGE_FIELDS
from dsbatch._samples import SAMPLE_COLUMN

__all__ = ["STATUS_TYPE", "MissingResult", "OutputSpec", "ParseFn", "output_slices", "output_table"]

STATUS_TYPE = pa.struct(
    [
        ("status", pa.string()),
        ("error", pa.string()),
        ("custom_id", pa.string()),
        ("stop_reason", pa.string()),
        *((name, pa.int64()) for name in USAGE_FIELDS),
        ("attempts", pa.int64()),
        # The answer's cost in USD at batch prices (``_cost``): 0 for a request not billed,
        # null when unknown or the row was skipped. Rows sharing a request share its answer,
        # paid once: sum over distinct custom_ids for what the answers cost.
        ("cost_usd", pa.float64()),
    ]
)

_EXPIRED = "the request expired: the batch did not reach it within 24 hours"
_CANCELED = "the request was canceled before it was processed (resend_canceled=True sends it again)"

# parse(row, message): the message is the Message object exactly as the API sent it (a dict).
ParseFn = Callable[[dict[str, Any], dict[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class OutputSpec:
    """What the new columns are: their names, and how answers become columns."""

    output_column: str = "response"
    status_column: str = "dsbatch"
    response_format: type | None = None
    structured_output: str = "native"
    parse: ParseFn | None = None
    thinking_column: str | None = "thinking"  # when the job's requests think
    conversation_column: str | None = None
    samples: int = 1
    samples_as: str = "lists"  # or "rows": k output rows per input row, numbered by `sample`


class MissingResult(LookupError):
    """A row's request has no result at all (the caller names the job and cache)."""


def output_table(
    row_custom_ids: pa.Array,
    latest: pa.Table,
    attempts: Mapping[str, int] | None,
    spec: OutputSpec,
    **parts: Any,
) -> pa.Table:
    """The new columns of one split, as one table: ``output_slices`` in one slice (its
    keywords, but ``slice_rows``)."""
    (table,) = output_slices(row_custom_ids, latest, attempts, spec, **parts)
    return table


def output_slices(
    row_custom_ids: pa.Array,
    latest: pa.Table,
    attempts: Mapping[str, int] | None,
    spec: OutputSpec,
    *,
    rows: Callable[[], Iterable[dict[str, Any]]] | None = None,
    messages: Callable[[pa.Table], dict[str, dict[str, Any]]] | None = None,
    thinking: Callable[[pa.Table], dict[str, str | None]] | None = None,
    bodies: Mapping[str, bytes] | None = None,
    cost: pa.Array | None = None,
    slice_rows: int | None = None,
) -> list[pa.Table] | Iterator[pa.Table]:
    """The new columns of one split, ``slice_rows`` rows at a time (None: in one table).

    ``latest`` holds one result per custom_id (``policy.latest_results``). ``rows`` iterates the
    split's rows and ``messages(results)`` gives custom_id -> Message dict; both only for
    ``spec.parse``. ``thinking(answered)`` gives custom_id -> the thinking column's value, for
    a job whose requests think; ``bodies`` (custom_id -> params sent) the conversations.
    ``cost`` is each result's cost in USD (null when not known); ``attempts`` the sends of each
    custom_id (None: each was sent once).

    Everything about each distinct request, and every check (``MissingResult``), is done here,
    before the first slice: the slices only fan the requests' values out to their rows. A
    slice at a time, the largest piece of a join's memory (the answers copied to the rows that
    asked for them) is a slice's, not the split's.
    """
    ids = row_custom_ids
    index = pc.index_in(ids, value_set=latest["custom_id"])
    missing = pc.and_(pc.is_valid(ids), pc.is_null(index))
    if pc.any(missing).as_py():
        row = pc.index(missing, True).as_py()
        raise MissingResult(f"row {row}: no result for custom_id {ids[row].as_py()}")

    forced_tool = spec.response_format is not None and spec.structured_output == "tool"
    status, error, response = _per_request(latest, tool_first=forced_tool)
    structured: dict[str, pa.Array] = {}
    if spec.response_format is not None:
        status, error, structured = _structured_columns(
            latest, spec.response_format, spec.structured_output, status, error
        )

    # Rows asking for the requests in their order, each once (the usual job), take nothing:
    # a copy of a million answers is the largest piece of a collect's memory.
    in_order = _is_identity(index, latest.num_rows)

    def fan(values: pa.Array | pa.ChunkedArray) -> pa.Array:
        return whole(values if in_order else values.take(index))

    # Per row, the small columns: whole (parse and conversations read them whole).
    skipped = pc.is_null(ids)
    row_status = pc.if_else(skipped, "skipped", fan(status))
    row_error = fan(error)
    # Per request, what the slices fan out: name -> values.
    per_request: dict[str, pa.Array | pa.ChunkedArray] = {spec.output_column: response}
    per_request.update(structured)
    per_row: dict[str, pa.Array] = {}  # the columns made whole per row (sliced as they are)
    if spec.parse is not None and rows is not None and messages is not None:
        parsed, row_status, row_error = _parse_columns(
            spec.parse,
            ids,
            latest,
            index,
            row_status,
            row_error,
            rows,
            messages,
            _taken(spec, thinks=thinking is not None),
        )
        per_row.update(parsed)
    if spec.thinking_column is not None and thinking is not None:
        # Every paid answer: one that did not parse keeps its reasoning, as it keeps its text.
        paid = pc.equal(latest["type"], "succeeded").fill_null(False)
        texts = thinking(_answered(latest, paid)) if pc.any(paid).as_py() else {}
        per_request[spec.thinking_column] = pa.array(
            [texts.get(c) for c in latest["custom_id"].to_pylist()], pa.string()
        )
    conversation: pa.Array | None = None
    kept: pa.Array | None = None
    if spec.conversation_column is not None and bodies is not None:
        conversation = conversations(latest["custom_id"].to_pylist(), response.to_pylist(), bodies)
        # A row that failed (a parse_error keeps its answer in the output column) has none.
        kept = pc.equal(row_status, "succeeded").fill_null(False)
    taken = latest.select(["type", "stop_reason", *USAGE_FIELDS])
    if cost is not None:
        taken = taken.append_column("cost_usd", cost)
    sends = _attempts(ids, attempts)
    # The columns' order: the answer, response_format's fields, parse's, thinking, conversation.
    order = [spec.output_column, *structured, *per_row]
    order += [name for name in per_request if name not in order]
    if conversation is not None:
        order.append(spec.conversation_column)  # type: ignore[arg-type]

    def rows_of(start: int, count: int) -> pa.Table:
        """The columns of ``count`` rows from ``start``."""
        at = index.slice(start, count)

        def fan_rows(values: pa.Array | pa.ChunkedArray) -> pa.Array:
            return whole(values.slice(start, count) if in_order else values.take(at))

        columns = {name: fan_rows(values) for name, values in per_request.items()}
        columns.update({name: values.slice(start, count) for name, values in per_row.items()})
        if conversation is not None and kept is not None:
            columns[spec.conversation_column] = whole(  # type: ignore[index]
                pc.if_else(
                    kept.slice(start, count),
                    fan_rows(conversation),
                    pa.nulls(count, conversation.type),
                )
            )
        columns = {name: columns[name] for name in order}
        mine = taken.slice(start, count) if in_order else taken.take(at)
        succeeded = pc.equal(mine["type"], "succeeded").fill_null(False)
        columns[spec.status_column] = pa.StructArray.from_arrays(
            [
                whole(row_status.slice(start, count)),
                whole(row_error.slice(start, count)),
                ids.slice(start, count),
                whole(mine["stop_reason"]),
                whole(mine["input_tokens"]),
                whole(mine["output_tokens"]),
                _zero_if_succeeded(mine["cache_read_input_tokens"], succeeded),
                _zero_if_succeeded(mine["cache_creation_input_tokens"], succeeded),
                sends.slice(start, count),
                whole(mine["cost_usd"]) if cost is not None else pa.nulls(count, pa.float64()),
            ],
            fields=list(STATUS_TYPE),
        )
        return pa.table(columns)

    step = len(ids) if slice_rows is None else max(1, slice_rows)
    if step >= len(ids):
        return [rows_of(0, len(ids))]
    return (rows_of(start, min(step, len(ids) - start)) for start in range(0, len(ids), step))


def _per_request(
    latest: pa.Table, *, tool_first: bool = False
) -> tuple[pa.Array, pa.Array, pa.Array | pa.ChunkedArray]:
    """(status, error, answer text) of each distinct request; with ``tool_first`` (the forced
    tool of ``structured_output="tool"``) the tool call's input is the answer when there is one."""
    kind = whole(latest["type"])
    problem = whole(latest["problem"])
    unreadable = pc.and_(pc.equal(kind, "succeeded"), pc.is_valid(problem)).fill_null(False)
    # A result of no known type (an odd line) is an answer we do not have: errored, saying why.
    known = pc.is_in(kind, value_set=pa.array(RESULT_TYPES)).fill_null(False)
    status = pc.if_else(unreadable, "parse_error", pc.if_else(known, kind, "errored"))
    problem = pc.if_else(
        pc.or_(known, pc.is_valid(problem)), problem, "the result line has no result type"
    )
    error_type = whole(latest["error_type"])
    error = pc.case_when(
        pc.make_struct(
            unreadable,
            pc.invert(known),
            pc.equal(kind, "errored").fill_null(False),
            pc.equal(kind, "expired").fill_null(False),
            pc.equal(kind, "canceled").fill_null(False),
            pc.is_valid(problem),
        ),
        pc.binary_join_element_wise("the result line could not be read: ", problem, ""),
        pc.binary_join_element_wise("the result line could not be read: ", problem, ""),
        pc.binary_join_element_wise(
            error_type.fill_null("error"), whole(latest["error_message"]).fill_null(""), ": "
        ),
        pa.scalar(_EXPIRED),
        pa.scalar(_CANCELED),
        problem,
    )
    # Without text, a tool call's input is the answer (a forced tool still paid for it). Under
    # response_format's forced tool the call is the answer even after a sentence of prose: the
    # column then holds what the fields were read from, on every row alike.
    text, tool_input = latest["text"], latest["tool_input"]  # not combined: fan takes once
    # Copies only where they change something: most jobs have no tool calls, and every answer
    # succeeded.
    if tool_input.null_count == len(tool_input):
        answer = text
    else:
        answer = pc.coalesce(tool_input, text) if tool_first else pc.coalesce(text, tool_input)
    answered = pc.equal(status, "succeeded").fill_null(False)
    if pc.all(answered).as_py() is not True:
        answer = pc.if_else(answered, answer, pa.nulls(len(kind), pa.string()))
    return whole(status), whole(error), answer


def _structured_columns(
    latest: pa.Table, model: type, mode: str, status: pa.Array, error: pa.Array
) -> tuple[pa.Array, pa.Array, dict[str, pa.Array]]:
    statuses, errors = status.to_pylist(), error.to_pylist()
    parsed: list[_structured.Parsed | None] = []
    for i, (text, tool_input, stop_reason) in enumerate(
        zip(
            latest["text"].to_pylist(),
            latest["tool_input"].to_pylist(),
            latest["stop_reason"].to_pylist(),
            strict=True,
        )
    ):
        if statuses[i] != "succeeded":
            parsed.append(None)
            continue
        result = _structured.parse_answer(
            model,
            text=text,
            tool_input=json.loads(tool_input) if tool_input is not None else None,
            stop_reason=stop_reason,
            mode=mode,
        )
        if result.error is not None:
            statuses[i], errors[i] = "parse_error", result.error
        parsed.append(result)
    return (
        pa.array(statuses, pa.string()),
        pa.array(errors, pa.string()),
        _structured.columns(model, parsed),
    )


def _parse_columns(
    parse: ParseFn,
    ids: pa.Array,
    latest: pa.Table,
    index: pa.Array,
    status: pa.Array,
    error: pa.Array,
    rows: Callable[[], Iterable[dict[str, Any]]],
    messages: Callable[[pa.Table], dict[str, dict[str, Any]]],
    taken: Mapping[str, str],
) -> tuple[dict[str, pa.Array], pa.Array, pa.Array]:
    """Run ``parse(row, message)`` on every answered row; an exception marks the row.

    ``taken`` names the other new columns (name -> what it is); parse may not return those
    names, nor the names of the row's own columns."""
    statuses, errors = status.to_pylist(), error.to_pylist()
    answered = _answered(latest, pc.equal(latest["type"], "succeeded").fill_null(False))
    by_id = messages(answered)
    out: list[Mapping[str, Any] | None] = []
    taken = dict(taken)
    for i, (row, custom_id) in enumerate(zip(rows(), ids.to_pylist(), strict=True)):
        if i == 0:
            taken.update({name: "the dataset's column" for name in row if name not in taken})
        message = by_id.get(custom_id) if custom_id else None
        if message is None or statuses[i] not in ("succeeded", "parse_error"):
            out.append(None)
            continue
        try:
            values = parse(row, message)
            if not isinstance(values, Mapping):
                raise TypeError(f"parse must return a dict of columns, not {type(values).__name__}")
            for key in values:
                if not isinstance(key, str):
                    raise TypeError(
                        f"parse returned the key {key!r} ({type(key).__name__}): column names "
                        f"must be str, e.g. {str(key)!r}"
                    )
        except Exception as e:
            statuses[i], errors[i] = "parse_error", f"parse raised {type(e).__name__}: {e}"
            out.append(None)
            continue
        out.append(values)
    names = list(dict.fromkeys(k for values in out if values for k in values))
    for name in names:
        if name in taken:
            # Raised after the answers are stored: running again with a fixed parse is free.
            raise ValueError(
                f"parse returned a column {name!r}, which is also {taken[name]} {name!r}: "
                "give it another name in the dict parse returns (the answers are cached, so "
                "running again costs nothing)"
            )
    if not names:
        return {}, pa.array(statuses, pa.string()), pa.array(errors, pa.string())
    try:
        table = pa.Table.from_pylist([{k: (v or {}).get(k) for k in names} for v in out])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"the columns parse returned do not have one type each: {e}") from e
    return (
        {name: whole(table[name]) for name in names},
        pa.array(statuses, pa.string()),
        pa.array(errors, pa.string()),
    )


def _answered(latest: pa.Table, paid: pa.Array) -> pa.Table:
    """The custom_id and batch_id of the paid results (what reading their raw lines needs):
    a filter of every column would copy every answer."""
    return latest.select(["custom_id", "batch_id"]).filter(paid)


def _taken(spec: OutputSpec, *, thinks: bool) -> dict[str, str]:
    """The new columns besides parse's: name -> what it is, for parse's clash errors."""
    taken = {
        spec.output_column: "the output column",
        spec.status_column: "the status column",
    }
    if spec.thinking_column is not None and thinks:
        taken[spec.thinking_column] = "the thinking column"
    if spec.conversation_column is not None:
        taken[spec.conversation_column] = "the conversation column"
    if spec.samples_as == "rows":
        taken[SAMPLE_COLUMN] = "the sample column"
    if spec.response_format is not None:
        for name in _structured.arrow_schema(spec.response_format).names:
            taken[name] = "the response_format field"
    return taken


def _zero_if_succeeded(values: pa.ChunkedArray | pa.Array, succeeded: pa.Array) -> pa.Array:
    # Results written before prompt caching existed omit the cache counts: for an answer,
    # "not reported" means none were cached.
    values = whole(values)
    return whole(pc.if_else(succeeded, values.fill_null(0), values))


def _is_identity(index: pa.Array, n: int) -> bool:
    """Whether ``index`` takes rows 0 .. n-1 in order."""
    if len(index) != n or index.null_count:
        return False
    return bool((index.to_numpy(zero_copy_only=False) == np.arange(n)).all())


def _attempts(ids: pa.Array, attempts: Mapping[str, int] | None) -> pa.Array:
    """How many times each row's request was sent (``attempts`` None: each once), 0 for a
    skipped row."""
    if attempts is None:
        return pc.if_else(pc.is_valid(ids), 1, 0).cast(pa.int64())
    return pa.array([attempts.get(c, 0) if c else 0 for c in ids.to_pylist()], pa.int64())
