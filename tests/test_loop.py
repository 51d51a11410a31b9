"""The job loop's waiting and retrying, as a user sees it: what the emulator received, what
the job slept, what comes back. SDK retries are off wherever dsbatch's own waiting is tested."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from datasets import Dataset, DatasetDict
from support import MODEL, answers, echo, ids_of, prompt, run, sent, submit, virtual

import dsbatch
from dsbatch._backend import Backend, BatchInfo
from dsbatch._ledger import Ledger
from dsbatch._recovery import job_records
from dsbatch._submit import reconcile
from dsbatch.testing import Emulator, Faults, HttpFault


def texts(n, prefix="text"):
    return [f"{prefix} {i}" for i in range(n)]


class Sleeps:
    """A sleep that advances the emulator's clock and remembers every wait."""

    def __init__(self, emu):
        self.emu = emu
        self.waits = []

    def __call__(self, seconds):
        self.waits.append(seconds)
        self.emu.advance(seconds)


def test_drop_keeps_skipped_rows():
    with Emulator(delay=0, responder=echo, faults=Faults(errored=1.0)) as emu:
        ds = Dataset.from_dict({"text": ["a", "skip me", "b"]})
        out = run(
            ds,
            emu,
            fn=lambda r: None if r["text"] == "skip me" else r["text"],
            max_attempts=1,
            on_error="drop",
        )
        assert list(out["text"]) == ["skip me"]
        assert out["dsbatch"][0]["status"] == "skipped"


@pytest.mark.parametrize("fault", ["cut_results", "short_results"])
def test_a_download_cut_midline_or_on_a_line_boundary_is_fetched_again(fault):
    with Emulator(delay=0, responder=echo, faults=Faults(**{fault: 2})) as emu:
        out = run(Dataset.from_dict({"text": texts(40)}), emu, retries=0)
        assert list(out["response"]) == answers(texts(40))
        assert emu.calls["results"] == 3 and emu.calls["create"] == 1


def test_a_new_batch_makes_polling_brisk_again():
    # 10% of requests fail once: a retry batch goes out after the first one is read.
    with Emulator(delay=3000, responder=echo, faults=Faults(errored=0.3)) as emu:
        sleeps = Sleeps(emu)
        schedule = dsbatch.PollSchedule(
            initial=100, factor=2, maximum=5000, sleep=sleeps, clock=emu.now
        )
        ds = Dataset.from_dict({"text": texts(40)})
        out = run(ds, emu, poll_interval=schedule, retries=0, max_attempts=20)
        assert {s["status"] for s in out["dsbatch"]} == {"succeeded"}
        assert emu.calls["create"] >= 2
        # 100, 200, 400, 800, 1600 (the first batch ends), then a new batch: 100 again.
        assert sleeps.waits[:6] == [100, 200, 400, 800, 1600, 100]


@pytest.mark.parametrize("endpoint", ["retrieve", "results", "list"])
def test_rate_limits_on_every_call_are_waited_out_with_the_server_s_retry_after(endpoint):
    faults = Faults(http=[HttpFault(endpoint, 429, times=3, retry_after=45)])
    if endpoint == "list":
        faults.lose_create = (
            1  # the only time dsbatch lists: looking for a batch after a lost answer
        )
    with Emulator(delay=60, responder=echo, faults=faults) as emu:
        sleeps = Sleeps(emu)
        schedule = virtual(emu, 60)
        schedule.sleep = sleeps
        out = run(Dataset.from_dict({"text": texts(5)}), emu, poll_interval=schedule, retries=0)
        assert list(out["response"]) == answers(texts(5))
        assert emu.calls["create"] == 1 and emu.calls[endpoint] >= 4
        assert sleeps.waits.count(45) == 3


def test_a_create_refused_with_429_is_not_maybe_created_and_waits_its_retry_after():
    faults = Faults(http=[HttpFault("create", 429, times=2, retry_after=30)])
    with Emulator(delay=0, responder=echo, faults=faults) as emu:
        sleeps = Sleeps(emu)
        schedule = virtual(emu, 5)
        schedule.sleep = sleeps
        out = run(Dataset.from_dict({"text": texts(5)}), emu, poll_interval=schedule, retries=0)
        assert list(out["response"]) == answers(texts(5))
        # Refused: nothing to look for (the one list only reads the server's clock first).
        assert emu.calls["create"] == 3 and emu.calls["list"] == 1
        assert sleeps.waits[:2] == [30, 30] and len(emu.batches) == 1


def test_poll_failures_are_counted_per_outage_not_over_the_whole_job():
    with Emulator(delay=6000, responder=echo) as emu:
        schedule = virtual(emu, 60, factor=1)

        def flaky_sleep(seconds):
            # Every poll, a fresh outage of six failed calls: 30 failures in all, never 8 in a row.
            if seconds == 60:
                emu.faults.http.append(HttpFault("retrieve", 503, times=6))
            emu.advance(seconds)

        schedule.sleep = flaky_sleep
        out = run(Dataset.from_dict({"text": texts(5)}), emu, poll_interval=schedule, retries=0)
        assert list(out["response"]) == answers(texts(5))
        assert emu.calls["retrieve"] > 30


def test_a_lasting_poll_outage_stops_the_job_which_resumes_without_a_new_batch():
    with Emulator(delay=600, responder=echo) as emu:
        emu.faults.http.append(HttpFault("retrieve", 503, times=100))
        ds = Dataset.from_dict({"text": texts(5)})
        with pytest.raises(dsbatch.BatchAPIError, match="retrieving batch msgbatch_\\w+ failed"):
            run(ds, emu, wait=120, retries=0)
        emu.faults.http.clear()
        out = run(ds, emu, wait=120, retries=0)
        assert list(out["response"]) == answers(texts(5)) and emu.calls["create"] == 1


def test_results_that_stay_404_count_as_lost_after_ten_minutes_and_are_bought_again(caplog):
    with Emulator(delay=0, responder=echo) as emu:
        emu.faults.http.append(HttpFault("results", 404, times=10_000))
        sleeps = Sleeps(emu)
        schedule = virtual(emu, 60, factor=1)
        schedule.sleep = sleeps

        def release_after_the_first_batch(seconds):
            sleeps(seconds)
            if emu.calls["create"] == 2:
                emu.faults.http.clear()

        schedule.sleep = release_after_the_first_batch
        ds = Dataset.from_dict({"text": texts(3)})
        out = run(ds, emu, poll_interval=schedule, retries=0, max_attempts=2)
        assert list(out["response"]) == answers(texts(3))
        assert emu.calls["create"] == 2 and len(emu.received) == 6
        assert sum(sleeps.waits) >= 600  # minutes, not polls
        assert "its results can no longer be downloaded" in caplog.text
        assert {s["attempts"] for s in out["dsbatch"]} == {2}


@pytest.mark.parametrize("max_attempts", [1, 2])
def test_a_lost_batch_is_an_attempt_so_losses_are_capped(max_attempts):
    with Emulator(delay=0, responder=echo) as emu:
        emu.faults.http.append(HttpFault("results", 404, times=10_000))
        ds = Dataset.from_dict({"text": texts(3)})
        out = run(ds, emu, wait=120, retries=0, max_attempts=max_attempts)
        assert emu.calls["create"] == max_attempts
        assert len(emu.received) == 3 * max_attempts
        for status in out["dsbatch"]:
            assert status["status"] == "errored" and status["attempts"] == max_attempts
            assert status["error"].startswith("batch_lost: batch msgbatch_")
        assert list(out["response"]) == [None] * 3


def test_the_same_rows_in_other_splits_are_another_job():
    base = texts(20)
    first = DatasetDict(
        {"a": Dataset.from_dict({"text": base[:10]}), "b": Dataset.from_dict({"text": base[10:]})}
    )
    second = DatasetDict(
        {"a": Dataset.from_dict({"text": base[:15]}), "b": Dataset.from_dict({"text": base[15:]})}
    )
    with Emulator(delay=0, responder=echo) as emu:
        one = run(first, emu)
        two = run(second, emu)
        assert [len(two[s]) for s in ("a", "b")] == [15, 5]
        assert list(two["a"]["response"]) == answers(base[:15])
        assert list(two["b"]["response"]) == answers(base[15:])
        assert list(one["a"]["response"]) == answers(base[:10])
        assert len(emu.received) == 20  # the second job bought nothing


def test_reconcile_never_adopts_a_batch_another_job_of_the_cache_claims(tmp_path):
    ledger = Ledger(tmp_path / "cache")
    theirs = ledger.job("theirs")
    taken = theirs.new_record(["dsb_t1", "dsb_t2"], intent_at=100.0, key_hash="k")
    theirs.mark_submitted(taken, "msgbatch_theirs", created_at=101.0)
    ours = ledger.job("ours").new_record(["dsb_o1", "dsb_o2"], intent_at=100.0, key_hash="k")
    ours.intent_server_at = 100.0

    class Listing(Backend):
        def recent(self, since=None, *, limit=1000, action=""):
            counts = {"processing": 2, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
            return [BatchInfo("msgbatch_theirs", "in_progress", counts, 101.0, None, None, None)]

    assert reconcile(Listing(), ledger.job("ours"), ours) is None


def test_a_crash_while_writing_leaves_the_previous_record_whole(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "cache")
    job = ledger.job("j")
    record = job.new_record(["dsb_1"], intent_at=1.0, key_hash="")
    before = (job.dir / "batches" / "000000.json").read_bytes()

    def die(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(dsbatch.LedgerError, match="000000.json"):
        job.mark_submitted(record, "msgbatch_x", created_at=2.0)
    monkeypatch.undo()
    assert (job.dir / "batches" / "000000.json").read_bytes() == before
    assert not list((job.dir / "batches").glob(".*.tmp"))
    (reread,) = job_records(job)
    assert reread.batch_id is None


def test_every_distinct_request_is_sent_once_across_a_fault_storm():
    faults = Faults(errored=0.2, lose_create=2, cut_results=2, http=[HttpFault("*", 429, times=4)])
    rows = [f"storm {i % 50}" for i in range(70)]
    with Emulator(delay=0, responder=echo, faults=faults) as emu:
        out = run(
            Dataset.from_dict({"text": rows}), emu, max_attempts=1, max_batch_requests=9, retries=0
        )
        sent = Counter(cid for _, cid in emu.received)
        assert len(sent) == 50 and set(sent.values()) == {1}
        assert Counter(s["status"] for s in out["dsbatch"])["succeeded"] > 30


def test_a_job_with_nothing_to_send_needs_no_key_and_no_client(emu, monkeypatch):
    ds = Dataset.from_dict({"text": texts(4)})
    run(ds, emu)
    calls = sum(emu.calls.values())
    # The same server, named by the environment only, with no key: the cache knows what the
    # server is (an emulator), so its answers serve without a call.
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emu.base_url)
    out = dsbatch.map(ds.shuffle(seed=1), prompt, model=MODEL, max_tokens=256, progress=False)
    assert list(out["response"]) == answers(out["text"])
    assert sum(emu.calls.values()) == calls


def test_a_step_reads_the_cache_once_under_the_lock_and_again_only_when_a_batch_ended(
    monkeypatch,
):
    import contextlib

    import dsbatch._run as loop_module

    locks = []  # the cache locks held now
    looks = []  # per step: for each survey, whether the cache lock was held
    real_locked, real_survey, real_step = (
        Ledger.locked,
        loop_module.survey,
        loop_module.JobLoop.step,
    )

    @contextlib.contextmanager
    def locked(self):
        with real_locked(self) as turn:
            locks.append(self.root)
            try:
                yield turn
            finally:
                locks.pop()

    def survey(*args, **kwargs):
        looks[-1].append(bool(locks))
        return real_survey(*args, **kwargs)

    def step(self):
        looks.append([])
        return real_step(self)

    monkeypatch.setattr(Ledger, "locked", locked)
    monkeypatch.setattr(loop_module, "survey", survey)
    monkeypatch.setattr(loop_module.JobLoop, "step", step)
    with Emulator(delay=250, responder=echo, faults=Faults(errored=0.5)) as emu:
        ds = Dataset.from_dict({"text": texts(20)})
        out = run(ds, emu, wait=60, retries=0, max_attempts=20)
        assert list(out["response"]) == answers(texts(20))
    # Every look is taken under the cache lock (the never-pay-twice decision is made from it).
    assert all(all(step) for step in looks)
    # The first step that finds a batch running looks once; the steps after it poll the same
    # batch and look not at all while nothing changes and no other call held the lock; the step
    # whose poll reads the ended batch looks once, after reading it (the retries of its errored
    # requests are decided from that look).
    counts = [len(step) for step in looks]
    # Each batch takes 250 s and is polled every 60 s (the schedule's maximum): the first step
    # sends, four find the batch running, the fifth reads it and sends the retries.
    assert emu.calls["create"] == 5
    assert counts == [1] + [1, 0, 0, 0, 1] * 5


def test_a_step_looks_again_before_deciding_when_another_call_decided_while_it_polled(
    monkeypatch,
):
    from dsbatch._batch import BatchKeeper

    with Emulator(delay=1000, responder=echo) as emu:
        # Job A needs x, in flight in another job's batch, and z. While A polls that batch
        # (still running: nothing changes for A), another call sends z. A decides after: from
        # a new look, which shows z in flight, not from its first one.
        submit(emu, ["x"])
        real_advance = BatchKeeper.advance
        other = []

        def advance(self, record, **kwargs):
            if not other:
                other.append(submit(emu, ["z"]))
            return real_advance(self, record, **kwargs)

        monkeypatch.setattr(BatchKeeper, "advance", advance)
        out = run(Dataset.from_dict({"text": ["x", "z"]}), emu, wait=60)
        assert list(out["response"]) == answers(["x", "z"])
        assert len(other) == 1
        assert sent(emu) == dict.fromkeys(ids_of(["x", "z"]), 1) and len(emu.batches) == 2
