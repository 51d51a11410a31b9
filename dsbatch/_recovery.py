"""Recovery: what the cache's batch records say when some of their files are missing or damaged.

The ledger stores each batch record twice: its own file, and a line in the journal for every
batch ever created. This module decides what to make of the two together, for the whole cache:

- a record whose file is missing is rebuilt from the journal (and written back): its batch is
  polled again, its results downloaded again, never bought again;
- a damaged record of the job being run is an error that says what to do; another job's is read
  from the journal when the journal knows it (it must not stop this job), else its file is
  reported as damaged (``survey`` refuses to send what it may hold);
- the batch ids the cache claims (a damaged record is searched for ids too), so a reconcile
  never adopts a batch that is someone else's;
- where each batch was made (``_origin``), from the records, the journal and the previews.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsbatch._errors import LedgerError
from dsbatch._ledger import JobLedger, Ledger
from dsbatch._ledger_job import mentioned_batch_ids
from dsbatch._records import BatchRecord, record_from_journal

__all__ = ["CacheRecords", "all_records", "batch_origins", "claimed_batch_ids", "job_records"]

log = logging.getLogger("dsbatch")


@dataclass
class CacheRecords:
    """Every batch record of a cache that can be read, and the record files that cannot."""

    records: list[BatchRecord] = field(default_factory=list)
    damaged: list[Path] = field(default_factory=list)  # other jobs' (this job's raise)
    journal: list[dict[str, Any]] = field(default_factory=list)  # as it was read for them


def job_records(
    job: JobLedger,
    *,
    strict: bool = True,
    journal: list[dict[str, Any]] | None = None,
    damaged: list[Path] | None = None,
) -> list[BatchRecord]:
    """Every batch record of the job, oldest first. A missing one that the journal knows is
    rebuilt (its batch is polled again). A damaged one is a LedgerError; with ``strict=False``
    (another job's) it is rebuilt in memory from the journal when the journal knows it, else its
    path goes to ``damaged``."""
    records: dict[int, BatchRecord] = {}
    unreadable: dict[int, Path] = {}
    for path in job.record_files():
        try:
            record = job.read_record(path)
        except LedgerError as e:
            if strict:
                raise
            log.warning("dsbatch: another job's batch record is damaged: %s", e)
            with suppress(ValueError):
                unreadable[int(path.name.split(".")[0])] = path
            continue
        records[record.seq] = record
    # The latest entry of a batch slot wins (an adopted batch may have been given back).
    entries = job.ledger.journal() if journal is None else journal
    latest = {e.get("seq"): e for e in entries if e.get("job") == job.fingerprint}
    for seq, entry in latest.items():
        if not isinstance(seq, int) or seq in records:
            continue
        rebuilt = record_from_journal(job.fingerprint, seq, entry)
        if rebuilt is None:
            continue
        if seq in unreadable:
            unreadable.pop(seq)  # used in memory; its file is left for its owner to see
        else:
            log.warning(
                "dsbatch: the record of batch %s (job %s) was missing; rebuilt it from the journal",
                rebuilt.batch_id or rebuilt.name,
                job.fingerprint,
            )
            with suppress(LedgerError):  # a read-only cache still gets the rebuilt record
                job.save(rebuilt)
        records[seq] = rebuilt
    if damaged is not None:
        damaged.extend(unreadable.values())
    return [records[seq] for seq in sorted(records)]


def all_records(ledger: Ledger, own: str) -> CacheRecords:
    """Every batch record in the cache. The job ``own``'s damage is a LedgerError; another job's
    damaged record is rebuilt in memory from the journal, or reported in ``damaged`` (it must
    not stop this job)."""
    scan = CacheRecords(journal=ledger.journal())
    for fingerprint in ledger.job_fingerprints():
        scan.records.extend(
            job_records(
                ledger.job(fingerprint),
                strict=fingerprint == own,
                journal=scan.journal,
                damaged=scan.damaged,
            )
        )
    return scan


def claimed_batch_ids(ledger: Ledger, scan: CacheRecords | None = None) -> set[str]:
    """The batch ids some record of this cache holds now (a damaged record is searched for ids
    too), so reconcile never adopts one. A batch given back is free again."""
    scan = scan or all_records(ledger, "")
    claimed = {r.batch_id for r in scan.records if r.batch_id}
    for path in scan.damaged:
        claimed.update(mentioned_batch_ids(path))
    return claimed


def batch_origins(ledger: Ledger, scan: CacheRecords) -> dict[str, str]:
    """batch_id -> where it was made, for every batch a record or the journal knows, and every
    preview ("" when no one recorded it)."""
    origins = {e["batch_id"]: e.get("origin") or "" for e in scan.journal}
    origins.update((r.batch_id, r.origin) for r in scan.records if r.batch_id)
    origins.update((e["batch_id"], e.get("origin") or "") for e in ledger.store.previews())
    return origins
