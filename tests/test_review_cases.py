"""The adversarial review's reproductions (its scripts r1 to r16, named in each section), one test
each: every way it found to pay twice, to take another job's answers, or to get stuck, replayed
against the emulator.

Each test counts what the emulator received (``sent(emu)``: custom_id -> times received in an
accepted create), the batches made, and what the user gets. Since the fix a job first asks the
server's clock (one list) before its first create, so a create whose answer is lost while the
list is down no longer leaves an intent behind: it is refused before anything is bought. The
reviewer's "lost answer, then no list" becomes a process that dies right after its create
reached the API (``dies_right_after_its_create``): the same intent with a batch behind it.
"""

from __future__ import annotations

import json
from collections import Counter

import format1
import pyarrow as pa
import pytest
import xxhash
from datasets import Dataset
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
import dsbatch._submit as submit_module
from dsbatch import BatchAPIError, RowFailedError
from dsbatch._backend import Backend, CreateOutcomeUnknown
from dsbatch._batch import BatchKeeper
from dsbatch._ledger import FORMAT_VERSION
from dsbatch.testing import Emulator, Faults, HttpFault

POLL = 60.0

# -- helpers ---------------------------------------------------------------------------------------


def dataset(values) -> Dataset:
    return Dataset.from_dict({"text": list(values)})


class Died(BaseException):
    """Stands for the process dying (killed, or its machine went down)."""


class Runaway(BaseException):
    """A job that would wait forever: the test fails instead of hanging."""


def patient(emu, *, clock=None, budget=6 * 3600.0) -> dsbatch.PollSchedule:
    """Polls every minute of the emulator's clock (``clock`` replaces the job's clock, e.g. a
    skewed one); fails the test after ``budget`` seconds of waiting."""
    waited = [0.0]

    def sleep(seconds):
        waited[0] += seconds
        if waited[0] > budget:
            raise Runaway(f"the job was still waiting after {waited[0]:.0f} s")
        emu.advance(seconds)

    return dsbatch.PollSchedule(
        initial=POLL, factor=1.0, maximum=POLL, sleep=sleep, clock=clock or emu.now
    )


def dies_at_first_poll(emu) -> dsbatch.PollSchedule:
    """A schedule whose process dies when it first waits for its batches (a retry's short wait
    is waited out on the emulator's clock)."""

    def sleep(seconds):
        if seconds >= POLL:
            raise Died()
        emu.advance(seconds)

    return dsbatch.PollSchedule(initial=POLL, factor=1.0, maximum=POLL, sleep=sleep, clock=emu.now)


def dies_right_after_its_create(monkeypatch) -> None:
    """The next create reaches the API, then its process dies before recording the batch id:
    an intent is left with a batch behind it."""
    real_create = Backend.create

    def create_then_die(self, body, betas=()):
        monkeypatch.setattr(Backend, "create", real_create)
        real_create(self, body, betas)
        raise Died()

    monkeypatch.setattr(Backend, "create", create_then_die)


def call(client, values, emu, **kwargs):
    """dsbatch.map with a client of our own (another key), polling on the emulator's clock."""
    kwargs.setdefault("poll_interval", patient(emu))
    return dsbatch.map(
        dataset(values),
        prompt,
        model=MODEL,
        max_tokens=256,
        client=client,
        progress=False,
        **kwargs,
    )


def create_answered_500(emu) -> None:
    """The next create is answered HTTP 500 and makes nothing: dsbatch must look for a batch it
    may have made, and the only same-size batch it can find is someone else's."""
    emu.faults = Faults(http=[HttpFault("create", 500)])


# -- r1: a batch adopted by mistake, given back ----------------------------------------------------


def test_a_batch_another_job_adopted_by_mistake_and_gave_back_is_found_by_its_owner(
    emu, monkeypatch, caplog
):
    b_rows, a_rows = ["b0", "b1", "b2"], ["a0", "a1", "a2"]
    dies_right_after_its_create(monkeypatch)
    with pytest.raises(Died):
        run(dataset(b_rows), emu, retries=0, poll_interval=patient(emu))
    (b_job,) = job_dirs()
    (b_batch,) = emu.batches
    emu.advance(10)

    # A (same size, no shared rows) gets a 500 on its create: its reconcile takes B's batch,
    # made ten seconds earlier and held by no record. Its results tell; A gives it back.
    create_answered_500(emu)
    out_a = run(dataset(a_rows), emu, retries=0, poll_interval=patient(emu))
    assert list(out_a["response"]) == answers(a_rows)
    assert "it is someone else's" in caplog.text
    (a_job,) = set(job_dirs()) - {b_job}
    (a_record,) = records(a_job)
    assert a_record["rejected"] == [b_batch] and a_record["batch_id"] != b_batch

    # B's rerun finds the batch A gave back instead of buying its requests again.
    out_b = run(dataset(b_rows), emu, retries=0, poll_interval=patient(emu))
    assert list(out_b["response"]) == answers(b_rows)
    (b_record,) = records(b_job)
    assert (b_record["batch_id"], b_record["state"]) == (b_batch, "ingested")
    assert sent(emu) == dict.fromkeys(ids_of(b_rows + a_rows), 1)
    assert len(emu.batches) == 2


# -- r2: a stale copy of another job's record ------------------------------------------------------


def test_a_job_never_acts_on_its_stale_copy_of_a_record_another_process_just_changed(
    emu, monkeypatch
):
    # B's process dies right after its create. A (B's rows and one more) reads B's record, an
    # intent, outside any lock; before A acts on it, B's process runs again, adopts its batch
    # and dies waiting for it. A must act on the record as it is now, not on its copy (which
    # would find the batch claimed, call the intent unsent and buy B's rows again).
    shared = ["b0", "b1", "b2"]
    rows = [*shared, "a3"]
    dies_right_after_its_create(monkeypatch)
    with pytest.raises(Died):
        run(dataset(shared), emu, retries=0, poll_interval=patient(emu))
    (b_job,) = job_dirs()
    (b_batch,) = emu.batches

    real_advance = BatchKeeper.advance
    seen = []

    def b_runs_first(self, record, **kwargs):
        if record.job != self.job.fingerprint and not seen:
            seen.append(record.state.value)
            with pytest.raises(Died):
                run(dataset(shared), emu, retries=0, poll_interval=dies_at_first_poll(emu))
            seen.append(records(b_job)[0]["state"])
        return real_advance(self, record, **kwargs)

    monkeypatch.setattr(BatchKeeper, "advance", b_runs_first)
    out = run(dataset(rows), emu, retries=0, poll_interval=patient(emu))

    assert seen == ["intent", "submitted"]  # A's copy was stale when it acted
    assert list(out["response"]) == answers(rows)
    assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and len(emu.batches) == 2
    (b_record,) = records(b_job)
    assert (b_record["batch_id"], b_record["state"]) == (b_batch, "ingested")


# -- r3: an intent tried with another workspace's key ----------------------------------------------


def test_an_intent_tried_with_another_workspaces_key_stops_this_key_instead_of_buying_again(
    monkeypatch,
):
    with Emulator(delay=0, responder=echo, workspaces={"k1": "w1", "k2": "w2"}) as emu:
        k1 = emu.client(api_key="k1", max_retries=0)
        k2 = emu.client(api_key="k2", max_retries=0)
        shared = ["b0", "b1", "b2"]
        rows = [*shared, "a3"]
        dies_right_after_its_create(monkeypatch)
        with pytest.raises(Died):
            call(k1, shared, emu)
        (b_job,) = job_dirs()
        (b_batch,) = emu.batches

        # k2 cannot see w1's batches: it cannot tell whether B's batch exists, so it says so
        # and what to do, and buys nothing.
        with pytest.raises(BatchAPIError, match="may have been created with another API key") as e:
            call(k2, rows, emu)
        assert str(b_job / "batches" / "000000.json") in str(e.value)
        assert sent(emu) == dict.fromkeys(ids_of(shared), 1)

        # B's own key finds its batch; then k2 buys only the row B did not have.
        assert list(call(k1, shared, emu)["response"]) == answers(shared)
        assert list(call(k2, rows, emu)["response"]) == answers(rows)
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and len(emu.batches) == 2
        assert emu.batch_workspace(b_batch) == "w1"
        (b_record,) = records(b_job)
        assert (b_record["batch_id"], b_record["state"]) == (b_batch, "ingested")


# -- r4: another workspace's batch whose ids file is lost ------------------------------------------


def test_another_workspaces_batch_whose_ids_file_is_lost_does_not_hold_back_unrelated_rows():
    with Emulator(delay=3600, responder=echo, workspaces={"k1": "w1", "k2": "w2"}) as emu:
        k1 = emu.client(api_key="k1", max_retries=0)
        k2 = emu.client(api_key="k2", max_retries=0)
        b_rows, a_rows = ["b0", "b1", "b2"], ["a0", "a1"]
        with pytest.raises(Died):
            call(k1, b_rows, emu, poll_interval=dies_at_first_poll(emu))
        (b_job,) = job_dirs()
        (b_batch,) = emu.batches
        (b_job / "batches" / "000000.ids.arrow").unlink()

        # B's batch may hold only what B asks for: A, sharing no row, neither waits for it
        # nor tries to read it with a key that cannot. A's own batch takes a minute, B's an hour.
        emu.delay = 60
        out = call(k2, a_rows, emu)
        assert list(out["response"]) == answers(a_rows)
        assert sent(emu) == dict.fromkeys(ids_of(b_rows + a_rows), 1) and len(emu.batches) == 2
        assert emu.batches[b_batch]["processing_status"] == "in_progress"
        assert records(b_job)[0]["state"] == "submitted"


# -- r5: the ids file lost, then the batch found again ---------------------------------------------


@pytest.mark.parametrize("create", ["made, its answer lost", "refused with 500, made nothing"])
def test_a_lost_ids_file_is_rebuilt_only_from_the_jobs_own_batch_never_one_made_just_before(
    emu, monkeypatch, create
):
    # Another notebook (same key, another cache) made a batch of the same size 20 s before B's
    # intent. B's create made its batch (its process died before recording it), or made
    # nothing (a 500: B's reconcile then adopts the other batch, and B dies waiting for it).
    # Then B's ids file is lost: only results holding exactly B's requests may rebuild it.
    other = emu.client(max_retries=0).messages.batches.create(
        requests=[{**request_for("x"), "custom_id": f"other{i}"} for i in range(3)]
    )
    emu.advance(20)
    rows = ["b0", "b1", "b2"]
    made = create.startswith("made")
    if made:
        dies_right_after_its_create(monkeypatch)
        schedule = patient(emu)
    else:
        create_answered_500(emu)
        schedule = dies_at_first_poll(emu)
    with pytest.raises(Died):
        run(dataset(rows), emu, retries=0, poll_interval=schedule)
    (job,) = job_dirs()
    ids_file = job / "batches" / "000000.ids.arrow"
    ids_file.unlink()

    out = run(dataset(rows), emu, retries=0, poll_interval=patient(emu))
    assert list(out["response"]) == answers(rows)
    other_ids = ["other0", "other1", "other2"]
    assert sent(emu) == dict.fromkeys(other_ids + ids_of(rows), 1) and len(emu.batches) == 2
    (ours,) = set(emu.batches) - {other.id}
    if made:  # found at once, and the ids file rebuilt from its results
        (record,) = records(job)
        assert (record["batch_id"], record["state"], record["rejected"]) == (ours, "ingested", [])
        restored = pa.ipc.open_file(pa.memory_map(str(ids_file))).read_all()["custom_id"]
        assert sorted(restored.to_pylist()) == sorted(ids_of(rows))
    else:  # the other batch given back, never taken for B's; B's requests bought once
        first, second = records(job)
        assert (first["state"], first["rejected"]) == ("unsent", [other.id])
        assert (second["batch_id"], second["state"]) == (ours, "ingested")


# -- r6, r7: another job's damaged files -----------------------------------------------------------


def _b_dies_with_its_batch_in_flight(emu, shared):
    with pytest.raises(Died):
        run(dataset(shared), emu, retries=0, poll_interval=dies_at_first_poll(emu))
    (b_job,) = job_dirs()
    (b_batch,) = emu.batches
    return b_job, b_batch


def test_another_jobs_damaged_ids_file_holds_its_rows_back_until_its_batch_answers_them():
    with Emulator(delay=3600, responder=echo) as emu:
        shared = ["b0", "b1", "b2"]
        rows = [*shared, "a3"]
        b_job, b_batch = _b_dies_with_its_batch_in_flight(emu, shared)
        with open(b_job / "batches" / "000000.ids.arrow", "r+b") as f:
            f.truncate(20)

        out = run(dataset(rows), emu, retries=0, poll_interval=patient(emu))
        assert list(out["response"]) == answers(rows)
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and len(emu.batches) == 2
        (b_record,) = records(b_job)
        assert (b_record["batch_id"], b_record["state"]) == (b_batch, "ingested")

        # The ids file was rebuilt from the batch's results: B's own rerun reads it, buys nothing.
        emu.reset_stats()
        assert list(run(dataset(shared), emu, retries=0)["response"]) == answers(shared)
        assert sum(emu.calls.values()) == 0


def test_another_jobs_damaged_batch_record_is_read_from_the_journal_and_not_bought_again():
    with Emulator(delay=3600, responder=echo) as emu:
        shared = ["b0", "b1", "b2"]
        rows = [*shared, "a3"]
        b_job, b_batch = _b_dies_with_its_batch_in_flight(emu, shared)
        with open(b_job / "batches" / "000000.json", "r+b") as f:
            f.truncate(20)

        out = run(dataset(rows), emu, retries=0, poll_interval=patient(emu))
        assert list(out["response"]) == answers(rows)
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and len(emu.batches) == 2
        (b_record,) = records(b_job)  # written whole again once its batch was read
        assert (b_record["batch_id"], b_record["state"]) == (b_batch, "ingested")


# -- r8: results already stored, of a batch adopted by mistake -------------------------------------


def test_a_batch_whose_results_are_stored_is_ingested_only_for_the_record_it_belongs_to(
    emu, monkeypatch
):
    b_rows, a_rows = ["b0", "b1", "b2"], ["a0", "a1", "a2"]
    run(dataset(b_rows), emu, retries=0)  # polls at once: the clock stays where B created
    (b_job,) = job_dirs()
    (b_batch,) = emu.batches
    emu.advance(10)

    # A's create is answered 500, and its reconcile runs in the moment before B's record holds
    # B's batch (simulated: the claimed batch ids read empty once). A adopts B's batch, whose
    # results are already stored: they are B's requests, so A gives it back and buys its own.
    real_claimed = submit_module.claimed_batch_ids
    looks = []

    def racy(ledger, scan=None):
        looks.append(1)
        return set() if len(looks) == 1 else real_claimed(ledger, scan)

    monkeypatch.setattr(submit_module, "claimed_batch_ids", racy)
    create_answered_500(emu)
    out_a = run(dataset(a_rows), emu, retries=0, poll_interval=patient(emu))

    assert list(out_a["response"]) == answers(a_rows)
    assert sent(emu) == dict.fromkeys(ids_of(b_rows + a_rows), 1) and len(emu.batches) == 2
    (a_job,) = set(job_dirs()) - {b_job}
    (a_record,) = records(a_job)
    assert a_record["rejected"] == [b_batch] and a_record["state"] == "ingested"
    # No batch is held by two records.
    held = Counter(r["batch_id"] for job in job_dirs() for r in records(job))
    assert held == {b_batch: 1, a_record["batch_id"]: 1}
    emu.reset_stats()
    assert list(run(dataset(b_rows), emu, retries=0)["response"]) == answers(b_rows)
    assert sum(emu.calls.values()) == 0


# -- r9: result lines of no known shape ------------------------------------------------------------


def test_a_result_line_of_no_known_shape_is_an_errored_row_that_on_error_sees(emu, monkeypatch):
    rows = ["x", "y", "z"]
    not_an_object, of_no_known_type, _ = ids_of(rows)
    real_download = Backend.download

    def odd_lines(self, batch):
        for line in b"".join(real_download(self, batch)).splitlines():
            entry = json.loads(line)
            if entry["custom_id"] == not_an_object:
                entry["result"] = "oops"
            elif entry["custom_id"] == of_no_known_type:
                entry["result"] = {"type": "weird"}
            yield json.dumps(entry).encode() + b"\n"

    monkeypatch.setattr(Backend, "download", odd_lines)
    out = run(dataset(rows), emu, retries=0, poll_interval=patient(emu))
    assert [s["status"] for s in out["dsbatch"]] == ["errored", "errored", "succeeded"]
    unreadable = "the result line could not be read: "
    assert [s["error"] for s in out["dsbatch"]] == [
        unreadable + "the line's result is not an object",
        unreadable + "unknown result type 'weird'",
        None,
    ]
    assert out["response"] == [None, None, "echo: z"]

    # on_error sees both; they are final (never bought again).
    with pytest.raises(RowFailedError):
        run(dataset(rows), emu, retries=0, poll_interval=patient(emu), on_error="raise")
    dropped = run(dataset(rows), emu, retries=0, poll_interval=patient(emu), on_error="drop")
    assert dropped["text"] == ["z"]
    assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and len(emu.batches) == 1


# -- r11: a format-1 cache with tool answers and a batch in flight ---------------------------------

TOOL = {
    "name": "label",
    "description": "Label the text.",
    "input_schema": {
        "type": "object",
        "properties": {"topic": {"type": "string"}},
        "required": ["topic"],
    },
}
TOOL_CHOICE = {"type": "tool", "name": "label"}


def labelled(row):
    return {
        "messages": [{"role": "user", "content": row["text"]}],
        "tools": [TOOL],
        "tool_choice": TOOL_CHOICE,
    }


def tool_request_id(text: str) -> str:
    params = {"max_tokens": 256, "model": MODEL, **labelled({"text": text})}
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "dsb_" + xxhash.xxh3_128_hexdigest(canonical.encode())


def _format_1_record(name, seq, ids, *, state, batch_id, created_at, counts=None):
    job = xxhash.xxh3_128_hexdigest(name.encode())
    format1.write_record(
        cache_root(),
        job,
        seq,
        ids,
        state=state,
        batch_id=batch_id,
        created_at=created_at,
        counts=counts,
    )


def _format_1_tool_answers(topics: dict[str, dict], batch_id: str) -> None:
    """What format 1 stored of a finished tool-mode job: no text (a tool call has none), the
    answer only in the raw lines."""
    ids = [tool_request_id(t) for t in topics]
    results = {}
    for custom_id, topic in zip(ids, topics.values()):
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "label", "input": topic}],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 30, "output_tokens": 9},
        }
        results[custom_id] = {"type": "succeeded", "message": message}
    format1.write_results(cache_root(), batch_id, results, texts=[None] * len(ids), tokens=(30, 9))
    _format_1_record(
        "old F",
        0,
        ids,
        state="ingested",
        batch_id=batch_id,
        created_at=1.7e9,
        counts={"succeeded": len(ids)},
    )


def test_a_format_1_cache_keeps_its_tool_answers_and_its_batch_in_flight_through_the_upgrade():
    with Emulator(delay=3600, responder=echo) as emu:
        topics = {t: {"topic": f"topic of {t}"} for t in ["f0", "f1", "f2"]}
        _format_1_tool_answers(topics, "msgbatch_01formatonetools")
        # Old G created its batch, recorded it, and was killed while it was in flight.
        g_rows = ["g0", "g1", "g2", "g3"]
        g_batch = emu.client(max_retries=0).messages.batches.create(
            requests=[request_for(t) for t in g_rows]
        )
        _format_1_record(
            "old G",
            0,
            ids_of(g_rows),
            state="submitted",
            batch_id=g_batch.id,
            created_at=emu.now(),
        )
        emu.reset_stats()

        f = run(dataset(list(topics)), emu, fn=labelled, retries=0, poll_interval=patient(emu))
        assert [json.loads(r) for r in f["response"]] == list(topics.values())
        assert [s["status"] for s in f["dsbatch"]] == ["succeeded"] * 3
        g = run(dataset(g_rows), emu, retries=0, poll_interval=patient(emu))
        assert list(g["response"]) == answers(g_rows)
        assert emu.calls["create"] == 0 and emu.received == []
        assert (cache_root() / "FORMAT").read_text().strip() == str(FORMAT_VERSION)


# -- r13: our batch beyond the first page of the list ----------------------------------------------


def test_a_batch_made_before_a_thousand_others_is_found_on_a_later_page_of_the_list(
    emu, monkeypatch
):
    rows = ["a", "b"]
    dies_right_after_its_create(monkeypatch)
    with pytest.raises(Died):
        run(dataset(rows), emu, retries=0, poll_interval=patient(emu))
    (ours,) = emu.batches
    client = emu.client(max_retries=0)
    for _ in range(1000):  # one page of the list, all newer than ours
        client.messages.batches.create(requests=[{**request_for("x"), "custom_id": "other"}])
    lists = emu.calls["list"]

    out = run(dataset(rows), emu, retries=0, poll_interval=patient(emu))
    assert list(out["response"]) == answers(rows)
    assert sent(emu) == {"other": 1000, **dict.fromkeys(ids_of(rows), 1)}
    assert len(emu.batches) == 1001 and emu.calls["list"] - lists >= 2
    (record,) = records(job_dirs()[0])
    assert (record["batch_id"], record["state"]) == (ours, "ingested")


# -- r14: a local clock corrected between the intent and the rerun ---------------------------------


def test_an_intent_written_an_hour_fast_finds_its_batch_once_the_clock_is_corrected(
    emu, monkeypatch
):
    rows = ["a", "b"]
    dies_right_after_its_create(monkeypatch)
    with pytest.raises(Died):
        run(
            dataset(rows),
            emu,
            retries=0,
            poll_interval=patient(emu, clock=lambda: emu.now() + 3600),
        )
    (batch,) = emu.batches
    (job,) = job_dirs()
    assert records(job)[0]["intent_at"] > emu.now() + 3000  # dated by the fast local clock

    out = run(dataset(rows), emu, retries=0, poll_interval=patient(emu))
    assert list(out["response"]) == answers(rows)
    assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and len(emu.batches) == 1
    (record,) = records(job)
    assert (record["batch_id"], record["state"]) == (batch, "ingested")


# -- r16: a typo'd key -----------------------------------------------------------------------------


@pytest.mark.parametrize("refused", ["at its first call", "after a create that got no answer"])
def test_a_refused_key_buys_nothing_and_never_blocks_the_right_key(monkeypatch, refused):
    # The reviewer's typo'd key is now refused at dsbatch's first call (the server's clock),
    # before any create; a key refused while dsbatch looks for the batch a create with no
    # answer may have made (revoked, say) is the path the typo used to take. Either way the
    # intent binds nothing, and the right key of the workspace is not told to use that key.
    first = "goood" if refused == "at its first call" else "revoked"
    with Emulator(
        delay=0, responder=echo, api_key="good", workspaces={"revoked": "default"}
    ) as emu:
        rows = ["a", "b"]
        real_create = Backend.create
        tried = []

        def connection_reset(self, body, betas=()):
            # The first create gets no answer and makes nothing; its key is refused from then on.
            tried.append(self.client.api_key)
            monkeypatch.setattr(Backend, "create", real_create)
            if self.client.api_key == "revoked":
                emu.faults = Faults(http=[HttpFault("*", 401, times=100)])
            raise CreateOutcomeUnknown("creating a batch got no answer: Connection reset")

        monkeypatch.setattr(Backend, "create", connection_reset)
        with pytest.raises(BatchAPIError, match="Nothing was bought") as e:
            call(emu.client(api_key=first, max_retries=0), rows, emu)
        assert e.value.status_code == 401 and "ANTHROPIC_API_KEY" in str(e.value)
        assert tried == ([] if first == "goood" else ["revoked"]) and len(emu.batches) == 0
        (job,) = job_dirs()
        assert [r["state"] for r in records(job)] == ["unsent"]

        emu.faults = Faults()
        good = emu.client(api_key="good", max_retries=0)
        assert list(call(good, rows, emu)["response"]) == answers(rows)
        if first == "goood":  # the right key's create got the reset: looked, found none, made
            assert tried == ["good"]
        assert list(call(good, rows, emu)["response"]) == answers(rows)
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and len(emu.batches) == 1
