"""Part of the ledger: bring a format-1 or format-2 cache to format 3, in place, without losing a
batch id.

Format 1 kept results under ``requests/`` (a name for what they are not), batch records without
their job or a digest of their custom_ids, the custom_ids as text, and no journal. Each step is
safe to run again if the migration is interrupted: the ledger only writes the new FORMAT once
every step is done.
"""

from __future__ import annotations

import json
import logging
import shutil
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from dsbatch._errors import LedgerError
from dsbatch._ledger import ids_digest
from dsbatch._records import BatchRecord, RecordError
from dsbatch._recovery import job_records

if TYPE_CHECKING:
    from dsbatch._ledger import JobLedger, Ledger

__all__ = ["migrate_format_1", "migrate_format_2"]

log = logging.getLogger("dsbatch")


def migrate_format_1(ledger: Ledger) -> None:
    """Rewrite a format-1 cache as format 2 (the caller holds the cache lock)."""
    log.warning("dsbatch: migrating the cache at %s from format 1 to format 2", ledger.root)
    created_at: dict[str, float] = {}
    for fingerprint in ledger.job_fingerprints():
        created_at.update(_migrate_job(ledger.job(fingerprint)))
    _migrate_results(ledger, created_at)
    shutil.rmtree(ledger.root / "downloads", ignore_errors=True)


def _migrate_job(job: JobLedger) -> dict[str, float]:
    """Records, custom_ids files and manifest of one job; returns batch_id -> created_at."""
    created_at: dict[str, float] = {}
    journaled = {e["batch_id"] for e in job.ledger.journal()}
    for path in job.record_files():
        old = _load(path)
        if "job" in old:  # already migrated
            record = BatchRecord.from_json(old)
        else:
            text_ids = path.with_name(str(old.get("custom_ids_file", "")))
            try:
                ids = text_ids.read_text().split("\n") if text_ids.read_text() else []
            except OSError as e:
                raise LedgerError(
                    f"cannot migrate {path}: its custom_ids file {text_ids} is unreadable ({e})",
                    path=str(text_ids),
                ) from e
            try:
                record = BatchRecord.from_json(
                    {
                        "job": job.fingerprint,
                        "seq": old["seq"],
                        "request_count": old["request_count"],
                        "ids_digest": ids_digest(ids),
                        "intent_at": old["intent_at"],
                        "state": old.get("state", "intent"),
                        "key_hash": old.get("key_hash") or "",
                        "batch_id": old.get("batch_id"),
                        "created_at": old.get("created_at"),
                        "counts": old.get("counts") or {},
                        "rejected": old.get("rejected") or [],
                    }
                )
            except (KeyError, RecordError) as e:
                raise LedgerError(
                    f"cannot migrate the batch record {path}: {e}", path=str(path)
                ) from e
            job.write_ids(record.seq, ids)
            job.save(record)
            text_ids.unlink(missing_ok=True)
        if record.batch_id:
            created_at[record.batch_id] = record.created_at or 0.0
            if record.batch_id not in journaled:
                job.ledger.journal_append(record)
    # The finished columns are rebuilt from the results; the manifest from the next call.
    shutil.rmtree(job.dir / "output", ignore_errors=True)
    shutil.rmtree(job.dir / "downloads", ignore_errors=True)
    job.manifest_path.unlink(missing_ok=True)
    return created_at


def _migrate_results(ledger: Ledger, created_at: dict[str, float]) -> None:
    # The ingest stage's own parser reads the stored raw lines again: imported here only, for
    # this one-time step, so the ledger does not otherwise depend on a stage.
    from dsbatch._ingest import parse_results

    old_dir = ledger.root / "requests"
    if not old_dir.is_dir():
        return
    for path in sorted(old_dir.glob("*.parquet")):
        try:
            raw = pq.read_table(path, columns=["raw"])["raw"].to_pylist()
        except (OSError, pa.ArrowInvalid, KeyError) as e:
            log.warning("dsbatch: %s cannot be read (%s); it will be downloaded again", path, e)
            continue
        # Read again from the raw lines: format 2 knows more of each (tool calls, odd shapes).
        data = "".join(line + "\n" for line in raw).encode()
        table = parse_results(data, batch_id=path.stem, batch_created_at=created_at.get(path.stem))
        ledger.store.write(path.stem, table)
    shutil.rmtree(old_dir, ignore_errors=True)


def _load(path: Any) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise LedgerError(
            f"cannot migrate the batch record {path}: {e}. Move the cache aside or fix the file.",
            path=str(path),
        ) from e
    if not isinstance(data, dict):
        raise LedgerError(f"cannot migrate the batch record {path}: not an object", path=str(path))
    return data


def migrate_format_2(ledger: Ledger) -> None:
    """Format 3 records where each batch was made (``_origin``): a batch whose stored answers
    carry the ids dsbatch's own emulator gives is the emulator's; every other batch with stored
    results is assumed to come from the Anthropic API. A batch whose results are not stored yet
    takes the origin of the first call that reads them. The caller holds the cache lock."""
    from dsbatch._origin import ANTHROPIC, EMULATOR, made_by_emulator

    log.warning("dsbatch: migrating the cache at %s from format 2 to format 3", ledger.root)
    tagged: dict[str, int] = {}
    for fingerprint in ledger.job_fingerprints():
        job = ledger.job(fingerprint)
        for record in job_records(job, strict=False):
            if record.origin or not record.batch_id or not ledger.store.has(record.batch_id):
                continue
            raw = ledger.store.table(record.batch_id, ["custom_id", "raw"])
            lines = zip(raw["custom_id"].to_pylist(), raw["raw"].to_pylist(), strict=True)
            record.origin = EMULATOR if made_by_emulator(record.batch_id, lines) else ANTHROPIC
            job.save(record)
            ledger.journal_append(record)
            tagged[record.origin] = tagged.get(record.origin, 0) + 1
    if tagged:
        log.warning(
            "dsbatch: tagged the batches of %s by origin: %s (answers whose ids are not the "
            "emulator's are assumed to come from the Anthropic API)",
            ledger.root,
            ", ".join(f"{n} {origin}" for origin, n in sorted(tagged.items())),
        )
