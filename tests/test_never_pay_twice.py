"""Never pay twice, across jobs too, and never get stuck: each numbered case of issue 7, and the
bullets of its "What to build" that no other test covers, in one process against the emulator.

Every test counts what the emulator received (``sent(emu)``: custom_id -> times received in an
accepted create): each distinct request is bought once, none while it is in flight anywhere in
the cache and none after it succeeded, and the user still gets every answer. The two-process
cases are in ``test_two_processes.py``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import format1
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from datasets import Dataset, DatasetDict
from support import (
    MODEL,
    answers,
    cache_root,
    echo,
    ids_of,
    job_dirs,
    prompt,
    records,
    request_for,
    run,
    sent,
)

import dsbatch
from dsbatch import BatchAPIError, LedgerError, PromptError, RowFailedError
from dsbatch._backend import Backend
from dsbatch._ledger import FORMAT_VERSION
from dsbatch.testing import Emulator, Faults, HttpFault

# -- helpers -------------------------------------------------------------------------------------


def texts(n, prefix="row"):
    return [f"{prefix} {i}" for i in range(n)]


class Stop(BaseException):
    """Stands for the process dying while it waits for its batches."""


def stop(_seconds):
    raise Stop()


def stopping():
    """A schedule whose first wait, right after the creates, ends the process."""
    return dsbatch.PollSchedule(sleep=stop)


class Runaway(BaseException):
    """A job that would wait forever: the test fails instead of hanging."""


def guarded(
    emu, every=60.0, *, factor=1.0, maximum=None, budget=12 * 3600.0, clock=None, on_wait=None
):
    """A poll schedule on the emulator's virtual clock that gives up after ``budget`` seconds of
    waiting; ``clock`` replaces the job's clock (a skewed local clock); ``on_wait()`` runs before
    each wait."""
    waited = [0.0]

    def sleep(seconds):
        waited[0] += seconds
        if waited[0] > budget:
            raise Runaway(f"the job was still waiting after {waited[0]:.0f} s of its clock")
        if on_wait is not None:
            on_wait()
        emu.advance(seconds)

    return dsbatch.PollSchedule(
        initial=every,
        factor=factor,
        maximum=every if maximum is None else maximum,
        sleep=sleep,
        clock=clock or emu.now,
    )


def statuses(out) -> Counter[str]:
    return Counter(s["status"] for s in out["dsbatch"])


# -- 1. edited rows while batches are in flight --------------------------------------------------


@pytest.mark.parametrize("ended_by", [Stop, KeyboardInterrupt], ids=["killed", "interrupted"])
def test_1_an_edited_rerun_sends_only_the_edited_row_and_reads_the_first_jobs_batch(ended_by):
    def ending(_seconds):
        raise ended_by()

    with Emulator(delay=600, responder=echo) as emu:
        rows = texts(20)
        with pytest.raises(ended_by):
            run(
                Dataset.from_dict({"text": rows}),
                emu,
                poll_interval=dsbatch.PollSchedule(sleep=ending),
            )
        (first_job,) = job_dirs()
        (first_batch,) = emu.batches

        edited = [*rows[:3], "row 3, edited", *rows[4:]]
        out = run(Dataset.from_dict({"text": edited}), emu, poll_interval=guarded(emu, 60))

        # 21 distinct requests were needed over both calls: each bought once, the 19 rows the
        # edit left alone never again while the first batch was in flight.
        assert sent(emu) == dict.fromkeys(ids_of(rows + ["row 3, edited"]), 1)
        assert emu.calls["create"] == 2
        assert list(out["response"]) == answers(edited)
        assert {s["attempts"] for s in out["dsbatch"]} == {1}
        # The first job's batch was polled and ingested by the second job, for both jobs.
        (record,) = records(first_job)
        assert record["batch_id"] == first_batch and record["state"] == "ingested"
        assert (cache_root() / "results" / f"{first_batch}.parquet").exists()
        emu.reset_stats()
        again = run(Dataset.from_dict({"text": rows}), emu)
        assert sum(emu.calls.values()) == 0
        assert list(again["response"]) == answers(rows)


def test_1_a_prompt_that_changes_between_runs_sends_only_what_changed():
    # A prompt built from a set (its order differs between interpreters) is the same as an
    # edit: the rows whose text changed are new requests, the others wait for the old batch.
    orders = iter([["b", "a"], ["a", "b"]])

    with Emulator(delay=600, responder=echo) as emu:
        rows = texts(10)
        tags = next(orders)

        def from_a_set(row):
            extra = " ".join(tags) if row["text"] == "row 7" else ""
            return f"{row['text']} {extra}".strip()

        with pytest.raises(Stop):
            run(Dataset.from_dict({"text": rows}), emu, fn=from_a_set, poll_interval=stopping())
        tags = next(orders)
        out = run(Dataset.from_dict({"text": rows}), emu, fn=from_a_set, poll_interval=guarded(emu))
        needed = [*rows[:7], "row 7 b a", "row 7 a b", *rows[8:]]
        assert sent(emu) == dict.fromkeys(ids_of(needed), 1)
        assert out["response"][7] == "echo: row 7 a b"


def test_1_a_job_that_died_right_after_its_create_is_reconciled_by_the_edited_rerun(monkeypatch):
    # The first process died between the create reaching the API and recording the batch id:
    # its intent is resolved by the next job that needs its requests, with a list, not a buy.
    real_create = Backend.create

    def create_then_die(self, body, betas=()):
        real_create(self, body, betas)
        raise Stop()

    with Emulator(delay=600, responder=echo) as emu:
        rows = texts(20)
        monkeypatch.setattr(Backend, "create", create_then_die)
        with pytest.raises(Stop):
            run(Dataset.from_dict({"text": rows}), emu, poll_interval=guarded(emu))
        monkeypatch.setattr(Backend, "create", real_create)
        (first_job,) = job_dirs()
        (first_batch,) = emu.batches
        assert records(first_job)[0]["state"] == "intent"

        edited = [*rows[:3], "row 3, edited", *rows[4:]]
        out = run(Dataset.from_dict({"text": edited}), emu, poll_interval=guarded(emu, 60))
        assert sent(emu) == dict.fromkeys(ids_of([*rows, "row 3, edited"]), 1)
        assert emu.calls["create"] == 2 and emu.calls["list"] >= 1
        assert list(out["response"]) == answers(edited)
        (record,) = records(first_job)
        assert record["batch_id"] == first_batch and record["state"] == "ingested"


@pytest.mark.parametrize("deleted", ["batches/000000.json", "batches/000000.ids.arrow"])
def test_1_an_edited_rerun_waits_for_a_batch_whose_record_or_ids_file_was_deleted(deleted):
    with Emulator(delay=600, responder=echo) as emu:
        rows = texts(20)
        with pytest.raises(Stop):
            run(Dataset.from_dict({"text": rows}), emu, poll_interval=stopping())
        (first_job,) = job_dirs()
        (first_job / deleted).unlink()  # a download, never a purchase, says the design

        edited = [*rows[:3], "row 3, edited", *rows[4:]]
        out = run(Dataset.from_dict({"text": edited}), emu, poll_interval=guarded(emu, 60))
        assert list(out["response"]) == answers(edited)
        assert sent(emu) == dict.fromkeys(ids_of([*rows, "row 3, edited"]), 1)


# -- 3. a passing 404 is not a lost batch ----------------------------------------------------------


def test_3_many_quick_404s_while_polling_do_not_resend(caplog):
    # The job's clock is the real one: fifty 404s in milliseconds are not ten minutes missing.
    polls = []

    def no_sleep(seconds):
        polls.append(seconds)
        if len(polls) > 1000:
            raise Runaway("polled a thousand times")

    with Emulator(delay=0, responder=echo) as emu:
        emu.faults.http.append(HttpFault("retrieve", 404, times=50))
        rows = texts(20)
        schedule = dsbatch.PollSchedule(initial=1e-6, factor=1, sleep=no_sleep)
        out = run(Dataset.from_dict({"text": rows}), emu, poll_interval=schedule, retries=0)
        assert emu.faults.http[0].times == 0  # every 404 was met
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 1
        assert list(out["response"]) == answers(rows)
        assert "was not found" in caplog.text and "paid for again" not in caplog.text


def test_3_404s_for_nine_minutes_on_the_default_schedule_do_not_resend(caplog):
    # The built-in backoff (5 s growing to 60 s): 13 polls in a row answered 404 span about
    # nine minutes of the job's clock, still short of the ten that make a batch gone.
    with Emulator(delay=0, responder=echo) as emu:
        emu.faults.http.append(HttpFault("retrieve", 404, times=13))
        rows = texts(20)
        schedule = guarded(emu, 5, factor=1.5, maximum=60)
        out = run(Dataset.from_dict({"text": rows}), emu, poll_interval=schedule, retries=0)
        assert emu.faults.http[0].times == 0
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 1
        assert list(out["response"]) == answers(rows)
        assert "paid for again" not in caplog.text


@pytest.mark.parametrize("every", [0.0, 60.0], ids=["at-once", "every-minute"])
def test_3_passing_404s_on_the_results_download_do_not_resend(every, caplog):
    with Emulator(delay=0, responder=echo) as emu:
        emu.faults.http.append(HttpFault("results", 404, times=3))
        rows = texts(20)
        schedule = dsbatch.PollSchedule(initial=0) if not every else guarded(emu, every)
        out = run(Dataset.from_dict({"text": rows}), emu, poll_interval=schedule, retries=0)
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 1
        assert emu.calls["results"] == 4
        assert list(out["response"]) == answers(rows)
        assert "paid for again" not in caplog.text


def test_3_a_batch_found_again_between_two_single_404s_restarts_the_missing_clock(caplog):
    # Two passing 404s nineteen minutes apart on a one-hour batch: each is a first sighting of
    # "missing", since the polls in between found it; it is never taken for gone.
    with Emulator(delay=3600, responder=echo) as emu:
        start = emu.now()
        second = []

        def on_wait():
            if not second and emu.now() - start >= 19 * 60:
                second.append(emu.now())
                emu.faults.http.append(HttpFault("retrieve", 404, times=1))

        emu.faults.http.append(HttpFault("retrieve", 404, times=1))
        rows = texts(20)
        schedule = guarded(emu, 60, on_wait=on_wait)
        out = run(Dataset.from_dict({"text": rows}), emu, poll_interval=schedule, retries=0)
        assert second and all(fault.times == 0 for fault in emu.faults.http)
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 1
        assert list(out["response"]) == answers(rows)
        assert caplog.text.count("was not found") == 2 and "paid for again" not in caplog.text


def test_3_a_deleted_batch_is_resent_only_after_ten_minutes_with_a_warning_that_says_so(caplog):
    with Emulator(delay=100, responder=echo) as emu:
        rows = texts(20)
        ds = Dataset.from_dict({"text": rows})
        with pytest.raises(Stop):
            run(ds, emu, poll_interval=stopping())
        (deleted,) = emu.batches
        outsider = emu.client()
        outsider.messages.batches.cancel(deleted)
        outsider.messages.batches.retrieve(deleted)  # the cancel takes effect: it ended
        outsider.messages.batches.delete(deleted)
        started = emu.now()

        out = run(ds, emu, poll_interval=guarded(emu, 60), retries=0)

        (resent,) = emu.batches
        created = datetime.fromisoformat(emu.batches[resent]["created_at"].replace("Z", "+00:00"))
        assert 600 - 0.01 <= created.timestamp() - started <= 600 + 2 * 60  # microseconds
        # Each request bought twice: once in the deleted batch, once more, never a third time.
        assert sent(emu) == dict.fromkeys(ids_of(rows), 2) and emu.calls["create"] == 2
        assert list(out["response"]) == answers(rows)
        assert {s["attempts"] for s in out["dsbatch"]} == {2}
        warning = next(r.getMessage() for r in caplog.records if "paid for again" in r.getMessage())
        assert deleted in warning and "its 20 requests" in warning


def test_3_results_missing_for_ten_minutes_while_the_batch_is_found_are_resent_once(caplog):
    # The batch is retrievable, its results are not (past the 29 days): gone after ten minutes
    # of 404s, not stuck forever, and not after the first few.
    with Emulator(delay=0, responder=echo) as emu:
        emu.faults.http.append(HttpFault("results", 404, times=10_000))
        creates_at = []

        def results_come_back_for_the_new_batch():
            if emu.calls["create"] > len(creates_at):
                creates_at.append(emu.now())
            if len(creates_at) == 2:
                emu.faults.http.clear()

        rows = texts(10)
        schedule = guarded(emu, 60, budget=3 * 3600, on_wait=results_come_back_for_the_new_batch)
        out = run(Dataset.from_dict({"text": rows}), emu, poll_interval=schedule, retries=0)
        assert list(out["response"]) == answers(rows)
        assert sent(emu) == dict.fromkeys(ids_of(rows), 2) and emu.calls["create"] == 2
        assert 600 <= creates_at[1] - creates_at[0] <= 600 + 2 * 60
        warning = next(r.getMessage() for r in caplog.records if "paid for again" in r.getMessage())
        assert "its 10 requests" in warning and "results" in warning


# -- 4. a cancel made outside dsbatch --------------------------------------------------------------


def test_4_a_cancel_from_another_script_while_the_job_was_away_is_final_until_asked():
    with Emulator(delay=100, responder=echo) as emu:
        rows = texts(20)
        ds = Dataset.from_dict({"text": rows})
        with pytest.raises(Stop):
            run(ds, emu, poll_interval=stopping())
        (batch_id,) = emu.batches
        emu.client().messages.batches.cancel(batch_id)  # the Console, before any was done

        out = run(ds, emu, poll_interval=guarded(emu, 60))
        assert statuses(out) == {"canceled": 20}
        assert all("resend_canceled=True" in s["error"] for s in out["dsbatch"])
        assert out["response"] == [None] * 20
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 1
        # Still final on the next run; sent again, exactly those, only when asked.
        run(ds, emu)
        assert emu.calls["create"] == 1
        more = run(ds, emu, resend_canceled=True, poll_interval=guarded(emu, 60))
        assert list(more["response"]) == answers(rows)
        assert sent(emu) == dict.fromkeys(ids_of(rows), 2) and emu.calls["create"] == 2


# -- 5. cache damage costs a download, never a purchase ----------------------------------------


def _unlink(*patterns):
    def damage():
        found = [p for pattern in patterns for p in cache_root().glob(pattern)]
        assert found, patterns
        for path in found:
            path.unlink()

    return damage


def _garble(pattern, data=b"not parquet at all"):
    def damage():
        found = list(cache_root().glob(pattern))
        assert found, pattern
        for path in found:
            path.write_bytes(data)

    return damage


def _remove_job_dir():
    for job in job_dirs():
        shutil.rmtree(job)


def _both(*damages):
    def damage():
        for one in damages:
            one()

    return damage


OUTPUT = "jobs/*/output/*/*.arrow"
DAMAGE = {
    # name: (what is damaged, results downloads the rerun makes)
    "record deleted": (_unlink("jobs/*/batches/000001.json", OUTPUT), 0),
    "record, ids and results deleted": (
        _unlink(
            "jobs/*/batches/000001.json", "jobs/*/batches/000001.ids.arrow", "results/*", OUTPUT
        ),
        3,
    ),
    "job directory deleted": (_remove_job_dir, 0),
    "results deleted": (_unlink("results/*", OUTPUT), 3),
    "results garbled": (_both(_garble("results/*.parquet"), _unlink(OUTPUT)), 3),
    "results emptied": (_both(_garble("results/*.parquet", b""), _unlink(OUTPUT)), 3),
    "output deleted": (_unlink(OUTPUT), 0),
    "output garbled": (_garble(OUTPUT), 0),
    "manifest garbled": (_garble("jobs/*/manifest.json", b"{"), 0),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_5_a_damaged_cache_of_a_finished_job_costs_a_download_never_a_purchase(emu, damage):
    rows = texts(10)
    ds = Dataset.from_dict({"text": rows})
    # Read before the damage: the output maps a file some damages garble in place.
    first = list(run(ds, emu, max_batch_requests=4)["dsbatch"])  # three batches
    assert emu.calls["create"] == 3
    DAMAGE[damage][0]()
    results_before = emu.calls["results"]
    out = run(ds, emu, max_batch_requests=4)
    assert emu.calls["create"] == 3
    assert emu.calls["results"] - results_before == DAMAGE[damage][1]
    assert sent(emu) == dict.fromkeys(ids_of(rows), 1)
    assert list(out["dsbatch"]) == first
    assert list(out["response"]) == answers(rows)


def test_5_record_and_ids_deleted_while_in_flight_cost_one_download():
    with Emulator(delay=600, responder=echo) as emu:
        rows = texts(10)
        ds = Dataset.from_dict({"text": rows})
        with pytest.raises(Stop):
            run(ds, emu, poll_interval=stopping())
        _unlink("jobs/*/batches/000000.json", "jobs/*/batches/000000.ids.arrow")()
        out = run(ds, emu, poll_interval=guarded(emu, 60))
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 1
        assert emu.calls["results"] == 1
        assert list(out["response"]) == answers(rows)
        (record,) = records(job_dirs()[0])
        assert record["state"] == "ingested"


def test_5_a_garbled_results_file_is_named_and_downloaded_again(emu, caplog):
    rows = texts(6)
    ds = Dataset.from_dict({"text": rows})
    run(ds, emu)
    (results,) = cache_root().glob("results/*.parquet")
    results.write_bytes(b"PAR1 garbage")
    _unlink(OUTPUT)()
    out = run(ds, emu)
    assert str(results) in caplog.text
    assert emu.calls["create"] == 1 and emu.calls["results"] == 2
    assert pq.read_table(results).num_rows == 6  # stored again, readable
    assert list(out["response"]) == answers(rows)


# -- 6. a fast or slow local clock and a lost create answer ---------------------------------------


@pytest.mark.parametrize("skew", [400.0, -400.0], ids=["fast", "slow"])
def test_6_a_skewed_local_clock_with_a_lost_create_answer_finds_our_batch(skew, tmp_path, caplog):
    with Emulator(delay=0, responder=echo) as emu:
        # Another notebook (another cache, same key) made a batch of the same size two
        # minutes before ours: a slow clock's window would take it, a fast one would miss ours.
        run(Dataset.from_dict({"text": texts(20, "theirs")}), emu, cache_dir=tmp_path / "theirs")
        (theirs,) = emu.batches
        emu.advance(120)
        emu.faults.lose_create = 1
        rows = texts(20, "ours")
        schedule = guarded(emu, 60, clock=lambda: emu.now() + skew)
        out = run(Dataset.from_dict({"text": rows}), emu, poll_interval=schedule, retries=0)

        assert emu.faults.lose_create == 0
        (ours,) = set(emu.batches) - {theirs}
        assert len(emu.batches) == 2 and emu.calls["create"] == 2
        assert sent(emu, ours) == dict.fromkeys(ids_of(rows), 1)
        assert list(out["response"]) == answers(rows)
        (record,) = records(job_dirs()[0])
        assert record["batch_id"] == ours and record["rejected"] == []
        assert "someone else's" not in caplog.text


# -- 7. another cache's batch of the same size, sharing some of our requests ---------------------


def _their_batch(emu, shared):
    """Another notebook's batch (another cache, same key): 10 of our requests and 10 of its own."""
    requests = shared[:10] + [request_for(f"their own {i}") for i in range(10)]
    return emu.client().messages.batches.create(requests=requests).id


@pytest.mark.parametrize("when", ["before, ended", "before, running", "between intent and create"])
def test_7_reconcile_gives_back_a_batch_holding_part_of_ours_and_finds_ours(
    when, monkeypatch, caplog
):
    rows = texts(20, "ours")
    ours_requests = [request_for(t) for t in rows]
    theirs = []
    with Emulator(delay=0 if when == "before, ended" else 600, responder=echo) as emu:
        if when.startswith("before"):
            theirs.append(_their_batch(emu, ours_requests))
            emu.advance(10)
            emu.faults.lose_create = 1
        else:
            real_create = Backend.create

            def create(self, body, betas=()):
                if not theirs:
                    theirs.append(_their_batch(emu, json.loads(body)["requests"]))
                    emu.advance(5)
                    emu.faults.lose_create = 1
                return real_create(self, body, betas)

            monkeypatch.setattr(Backend, "create", create)

        out = run(Dataset.from_dict({"text": rows}), emu, poll_interval=guarded(emu, 60))

        assert emu.faults.lose_create == 0
        (ours,) = set(emu.batches) - set(theirs)
        assert len(emu.batches) == 2
        assert sent(emu, ours) == dict.fromkeys(ids_of(rows), 1)
        assert list(out["response"]) == answers(rows)
        # Their answers to the shared requests were not taken as ours, nor stored.
        assert {s["attempts"] for s in out["dsbatch"]} == {1}
        assert {p.stem for p in cache_root().glob("results/*.parquet")} == {ours}
        (record,) = records(job_dirs()[0])
        if when.startswith("before"):
            # A batch made before our intent is passed over: the one made after it is ours.
            assert record["batch_id"] == ours and record["rejected"] == []
            assert "someone else's" not in caplog.text
        else:
            # Made after our intent, it is taken first, found out by its results, given back.
            assert record["batch_id"] == ours and record["rejected"] == theirs
            assert "someone else's" in caplog.text
        assert "incomplete" not in caplog.text.lower()


# -- 8. API keys: a refusal binds nothing; rotating keys in one workspace works -------------------


def test_8_a_create_refused_for_a_typod_key_binds_nothing(caplog):
    with Emulator(delay=0, responder=echo, api_key="sk-right") as emu:
        rows = texts(20)
        ds = Dataset.from_dict({"text": rows})
        with pytest.raises(BatchAPIError, match="Nothing was bought") as info:
            dsbatch.map(
                ds,
                prompt,
                model=MODEL,
                max_tokens=256,
                client=emu.client(api_key="sk-rihgt", max_retries=0),
                poll_interval=0,
                progress=False,
            )
        assert info.value.status_code == 401 and not emu.batches
        (record,) = records(job_dirs()[0])
        assert record["state"] == "unsent"

        out = run(ds, emu, retries=0)  # the right key
        assert list(out["response"]) == answers(rows)
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and len(emu.batches) == 1
        assert "another API key" not in caplog.text


def _map_with_key(emu, ds, key, schedule):
    return dsbatch.map(
        ds,
        prompt,
        model=MODEL,
        max_tokens=256,
        client=emu.client(api_key=key, max_retries=0),
        poll_interval=schedule,
        progress=False,
    )


HAS_WORKSPACES = "workspaces" in inspect.signature(Emulator).parameters
SCOPES = [
    "one workspace for every key",
    pytest.param(
        "workspaces",
        marks=pytest.mark.skipif(not HAS_WORKSPACES, reason="this Emulator has no workspaces="),
    ),
]


def _emulator(scope, workspaces):
    if scope == "workspaces":
        return Emulator(delay=600, responder=echo, workspaces=workspaces)
    return Emulator(delay=600, responder=echo)


@pytest.mark.parametrize("scope", SCOPES)
def test_8_a_new_key_of_the_same_workspace_picks_up_a_batch_in_flight(scope):
    with _emulator(scope, {"sk-old": "team", "sk-rotated": "team"}) as emu:
        rows = texts(20)
        ds = Dataset.from_dict({"text": rows})
        with pytest.raises(Stop):
            _map_with_key(emu, ds, "sk-old", stopping())
        out = _map_with_key(emu, ds, "sk-rotated", guarded(emu, 120))
        assert list(out["response"]) == answers(rows)
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 1


def test_8_a_passing_404_after_a_key_rotation_is_waited_out():
    with Emulator(delay=600, responder=echo) as emu:
        rows = texts(20)
        ds = Dataset.from_dict({"text": rows})
        with pytest.raises(Stop):
            _map_with_key(emu, ds, "sk-old", stopping())
        emu.faults.http.append(HttpFault("retrieve", 404, times=1))
        out = _map_with_key(emu, ds, "sk-rotated", guarded(emu, 60))
        assert list(out["response"]) == answers(rows)
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 1


@pytest.mark.parametrize("scope", SCOPES)
def test_8_a_key_that_cannot_see_the_batch_is_refused_naming_it(scope):
    with _emulator(scope, {"sk-one": "team", "sk-other": "other"}) as emu:
        rows = texts(20)
        ds = Dataset.from_dict({"text": rows})
        with pytest.raises(Stop):
            _map_with_key(emu, ds, "sk-one", stopping())
        (batch_id,) = emu.batches
        if scope != "workspaces":  # "this key cannot see the batch" is a 404 for it
            emu.faults.http.append(HttpFault("retrieve", 404, times=100))
        with pytest.raises(BatchAPIError, match="another API key") as info:
            _map_with_key(emu, ds, "sk-other", guarded(emu, 60))
        assert batch_id in str(info.value) and info.value.batch_id == batch_id
        assert emu.calls["create"] == 1
        emu.faults.http.clear()
        out = _map_with_key(emu, ds, "sk-one", guarded(emu, 60))
        assert list(out["response"]) == answers(rows)
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 1


# -- 9. a damaged ids file ------------------------------------------------------------------------


def _ids_table(ids, column="custom_id") -> bytes:
    sink = pa.BufferOutputStream()
    table = pa.table({column: pa.array(ids, pa.string())})
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _other_batchs_ids(path: Path) -> bytes:
    return path.with_name("000001.ids.arrow").read_bytes()


IDS_DAMAGE = {
    "another batch's ids": _other_batchs_ids,
    "one id changed": lambda path: _ids_table(["dsb_" + "0" * 32, *ids_of(texts(5))[1:]]),
    "a column of another name": lambda path: _ids_table(ids_of(texts(5)), column="ids"),
    "emptied": lambda path: b"",
    "cut in half": lambda path: path.read_bytes()[: len(path.read_bytes()) // 2],
}


@pytest.mark.parametrize("damage", list(IDS_DAMAGE))
def test_9_a_damaged_ids_file_is_a_ledger_error_naming_it_before_any_download(damage):
    with Emulator(delay=600, responder=echo) as emu:
        rows = texts(10)
        ds = Dataset.from_dict({"text": rows})
        with pytest.raises(Stop):
            run(ds, emu, max_batch_requests=5, poll_interval=stopping())
        emu.advance(600)  # both batches ended: a download would be possible
        (damaged,) = cache_root().glob("jobs/*/batches/000000.ids.arrow")
        damaged.write_bytes(IDS_DAMAGE[damage](damaged))
        before = sum(emu.calls.values())
        for _ in range(2):  # the same answer on every rerun, never a download
            with pytest.raises(LedgerError) as info:
                run(ds, emu, max_batch_requests=5, poll_interval=guarded(emu, 60))
            assert info.value.path == str(damaged) and str(damaged) in str(info.value)
            assert "Delete it" in str(info.value)
        assert sum(emu.calls.values()) == before

        damaged.unlink()  # what the message says: rebuilt from the batch's results
        out = run(ds, emu, max_batch_requests=5, poll_interval=guarded(emu, 60))
        assert list(out["response"]) == answers(rows)
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 2
        assert emu.calls["results"] == 2


def test_9_a_damaged_ids_file_of_a_finished_job_whose_results_are_gone_is_named(emu):
    rows = texts(5)
    ds = Dataset.from_dict({"text": rows})
    run(ds, emu)
    _unlink("results/*", OUTPUT)()
    (ids_file,) = cache_root().glob("jobs/*/batches/000000.ids.arrow")
    ids_file.write_bytes(_ids_table(ids_of(texts(5, "other"))))
    emu.reset_stats()
    with pytest.raises(LedgerError) as info:
        run(ds, emu)
    assert info.value.path == str(ids_file)
    assert sum(emu.calls.values()) == 0
    ids_file.unlink()
    assert list(run(ds, emu)["response"]) == answers(rows)
    assert emu.calls["results"] == 1 and emu.calls["create"] == 0


# -- 10. one odd result line -----------------------------------------------------------------------


def _message(text, **changes):
    message = {
        "id": "msg_odd",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 7},
    }
    message.update(changes)
    return {"type": "succeeded", "message": message}


ODD = {
    "float count": _message("floaty", usage={"input_tokens": 1.0, "output_tokens": 7}),
    "content as a string": _message("", content="just a string"),
    "fractional count": _message("half", usage={"input_tokens": 5, "output_tokens": 2.5}),
    "cut short": _message("cut", stop_reason="max_tokens"),
}


def test_10_one_odd_result_line_costs_that_row_only_and_one_download():
    def responder(custom_id, params):
        text = params["messages"][0]["content"]
        return ODD.get(text) or echo(custom_id, params)

    rows = [*texts(17), *ODD]
    with Emulator(delay=0, responder=responder) as emu:
        ds = Dataset.from_dict({"text": rows})
        out = run(ds, emu)
        by_text = dict(zip(rows, zip(out["response"], out["dsbatch"])))
        for text in texts(17):
            response, status = by_text[text]
            assert response == f"echo: {text}" and status["status"] == "succeeded"
            # Read line by line (one odd line), the other rows keep their stop_reason.
            assert status["stop_reason"] == "end_turn"
        assert by_text["cut short"][1]["stop_reason"] == "max_tokens"
        # A whole-number float is a count: read as it is meant.
        response, status = by_text["float count"]
        assert response == "floaty" and status["status"] == "succeeded"
        assert status["input_tokens"] == 1
        response, status = by_text["content as a string"]
        assert response is None and status["status"] == "parse_error"
        assert "content is a str, not a list of blocks" in status["error"]
        response, status = by_text["fractional count"]
        assert status["status"] == "parse_error" and "output_tokens is 2.5" in status["error"]
        assert emu.calls["results"] == 1 and emu.calls["create"] == 1
        # A parse error is final: neither a rerun nor more attempts download or buy it again.
        emu.reset_stats()
        again = run(ds, emu, max_attempts=5)
        assert sum(emu.calls.values()) == 0
        assert list(again["dsbatch"]) == list(out["dsbatch"])
        assert {s["attempts"] for s in out["dsbatch"]} == {1}


# -- 11. a corrupt record of an unrelated finished job -------------------------------------------


def _cut_record(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble_record_and_lose_the_journal(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\n}} trailing garbage")
    (cache_root() / "journal.jsonl").unlink()


@pytest.mark.parametrize(
    "damage", [_cut_record, _garble_record_and_lose_the_journal], ids=["cut", "garbled, no journal"]
)
def test_11_another_jobs_corrupt_record_neither_blocks_reconcile_nor_is_adopted(damage, caplog):
    with Emulator(delay=0, responder=echo) as emu:
        run(Dataset.from_dict({"text": texts(20, "done")}), emu)
        (done_job,) = job_dirs()
        (done_batch,) = emu.batches
        (record_path,) = (done_job / "batches").glob("*.json")
        damage(record_path)
        damaged = record_path.read_bytes()
        emu.advance(10)  # the same size, ten seconds older than our intent
        emu.faults.lose_create = 1

        rows = texts(20, "new")
        out = run(Dataset.from_dict({"text": rows}), emu)

        assert emu.faults.lose_create == 0
        (ours,) = set(emu.batches) - {done_batch}
        assert sent(emu, ours) == dict.fromkeys(ids_of(rows), 1) and len(emu.batches) == 2
        assert list(out["response"]) == answers(rows)
        (our_job,) = set(job_dirs()) - {done_job}
        (record,) = records(our_job)
        assert record["batch_id"] == ours and record["rejected"] == []
        assert "someone else's" not in caplog.text
        assert str(record_path) in caplog.text  # skipped, with a warning naming it
        assert record_path.read_bytes() == damaged  # and left for its own job to report


# -- what to build: the bullets no other test covers ----------------------------------------------


def test_temporary_files_orphaned_by_a_kill_are_swept_when_the_cache_is_next_opened(emu):
    rows = texts(4)
    ds = Dataset.from_dict({"text": rows})
    run(ds, emu)
    (job,) = job_dirs()
    old = [
        cache_root() / ".FORMAT.x1.tmp",
        cache_root() / "results" / ".msgbatch_x.parquet.x2.tmp",
        job / "batches" / ".000001.json.x3.tmp",
        job / "output" / "data" / ".0a1b2c3d4e5f6a7b.arrow.x4.tmp",
    ]
    fresh = cache_root() / "results" / ".msgbatch_y.parquet.x5.tmp"  # a live writer's
    eleven_minutes_ago = time.time() - 11 * 60
    for path in [*old, fresh]:
        path.write_bytes(b"half written")
    for path in old:
        os.utime(path, (eleven_minutes_ago, eleven_minutes_ago))
    emu.reset_stats()
    out = run(ds, emu)
    assert [p for p in old if p.exists()] == []
    assert fresh.exists()
    assert sum(emu.calls.values()) == 0 and list(out["response"]) == answers(rows)


def test_a_cache_directory_that_cannot_be_created_is_a_ledger_error_naming_it(emu, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(LedgerError) as info:
        run(Dataset.from_dict({"text": ["a"]}), emu, cache_dir=blocker / "cache")
    assert info.value.path == str(blocker / "cache") and str(blocker / "cache") in str(info.value)
    assert sum(emu.calls.values()) == 0


@pytest.mark.parametrize("content", ["", "\n", "  \n"], ids=["empty", "newline", "blank"])
def test_an_empty_format_file_is_a_clear_ledger_error(emu, content):
    cache_root().mkdir(parents=True)
    fmt = cache_root() / "FORMAT"
    fmt.write_text(content)
    with pytest.raises(LedgerError, match="is empty") as info:
        run(Dataset.from_dict({"text": ["a"]}), emu)
    assert info.value.path == str(fmt) and str(fmt) in str(info.value)
    assert str(FORMAT_VERSION) in str(info.value).split("empty", 1)[1]  # what it should hold
    assert sum(emu.calls.values()) == 0 and fmt.read_text() == content


@pytest.mark.parametrize("interval", [math.nan, math.inf, -math.inf, -1.0])
def test_a_nan_or_infinite_poll_interval_is_a_value_error_before_any_call(emu, interval):
    with pytest.raises(ValueError, match="poll_interval"):
        run(Dataset.from_dict({"text": texts(3)}), emu, poll_interval=interval)
    assert sum(emu.calls.values()) == 0 and not cache_root().joinpath("jobs").exists()
    with pytest.raises(ValueError, match="PollSchedule"):
        dsbatch.PollSchedule(initial=interval)


def test_on_error_raise_on_a_dataset_dict_reports_every_failing_split():
    with Emulator(delay=0, responder=echo, faults=Faults(errored=0.4)) as emu:
        dd = DatasetDict(
            {
                "train": Dataset.from_dict({"text": texts(30, "train")}),
                "clean": Dataset.from_dict({"text": []}),
                "test": Dataset.from_dict({"text": texts(30, "test")}),
            }
        )
        with pytest.raises(RowFailedError) as info:
            run(dd, emu, max_attempts=1, on_error="raise")
        message = str(info.value)
        assert "in split 'train'" in message and "in split 'test'" in message
        emu.reset_stats()
        kept = run(dd, emu, max_attempts=1)
        assert sum(emu.calls.values()) == 0
        failed = {
            split: [i for i, s in enumerate(kept[split]["dsbatch"]) if s["status"] != "succeeded"]
            for split in ("train", "test")
        }
        assert failed["train"] and failed["test"]
        assert info.value.by_split == failed
        assert len(info.value.custom_ids) == len(failed["train"]) + len(failed["test"])


def test_api_version_2026_refuses_sampling_params_up_front_and_2023_06_01_sends_them(emu):
    rows = texts(5)
    ds = Dataset.from_dict({"text": rows})

    def call(client, **kwargs):
        return dsbatch.map(
            ds, prompt, model=MODEL, max_tokens=256, client=client, poll_interval=0,
            progress=False, **kwargs,
        )  # fmt: skip

    with pytest.raises(PromptError, match="row 0: 'temperature' is rejected") as info:
        call(emu.client(), params={"temperature": 0.2})
    assert "2026-10-21" in str(info.value)
    assert "default_headers={'anthropic-version': '2023-06-01'}" in str(info.value)
    with pytest.raises(PromptError, match="row 3: 'top_k'"):
        dsbatch.map(
            ds,
            lambda r: (
                {"messages": [{"role": "user", "content": r["text"]}], "top_k": 5}
                if r["text"] == "row 3"
                else r["text"]
            ),
            model=MODEL,
            client=emu.client(),
            progress=False,
        )
    assert sum(emu.calls.values()) == 0

    out = call(
        emu.client(default_headers={"anthropic-version": "2023-06-01"}),
        params={"temperature": 0.2},
    )
    (batch_id,) = emu.batches
    assert emu.batch_version(batch_id) == "2023-06-01"
    assert emu.last_create_headers["anthropic-version"] == "2023-06-01"
    assert {r["params"]["temperature"] for r in emu.last_create_body["requests"]} == {0.2}
    assert list(out["response"]) == answers(rows) and statuses(out) == {"succeeded": 5}
    # The premise: a client left alone sends 2026-10-21, which dsbatch read above.
    call(emu.client())
    assert emu.last_create_headers["anthropic-version"] == "2026-10-21"


def test_the_readme_says_exactly_which_failures_are_retried():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "invalid_request_error" in readme and "expired" in readme
    assert "canceled" in readme and "resend_canceled" in readme


# -- format-1 caches -------------------------------------------------------------------------------

_OLD_JOB = xxhash.xxh3_128_hexdigest(b"dsbatch-job-v1 an old job")


def _format_1_record(seq, ids, *, state, batch_id, created_at, counts=None):
    format1.write_record(
        cache_root(),
        _OLD_JOB,
        seq,
        ids,
        state=state,
        batch_id=batch_id,
        created_at=created_at,
        counts=counts,
    )


def _format_1_cache(answered, batch_id="msgbatch_01formatone"):
    """A cache as format 1 wrote it: one finished job whose batch answered ``answered``."""
    root = cache_root()
    ids = ids_of(answered)
    results = {c: _message(f"echo: {t}") for c, t in zip(ids, answered)}
    format1.write_results(root, batch_id, results, texts=answers(answered))
    job = root / "jobs" / _OLD_JOB
    _format_1_record(
        0,
        ids,
        state="ingested",
        batch_id=batch_id,
        created_at=1.7e9,
        counts={"succeeded": len(ids)},
    )
    (job / "manifest.json").write_text(json.dumps({"format": 1, "state": "finished"}))
    (job / "output").mkdir()
    (job / "output" / "data.arrow").write_bytes(b"format-1 output")


def test_a_format_1_cache_is_migrated_and_answers_a_new_job_without_a_create(emu):
    rows = texts(8)
    _format_1_cache(rows)
    ds = Dataset.from_dict({"text": rows[::-1]})
    out = run(ds, emu)
    assert sum(emu.calls.values()) == 0
    assert list(out["response"]) == answers(rows[::-1])
    assert statuses(out) == {"succeeded": 8} and {s["attempts"] for s in out["dsbatch"]} == {1}
    assert {s["input_tokens"] for s in out["dsbatch"]} == {5}
    root = cache_root()
    assert (root / "FORMAT").read_text().strip() == str(FORMAT_VERSION)
    assert not (root / "requests").exists()
    assert (root / "results" / "msgbatch_01formatone.parquet").exists()
    journal = [json.loads(line) for line in (root / "journal.jsonl").read_text().splitlines()]
    # Journaled by the migration to format 2, then again with its origin by the one to 3.
    assert [e["batch_id"] for e in journal] == ["msgbatch_01formatone"] * 2
    assert journal[-1]["origin"] == "emulator"
    assert (root / "jobs" / _OLD_JOB / "batches" / "000000.ids.arrow").exists()


def test_a_batch_in_flight_in_a_format_1_cache_is_polled_never_bought_again():
    with Emulator(delay=600, responder=echo) as emu:
        answered, flying, new = texts(6), texts(6, "flying"), texts(3, "new")
        _format_1_cache(answered)
        # The format-1 process created this batch, recorded it, and died.
        batch = emu.client().messages.batches.create(requests=[request_for(t) for t in flying])
        _format_1_record(
            1, ids_of(flying), state="submitted", batch_id=batch.id, created_at=emu.now()
        )
        rows = answered + flying + new
        out = run(Dataset.from_dict({"text": rows}), emu, poll_interval=guarded(emu, 60))
        assert list(out["response"]) == answers(rows)
        # Only the three requests no batch ever held were bought.
        assert sent(emu) == dict.fromkeys(ids_of(flying + new), 1) and emu.calls["create"] == 2
        migrated = records(cache_root() / "jobs" / _OLD_JOB)
        assert [r["state"] for r in migrated] == ["ingested", "ingested"]
