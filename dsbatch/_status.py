"""Where a job stands: requests per state, each batch with its id, state and counts, tokens and
cost so far, and what is left. Read from the cache, and (``refresh``) from the API for the
batches still in flight; nothing is downloaded, sent or changed."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from dsbatch._arrow import whole
from dsbatch._backend import BatchInfo
from dsbatch._plan import View
from dsbatch._records import RESULT_TYPES, USAGE_FIELDS, BatchRecord, BatchState, Manifest

__all__ = ["BatchStatus", "JobStatus", "job_status"]

# Requests per state, in the order they are shown.
STATES = (*RESULT_TYPES, "in_flight", "to_send")
_RECORD_STATES = {
    BatchState.INTENT: "creating",
    BatchState.SUBMITTED: "in_progress",
    BatchState.INGESTED: "ended",
    BatchState.LOST: "lost",
}


@dataclass(frozen=True)
class BatchStatus:
    """One batch a job made or waits on: ``state`` is ``creating``, ``in_progress``,
    ``canceling``, ``ended`` or ``lost``; ``counts`` the API's request counts."""

    id: str | None
    job: str | None  # the job that made it, when it is another job's batch this one waits on
    state: str
    requests: int
    counts: dict[str, int]
    created_at: dt.datetime | None

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in self.counts.items() if n)
        mine = "" if not self.job else f" (job {self.job[:12]})"
        return f"{self.id or 'not created yet'}{mine}: {self.state}, {self.requests:,} requests" + (
            f" ({counts})" if counts else ""
        )


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands. ``counts``: distinct requests per state (``succeeded``, ``errored``,
    ``expired``, ``canceled``: final; ``in_flight``: in a batch not read yet; ``to_send``: to be
    sent, or sent again). ``state``: ``running``, ``done`` or ``canceled``."""

    fingerprint: str
    state: str
    created_at: dt.datetime
    model: str | None
    rows: int
    requests: int
    counts: dict[str, int]
    batches: tuple[BatchStatus, ...]
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    cost_usd: float | None = None  # None: a model without a known price
    notes: tuple[str, ...] = field(default=())

    @property
    def left(self) -> int:
        """Requests not final yet: in flight, or to be sent."""
        return self.counts.get("in_flight", 0) + self.counts.get("to_send", 0)

    @property
    def done(self) -> bool:
        return self.left == 0

    @property
    def failed(self) -> int:
        return sum(self.counts.get(k, 0) for k in ("errored", "expired", "canceled"))

    def __str__(self) -> str:
        counts = ", ".join(
            f"{self.counts[k]:,} {k.replace('_', ' ')}" for k in STATES if self.counts.get(k)
        )
        cost = "unknown" if self.cost_usd is None else f"${self.cost_usd:,.4f}"
        lines = [
            f"job {self.fingerprint}: {self.state}",
            f"  started {self.created_at:%Y-%m-%d %H:%M:%S %Z}, model {self.model}, "
            f"{self.rows:,} rows, {self.requests:,} distinct requests",
            f"  requests: {counts or 'none'}; {self.left:,} left",
            f"  tokens: {self.input_tokens:,} in, {self.output_tokens:,} out, "
            f"{self.cache_read_input_tokens:,} cache read, "
            f"{self.cache_creation_input_tokens:,} cache write; cost {cost}",
            f"  batches ({len(self.batches)}):",
            *(f"    {batch}" for batch in self.batches),
            *(f"  {note}" for note in self.notes),
        ]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(k.replace('_', ' '))}</td>"
            f"<td>{self.counts.get(k, 0):,}</td></tr>"
            for k in STATES
        )
        batches = "".join(
            f"<li><code>{html.escape(str(b.id))}</code> {html.escape(b.state)}, "
            f"{b.requests:,} requests</li>"
            for b in self.batches
        )
        return (
            f"<div><b>dsbatch job</b> <code>{self.fingerprint}</code>: "
            f"{html.escape(self.state)}, model {html.escape(str(self.model))}, {self.rows:,} rows"
            f"<table>{rows}</table><ul>{batches}</ul></div>"
        )


def job_status(
    manifest: Manifest,
    view: View,
    to_send: Sequence[str],
    needed: pa.Array,
    records: Sequence[BatchRecord],
    poll: Callable[[str], BatchInfo | None] | None = None,
    cost: Callable[[pa.Table], float | None] | None = None,
) -> JobStatus:
    """The status of a job from what its last survey saw (``view``), the requests ``decide``
    would send now, and the job's records; ``poll(batch_id)`` asks the API about a batch in
    flight; ``cost(succeeded results)`` prices the answers."""
    latest = view.latest()
    waiting = view.waiting_ids
    pending = set(to_send)
    final = latest.filter(
        pc.invert(
            pc.is_in(latest["custom_id"], value_set=pa.array([*waiting, *pending], pa.string()))
        )
    )
    counts = dict.fromkeys(STATES, 0)
    for kind, n in zip(*_value_counts(final["type"]), strict=True):
        counts[kind if kind in counts else "errored"] += n
    counts["in_flight"] = len(waiting & set(needed.to_pylist()))
    counts["to_send"] = len(pending)
    answered = latest.filter(pc.equal(latest["type"], "succeeded").fill_null(False))
    tokens = {name: int(pc.sum(answered[name]).as_py() or 0) for name in USAGE_FIELDS}
    batches = [_batch(r, poll, None) for r in records if r.state in _RECORD_STATES]
    foreign = [
        _batch(record, poll, record.job)
        for record, _ in view.waiting
        if record.job != manifest.fingerprint
    ]
    state = "done" if counts["in_flight"] + counts["to_send"] == 0 else "running"
    if manifest.state == "canceled":
        state = "canceled"
    return JobStatus(
        fingerprint=manifest.fingerprint,
        state=state,
        created_at=dt.datetime.fromtimestamp(manifest.created_at, dt.timezone.utc),
        model=manifest.model,
        rows=sum(manifest.splits.values()),
        requests=len(needed),
        counts=counts,
        batches=tuple(batches + foreign),
        input_tokens=tokens["input_tokens"],
        output_tokens=tokens["output_tokens"],
        cache_read_input_tokens=tokens["cache_read_input_tokens"],
        cache_creation_input_tokens=tokens["cache_creation_input_tokens"],
        cost_usd=cost(answered) if cost is not None else None,
    )


def _value_counts(values: pa.ChunkedArray | pa.Array) -> tuple[list[str], list[int]]:
    counts = pc.value_counts(whole(values))
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def _batch(
    record: BatchRecord, poll: Callable[[str], BatchInfo | None] | None, job: str | None
) -> BatchStatus:
    state, counts = _RECORD_STATES[record.state], dict(record.counts)
    if record.state is BatchState.SUBMITTED and poll is not None and record.batch_id:
        info = poll(record.batch_id)
        if info is not None:
            state, counts = info.processing_status, dict(info.counts)
    created = (
        None
        if record.created_at is None
        else dt.datetime.fromtimestamp(record.created_at, dt.timezone.utc)
    )
    return BatchStatus(record.batch_id, job, state, record.request_count, counts, created)
