"""Arrow helpers the stages share."""

from __future__ import annotations

import pyarrow as pa

__all__ = ["give_back", "whole"]


def whole(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array of a column: its only chunk as it is (combining it would copy it), else its
    chunks combined."""
    if not isinstance(values, pa.ChunkedArray):
        return values
    return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()


def give_back() -> None:
    """Return to the system the memory Arrow's pool keeps from arrays already let go (a
    batch's download and parse, a join): the pool keeps freed pages for reuse, and after a
    stage that made hundreds of MB of short-lived arrays they would count in the process's
    memory until the next such stage."""
    pa.default_memory_pool().release_unused()
