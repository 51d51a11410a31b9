"""Plan: the job's fingerprint, and the requests still to send chunked into batches."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import xxhash

from dsbatch._errors import RequestTooLargeError
from dsbatch._ledger import FORMAT_VERSION
from dsbatch._render import Rendered

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_REQUESTS",
    "BatchPlan",
    "batch_body",
    "chunk_requests",
    "job_fingerprint",
]

MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024

_BODY_OPEN = b'{"requests":['
_BODY_CLOSE = b"]}"


def job_fingerprint(rendered: Rendered) -> str:
    """A job is what it asks of each row: the same rows and requests give the same fingerprint."""
    h = xxhash.xxh3_128(f"dsbatch-job-v{FORMAT_VERSION}".encode())
    for split, ids in rendered.row_custom_ids.items():
        h.update(b"\x00split\x00" + split.encode())
        for custom_id in ids:
            h.update(b"\x01" + (custom_id.encode() if custom_id else b"-"))
    return h.hexdigest()


def _item(custom_id: str, body: bytes) -> bytes:
    # Byte-for-byte what the SDK itself would send (compact separators, UTF-8 kept).
    return b'{"custom_id":"' + custom_id.encode() + b'","params":' + body + b"}"


def batch_body(custom_ids: Sequence[str], bodies: Mapping[str, bytes]) -> bytes:
    """The create body for these requests: ``{"requests":[{"custom_id":..,"params":..},..]}``."""
    return _BODY_OPEN + b",".join(_item(c, bodies[c]) for c in custom_ids) + _BODY_CLOSE


@dataclass(frozen=True)
class BatchPlan:
    """One batch to create: its custom_ids and the exact size of its body."""

    custom_ids: tuple[str, ...]
    nbytes: int


def chunk_requests(
    custom_ids: Sequence[str],
    bodies: Mapping[str, bytes],
    *,
    max_requests: int = MAX_BATCH_REQUESTS,
    max_bytes: int = MAX_BATCH_BYTES,
    first_row: Mapping[str, tuple[str | None, int]] | None = None,
) -> Iterator[BatchPlan]:
    """Split requests into batches under both limits, in order."""
    overhead = len(_BODY_OPEN) + len(_BODY_CLOSE)
    current: list[str] = []
    size = overhead
    for custom_id in custom_ids:
        item = len(custom_id) + len(bodies[custom_id]) + len(b'{"custom_id":"","params":}')
        if overhead + item > max_bytes:
            split, row = (first_row or {}).get(custom_id, (None, None))
            raise RequestTooLargeError(
                f"the request is {item:,} bytes, over the {max_bytes:,}-byte limit of a whole "
                f"batch (custom_id {custom_id})",
                row=row,
                split=split,
            )
        sep = 1 if current else 0
        if current and (len(current) >= max_requests or size + sep + item > max_bytes):
            yield BatchPlan(tuple(current), size)
            current, size, sep = [], overhead, 0
        current.append(custom_id)
        size += sep + item
    if current:
        yield BatchPlan(tuple(current), size)
