"""Long jobs: submit now and collect later, from this process or another, without the dataset or
the prompt function; see where a job stands; cancel it; wait with a timeout."""

from __future__ import annotations

import logging
import os

import pytest
from datasets import Dataset, DatasetDict, load_from_disk
from pydantic import BaseModel
from support import MODEL, answers, echo, ids_of, prompt, sent, virtual

import dsbatch
from dsbatch._backend import Backend
from dsbatch.testing import Emulator


class Topic(BaseModel):
    """The topic of a text."""

    topic: str
    score: int


def texts(n, prefix="text"):
    return [f"{prefix} {i}" for i in range(n)]


def submit(emu, ds, fn=prompt, **kwargs):
    kwargs.setdefault("poll_interval", virtual(emu, 60))
    kwargs.setdefault("progress", False)
    return dsbatch.map(
        ds, fn, model=MODEL, max_tokens=256, client=emu.client(), wait=False, **kwargs
    )


def load(job, emu, every=60):
    """The job as another process finds it: by a prefix of its fingerprint, nothing else
    (polling every ``every`` seconds of the emulator's virtual clock)."""
    return dsbatch.Job.load(
        job.fingerprint[:10], client=emu.client(), poll_interval=virtual(emu, every, maximum=every)
    )


def test_wait_false_returns_once_every_batch_is_created_and_another_process_collects():
    rows = texts(30)
    with Emulator(delay=24 * 3600 - 60, responder=echo) as emu:
        job = submit(emu, Dataset.from_dict({"text": rows}), max_batch_requests=10)
        assert isinstance(job, dsbatch.Job)
        assert emu.calls["create"] == 3 and emu.calls["results"] == 0
        status = job.status()
        assert status.state == "running" and status.counts["in_flight"] == 30
        assert [b.state for b in status.batches] == ["in_progress"] * 3
        assert [b.requests for b in status.batches] == [10, 10, 10]
        emu.advance(24 * 3600 - 60)  # almost a day later
        later = load(job, emu)
        out = later.result()
        assert list(out["response"]) == answers(rows)
        assert out.column_names == ["text", "response", "dsbatch"]
        assert emu.calls["create"] == 3 and sent(emu) == dict.fromkeys(ids_of(rows), 1)
        done = later.status()
        assert done.state == "done" and done.counts["succeeded"] == 30 and done.left == 0
        assert [b.state for b in done.batches] == ["ended"] * 3


def test_the_collected_result_is_exactly_what_map_returns(emu):
    rows = texts(12)
    ds = Dataset.from_dict({"text": rows, "n": list(range(12))}).with_format("numpy")
    dd = DatasetDict({"train": ds.select(range(8)), "test": ds.select(range(8, 12))})
    job = submit(emu, dd, on_error="drop", output_column="answer")
    collected = load(job, emu).result()
    direct = dsbatch.map(
        dd,
        prompt,
        model=MODEL,
        max_tokens=256,
        client=emu.client(),
        on_error="drop",
        output_column="answer",
        poll_interval=0,
        progress=False,
    )
    assert isinstance(collected, DatasetDict) and list(collected) == ["train", "test"]
    for split in dd:
        assert collected[split].features == direct[split].features
        assert collected[split].format == direct[split].format
        assert collected[split]._fingerprint == direct[split]._fingerprint
        assert collected[split].with_format(None)[:] == direct[split].with_format(None)[:]
    assert emu.calls["create"] == 1


def test_structured_columns_follow_the_model_and_code_that_cannot_be_imported_is_asked_for():
    emulator = Emulator(delay=0).start()  # schema-valid answers
    emu = emulator
    rows = texts(6)
    job = submit(emu, Dataset.from_dict({"text": rows}), response_format=Topic)
    out = load(job, emu).result()  # Topic is imported back from this module
    assert out.column_names == ["text", "response", "topic", "score", "dsbatch"]
    assert all(isinstance(s, int) for s in out["score"])

    class Local(BaseModel):
        label: str

    local = submit(emu, Dataset.from_dict({"text": rows}), response_format=Local)
    with pytest.raises(ValueError, match=r"response_format=Local.*pass it"):
        load(local, emu).result()
    assert load(local, emu).result(response_format=Local).column_names[2] == "label"
    emulator.stop()


def test_a_dataset_read_from_files_is_kept_as_a_reference_and_its_change_is_noticed(emu, tmp_path):
    rows = texts(20)
    Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "ds"))
    ds = load_from_disk(str(tmp_path / "ds")).shuffle(seed=3)
    job = submit(emu, ds)
    kept = list((dsbatch.Job.load(job.fingerprint)._job.dir / "inputs").iterdir())
    assert len(kept) == 1 and kept[0].stat().st_size < 4096  # a reference, not the rows
    out = load(job, emu).result()
    assert list(out["response"]) == answers(ds["text"])
    # The file changes under the job: the rows cannot be rebuilt; the message says what to do.
    (arrow,) = [f["filename"] for f in ds.cache_files if f["filename"].endswith(".arrow")][:1]
    os.utime(arrow, ns=(1, 1))
    again = load(job, emu)
    with pytest.raises(ValueError, match=r"has changed since the job started.*result\(dataset="):
        again.result()
    assert list(again.result(dataset=ds)["response"]) == answers(ds["text"])
    with pytest.raises(ValueError, match="not the one job"):
        again.result(dataset=Dataset.from_dict({"text": texts(20, "other")}))


def test_wait_with_a_timeout_returns_without_losing_anything():
    rows = texts(10)
    with Emulator(delay=3600, responder=echo) as emu:
        job = submit(emu, Dataset.from_dict({"text": rows}))
        start = emu.now()
        status = load(job, emu).wait(timeout=600)
        assert not status.done and status.counts["in_flight"] == 10
        assert 540 <= emu.now() - start <= 600 and emu.calls["create"] == 1
        with pytest.raises(TimeoutError, match="still running"):
            load(job, emu).result(timeout=60)
        assert load(job, emu).wait().done
        assert list(load(job, emu).result()["response"]) == answers(rows)
        assert emu.calls["create"] == 1


def test_requests_that_expire_are_sent_again_until_attempts_run_out():
    with Emulator(delay=1000 * 24 * 3600, responder=echo) as emu:
        job = submit(emu, Dataset.from_dict({"text": texts(4)}), max_attempts=2)
        status = load(job, emu, every=3600).wait()  # two days: polled hourly
        assert status.counts["expired"] == 4 and status.done
        out = load(job, emu).result()
        assert {s["status"] for s in out["dsbatch"]} == {"expired"}
        assert {s["attempts"] for s in out["dsbatch"]} == {2}
        assert emu.calls["create"] == 2


def test_cancel_keeps_what_was_answered_and_ends_the_rest_canceled():
    rows = texts(40)
    with Emulator(delay=600, responder=echo) as emu:
        job = submit(emu, Dataset.from_dict({"text": rows}))
        emu.advance(300)  # half the batch is answered
        status = load(job, emu).cancel()
        assert status.state == "canceled"
        out = load(job, emu).result()
        states = [s["status"] for s in out["dsbatch"]]
        assert states.count("succeeded") == 20 and states.count("canceled") == 20
        answered = [r for r, s in zip(out["response"], states) if s == "succeeded"]
        assert answered == [a for a, s in zip(answers(rows), states) if s == "succeeded"]
        assert emu.calls["create"] == 1
        # Canceled requests are sent again only when asked.
        again = submit(emu, Dataset.from_dict({"text": rows}), resend_canceled=True)
        assert emu.calls["create"] == 2 and len(sent(emu, list(emu.batches)[-1])) == 20
        emu.advance(600)
        out = again.result()
        assert {s["status"] for s in out["dsbatch"]} == {"succeeded"}


def test_a_cancel_marks_the_job_canceled_before_it_cancels_a_batch(monkeypatch):
    real_cancel = Backend.cancel
    seen: list[str] = []

    def cancel(self, batch_id):
        # What a step of another call reads at this moment: it must create nothing more.
        seen.append(dsbatch.Job.load(job.fingerprint).status(refresh=False).state)
        return real_cancel(self, batch_id)

    monkeypatch.setattr(Backend, "cancel", cancel)
    with Emulator(delay=600, responder=echo) as emu:
        job = submit(emu, Dataset.from_dict({"text": texts(6)}), max_batch_requests=3)
        assert load(job, emu).cancel().state == "canceled"
        assert seen == ["canceled", "canceled"]


def test_a_canceled_job_sends_nothing_more_and_its_unsent_requests_end_canceled(monkeypatch):
    rows = texts(30)
    real_create = Backend.create
    creates: list[int] = []

    def create(self, body, betas=()):
        creates.append(1)
        if len(creates) == 2:  # the API refuses the second of three batches outright
            raise dsbatch.BatchAPIError("creating a batch failed with HTTP 400", status_code=400)
        return real_create(self, body, betas)

    monkeypatch.setattr(Backend, "create", create)
    with Emulator(delay=600, responder=echo) as emu:
        ds = Dataset.from_dict({"text": rows})
        with pytest.raises(dsbatch.BatchAPIError, match="could not create batch #1"):
            submit(emu, ds, max_batch_requests=10)
        (job,) = dsbatch.jobs()
        # Ten requests are in flight, twenty were never sent when the job is canceled (ten of
        # them in an intent its call gave up: looked for, never created, once canceled).
        status = load(job, emu).cancel()
        assert status.state == "canceled" and status.counts["to_send"] == 0
        assert status.left == 20 and [b.state for b in status.batches] == ["ended", "creating"]
        emu.advance(600)
        out = load(job, emu).result()
        assert {s["status"] for s in out["dsbatch"]} == {"canceled"}
        assert emu.calls["create"] == 1 and len(creates) == 2  # nothing sent after the cancel
        # Another job of the same requests is not canceled: it sends them.
        extra = submit(emu, Dataset.from_dict({"text": [*rows, "one more"]}))
        emu.advance(600)
        assert extra.result()["response"][-1] == "echo: one more"


def test_a_canceled_job_still_finds_and_reads_the_batch_a_stopped_call_created(monkeypatch):
    # A call stops (Ctrl-C, a kill) after its create went out, before it recorded the batch,
    # and the job is canceled meanwhile. Whoever resumes it looks for that batch before giving
    # its intent up: the batch was paid for, and its answers are read, never lost.
    rows = texts(10)
    real_create = Backend.create

    def stops(self, body, betas=()):
        real_create(self, body, betas)
        raise KeyboardInterrupt

    with Emulator(delay=600, responder=echo) as emu:
        monkeypatch.setattr(Backend, "create", stops)
        with pytest.raises(KeyboardInterrupt):
            submit(emu, Dataset.from_dict({"text": rows}))
        monkeypatch.setattr(Backend, "create", real_create)
        (made,) = emu.batches
        (job,) = dsbatch.jobs()
        status = load(job, emu).cancel()
        assert status.state == "canceled" and [b.state for b in status.batches] == ["creating"]
        emu.advance(600)
        out = load(job, emu).result()
        assert out["response"] == answers(rows)
        assert [s["status"] for s in out["dsbatch"]] == ["succeeded"] * 10
        assert emu.calls["create"] == 1 and sent(emu) == dict.fromkeys(ids_of(rows), 1)
        (batch,) = load(job, emu).status().batches
        assert (batch.state, batch.id) == ("ended", made)


def test_load_takes_a_unique_prefix_and_says_what_is_ambiguous_or_unknown(emu):
    jobs = [submit(emu, Dataset.from_dict({"text": texts(2, f"set {i}")})) for i in range(20)]
    full = jobs[0].fingerprint
    assert dsbatch.Job.load(full[:12]).fingerprint == full
    firsts = [j.fingerprint[0] for j in jobs]
    shared = max(set(firsts), key=firsts.count)  # 20 jobs, 16 hex digits: one is shared
    with pytest.raises(
        ValueError, match=rf"'{shared}' is the start of {firsts.count(shared)} jobs"
    ):
        dsbatch.Job.load(shared)
    with pytest.raises(ValueError, match=r"no job 'zzz' in the cache .*; its jobs: "):
        dsbatch.Job.load("zzz")
    listed = dsbatch.jobs()
    assert [j.fingerprint for j in listed] == [j.fingerprint for j in reversed(jobs)]


def test_a_job_goes_on_only_against_the_server_that_made_its_batches(emu):
    job = submit(emu, Dataset.from_dict({"text": texts(3)}))
    with pytest.raises(dsbatch.BatchAPIError, match="run against dsbatch's emulator"):
        dsbatch.Job.load(job.fingerprint, poll_interval=0).wait()  # no client: the API


def test_ctrl_c_while_waiting_cancels_nothing_and_says_how_to_go_on(caplog):
    def interrupt(seconds):
        raise KeyboardInterrupt

    with Emulator(delay=600, responder=echo) as emu:
        ds = Dataset.from_dict({"text": texts(5)})
        with pytest.raises(KeyboardInterrupt), caplog.at_level(logging.WARNING):
            dsbatch.map(
                ds,
                prompt,
                model=MODEL,
                client=emu.client(),
                progress=False,
                poll_interval=dsbatch.PollSchedule(sleep=interrupt),
            )
        (job,) = dsbatch.jobs()
        assert emu.calls["cancel"] == 0
        assert f"dsbatch.Job.load('{job.fingerprint[:12]}').wait()" in caplog.text
        assert f"dsbatch cancel {job.fingerprint[:12]}" in caplog.text
        assert "nothing was canceled" in caplog.text
        emu.advance(600)
        found = dsbatch.Job.load(job.fingerprint, client=emu.client(), poll_interval=0)
        assert list(found.result()["response"]) == answers(texts(5))


def test_a_jobs_repr_and_status_say_where_it_stands(emu):
    job = submit(emu, Dataset.from_dict({"text": texts(3)}))
    assert repr(job).startswith(f"<dsbatch.Job {job.fingerprint[:12]} running: 0 of 3 requests")
    assert "<table>" in job._repr_html_()
    text = str(job.status())
    assert f"job {job.fingerprint}: running" in text and "3 in flight" in text
