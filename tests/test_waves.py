"""Issue 14: waves under the processing-queue limit. A job never has more requests in the queue
than ``max_queued_requests``, counting every batch in flight of its cache and origin (its own and
other jobs'), and sends the rest as earlier batches end; a 429 on create (the queue is full)
is waited out without spending the attempts real failures get.

The queue is observed on the emulator's side: after every create, the requests of every batch
not yet ended (``request_counts.processing``)."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset
from support import (
    MODEL,
    answers,
    cache_root,
    echo,
    ids_of,
    observe_queue,
    run,
    sent,
    virtual,
)

import dsbatch
from dsbatch._options import MapOptions
from dsbatch.testing import Emulator, Faults, HttpFault


def texts(n: int, prefix: str = "row") -> list[str]:
    return [f"{prefix} {i}" for i in range(n)]


def rows(values: list[str]) -> Dataset:
    return Dataset.from_dict({"text": values})


def start(ds: Dataset, emu: Emulator, **kwargs) -> dsbatch.Job:
    """A job started without waiting: its first step only."""
    return dsbatch.map(
        ds, lambda r: r["text"], model=MODEL, max_tokens=256, client=emu.client(),
        poll_interval=virtual(emu, 60), progress=False, wait=False, **kwargs,
    )  # fmt: skip


def test_waves_keep_the_queue_under_the_limit_and_the_job_finishes():
    with Emulator(responder=echo) as emu:
        # Batches end after 5, 10 or 15 minutes in turn: room frees a batch at a time.
        queue = observe_queue(emu, durations=[300, 600, 900])
        values = texts(1000)
        out = run(rows(values), emu, wait=60, max_queued_requests=250, max_batch_requests=100)
        assert list(out["response"]) == answers(values)
        assert sent(emu) == dict.fromkeys(ids_of(values), 1)
    assert max(queue) == 250 and all(size <= 250 for size in queue)
    # The first wave fills the queue (100 + 100 + 50); later batches go out as room frees.
    assert queue[:3] == [100, 200, 250]
    assert len(queue) == emu.calls["create"] > 10


def test_a_job_waits_for_room_that_another_job_s_batch_takes_and_reads_that_batch_itself():
    with Emulator(delay=600, responder=echo) as emu:
        queue = observe_queue(emu)
        first_rows, second_rows = texts(300, "first"), texts(200, "second")
        first = start(rows(first_rows), emu)  # its 300 requests stay in flight, unwatched
        second = start(rows(second_rows), emu, max_queued_requests=300)
        assert emu.calls["create"] == 1  # no room: the second job sent nothing yet
        assert second.status(refresh=False).counts["to_send"] == 200
        # Waiting, it polls the batch that fills the queue (no one else does), reads it,
        # then sends its own.
        status = second.wait(timeout=7200)
        assert status.done and status.counts["succeeded"] == 200
        assert queue == [300, 200]
        (record,) = [
            json.loads(p.read_bytes())
            for p in (cache_root() / "jobs" / first.fingerprint / "batches").glob("*.json")
        ]
        assert record["state"] == "ingested"
        assert list(first.result()["response"]) == answers(first_rows)
        assert list(second.result()["response"]) == answers(second_rows)
        assert emu.calls["create"] == 2 and not emu.duplicate_custom_ids


def test_a_dry_run_says_when_requests_will_go_out_in_waves(emu):
    plan = run(rows(texts(300)), emu, dry_run=True, max_queued_requests=120)
    assert (plan.requests, plan.batches, plan.max_queued_requests) == (300, 3, 120)
    assert "sent in waves: at most 120 requests in the processing queue" in repr(plan)


class Sleeps:
    """A sleep that advances the emulator's clock and remembers every wait."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.emu.advance(seconds)


def test_a_429_on_create_waits_without_spending_the_create_attempts():
    # Twelve refusals: more than the eight attempts a create gets for real failures.
    faults = Faults(http=[HttpFault("create", 429, times=12, retry_after=30)])
    with Emulator(delay=0, responder=echo, faults=faults) as emu:
        sleeps = Sleeps(emu)
        schedule = virtual(emu, 5)
        schedule.sleep = sleeps
        values = texts(5)
        out = run(rows(values), emu, poll_interval=schedule, retries=0)
        assert list(out["response"]) == answers(values)
        assert emu.calls["create"] == 13 and len(emu.batches) == 1
        assert sleeps.waits[:12] == [30] * 12


def test_real_create_failures_still_give_up_after_eight_whatever_rate_limits_came_first():
    faults = Faults(http=[HttpFault("create", 429, times=5), HttpFault("create", 503, times=20)])
    with Emulator(delay=0, responder=echo, faults=faults) as emu:
        with pytest.raises(dsbatch.BatchAPIError, match="could not create batch #0"):
            run(rows(texts(5)), emu, wait=1, retries=0)
        assert emu.calls["create"] == 5 + 8


@pytest.mark.parametrize("value", [0, -5, 1.5, "100"])
def test_a_bad_queue_limit_is_refused_naming_the_keyword(emu, value):
    with pytest.raises(ValueError, match="max_queued_requests must be a positive integer"):
        run(rows(texts(2)), emu, max_queued_requests=value)


def test_a_job_keeps_its_queue_limit_and_one_recorded_before_it_gets_the_default(emu):
    job = start(rows(texts(3)), emu, max_queued_requests=7)
    manifest = json.loads((cache_root() / "jobs" / job.fingerprint / "manifest.json").read_text())
    kept = manifest["options"]
    assert kept["max_queued_requests"] == 7
    del kept["max_queued_requests"], kept["prices"]  # as written by an earlier dsbatch
    options, missing = MapOptions.from_json(kept)
    assert options.max_queued_requests == 100_000 and options.prices is None and not missing


def three_waves(emu: Emulator) -> None:
    """300 rows in batches of 100 under a queue of 100, polled every minute: three waves, each
    answered and each request sent once."""
    values = texts(300)
    out = dsbatch.map(
        rows(values), lambda r: r["text"], model=MODEL, max_tokens=256, client=emu.client(),
        poll_interval=virtual(emu, 60, factor=1.0), progress=False,
        max_queued_requests=100, max_batch_requests=100,
    )  # fmt: skip
    assert list(out["response"]) == answers(values)
    assert sent(emu) == dict.fromkeys(ids_of(values), 1)


def test_the_next_wave_goes_out_before_the_batch_that_made_room_is_downloaded():
    # Batches of 100 under a queue of 100, each ending 5 minutes after its create, polled every
    # minute. The step that finds a batch ended creates the next one first (the API works on it
    # meanwhile), then downloads; the last batch is downloaded at once and the job ends there.
    with Emulator(delay=300, responder=echo) as emu:
        events = []
        store = emu._store
        create, ready, results = store.create, store.ready_results, store.results

        def created(requests, **kwargs):
            batch = create(requests, **kwargs)
            events.append(("create", batch.id))
            return batch

        def served_ready(batch_id, *args, **kwargs):  # an ended batch's, without the lock
            served = ready(batch_id, *args, **kwargs)
            if served is not None:
                events.append(("download", batch_id))
            return served

        def served(batch_id, *args, **kwargs):
            events.append(("download", batch_id))
            return results(batch_id, *args, **kwargs)

        store.create, store.ready_results, store.results = created, served_ready, served
        start_at = emu.now()
        three_waves(emu)
        assert emu.now() - start_at == 900  # three batches of five minutes, no poll more
    first, second, third = [batch_id for kind, batch_id in events if kind == "create"]
    assert events == [
        ("create", first),
        ("create", second),
        ("download", first),
        ("create", third),
        ("download", second),
        ("download", third),
    ]


def test_a_batch_downloaded_while_the_next_wave_runs_is_parsed_on_one_core(monkeypatch):
    # The API works on the next wave while this call parses the last one: the parse leaves the
    # machine's other cores alone (an emulator beside it ran 45% slower beside a parse on
    # every core). The last batch, with nothing else in flight, is parsed on every core.
    import pyarrow.csv as pacsv
    import pyarrow.json as pj

    readers: list[tuple[str, bool]] = []
    read_json, read_csv = pj.read_json, pacsv.read_csv

    def json_reader(source, *, read_options, **kwargs):
        readers.append(("json", read_options.use_threads))
        return read_json(source, read_options=read_options, **kwargs)

    def csv_reader(source, *, read_options, **kwargs):
        readers.append(("lines", read_options.use_threads))
        return read_csv(source, read_options=read_options, **kwargs)

    monkeypatch.setattr(pj, "read_json", json_reader)
    monkeypatch.setattr(pacsv, "read_csv", csv_reader)
    with Emulator(delay=300, responder=echo) as emu:
        three_waves(emu)
        assert emu.calls["create"] == 3 and emu.calls["results"] == 3
    one_core = [("lines", False), ("json", False)]
    assert readers == one_core + one_core + [("lines", True), ("json", True)]
