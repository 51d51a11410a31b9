"""Samples: k answers per row (``samples=k``), and the shape they come back in.

Answer j of a row is the request's own custom_id with ``_s<j>`` for j > 0
(``_render.sample_custom_id``). The join builds the columns of every sample at once, sample by
sample (all rows of sample 0, then of sample 1...); ``reshape`` turns that into what the user
asked for: each output column a list of k values in row order (``samples_as="lists"``), or k
output rows per input row with a ``sample`` column (``samples_as="rows"``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dsbatch._arrow import whole
from dsbatch._policy import FAILED_STATUSES
from dsbatch._render import sample_suffix

__all__ = ["SAMPLE_COLUMN", "SAMPLES_AS", "failed_mask", "reshape", "sample_ids"]

SAMPLE_COLUMN = "sample"
SAMPLES_AS = ("lists", "rows")


def sample_ids(row_custom_ids: pa.Array, samples: int) -> pa.Array:
    """The custom_ids of every sample of every row, sample-major (null: a skipped row)."""
    ids = pa.array(row_custom_ids, pa.string())
    return pa.concat_arrays(
        [ids, *(pc.binary_join_element_wise(ids, sample_suffix(j), "") for j in range(1, samples))]
    )


def reshape(table: pa.Table, samples: int, *, as_rows: bool, status_column: str) -> pa.Table:
    """The sample-major columns of ``samples`` answers per row in the shape asked for. One
    sample in lists is the plain shape: exactly what a run without samples gives."""
    if samples == 1 and not as_rows:
        return table
    rows = table.num_rows // samples
    # Row-major: row 0's samples, then row 1's...
    order = (np.arange(rows)[:, None] + np.arange(samples)[None, :] * rows).ravel()
    taken = table.take(pa.array(order))
    if as_rows:
        at = taken.schema.get_field_index(status_column)
        sample = pa.array(np.tile(np.arange(samples, dtype=np.int64), rows))
        return taken.add_column(at, SAMPLE_COLUMN, sample)
    offsets = pa.array(np.arange(0, rows * samples + 1, samples, dtype=np.int32))
    return pa.table(
        {
            name: pa.ListArray.from_arrays(offsets, taken[name].combine_chunks())
            for name in taken.column_names
        }
    )


def failed_mask(status: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Per output row, whether it failed (what ``on_error`` acts on): a row of lists failed
    when any of its samples did."""
    status = whole(status)
    failed_statuses = pa.array(FAILED_STATUSES)
    if not pa.types.is_list(status.type):
        return pc.is_in(pc.struct_field(status, "status"), value_set=failed_statuses).fill_null(
            False
        )
    each = pc.is_in(
        pc.struct_field(pc.list_flatten(status), "status"), value_set=failed_statuses
    ).fill_null(False)
    parents = pc.filter(pc.list_parent_indices(status), each).to_numpy()
    hit = np.zeros(len(status), dtype=bool)
    hit[parents] = True
    return pa.array(hit)
