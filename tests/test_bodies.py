"""A job's rendered bodies spill to a temporary file past a size, and read back exactly."""

from __future__ import annotations

import json
import pickle

import pyarrow as pa
import pytest
from datasets import Dataset
from support import MODEL, answers, run, sent

import dsbatch._bodies
import dsbatch._ledger_data
import dsbatch._map
from dsbatch._bodies import Bodies
from dsbatch._plan import batch_body, chunk_requests


def _filled(spill_bytes: int, n: int = 50) -> tuple[Bodies, dict[str, bytes]]:
    store, plain = Bodies(spill_bytes), {}
    for i in range(n):
        key, body = f"dsb_{i:032x}", f'{{"n":{i},"pad":"{"x" * (i % 7)}"}}'.encode()
        store[key] = plain[key] = body
    return store, plain


@pytest.mark.parametrize("spill_bytes", [10**9, 200, 0])
def test_a_store_reads_back_what_it_was_given_in_order(spill_bytes):
    store, plain = _filled(spill_bytes)
    assert store.spilled == (spill_bytes < 10**9)
    assert list(store) == list(plain) and len(store) == 50
    assert list(store.items()) == list(plain.items())
    assert list(store.values()) == list(plain.values())
    assert [store[k] for k in reversed(plain)] == list(reversed(plain.values()))
    assert "dsb_nope" not in store and next(iter(plain)) in store
    with pytest.raises(KeyError):
        store["dsb_nope"]


def test_a_spilled_store_rewrites_and_deletes_keeping_the_first_order():
    store, plain = _filled(0)
    keys = list(plain)
    store[keys[3]] = plain[keys[3]] = b'{"rewritten":true}'
    del store[keys[10]], plain[keys[10]]
    store["dsb_new"] = plain["dsb_new"] = b"{}"
    assert list(store.items()) == list(plain.items())


@pytest.mark.parametrize("spill_bytes", [10**9, 200, 0])
@pytest.mark.parametrize("replaced", [False, True])
def test_a_store_gives_its_bodies_as_arrow_columns_a_group_at_a_time(spill_bytes, replaced):
    store, plain = _filled(spill_bytes)
    if replaced:  # a body set again: spilled, it is no longer where the order says
        keys = list(plain)
        store[keys[9]] = plain[keys[9]] = b'{"rewritten":"' + b"z" * 40 + b'"}'
        del store[keys[20]], plain[keys[20]]
    groups = list(store.column_groups(7))
    sizes = [7] * (len(plain) // 7) + ([len(plain) % 7] if len(plain) % 7 else [])
    assert [len(ids) for ids, _ in groups] == sizes
    assert [c for ids, _ in groups for c in ids] == list(plain)
    assert [b for _, params in groups for b in params.to_pylist()] == list(plain.values())
    for _, params in groups:
        params.validate(full=True)
        assert params.type == pa.binary()
    assert list(Bodies().column_groups(7)) == []


def test_a_pass_over_every_body_reads_the_file_in_windows(monkeypatch):
    monkeypatch.setattr(dsbatch._bodies, "_WINDOW", 64)  # many windows, bodies across edges
    store, plain = _filled(0, n=300)
    assert list(store.items()) == list(plain.items())


def test_a_store_pickles_with_its_bodies_and_spills_again():
    store, plain = _filled(100)
    again = pickle.loads(pickle.dumps(store))
    assert again.spilled and list(again.items()) == list(plain.items())
    empty = store.empty_like()
    assert len(empty) == 0 and not empty.spilled


def test_a_job_whose_bodies_spill_sends_and_answers_the_same(emu, monkeypatch, tmp_path):
    texts = [f"text {i} " + "y" * (i % 5) for i in range(40)] * 2  # 40 distinct, each twice
    system = "A shared instruction. " * 1200  # a prompt-cache breakpoint: a primer batch first
    plain = run(
        Dataset.from_dict({"text": texts}), emu, system=system, cache_dir=tmp_path / "plain"
    )
    sent_plain = sent(emu)
    assert emu.calls["create"] == 2
    emu.reset_stats()
    prepared = []
    real_prepare = dsbatch._map.prepare
    monkeypatch.setattr(dsbatch._bodies, "SPILL_BYTES", 500)
    monkeypatch.setattr(
        dsbatch._map,
        "prepare",
        lambda *a, **k: prepared.append(real_prepare(*a, **k)) or prepared[-1],
    )
    spilled = run(
        Dataset.from_dict({"text": texts}), emu, system=system, cache_dir=tmp_path / "spilled"
    )
    # Rendered, then rebuilt with the breakpoints: still spilled, not rebuilt in memory.
    (done,) = prepared
    assert done.groups and isinstance(done.rendered.bodies, Bodies) and done.rendered.bodies.spilled
    assert sent(emu) == sent_plain and len(sent_plain) == 40 and emu.calls["create"] == 2
    assert spilled["response"] == plain["response"] == answers(texts)
    # The same requests (the emulator's prompt cache is warm the second time: token counts differ)
    ids = [(s["custom_id"], s["status"]) for s in plain["dsbatch"]]
    assert [(s["custom_id"], s["status"]) for s in spilled["dsbatch"]] == ids


def _written(tmp_path, fingerprint, requests, where):
    """A job's requests written; read back by the process that wrote them (``memory``) or by
    another one, from the file (``file``)."""
    from dsbatch._ledger import Ledger

    job = Ledger(str(tmp_path)).job(fingerprint)
    job.write_requests(requests)
    return job if where == "memory" else Ledger(str(tmp_path)).job(fingerprint)


@pytest.mark.parametrize("where", ["memory", "file"])
def test_a_jobs_requests_are_found_by_id_among_ids_sharing_a_key(tmp_path, monkeypatch, where):
    # A request and its samples share their 64-bit key: each id still gets its own body, from
    # any row group, and an id the job does not have is a KeyError, not a neighbour's body.
    from dsbatch._job import _Requests

    monkeypatch.setattr(dsbatch._ledger_data, "REQUEST_GROUP_ROWS", 4)
    base = "dsb_" + "0123456789abcdef" * 2
    ids = [base, *(f"{base}_s{i}" for i in range(1, 6)), "dsb_" + "f" * 32, "plain-id"]
    given = ((c, f'{{"n":{n}}}'.encode(), "m") for n, c in enumerate(ids))
    job = _written(tmp_path, "f" * 32, given, where)
    assert (job._kept is not None) == (where == "memory")
    requests = _Requests(job)
    for n, custom_id in reversed(list(enumerate(ids))):
        assert requests[custom_id] == f'{{"n":{n}}}'.encode()
    assert list(requests) == ids
    assert requests.custom_ids().to_pylist() == ids
    with pytest.raises(KeyError):
        requests[f"{base}_s9"]
    # All at once, in any order, across row groups: the same bodies, and the create body and
    # batch cuts a dict of them gives.
    shuffled = ids[::-1] + ids[3:5]
    assert requests.params(shuffled).to_pylist() == [requests[c] for c in shuffled]
    assert requests.params([]).to_pylist() == []
    # Runs in the file's order (a batch cut as the file is: slices of its row groups).
    mixed = [ids[2], ids[4], ids[3], ids[5]]  # rows 2 to 5, not in their order
    for order in (ids, ids[2:7], ids[3:4], ids[4:8], ids[6:], ids[5:] + ids[:1], mixed):
        assert requests.params(order).to_pylist() == [
            f'{{"n":{ids.index(c)}}}'.encode() for c in order
        ]
        assert requests.sizes(order).tolist() == [len(requests[c]) for c in order]
    with pytest.raises(KeyError):
        requests.params([ids[0], f"{base}_s9"])
    plain = {c: requests[c] for c in ids}
    assert batch_body(shuffled, requests) == batch_body(shuffled, plain)
    assert json.loads(batch_body(shuffled, requests))["requests"][0]["params"] == {"n": 7}
    assert batch_body([], requests) == batch_body([], plain) == b'{"requests":[]}'
    cuts = dict(max_requests=3, max_bytes=300)
    plans = list(chunk_requests(shuffled, requests, **cuts))
    assert plans == list(chunk_requests(shuffled, plain, **cuts))
    assert [len(plan.custom_ids) for plan in plans] == [3, 3, 3, 1]
    assert [plan.nbytes for plan in plans] == [
        len(batch_body(plan.custom_ids, requests)) for plan in plans
    ]
    assert list(chunk_requests(shuffled, requests, max_bytes=150)) != plans  # sizes are read


@pytest.mark.parametrize("where", ["memory", "file"])
def test_batches_are_cut_by_the_sizes_the_requests_file_keeps_or_by_the_params_of_an_older_one(
    tmp_path, monkeypatch, where
):
    import pyarrow.parquet as pq

    from dsbatch._job import _Requests

    monkeypatch.setattr(dsbatch._ledger_data, "REQUEST_GROUP_ROWS", 4)
    ids = [f"dsb_{i:02d}" for i in range(11)]
    bodies = {c: b'{"n":"' + b"x" * (i * 7 % 23) + b'"}' for i, c in enumerate(ids)}
    job = _written(tmp_path, "e" * 32, ((c, bodies[c], "m") for c in ids), where)
    requests = _Requests(job)
    shuffled = ids[::-3] + ids[:5]
    assert requests.sizes(shuffled).tolist() == [len(bodies[c]) for c in shuffled]
    # Read from the sizes alone: the file's sizes are what the cut goes by.
    kept = pq.read_table(job.dir / "requests.parquet")
    assert kept["size"].to_pylist() == [len(bodies[c]) for c in ids]
    cuts = dict(max_requests=5, max_bytes=160)
    plans = list(chunk_requests(shuffled, requests, **cuts))
    assert plans == list(chunk_requests(shuffled, bodies, **cuts))
    assert [plan.nbytes for plan in plans] == [
        len(batch_body(plan.custom_ids, bodies)) for plan in plans
    ]
    # A job of an older dsbatch (no sizes kept) is cut the same, from its params.
    pq.write_table(kept.drop_columns(["size"]), job.dir / "requests.parquet", row_group_size=4)
    older = _Requests(job)
    assert older.sizes(shuffled).tolist() == [len(bodies[c]) for c in shuffled]
    assert list(chunk_requests(shuffled, older, **cuts)) == plans


def test_the_process_that_wrote_a_jobs_requests_reads_them_from_memory_until_the_file_changes(
    tmp_path, monkeypatch
):
    import pyarrow.parquet as pq

    from dsbatch._job import _Requests
    from dsbatch._ledger import Ledger

    monkeypatch.setattr(dsbatch._ledger_data, "REQUEST_GROUP_ROWS", 4)
    ids = [f"dsb_{i:02d}" for i in range(10)]
    job = Ledger(str(tmp_path)).job("d" * 32)
    job.write_requests((c, f'{{"n":{i}}}'.encode(), f"m{i % 3}") for i, c in enumerate(ids))
    on_disk = pq.read_table(job.dir / "requests.parquet")

    def unread(*args, **kwargs):
        raise AssertionError("the requests file was read")

    with monkeypatch.context() as m:
        for name in ("ParquetFile", "read_table", "read_metadata", "read_schema"):
            m.setattr(dsbatch._ledger_data.pq, name, unread)
        requests = _Requests(job)
        assert requests.params(ids[::-1]).to_pylist() == on_disk["params"].to_pylist()[::-1]
        assert requests.sizes(ids).tolist() == on_disk["size"].to_pylist()
        assert job.request_groups() == [4, 4, 2]
        assert job.request_ids().to_pylist() == ids
        assert job.request_models() == {c: f"m{i % 3}" for i, c in enumerate(ids)}
        assert job.request_model_column().to_pylist() == on_disk["model"].to_pylist()
        assert job.read_request_params(2).to_pylist() == [b'{"n":8}', b'{"n":9}']
    # Written anew by another process (other bodies): this one reads the file, not its memory.
    Ledger(str(tmp_path)).job("d" * 32).write_requests(
        (c, f'{{"n":{-i}}}'.encode(), "other") for i, c in enumerate(ids[:6])
    )
    assert job.request_groups() == [4, 2]
    assert job.request_ids().to_pylist() == ids[:6]
    assert _Requests(job).params(ids[:6]).to_pylist() == [
        f'{{"n":{-i}}}'.encode() for i in range(6)
    ]
    assert job.request_model_column().to_pylist() == ["other"] * 6
    # A job over the bytes kept is read from its file, a row group at a time.
    monkeypatch.setattr(dsbatch._ledger_data, "KEPT_REQUEST_BYTES", 100)
    large = Ledger(str(tmp_path)).job("c" * 32)
    large.write_requests((c, f'{{"n":{i}}}'.encode(), "m") for i, c in enumerate(ids))
    assert large._kept is None
    monkeypatch.setattr(dsbatch._ledger_data.pq, "ParquetFile", unread)
    with pytest.raises(AssertionError, match="was read"):
        large.read_request_params(0)


@pytest.mark.parametrize("spill_bytes", [10**9, 300])
def test_a_jobs_requests_from_one_template_are_written_as_columns_as_they_were_rendered(
    emu, monkeypatch, tmp_path, spill_bytes
):
    import pyarrow.parquet as pq

    from dsbatch._ledger import Ledger

    monkeypatch.setattr(dsbatch._ledger_data, "REQUEST_GROUP_ROWS", 4)
    monkeypatch.setattr(dsbatch._bodies, "SPILL_BYTES", spill_bytes)
    written = []
    real = dsbatch._ledger_data.JobData.write_request_columns
    monkeypatch.setattr(
        dsbatch._ledger_data.JobData,
        "write_request_columns",
        lambda self, groups, **kwargs: written.append(1) or real(self, groups, **kwargs),
    )
    texts = [f"text {i} " + "y" * (i % 5) for i in range(11)] * 2
    out = run(Dataset.from_dict({"text": texts}), emu, cache_dir=tmp_path / "c")
    assert out["response"] == answers(texts) and written == [1]
    (fingerprint,) = Ledger(tmp_path / "c").job_fingerprints()
    path = Ledger(tmp_path / "c").job(fingerprint).dir / "requests.parquet"
    table = pq.read_table(path)
    ids = [s["custom_id"] for s in out["dsbatch"][:11]]
    assert table["custom_id"].to_pylist() == ids
    bodies = [json.loads(b) for b in table["params"].to_pylist()]
    assert [b["messages"][0]["content"] for b in bodies] == texts[:11]
    assert table["model"].to_pylist() == [b["model"] for b in bodies] == [MODEL] * 11
    assert table["size"].to_pylist() == [len(b) for b in table["params"].to_pylist()]
    meta = pq.read_metadata(path)
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [4, 4, 3]
