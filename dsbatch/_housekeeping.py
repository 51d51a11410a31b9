"""What a cache holds, and removing what may go (``dsbatch du``, ``dsbatch prune``), as users of
the ``datasets`` and Hub caches expect (``cleanup_cache_files``, ``scan-cache``/``delete-cache``).

What may go, and what a rerun then costs:

- a finished (or canceled) job's folder: its manifest, requests, row maps, kept inputs and
  finished columns. Its answers stay in the shared results, and its batch records (a few
  hundred bytes each) stay too, so that any job can find those batches again: a rerun renders
  and joins again, and buys nothing.
- the stored results of batches made more than a given number of days ago. A rerun that needs
  them downloads them again while the API still has them (29 days after the batch was made),
  and buys them again after that.

Nothing in flight is ever removed: not a job with a batch being created or running, nor the
results of a job that is not finished.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pyarrow.compute as pc

from dsbatch._errors import LedgerError
from dsbatch._ledger import Ledger
from dsbatch._limits import RESULTS_RETENTION_SECONDS
from dsbatch._records import IN_FLIGHT, BatchRecord
from dsbatch._recovery import all_records

__all__ = ["CacheUsage", "JobUsage", "PrunePlan", "disk_usage", "plan_prune", "prune"]

_DAY = 86400.0


@dataclass(frozen=True)
class JobUsage:
    """One job's footprint: ``state`` is its manifest's (running, finished, canceled)."""

    fingerprint: str
    state: str
    created_at: float | None
    model: str | None
    rows: int
    requests: int
    bytes: int
    in_flight: bool  # a batch of it is being created or running


@dataclass(frozen=True)
class CacheUsage:
    root: str
    jobs: list[JobUsage]
    results_bytes: int
    results_batches: int
    other_bytes: int  # the journal, downloads in progress, locks

    @property
    def total(self) -> int:
        return sum(j.bytes for j in self.jobs) + self.results_bytes + self.other_bytes


def disk_usage(ledger: Ledger) -> CacheUsage:
    """Bytes on disk per job and for the shared results, with rows and requests."""
    records = all_records(ledger, "").records
    flying = {r.job for r in records if r.state in IN_FLIGHT}
    jobs = []
    for fingerprint in ledger.job_fingerprints():
        manifest = ledger.job(fingerprint).read_manifest()
        jobs.append(
            JobUsage(
                fingerprint=fingerprint,
                # A job whose folder was pruned keeps only its batch records.
                state=manifest.state if manifest else "pruned",
                created_at=manifest.created_at if manifest else None,
                model=manifest.model if manifest else None,
                rows=sum(manifest.splits.values()) if manifest else 0,
                requests=manifest.requests if manifest else 0,
                bytes=ledger.job_bytes(fingerprint),
                in_flight=fingerprint in flying,
            )
        )
    jobs.sort(key=lambda j: j.created_at or 0.0, reverse=True)
    files = ledger.results_files()
    return CacheUsage(
        root=str(ledger.root),
        jobs=jobs,
        results_bytes=sum(files.values()),
        results_batches=len(files),
        other_bytes=ledger.other_bytes(),
    )


@dataclass(frozen=True)
class StoredBatch:
    """A batch's stored results that a prune would remove, and what a rerun then costs."""

    batch_id: str
    bytes: int
    created_at: float | None
    answers: int  # succeeded results in it (what a rerun would have to get back)
    input_tokens: int
    output_tokens: int
    downloadable: bool  # the API still has its results (made less than 29 days ago)


@dataclass
class PrunePlan:
    """What a prune removes, and what it leaves because it is in flight."""

    jobs: list[JobUsage] = field(default_factory=list)
    results: list[StoredBatch] = field(default_factory=list)
    kept_in_flight: list[str] = field(default_factory=list)  # jobs left alone

    @property
    def bytes(self) -> int:
        return sum(j.bytes for j in self.jobs) + sum(b.bytes for b in self.results)

    def describe(self) -> str:
        """What removing this costs a rerun, in the words ``dsbatch prune`` prints."""
        lines = []
        if self.jobs:
            lines.append(
                f"{len(self.jobs)} finished jobs ({_size(sum(j.bytes for j in self.jobs))}): a "
                "rerun of their calls renders and joins again from the stored answers, and "
                "buys nothing"
            )
        fetch = [b for b in self.results if b.downloadable]
        buy = [b for b in self.results if not b.downloadable]
        if fetch:
            lines.append(
                f"stored results of {len(fetch)} batches ({_size(sum(b.bytes for b in fetch))}, "
                f"{sum(b.answers for b in fetch):,} answers): a rerun that needs them downloads "
                "them again (the API keeps results 29 days), and buys nothing"
            )
        if buy:
            lines.append(
                f"stored results of {len(buy)} batches made more than 29 days ago "
                f"({_size(sum(b.bytes for b in buy))}): a rerun that needs them BUYS their "
                f"{sum(b.answers for b in buy):,} answers again "
                f"({sum(b.input_tokens for b in buy):,} input and "
                f"{sum(b.output_tokens for b in buy):,} output tokens)"
            )
        if self.kept_in_flight:
            lines.append(
                f"left alone, in flight: {len(self.kept_in_flight)} jobs "
                f"({', '.join(fp[:12] for fp in self.kept_in_flight)})"
            )
        if not lines:
            lines.append("nothing to remove")
        return "\n".join(lines)


def plan_prune(
    ledger: Ledger,
    *,
    finished_jobs: bool = False,
    jobs: list[str] | tuple[str, ...] = (),
    results_older_than_days: float | None = None,
    now: float | None = None,
) -> PrunePlan:
    """What ``prune`` would remove: every finished job (``finished_jobs``), the named ``jobs``
    (full fingerprints) if they are finished, and the stored results of batches made more than
    ``results_older_than_days`` ago, except those of jobs not finished."""
    now = dt.datetime.now().timestamp() if now is None else now
    usage = disk_usage(ledger)
    plan = PrunePlan()
    named = set(jobs)
    for job in usage.jobs:
        if not (finished_jobs or job.fingerprint in named) or job.state == "pruned":
            continue
        if job.in_flight or job.state not in ("finished", "canceled"):
            plan.kept_in_flight.append(job.fingerprint)
        else:
            plan.jobs.append(job)
    if results_older_than_days is not None:
        scan = all_records(ledger, "")
        unfinished = {j.fingerprint for j in usage.jobs if j.state not in ("finished", "canceled")}
        held = {r.batch_id for r in scan.records if r.job in unfinished and r.batch_id}
        created = _created_at(ledger, scan.records)
        cutoff = now - results_older_than_days * _DAY
        for batch_id, size in ledger.results_files().items():
            made = created.get(batch_id)
            if batch_id in held or made is None or made > cutoff:
                continue
            plan.results.append(_stored(ledger, batch_id, size, made, now))
    return plan


def _created_at(ledger: Ledger, records: list[BatchRecord]) -> dict[str, float]:
    made = {e["batch_id"]: e.get("created_at") for e in ledger.journal()}
    made.update((r.batch_id, r.created_at) for r in records if r.batch_id)
    return {k: v for k, v in made.items() if isinstance(v, (int, float))}


def _stored(ledger: Ledger, batch_id: str, size: int, made: float, now: float) -> StoredBatch:
    try:
        table = ledger.store.table(batch_id, ["type", "input_tokens", "output_tokens"])
    except LedgerError:
        return StoredBatch(batch_id, size, made, 0, 0, 0, now - made < RESULTS_RETENTION_SECONDS)
    answered = table.filter(pc.equal(table["type"], "succeeded").fill_null(False))
    return StoredBatch(
        batch_id=batch_id,
        bytes=size,
        created_at=made,
        answers=answered.num_rows,
        input_tokens=int(pc.sum(answered["input_tokens"]).as_py() or 0),
        output_tokens=int(pc.sum(answered["output_tokens"]).as_py() or 0),
        downloadable=now - made < RESULTS_RETENTION_SECONDS,
    )


def prune(ledger: Ledger, plan: PrunePlan) -> None:
    """Remove what ``plan`` names (re-checked under the cache lock: a job that started a batch
    since the plan was made is left alone)."""
    with ledger.locked():
        records = all_records(ledger, "").records
        flying = {r.job for r in records if r.state in IN_FLIGHT}
        for job in plan.jobs:
            if job.fingerprint not in flying:
                ledger.remove_job(job.fingerprint)
        running = {fp for fp in ledger.job_fingerprints() if _running(ledger, fp)}
        held = {r.batch_id for r in records if r.job in running | flying and r.batch_id}
        for batch in plan.results:
            if batch.batch_id not in held:
                ledger.remove_results(batch.batch_id)


def _running(ledger: Ledger, fingerprint: str) -> bool:
    manifest = ledger.job(fingerprint).read_manifest()
    return manifest is None or manifest.state not in ("finished", "canceled")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{n} B"
