"""The ledger: typed batch records whose every move is checked and persisted, a journal that
never forgets a batch id, and damage that names the file and what to do."""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dsbatch import LedgerError
from dsbatch._ledger import FORMAT_VERSION, Ledger, ids_digest
from dsbatch._records import BatchRecord, BatchState, RecordError
from dsbatch._recovery import all_records, claimed_batch_ids, job_records

IDS = [f"dsb_{i:032x}" for i in range(5)]


def fresh(tmp_path, fingerprint="job-a"):
    ledger = Ledger(tmp_path / "cache")
    return ledger, ledger.job(fingerprint)


def on_disk(job, record):
    return json.loads((job.dir / "batches" / f"{record.seq:06d}.json").read_text())


def test_every_move_is_persisted_before_the_next(tmp_path):
    _, job = fresh(tmp_path)
    record = job.new_record(IDS, intent_at=10.0, key_hash="k1")
    assert on_disk(job, record)["state"] == "intent"
    assert job.record_ids(record) == IDS
    job.mark_submitted(record, "msgbatch_one", created_at=11.0)
    stored = on_disk(job, record)
    assert (stored["state"], stored["batch_id"], stored["created_at"]) == (
        "submitted",
        "msgbatch_one",
        11.0,
    )
    job.mark_rejected(record, "host:1:me", 99.0)  # someone else's: ours may still exist
    assert on_disk(job, record)["state"] == "intent"
    assert (on_disk(job, record)["holder"], on_disk(job, record)["lease_until"]) == (
        "host:1:me",
        99.0,
    )
    assert on_disk(job, record)["rejected"] == ["msgbatch_one"]
    assert on_disk(job, record)["batch_id"] is None
    job.mark_submitted(record, "msgbatch_two", created_at=12.0)
    job.mark_ingested(record, {"succeeded": 5}, "emulator")
    assert on_disk(job, record)["state"] == "ingested"
    assert on_disk(job, record)["origin"] == "emulator"  # taken from the call that read it
    assert on_disk(job, record)["counts"] == {"succeeded": 5}
    assert [r.state for r in job_records(job)] == [BatchState.INGESTED]


@pytest.mark.parametrize(
    ("moves", "bad"),
    [
        ([], "mark_ingested"),
        ([], "mark_lost"),
        ([], "mark_rejected"),
        (["mark_unsent"], "mark_submitted"),
        (["mark_submitted", "mark_ingested"], "mark_submitted"),
        (["mark_submitted", "mark_lost"], "mark_ingested"),
        (["mark_submitted"], "mark_unsent"),
    ],
)
def test_a_move_the_state_machine_forbids_is_refused_and_not_written(tmp_path, moves, bad):
    _, job = fresh(tmp_path)
    record = job.new_record(IDS, intent_at=1.0, key_hash="")
    args = {
        "mark_submitted": ("msgbatch_x", 2.0),
        "mark_ingested": ({}, "anthropic"),
        "mark_lost": ("gone",),
        "mark_unsent": ("refused",),
        "mark_rejected": ("host:1:me", 9.0),
    }
    for move in moves:
        getattr(job, move)(record, *args[move])
    before = on_disk(job, record)
    with pytest.raises(RecordError, match="cannot go from"):
        getattr(job, bad)(job_records(job)[0], *args[bad])
    assert on_disk(job, record) == before


def test_a_refused_create_binds_no_key_and_its_requests_are_free_again(tmp_path):
    _, job = fresh(tmp_path)
    record = job.new_record(IDS, intent_at=1.0, key_hash="typo-key")
    job.mark_unsent(record, "the create was refused: HTTP 401")
    assert job_records(job)[0].state is BatchState.UNSENT
    assert "401" in job_records(job)[0].note


def test_the_ids_file_is_checked_against_its_record(tmp_path):
    _, job = fresh(tmp_path)
    record = job.new_record(IDS, intent_at=1.0, key_hash="")
    job.write_ids(record.seq, IDS[:4] + ["dsb_other"])  # same count, other ids
    with pytest.raises(LedgerError, match="do not match the record") as info:
        job.record_ids(record)
    assert "Delete it" in str(info.value) and info.value.path.endswith(".ids.arrow")
    (job.dir / "batches" / "000000.ids.arrow").unlink()
    assert job.record_ids(record) is None  # missing: rebuilt from the results later
    assert not job.restore_ids(record, IDS[:4])  # results that do not match are not taken
    assert job.restore_ids(record, list(reversed(IDS)))  # any order
    assert sorted(job.record_ids(record)) == sorted(IDS)
    assert record.ids_digest == ids_digest(IDS)


def test_an_ids_file_checked_once_is_checked_again_when_it_changes(tmp_path, monkeypatch):
    import dsbatch._ledger_job as ledger_job

    _, job = fresh(tmp_path)
    record = job.new_record(IDS, intent_at=1.0, key_hash="")
    digests = []
    real = ledger_job.ids_digest
    monkeypatch.setattr(ledger_job, "ids_digest", lambda ids: digests.append(1) or real(ids))
    for _ in range(3):  # written by this process with its digest: not hashed again
        assert job.record_ids(record) == IDS
    assert digests == []
    path = job.dir / "batches" / "000000.ids.arrow"
    # Damaged in place, by hand: the same number of ids, other ones, the same size.
    data = path.read_bytes()
    damaged = data.replace(IDS[2].encode(), IDS[2][:-1].encode() + b"f")
    assert damaged != data and len(damaged) == len(data)
    stat = path.stat()
    path.write_bytes(damaged)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    with pytest.raises(LedgerError, match="do not match the record"):
        job.record_ids(record)
    assert len(digests) == 1
    # Another process's ledger of the job checks the file it has never seen.
    _, again = fresh(tmp_path)
    with pytest.raises(LedgerError, match="do not match the record"):
        again.record_ids(record)
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2))
    assert again.record_ids(record) == IDS == job.record_ids(record)
    assert job.record_ids(record) == IDS and len(digests) == 4


def test_an_ids_file_checked_through_one_job_object_is_not_hashed_again_through_another(
    tmp_path, monkeypatch
):
    # Each step reads the ids of the batches in flight through a new ``ledger.job()``.
    import dsbatch._ledger_job as ledger_job

    ledger, job = fresh(tmp_path)
    record = job.new_record(IDS, intent_at=1.0, key_hash="")
    digests = []
    real = ledger_job.ids_digest
    monkeypatch.setattr(ledger_job, "ids_digest", lambda ids: digests.append(1) or real(ids))
    for _ in range(3):
        assert ledger.job("job-a").record_ids(record) == IDS
    assert digests == []
    path = job.dir / "batches" / "000000.ids.arrow"
    data = path.read_bytes()
    stat = path.stat()
    path.write_bytes(data.replace(IDS[2].encode(), IDS[2][:-1].encode() + b"f"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    with pytest.raises(LedgerError, match="do not match the record"):
        ledger.job("job-a").record_ids(record)
    with pytest.raises(LedgerError, match="do not match the record"):
        job.record_ids(record)
    assert len(digests) == 2
    # Another job's ids are checked on their own.
    other = ledger.job("job-b")
    other_record = other.new_record(IDS[:2], intent_at=1.0, key_hash="")  # its digest made
    assert ledger.job("job-b").record_ids(other_record) == IDS[:2] and len(digests) == 3


def test_a_deleted_record_is_rebuilt_from_the_journal_and_its_slot_never_reused(tmp_path):
    ledger, job = fresh(tmp_path)
    record = job.new_record(IDS, intent_at=1.0, key_hash="k")
    job.mark_submitted(record, "msgbatch_kept", created_at=5.0)
    (job.dir / "batches" / "000000.json").unlink()
    (rebuilt,) = job_records(job)
    assert (rebuilt.batch_id, rebuilt.state, rebuilt.key_hash) == (
        "msgbatch_kept",
        BatchState.SUBMITTED,
        "k",
    )
    assert job.record_ids(rebuilt) == IDS
    assert job.new_record(IDS[:1], intent_at=2.0, key_hash="k").seq == 1
    assert "msgbatch_kept" in claimed_batch_ids(ledger)


def test_a_torn_journal_line_is_skipped(tmp_path):
    ledger, job = fresh(tmp_path)
    record = job.new_record(IDS, intent_at=1.0, key_hash="k")
    job.mark_submitted(record, "msgbatch_a", created_at=5.0)
    with open(ledger.root / "journal.jsonl", "ab") as f:
        f.write(b'{"batch_id": "msgbatch_b", "jo')
    assert [e["batch_id"] for e in ledger.journal()] == ["msgbatch_a"]


def test_another_jobs_damage_is_reported_and_its_batch_ids_stay_claimed(tmp_path, caplog):
    ledger, mine = fresh(tmp_path, "mine")
    other = ledger.job("other")
    record = other.new_record(IDS, intent_at=1.0, key_hash="k")
    other.mark_submitted(record, "msgbatch_theirs", created_at=2.0)
    path = other.dir / "batches" / "000000.json"
    path.write_text(path.read_text()[:-40])  # torn, but the batch id is still readable
    (ledger.root / "journal.jsonl").unlink()  # and the journal lost too
    mine.new_record(IDS[:2], intent_at=3.0, key_hash="k")
    scan = all_records(ledger, "mine")
    assert [r.job for r in scan.records] == ["mine"] and scan.damaged == [path]
    assert "another job's batch record is damaged" in caplog.text
    assert "msgbatch_theirs" in claimed_batch_ids(ledger)
    with pytest.raises(LedgerError, match="000000.json is damaged"):
        all_records(ledger, "other")


def test_another_jobs_damaged_record_is_read_from_the_journal_and_left_as_it_is(tmp_path):
    ledger, _ = fresh(tmp_path, "mine")
    other = ledger.job("other")
    record = other.new_record(IDS, intent_at=1.0, key_hash="k")
    other.mark_submitted(record, "msgbatch_theirs", created_at=2.0)
    path = other.dir / "batches" / "000000.json"
    path.write_text("{not json")
    scan = all_records(ledger, "mine")
    assert [(r.job, r.batch_id, r.state) for r in scan.records] == [
        ("other", "msgbatch_theirs", BatchState.SUBMITTED)
    ]
    assert scan.damaged == [] and path.read_text() == "{not json"


def test_a_batch_given_back_is_free_for_its_real_owner(tmp_path):
    ledger, job = fresh(tmp_path)
    record = job.new_record(IDS, intent_at=1.0, key_hash="k")
    job.mark_submitted(record, "msgbatch_not_ours", created_at=2.0, adopted=True)
    assert "msgbatch_not_ours" in claimed_batch_ids(ledger)
    job.mark_rejected(record, "host:1:me", 9.0)
    assert "msgbatch_not_ours" not in claimed_batch_ids(ledger)
    (job.dir / "batches" / "000000.json").unlink()
    (rebuilt,) = job_records(job)  # from the journal: an intent again, that batch given back
    assert (rebuilt.state, rebuilt.batch_id, rebuilt.rejected) == (
        BatchState.INTENT,
        None,
        ["msgbatch_not_ours"],
    )


def test_orphaned_temporary_files_are_swept_when_the_cache_is_opened(tmp_path):
    ledger, job = fresh(tmp_path)
    job.new_record(IDS, intent_at=1.0, key_hash="")
    old = job.dir / "batches" / ".000001.json.abc.tmp"
    new = ledger.root / "results" / ".msgbatch_x.parquet.def.tmp"
    for path in (old, new):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    Ledger(ledger.root)
    assert not old.exists()
    assert new.exists()  # a live writer's file is left alone


def test_the_format_file_is_checked(tmp_path):
    ledger, _ = fresh(tmp_path)
    fmt = ledger.root / "FORMAT"
    assert fmt.read_text().strip() == str(FORMAT_VERSION)
    fmt.write_text("")
    with pytest.raises(LedgerError, match="FORMAT is empty") as info:
        Ledger(ledger.root)
    assert info.value.path == str(fmt)
    fmt.write_text("99\n")
    with pytest.raises(LedgerError, match="format '99'"):
        Ledger(ledger.root)


def test_records_round_trip_and_refuse_what_this_version_does_not_write():
    record = BatchRecord(job="j", seq=3, request_count=2, ids_digest="d", intent_at=1.5)
    assert BatchRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    with pytest.raises(RecordError, match="unknown fields"):
        BatchRecord.from_json({**record.to_json(), "surprise": 1})
    with pytest.raises(RecordError, match="without a batch_id"):
        BatchRecord.from_json({**record.to_json(), "state": "submitted"})
    with pytest.raises(RecordError):
        BatchRecord.from_json({**record.to_json(), "state": "teleported"})


def test_each_requests_model_is_read_without_its_params_and_an_older_job_has_none(tmp_path):
    job = Ledger(tmp_path).job("job-a")
    job.write_requests([("a", b'{"model":"m1"}', "m1"), ("b", b'{"model":"m2"}', "m2")])
    assert job.request_models() == {"a": "m1", "b": "m2"}
    # An older dsbatch wrote the params alone: the models are then read from them (the caller).
    pq.write_table(
        pa.table({"custom_id": ["a"], "params": [b'{"model":"m1"}']}),
        job.dir / "requests.parquet",
    )
    assert job.request_models() is None
    assert job.read_requests() == {"a": b'{"model":"m1"}'}


def test_a_batch_ids_digest_is_the_one_records_already_hold():
    """Made in Arrow, the digest is the one stored in existing records: the xxh3 of the sorted
    ids joined by newlines, whatever their order or chunks."""
    import random
    import string

    import pyarrow as pa
    import xxhash

    from dsbatch._ledger_job import ids_digest

    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "_-"
    for n in (0, 1, 2, 9, 500):
        ids = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 64))) for _ in range(n)]
        stored = xxhash.xxh3_64_hexdigest("\n".join(sorted(ids)).encode())
        arrow = pa.array(ids, pa.string())
        chunked = pa.chunked_array([arrow[: n // 2], arrow[n // 2 :]], pa.string())
        assert ids_digest(ids) == ids_digest(arrow) == ids_digest(chunked) == stored
        assert ids_digest(ids[::-1]) == stored
    assert ids_digest(["b", "a"]) != ids_digest(["a", "c"])
