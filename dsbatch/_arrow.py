"""Arrow helpers the stages share."""

from __future__ import annotations

import pyarrow as pa

__all__ = ["whole"]


def whole(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array of a column: its only chunk as it is (combining it would copy it), else its
    chunks combined."""
    if not isinstance(values, pa.ChunkedArray):
        return values
    return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
