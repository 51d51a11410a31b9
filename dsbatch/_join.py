"""Join: custom_id -> row, the new columns built with Arrow ``take``, attached to the dataset."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features
from datasets.table import InMemoryTable, concat_tables

from dsbatch._ledger import RESULT_SCHEMA

__all__ = [
    "FAILED_STATUSES",
    "STATUS_TYPE",
    "attach_columns",
    "final_results",
    "output_table",
]

FAILED_STATUSES = ("errored", "expired", "canceled", "parse_error")

STATUS_TYPE = pa.struct(
    [
        ("status", pa.string()),
        ("error", pa.string()),
        ("custom_id", pa.string()),
        ("stop_reason", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cache_read_input_tokens", pa.int64()),
        ("cache_creation_input_tokens", pa.int64()),
        ("attempts", pa.int64()),
    ]
)

_EXPIRED = "the request expired: the batch did not reach it within 24 hours"
_CANCELED = "the request was canceled before it was processed"


def final_results(results: pa.Table, batch_order: Mapping[str, int]) -> pa.Table:
    """One result per custom_id: a success if there is one anywhere, else the latest attempt."""
    if results.num_rows == 0:
        return results
    rank = pc.if_else(pc.equal(results["type"], "succeeded"), 0, 1)
    # Later batches of this job first; batches of other jobs (only successes) count as oldest.
    order = pa.array([-batch_order.get(b, -1) for b in results["batch_id"].to_pylist()], pa.int64())
    keyed = results.append_column("_rank", rank).append_column("_order", order)
    keyed = keyed.sort_by(
        [("custom_id", "ascending"), ("_rank", "ascending"), ("_order", "ascending")]
    )
    ids = keyed["custom_id"].combine_chunks()
    first = pc.invert(pc.equal(ids[1:], ids[:-1]).fill_null(False))
    keep = pa.concat_arrays([pa.array([True]), first])
    return keyed.filter(keep).drop_columns(["_rank", "_order"])


def output_table(
    row_custom_ids: Sequence[str | None],
    results: pa.Table,
    attempts: Mapping[str, int],
    *,
    output_column: str,
) -> pa.Table:
    """The new columns for one split: ``output_column`` and the ``dsbatch`` status struct.

    ``results`` holds exactly one row per custom_id (see ``final_results``).
    """
    ids = pa.array(row_custom_ids, pa.string())
    index = pc.index_in(ids, value_set=results["custom_id"])
    missing = pc.and_(pc.is_valid(ids), pc.is_null(index))
    if pc.any(missing).as_py():
        row = pc.index(missing, True).as_py()
        raise AssertionError(f"row {row}: no result for custom_id {row_custom_ids[row]}")
    rows = results.select([c for c in RESULT_SCHEMA.names if c not in ("raw", "batch_id")]).take(
        index
    )

    kind = rows["type"]
    skipped = pc.is_null(ids)
    status = pc.if_else(skipped, "skipped", kind)
    error = pc.case_when(
        pc.make_struct(
            pc.equal(kind, "errored"), pc.equal(kind, "expired"), pc.equal(kind, "canceled")
        ),
        pc.binary_join_element_wise(
            rows["error_type"].fill_null("error"), rows["error_message"].fill_null(""), ": "
        ),
        pa.scalar(_EXPIRED),
        pa.scalar(_CANCELED),
    )
    attempt_counts = pa.array([attempts.get(c, 0) if c else 0 for c in row_custom_ids], pa.int64())
    succeeded = pc.equal(kind, "succeeded").fill_null(False)
    response = pc.if_else(succeeded, rows["text"], pa.nulls(len(ids), pa.string()))
    status_col = pa.StructArray.from_arrays(
        [
            _arr(status),
            _arr(error),
            ids,
            _arr(rows["stop_reason"]),
            _arr(rows["input_tokens"]),
            _arr(rows["output_tokens"]),
            _zero_if_succeeded(rows["cache_read_input_tokens"], succeeded),
            _zero_if_succeeded(rows["cache_creation_input_tokens"], succeeded),
            attempt_counts,
        ],
        fields=list(STATUS_TYPE),
    )
    return pa.table({output_column: _arr(response), "dsbatch": status_col})


def _zero_if_succeeded(values: pa.ChunkedArray, succeeded: pa.Array) -> pa.Array:
    # Results written before prompt caching existed omit the cache counts: for an answer,
    # "not reported" means none were cached.
    values = _arr(values)
    return _arr(pc.if_else(succeeded, values.fill_null(0), values))


def _arr(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def attach_columns(dataset: Dataset, new: pa.Table, *, fingerprint: str) -> Dataset:
    """The dataset with the new columns appended (replacing columns of the same name), in the
    dataset's own format (numpy, torch, ...)."""
    fmt = dataset.format
    clash = [name for name in new.column_names if name in dataset.column_names]
    if len(clash) == len(dataset.column_names):
        # Nothing of the input is left: the new columns are the whole dataset.
        info = dataset.info.copy()
        info.features = Features.from_arrow_schema(new.schema)
        out = Dataset(InMemoryTable(new), info=info, split=dataset.split, fingerprint=fingerprint)
    else:
        if clash:
            dataset = dataset.remove_columns(clash)
        if dataset._indices is not None:
            dataset = dataset.flatten_indices()
        table = concat_tables([dataset._data, InMemoryTable(new)], axis=1)
        info = dataset.info.copy()
        info.features.update(Features.from_arrow_schema(new.schema))
        out = Dataset(table, info=info, split=dataset.split, fingerprint=fingerprint)
    if fmt["type"] is None and fmt["columns"] is None:
        return out
    columns = fmt["columns"]
    if columns is not None:
        columns = [c for c in columns if c not in new.column_names] + new.column_names
    return out.with_format(
        fmt["type"],
        columns=columns,
        output_all_columns=fmt["output_all_columns"],
        **fmt["format_kwargs"],
    )
