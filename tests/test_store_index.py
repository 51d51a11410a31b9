"""The results index: each batch's custom_ids hashed and sorted beside its results, so looking a
job's requests up costs the same whatever the cache holds; it always gives what a full scan of
the results would."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from dsbatch._ledger import RESULT_SCHEMA
from dsbatch._store import ResultsStore, custom_id_keys


def ids(n, salt="a"):
    return [f"dsb_{xxhash.xxh3_128_hexdigest(f'{salt}{i}'.encode())}" for i in range(n)]


def results(custom_ids, batch_id, kind="succeeded"):
    n = len(custom_ids)
    columns = {name: pa.nulls(n, RESULT_SCHEMA.field(name).type) for name in RESULT_SCHEMA.names}
    columns.update(
        custom_id=pa.array(custom_ids, pa.string()),
        type=pa.array([kind] * n, pa.string()),
        text=pa.array([f"answer to {c}" for c in custom_ids], pa.string()),
        batch_id=pa.array([batch_id] * n, pa.string()),
    )
    return pa.table(columns, schema=RESULT_SCHEMA)


def full_scan(root, wanted):
    """What the results hold for ``wanted``, read the slow way."""
    parts = []
    for path in sorted((root / "results").glob("*.parquet")):
        table = pq.read_table(path).drop_columns(["raw"])
        parts.append(table.filter(pc.is_in(table["custom_id"], value_set=pa.array(wanted))))
    return pa.concat_tables(parts).sort_by("custom_id").to_pylist()


def test_samples_and_other_ids_are_found_beside_plain_ones(tmp_path):
    store = ResultsStore(tmp_path)
    plain = ids(10)
    store.write("msgbatch_a", results(plain, "msgbatch_a"))
    store.write("msgbatch_b", results([c + "_s1" for c in plain] + ["odd"], "msgbatch_b"))
    wanted = [*plain[:3], plain[0] + "_s1", "odd", plain[5] + "_s2"]
    found = ResultsStore(tmp_path).results_for(pa.array(wanted))
    assert sorted(found.results["custom_id"].to_pylist()) == sorted(wanted[:5])
    assert_positions(found, wanted)


def assert_positions(found, wanted):
    """Each result's position among the ids asked for is its id's."""
    assert found.at.dtype == np.int64
    assert [wanted[i] for i in found.at] == found.results["custom_id"].to_pylist()


def test_jobs_whose_ids_share_their_keys_each_get_only_their_own_results(tmp_path):
    # Jobs of 5 and of 3 samples of the same requests, in one process: the same keys, other ids.
    store = ResultsStore(tmp_path)
    plain = ids(4)
    five = [c + s for c in plain for s in ("", "_s1", "_s2", "_s3", "_s4")]
    store.write("msgbatch_a", results(five, "msgbatch_a"))
    three = [c + s for c in plain for s in ("", "_s1", "_s2")]
    found_five = store.results_for(pa.array(five))
    found_three = store.results_for(pa.array(three))
    assert sorted(found_five.results["custom_id"].to_pylist()) == sorted(five)
    assert sorted(found_three.results["custom_id"].to_pylist()) == sorted(three)  # not five's 20
    assert_positions(found_five, five)
    assert_positions(found_three, three)
    assert_positions(store.results_for(pa.array(three)), three)  # the memo keeps them
    # A slice of the same buffers is other ids too.
    both = pa.array(five)
    assert store.results_for(both.slice(0, 5))[0].num_rows == 5
    assert store.results_for(both.slice(5, 5))[0]["custom_id"].to_pylist() == five[5:10]


def test_the_index_finds_exactly_what_a_full_scan_finds(tmp_path):
    store = ResultsStore(tmp_path)
    store.write("msgbatch_a", results(ids(500, "a"), "msgbatch_a"))
    store.write("msgbatch_b", results(ids(300, "b") + ids(50, "a"), "msgbatch_b", "errored"))
    wanted = ids(60, "a")[::2] + ids(10, "b") + ids(5, "never")
    found, _, unreadable = ResultsStore(tmp_path).results_for(pa.array(wanted))  # a new process
    assert not unreadable
    assert found.sort_by("custom_id").to_pylist() == full_scan(tmp_path, wanted)
    assert found.num_rows == 30 + 25 + 10  # ids a0..a58 (even) twice up to a48, b0..b9
    assert_positions(ResultsStore(tmp_path).results_for(pa.array(wanted)), wanted)


def test_ids_are_located_among_a_jobs_ids_by_their_keys_shared_keys_included(tmp_path):
    store = ResultsStore(tmp_path)
    plain = ids(6)
    among = [c + s for c in plain for s in ("", "_s1", "_s2")] + ["odd", "other"]
    asked = [among[7], "odd", plain[2] + "_s9", among[0], "never", among[2], ids(1, "x")[0]]
    expected = [7, 18, -1, 0, -1, 2, -1]
    assert store.locate(pa.array(asked), pa.array(among)).tolist() == expected
    # Kept for the same ids among the same job's; other ids, or another job's, are looked up.
    assert store.locate(pa.array(asked), pa.array(among)).tolist() == expected
    assert store.locate(pa.array(asked[:2]), pa.array(among)).tolist() == expected[:2]
    assert store.locate(pa.array(asked[::-1]), pa.array(among)).tolist() == expected[::-1]
    assert store.locate(pa.array(asked), pa.array(among[1:])).tolist() == [
        i - 1 if i > 0 else -1 for i in expected
    ]
    assert store.locate(pa.array(asked), pa.array([], pa.string())).tolist() == [-1] * 7


def test_a_missing_damaged_or_stale_index_is_rebuilt_from_the_results(tmp_path):
    store = ResultsStore(tmp_path)
    store.write("msgbatch_a", results(ids(100), "msgbatch_a"))
    index = tmp_path / "results" / "msgbatch_a.keys.arrow"
    wanted = pa.array(ids(10))
    index.unlink()
    assert ResultsStore(tmp_path).results_for(wanted)[0].num_rows == 10
    assert index.exists()  # written back
    index.write_bytes(b"not an index")
    assert ResultsStore(tmp_path).results_for(wanted)[0].num_rows == 10
    # The results rewritten under an old index (another batch's rows): the index follows.
    old = index.read_bytes()
    store.write("msgbatch_a", results(ids(100, "z"), "msgbatch_a"))
    index.write_bytes(old)
    assert ResultsStore(tmp_path).results_for(wanted)[0].num_rows == 0
    assert ResultsStore(tmp_path).results_for(pa.array(ids(5, "z")))[0].num_rows == 5


def test_what_one_process_read_is_read_again_only_when_the_file_changes(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    store.write("msgbatch_a", results(ids(100), "msgbatch_a"))
    reads = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    wanted = pa.array(ids(10))
    for _ in range(3):
        assert store.results_for(wanted)[0].num_rows == 10
    assert reads == []  # what this process just wrote is found in what it wrote
    other = pa.array(ids(4))  # another job's requests: looked up on their own, in the file
    assert store.results_for(other)[0].num_rows == 4 and len(reads) == 1
    assert store.results_for(wanted)[0].num_rows == 10 and len(reads) == 2
    for _ in range(2):
        assert store.results_for(wanted)[0].num_rows == 10
    assert len(reads) == 2
    store.write("msgbatch_a", results(ids(100), "msgbatch_a", "errored"))
    assert set(store.results_for(wanted)[0]["type"].to_pylist()) == {"errored"}
    assert len(reads) == 2


def test_rows_just_written_are_not_served_once_another_process_rewrote_the_file(tmp_path):
    store = ResultsStore(tmp_path)
    store.write("msgbatch_a", results(ids(100), "msgbatch_a"))
    store.write("msgbatch_b", results(ids(50, "b"), "msgbatch_b"))
    # Another process stores msgbatch_b again (other rows) before this one surveys.
    ResultsStore(tmp_path).write("msgbatch_b", results(ids(60, "b"), "msgbatch_b", "errored"))
    wanted = pa.array(ids(100) + ids(60, "b"))
    found = store.results_for(wanted)[0]
    assert found.sort_by("custom_id").to_pylist() == full_scan(tmp_path, wanted.to_pylist())
    assert found.num_rows == 160
    assert pc.count_distinct(found["batch_id"]).as_py() == 2
    errored = found.filter(pc.equal(found["batch_id"], "msgbatch_b"))["type"]
    assert set(errored.to_pylist()) == {"errored"}


def test_keys_of_dsbatch_ids_are_read_in_bulk_and_others_hashed():
    own = ids(1000)
    keys = custom_id_keys(pa.array(own))
    assert keys.dtype == np.uint64
    assert list(keys[:3]) == [int(c[4:20], 16) for c in own[:3]]
    odd = ["dsb_" + "G" * 32, "short"]
    mixed = custom_id_keys(pa.array([*odd, own[0], own[1] + "_s1"]))
    # The same id gives the same key whatever array it is in; a sample shares its request's.
    assert list(mixed) == [
        xxhash.xxh3_64_intdigest(odd[0].encode()),
        xxhash.xxh3_64_intdigest(odd[1].encode()),
        keys[0],
        keys[1],
    ]
    sliced = pa.array(own).slice(7, 5)
    assert list(custom_id_keys(sliced)) == [int(c[4:20], 16) for c in own[7:12]]


def test_a_read_only_cache_keeps_its_index_in_memory(tmp_path):
    store = ResultsStore(tmp_path)
    store.write("msgbatch_a", results(ids(20), "msgbatch_a"))
    (tmp_path / "results" / "msgbatch_a.keys.arrow").unlink()
    os.chmod(tmp_path / "results", 0o555)
    try:
        assert ResultsStore(tmp_path).results_for(pa.array(ids(3)))[0].num_rows == 3
    finally:
        os.chmod(tmp_path / "results", 0o755)
