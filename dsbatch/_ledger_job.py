"""Part of the ledger: one job's manifest and batch records, under ``jobs/<fingerprint>/``::

    manifest.json             what the job is (splits, model, state, outputs)
    batches/<seq>.json        one record per batch (see ``_records``)
    batches/<seq>.ids.arrow   the custom_ids of that batch
    lock                      held while one record or the manifest changes

Each batch record is also a line of the cache's journal (``Ledger.journal_append``): a record
whose file is missing is read from there. Every transition of a record is checked against the
record as stored and written under the job's lock (``change``): a call that acted on a stale
copy gets ``StaleRecord``. The job's data files (requests, row maps, outputs...) are
``JobData``'s (``_ledger_data``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from dsbatch._arrow import whole
from dsbatch._errors import LedgerError
from dsbatch._files import (
    arrow_bytes,
    atomic_write,
    hold_lock,
    read_arrow,
    read_json,
    stamp,
    write_json,
)
from dsbatch._ledger_data import JobData
from dsbatch._records import BatchRecord, BatchState, Manifest, RecordError, record_from_journal

if TYPE_CHECKING:
    from dsbatch._ledger import Ledger

__all__ = ["JobLedger", "StaleRecord", "ids_digest", "mentioned_batch_ids"]

log = logging.getLogger("dsbatch")

_BATCH_ID = re.compile(rb"msgbatch_[A-Za-z0-9]+")


def ids_digest(custom_ids: Iterable[str] | pa.Array | pa.ChunkedArray) -> str:
    """A digest of a batch's custom_ids in any order, stored in its record to check the ids
    file against (and ids rebuilt from results, which come in any order): the xxh3 of the
    sorted ids joined by newlines, made in Arrow (custom_ids are ASCII: their byte order is
    ``sorted``'s)."""
    if not isinstance(custom_ids, (pa.Array, pa.ChunkedArray)):
        custom_ids = pa.array(list(custom_ids), pa.string())
    ids = whole(custom_ids).cast(pa.string())
    if len(ids) == 0:
        return xxhash.xxh3_64_hexdigest(b"")
    # Each id and its newline, sorted, are one buffer: hashed without the last newline.
    lines = pc.binary_join_element_wise(ids.take(pc.sort_indices(ids)), "", "\n")
    offsets = np.frombuffer(lines.buffers()[1], np.int32)[
        lines.offset : lines.offset + len(lines) + 1
    ]
    data = memoryview(lines.buffers()[2])[int(offsets[0]) : int(offsets[-1]) - 1]
    return xxhash.xxh3_64_hexdigest(data)


def mentioned_batch_ids(path: Path) -> set[str]:
    """Every batch id a record file mentions, read as bytes: what a record too damaged to read
    may hold (nothing when the file cannot be read at all)."""
    try:
        return {m.decode() for m in _BATCH_ID.findall(path.read_bytes())}
    except OSError:
        return set()


class StaleRecord(Exception):
    """A batch record moved under us: another call acted on the batch first."""


class JobLedger(JobData):
    """The files of one job, under ``jobs/<fingerprint>/``: its manifest and batch records
    here, its data files (``JobData``) in ``_ledger_data``."""

    def __init__(self, ledger: Ledger, fingerprint: str) -> None:
        super().__init__(ledger.jobs_dir / fingerprint, fingerprint)
        self.ledger = ledger
        self.manifest_path = self.dir / "manifest.json"
        self.records_dir = self.dir / "batches"
        # seq -> (the ids file's stamp, the digest it was found to match): a file unchanged
        # since this process wrote or checked it is not sorted and hashed again at every step.
        self._checked = ledger.ids_checked.setdefault(fingerprint, {})

    # -- manifest -----------------------------------------------------------------------------
    def read_manifest(self) -> Manifest | None:
        """The manifest; None when it is missing or damaged (it is rebuilt from the call)."""
        path = self.manifest_path
        try:
            data = read_json(path)
            return None if data is None else Manifest.from_json(data)
        except (LedgerError, RecordError) as e:
            log.warning("dsbatch: the manifest %s is damaged (%s); rebuilding it", path, e)
            return None

    def write_manifest(self, manifest: Manifest) -> None:
        write_json(self.manifest_path, manifest.to_json())

    def update_manifest(self, start: Manifest, apply: Callable[[Manifest], None]) -> Manifest:
        """Apply ``apply`` to the stored manifest (``start`` when there is none) under the job's
        lock: two calls running one job never undo each other's change."""
        with self._lock():
            manifest = self.read_manifest() or start
            apply(manifest)
            self.write_manifest(manifest)
        return manifest

    # -- batch records ------------------------------------------------------------------------
    def record_path(self, seq: int) -> Path:
        """Where batch record ``seq`` of the job is kept."""
        return self.records_dir / f"{seq:06d}.json"

    def _ids_path(self, seq: int) -> Path:
        return self.records_dir / f"{seq:06d}.ids.arrow"

    def record_files(self) -> list[Path]:
        """The job's batch record files, oldest first."""
        bdir = self.records_dir
        return sorted(bdir.glob("*.json")) if bdir.is_dir() else []

    def read_record(self, path: Path) -> BatchRecord:
        """One batch record file of the job; a LedgerError, saying what to do, when damaged."""
        try:
            try:
                data = json.loads(path.read_bytes())
            except (OSError, ValueError) as e:
                raise RecordError(str(e)) from e
            record = BatchRecord.from_json(data)
            if record.job != self.fingerprint or path.name != f"{record.seq:06d}.json":
                raise RecordError(f"it names job {record.job} batch #{record.seq}")
        except RecordError as e:
            raise LedgerError(
                f"the batch record {path} is damaged ({e}). Delete it: dsbatch rebuilds it from "
                f"the cache's journal ({self.ledger.root / 'journal.jsonl'}), which holds every "
                "batch ever created, and reads its results again (a download, never a "
                "purchase). Only a create whose answer never came back is not in the journal: "
                "its requests would then be sent again.",
                path=str(path),
            ) from e
        return record

    def stored_record(self, seq: int) -> BatchRecord | None:
        """Record ``seq`` as stored now (rebuilt from the journal when its file is missing);
        None when neither knows it. A damaged file is a LedgerError."""
        path = self.record_path(seq)
        damage: LedgerError | None = None
        if path.exists():
            try:
                return self.read_record(path)
            except LedgerError as e:  # another job's damage is read from the journal (survey)
                damage = e
        entries = [
            e
            for e in self.ledger.journal()
            if e.get("job") == self.fingerprint and e.get("seq") == seq
        ]
        rebuilt = record_from_journal(self.fingerprint, seq, entries[-1]) if entries else None
        if rebuilt is None and damage is not None:
            raise damage
        return rebuilt

    def new_record(
        self,
        custom_ids: Sequence[str],
        *,
        intent_at: float,
        key_hash: str = "",
        origin: str = "",
        holder: str = "",
        lease_until: float | None = None,
    ) -> BatchRecord:
        """Write the intent to send ``custom_ids`` as a new batch (ids file first), held by
        ``holder`` until ``lease_until``."""
        seq = self._next_seq()
        digest = ids_digest(custom_ids)
        self.write_ids(seq, custom_ids, digest=digest)
        record = BatchRecord(
            job=self.fingerprint,
            seq=seq,
            request_count=len(custom_ids),
            ids_digest=digest,
            intent_at=intent_at,
            key_hash=key_hash,
            origin=origin,
            holder=holder,
            lease_until=lease_until,
        )
        self.save(record)
        return record

    def _next_seq(self) -> int:
        """The first free batch slot: after every record file and every slot the journal
        knows (a record whose file was lost keeps its slot)."""
        seqs = [int(p.stem) for p in self.record_files() if p.stem.isdigit()]
        seqs += [
            e["seq"]
            for e in self.ledger.journal()
            if e.get("job") == self.fingerprint and isinstance(e.get("seq"), int)
        ]
        return max(seqs, default=-1) + 1

    def save(self, record: BatchRecord) -> None:
        write_json(self.record_path(record.seq), record.to_json())

    def record_ids(self, record: BatchRecord) -> list[str] | None:
        """The custom_ids of a batch, checked against its record; None when the ids file is
        missing (it is rebuilt from the batch's results)."""
        ids = self.record_id_array(record)
        return None if ids is None else ids.to_pylist()

    def record_id_array(self, record: BatchRecord) -> pa.Array | None:
        """``record_ids`` as one Arrow array (no Python object per id)."""
        path = self._ids_path(record.seq)
        try:
            seen = stamp(path)
        except FileNotFoundError:
            return None
        except OSError:
            seen = None
        try:
            ids = whole(read_arrow(path)["custom_id"])
            problem = ""
        except (OSError, pa.ArrowInvalid, KeyError) as e:
            ids, problem = pa.array([], pa.string()), str(e)
        checked = seen is not None and self._checked.get(record.seq) == (seen, record.ids_digest)
        if not problem and (
            len(ids) != record.request_count
            or (not checked and ids_digest(ids) != record.ids_digest)
        ):
            problem = f"it holds {len(ids)} custom_ids that do not match the record"
        if not problem and seen is not None:
            self._checked[record.seq] = (seen, record.ids_digest)
        if problem:
            raise LedgerError(
                f"the custom_ids file {path} of batch {record.name} is damaged ({problem}). "
                "Delete it: dsbatch rebuilds it from the batch's results once they can be "
                "downloaded (a download, never a purchase).",
                path=str(path),
            )
        return ids

    def restore_ids(self, record: BatchRecord, custom_ids: Sequence[str] | pa.Array) -> bool:
        """Write a lost ids file back from the batch's results; False if they do not match."""
        if len(custom_ids) != record.request_count or ids_digest(custom_ids) != record.ids_digest:
            return False
        self.write_ids(record.seq, custom_ids, digest=record.ids_digest)
        return True

    def write_ids(
        self, seq: int, custom_ids: Sequence[str] | pa.Array, *, digest: str | None = None
    ) -> None:
        """Write batch ``seq``'s ids file; ``digest``: theirs, known to the caller (the file is
        then taken as checked against it until it changes)."""
        ids = custom_ids if isinstance(custom_ids, pa.Array) else pa.array(list(custom_ids))
        table = pa.table({"custom_id": ids.cast(pa.string())})
        path = self._ids_path(seq)
        self._checked.pop(seq, None)
        atomic_write(path, arrow_bytes(table))
        if digest is not None:
            with contextlib.suppress(OSError):
                self._checked[seq] = (stamp(path), digest)

    # -- transitions: each checked against the record as stored, and persisted atomically --
    def change(
        self,
        record: BatchRecord,
        apply: Callable[[BatchRecord], bool | None],
        *,
        expect: Sequence[str] = ("state", "batch_id"),
    ) -> None:
        """Apply ``apply`` to the record as stored now, under the job's lock (held for
        milliseconds), if it still has the ``expect`` fields the caller acted on; else raise
        ``StaleRecord`` (another call moved it first). ``apply`` returning False writes nothing.
        ``record`` is updated to what is stored."""
        with self._lock():
            fresh = self.stored_record(record.seq)
            if fresh is None or any(getattr(fresh, f) != getattr(record, f) for f in expect):
                raise StaleRecord(
                    f"batch {record.name} was moved by another call "
                    f"({record.state.value} -> {fresh.state.value if fresh else 'gone'})"
                )
            if apply(fresh) is not False:
                self.save(fresh)
        record.__dict__.update(fresh.__dict__)

    def mark_submitted(
        self, record: BatchRecord, batch_id: str, created_at: float, *, adopted: bool = False
    ) -> None:
        """The record's batch exists: ``batch_id``, created by our create or, ``adopted``,
        found by a reconcile (only an adopted batch may later turn out to be someone else's).
        Only the intent's lease holder moves it (``expect`` holds the holder)."""

        def apply(fresh: BatchRecord) -> None:
            fresh.moved(BatchState.SUBMITTED)
            fresh.batch_id, fresh.created_at, fresh.missing_since = batch_id, created_at, None
            fresh.adopted, fresh.holder, fresh.lease_until = adopted, "", None

        self.change(record, apply, expect=("state", "holder"))
        self.ledger.journal_append(record)

    def mark_ingested(self, record: BatchRecord, counts: dict[str, int], origin: str) -> None:
        """Its results are stored; a batch recorded before origins were kept takes the origin
        of the call that could read it."""

        def apply(fresh: BatchRecord) -> None:
            fresh.moved(BatchState.INGESTED)
            fresh.counts, fresh.missing_since = dict(counts), None
            fresh.origin = fresh.origin or origin

        self.change(record, apply)

    def mark_lost(self, record: BatchRecord, why: str) -> None:
        def apply(fresh: BatchRecord) -> None:
            fresh.moved(BatchState.LOST)
            fresh.note = why

        self.change(record, apply)

    def mark_rejected(self, record: BatchRecord, holder: str, lease_until: float) -> None:
        """The batch a reconcile adopted holds someone else's requests: ours may still exist;
        the intent is held again by ``holder``, which looks for it."""
        given_back = record.batch_id or ""

        def apply(fresh: BatchRecord) -> None:
            fresh.moved(BatchState.INTENT)
            fresh.rejected.append(given_back)
            fresh.batch_id = fresh.created_at = fresh.missing_since = None
            fresh.adopted, fresh.holder, fresh.lease_until = False, holder, lease_until

        self.change(record, apply)
        # The journal says it is free again: its real owner's reconcile may take it.
        self.ledger.journal_append(record, released=given_back)

    def mark_unsent(self, record: BatchRecord, why: str) -> None:
        def apply(fresh: BatchRecord) -> None:
            fresh.moved(BatchState.UNSENT)
            fresh.note, fresh.holder, fresh.lease_until = why, "", None

        self.change(record, apply, expect=("state", "holder"))

    def note_missing(self, record: BatchRecord, since: float | None) -> None:
        """Found again (``since`` None), or missing since ``since`` unless an earlier moment is
        stored already (another call saw it missing first)."""

        def apply(fresh: BatchRecord) -> bool:
            kept = since if since is None or fresh.missing_since is None else fresh.missing_since
            if fresh.missing_since == kept:
                return False
            fresh.missing_since = kept
            return True

        self.change(record, apply)

    def hold(
        self,
        record: BatchRecord,
        holder: str,
        lease_until: float | None,
        *,
        takeover: bool = False,
    ) -> None:
        """Hold an intent until ``lease_until`` (renewed by its holder; taken over by another
        call once the lease is free); ``lease_until=None`` gives it up. A ``takeover`` acts on
        the lease it read: one its holder renewed since is not taken."""

        def apply(fresh: BatchRecord) -> None:
            fresh.holder, fresh.lease_until = holder, lease_until

        expect = ("state", "holder", "lease_until") if takeover else ("state", "holder")
        self.change(record, apply, expect=expect)

    # -- the job's lock -----------------------------------------------------------------------
    def _lock(self) -> AbstractContextManager[None]:
        """The job's lock, held only while one record or the manifest changes: no call holds
        it across a network call, so a stopped process holds up no one."""
        return hold_lock(
            self.dir / "lock",
            f"job {self.fingerprint}",
            f"waiting for the lock of job {self.fingerprint} (another process is changing it)",
            patience=5.0,
        )
