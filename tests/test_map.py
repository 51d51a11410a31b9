"""dsbatch.map end to end against the local emulator, through the official SDK."""

from __future__ import annotations

import os
import random

import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict
from support import MODEL, cache_root, echo, ids_of, prompt, run, sent, virtual

import dsbatch
import dsbatch._ledger_data
from dsbatch import BatchAPIError, PromptError, RequestTooLargeError, RowFailedError
from dsbatch.testing import Emulator, Faults, HttpFault

STATUS_FIELDS = {
    "status",
    "error",
    "custom_id",
    "stop_reason",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "attempts",
    "cost_usd",
}


def texts(n, distinct=None, seed=0):
    """``n`` texts; with ``distinct``, exactly that many differ and the rest repeat them."""
    pool = [f"text number {i}" for i in range(distinct or n)]
    if distinct is None:
        return pool
    rng = random.Random(seed)
    rows = pool + [rng.choice(pool) for _ in range(n - distinct)]
    rng.shuffle(rows)
    return rows


def test_answers_land_on_their_rows_in_order(emu):
    ds = Dataset.from_dict({"text": texts(200), "n": list(range(200))})
    out = run(ds, emu)
    assert out.column_names == ["text", "n", "response", "dsbatch"]
    assert out["response"] == [f"echo: {t}" for t in ds["text"]]
    assert out["n"] == list(range(200))
    status = out["dsbatch"][0]
    assert set(status) == STATUS_FIELDS
    assert status["status"] == "succeeded" and status["error"] is None
    assert status["attempts"] == 1 and status["stop_reason"] == "end_turn"
    assert status["input_tokens"] > 0 and status["output_tokens"] > 0
    # Haiku 4.5 at batch prices: half of $1 (input) and $5 (output) per million tokens.
    assert (status["input_tokens"], status["output_tokens"]) == (4, 5)
    assert status["cost_usd"] == pytest.approx((4 * 1 + 5 * 5) * 0.5 / 1e6)
    assert emu.calls["create"] == 1


@pytest.mark.slow
def test_duplicate_prompts_are_sent_once_and_fanned_out(emu):
    rows = texts(10_000, distinct=7_000)  # 30% of the rows repeat an earlier prompt
    ds = Dataset.from_dict({"text": rows})
    out = run(ds, emu)
    assert len(set(rows)) == 7_000
    assert len(emu.received) == 7_000
    assert not emu.duplicate_custom_ids
    assert out["response"] == [f"echo: {t}" for t in rows]
    by_text = {}
    for text, status in zip(rows, out["dsbatch"]):
        assert by_text.setdefault(text, status["custom_id"]) == status["custom_id"]


def test_a_rerun_makes_no_api_call_and_returns_the_same_dataset(emu):
    ds = Dataset.from_dict({"text": texts(100)})
    first = run(ds, emu)
    emu.reset_stats()
    second = run(ds, emu)
    assert sum(emu.calls.values()) == 0
    assert second["response"] == first["response"]
    assert second["dsbatch"] == first["dsbatch"]


def test_editing_ten_rows_sends_exactly_ten_requests(emu):
    rows = texts(500)
    run(Dataset.from_dict({"text": rows}), emu)
    edited = list(rows)
    for i in range(0, 100, 10):
        edited[i] = f"edited {i}"
    emu.reset_stats()
    out = run(Dataset.from_dict({"text": edited}), emu)
    assert len(emu.received) == 10
    assert out["response"] == [f"echo: {t}" for t in edited]


def test_changing_params_resends_everything_but_results_are_shared_across_jobs(emu):
    ds = Dataset.from_dict({"text": texts(50)})
    run(ds, emu)
    emu.reset_stats()
    run(ds, emu, params={"stop_sequences": ["###"]})
    assert len(emu.received) == 50
    # Another dataset sharing 30 of those requests pays only for the 20 new ones.
    emu.reset_stats()
    other = Dataset.from_dict({"text": texts(50)[:30] + [f"new {i}" for i in range(20)]})
    run(other, emu, params={"stop_sequences": ["###"]})
    assert len(emu.received) == 20


def test_a_dataset_dict_is_one_job_and_comes_back_whole(emu):
    dd = DatasetDict(
        {
            "train": Dataset.from_dict({"text": texts(120)}),
            "test": Dataset.from_dict({"text": texts(40)[::-1] + ["only in test"]}),
        }
    )
    out = run(dd, emu)
    assert isinstance(out, DatasetDict) and set(out) == {"train", "test"}
    assert out["train"]["response"] == [f"echo: {t}" for t in dd["train"]["text"]]
    assert out["test"]["response"] == [f"echo: {t}" for t in dd["test"]["text"]]
    assert emu.calls["create"] == 1
    assert len(emu.received) == 121  # the 40 test texts repeat train texts


def test_skipped_rows_are_kept_with_status_skipped(emu):
    ds = Dataset.from_dict({"text": texts(10)})
    out = run(ds, emu, fn=lambda r: None if r["text"].endswith("3") else r["text"])
    status = out["dsbatch"][3]
    assert status["status"] == "skipped" and status["custom_id"] is None
    assert out["response"][3] is None
    assert len(emu.received) == 9


def test_with_indices_and_system_and_params_reach_the_request(emu):
    ds = Dataset.from_dict({"text": ["a", "b"]})
    out = run(
        ds,
        emu,
        fn=lambda r, i: f"{i}:{r['text']}",
        with_indices=True,
        system="Be brief.",
        params={"metadata": {"user_id": "u1"}},
    )
    assert out["response"] == ["echo: 0:a", "echo: 1:b"]
    sent = [r["params"] for r in emu.last_create_body["requests"]]
    assert [(p["system"], p["metadata"], p["max_tokens"]) for p in sent] == [
        ("Be brief.", {"user_id": "u1"}, 256)
    ] * 2


def test_batches_are_cut_by_request_count(emu):
    ds = Dataset.from_dict({"text": texts(350)})
    out = run(ds, emu, max_batch_requests=100)
    assert emu.calls["create"] == 4
    assert out["response"] == [f"echo: {t}" for t in ds["text"]]


def test_bad_rows_fail_before_any_api_call(emu):
    ds = Dataset.from_dict({"text": ["fine", "", "fine too"]})
    with pytest.raises(PromptError, match="row 1: messages\\[0\\] has empty content"):
        run(ds, emu)
    with pytest.raises(RequestTooLargeError, match="row 0"):
        run(Dataset.from_dict({"text": ["x" * 5000]}), emu, max_batch_bytes=1000)
    assert sum(emu.calls.values()) == 0


def test_transient_errors_are_retried_until_they_succeed():
    with Emulator(delay=0, responder=echo, faults=Faults(errored=0.3, expired=0.1)) as emu:
        ds = Dataset.from_dict({"text": texts(300)})
        out = run(ds, emu, max_attempts=10)
        statuses = {s["status"] for s in out["dsbatch"]}
        assert statuses == {"succeeded"}
        attempts = [s["attempts"] for s in out["dsbatch"]]
        assert max(attempts) > 1
        assert emu.calls["create"] == max(attempts)
        assert out["response"] == [f"echo: {t}" for t in ds["text"]]


def test_failures_after_max_attempts_follow_on_error():
    faults = Faults(errored=0.5)
    with Emulator(delay=0, responder=echo, faults=faults) as emu:
        ds = Dataset.from_dict({"text": texts(100)})
        kept = run(ds, emu, max_attempts=1)
        failed = [i for i, s in enumerate(kept["dsbatch"]) if s["status"] != "succeeded"]
        assert 20 < len(failed) < 80
        for i in failed:
            status = kept["dsbatch"][i]
            assert status["status"] == "errored" and status["attempts"] == 1
            assert status["error"].split(":")[0] in ("overloaded_error", "api_error")
            assert kept["response"][i] is None

        emu.reset_stats()
        dropped = run(ds, emu, max_attempts=1, on_error="drop")
        assert sum(emu.calls.values()) == 0
        assert len(dropped) == 100 - len(failed)
        assert {s["status"] for s in dropped["dsbatch"]} == {"succeeded"}

        expected = rf"{len(failed)} rows failed: {len(failed)} errored \(no answer; not billed\)"
        with pytest.raises(RowFailedError, match=expected) as info:
            run(ds, emu, max_attempts=1, on_error="raise")
        assert info.value.rows == failed
        assert sum(emu.calls.values()) == 0

        # Allowing more attempts later retries only the failures.
        emu.reset_stats()
        more = run(ds, emu, max_attempts=5)
        assert len(emu.received) >= len(failed)
        assert {cid for _, cid in emu.received} <= {kept["dsbatch"][i]["custom_id"] for i in failed}
        assert sum(s["status"] == "succeeded" for s in more["dsbatch"]) > 100 - len(failed)


def test_invalid_requests_are_not_retried():
    def responder(custom_id, params):
        if "bad" in params["messages"][0]["content"]:
            return {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "message": "messages.0.content: too silly",
                    },
                },
            }
        return "fine"

    with Emulator(delay=0, responder=responder) as emu:
        ds = Dataset.from_dict({"text": ["good", "bad one", "good too"]})
        out = run(ds, emu, max_attempts=3)
        assert emu.calls["create"] == 1
        status = out["dsbatch"][1]
        assert status["status"] == "errored" and status["attempts"] == 1
        assert status["error"] == "invalid_request_error: messages.0.content: too silly"
        assert out["response"] == ["fine", None, "fine"]


def test_a_lost_create_answer_never_pays_twice():
    with Emulator(delay=0, responder=echo, faults=Faults(lose_create=1)) as emu:
        ds = Dataset.from_dict({"text": texts(60)})
        out = run(ds, emu)
        assert emu.calls["create"] == 1 and emu.calls["list"] >= 1
        assert len(emu.batches) == 1
        assert not emu.duplicate_custom_ids
        assert out["response"] == [f"echo: {t}" for t in ds["text"]]


def test_rate_limits_and_server_errors_are_waited_out():
    faults = Faults(
        http=[
            HttpFault("create", 429, times=2),
            HttpFault("retrieve", 529, times=1),
            HttpFault("results", 500, times=1),
        ]
    )
    with Emulator(delay=0, responder=echo, faults=faults) as emu:
        out = run(Dataset.from_dict({"text": texts(20)}), emu)
        assert len(emu.batches) == 1
        assert out["response"] == [f"echo: {t}" for t in texts(20)]


def test_an_outage_while_polling_is_waited_out_and_a_lasting_one_reported():
    with Emulator(delay=600, responder=echo) as emu:
        ds = Dataset.from_dict({"text": texts(20)})
        emu.faults.http.append(HttpFault("retrieve", 500, times=4))
        out = run(ds, emu, retries=0, wait=120)
        assert out["response"] == [f"echo: {t}" for t in texts(20)]
        assert emu.calls["create"] == 1

        emu.faults.http.append(HttpFault("retrieve", 503, times=100))
        with pytest.raises(
            BatchAPIError, match="retrieving batch msgbatch_\\w+ failed with HTTP 503"
        ):
            dsbatch.map(
                ds,
                lambda r: r["text"] + "!",
                model=MODEL,
                client=emu.client(max_retries=0),
                progress=False,
                poll_interval=dsbatch.PollSchedule(initial=120, sleep=emu.advance),
            )


def test_a_cut_download_is_fetched_again_without_a_new_batch():
    with Emulator(delay=0, responder=echo, faults=Faults(cut_results=2)) as emu:
        out = run(Dataset.from_dict({"text": texts(500)}), emu)
        assert len(emu.batches) == 1
        assert emu.calls["results"] == 3
        assert out["response"] == [f"echo: {t}" for t in texts(500)]


class Crash(Exception):
    pass


def crash(_seconds):
    raise Crash("the process died while waiting")


def test_a_job_interrupted_while_waiting_resumes_without_a_new_batch():
    with Emulator(delay=3600, responder=echo) as emu:
        ds = Dataset.from_dict({"text": texts(80)})
        with pytest.raises(Crash):
            run(ds, emu, poll_interval=dsbatch.PollSchedule(sleep=crash))
        assert emu.calls["create"] == 1
        out = run(ds, emu, poll_interval=dsbatch.PollSchedule(sleep=emu.advance))
        assert emu.calls["create"] == 1
        assert out["response"] == [f"echo: {t}" for t in ds["text"]]


def test_a_long_batch_is_polled_with_a_virtual_clock():
    with Emulator(delay=20 * 3600, responder=echo) as emu:
        ds = Dataset.from_dict({"text": texts(30)})
        slept = []

        def sleep(seconds):
            slept.append(seconds)
            emu.advance(seconds)

        schedule = dsbatch.PollSchedule(initial=60, factor=2, maximum=1800, sleep=sleep)
        out = run(ds, emu, poll_interval=schedule)
        assert {s["status"] for s in out["dsbatch"]} == {"succeeded"}
        assert sum(slept) >= 20 * 3600
        assert max(slept) == 1800 and len(slept) < 60


def test_requests_unfinished_at_24_hours_expire_and_are_reported():
    with Emulator(delay=48 * 3600, responder=echo) as emu:
        ds = Dataset.from_dict({"text": texts(20)})
        out = run(
            ds,
            emu,
            max_attempts=1,
            poll_interval=dsbatch.PollSchedule(initial=3600, maximum=3600, sleep=emu.advance),
        )
        statuses = [s["status"] for s in out["dsbatch"]]
        assert "expired" in statuses and "succeeded" in statuses
        expired = out["dsbatch"][statuses.index("expired")]
        assert "expired" in expired["error"] and out["response"][statuses.index("expired")] is None


def test_a_job_in_flight_continues_with_any_key_that_can_read_its_batches():
    workspaces = {"key-one": "lab", "key-two": "lab", "key-three": "elsewhere"}
    with Emulator(delay=3600, responder=echo, workspaces=workspaces) as emu:
        ds = Dataset.from_dict({"text": texts(5)})
        with pytest.raises(Crash):
            dsbatch.map(
                ds,
                prompt,
                model=MODEL,
                client=emu.client(api_key="key-one"),
                poll_interval=dsbatch.PollSchedule(sleep=crash),
                progress=False,
            )
        (batch_id,) = emu.batches
        schedule = virtual(emu, 3600)
        # A key of another workspace cannot read the batch: refused, nothing bought.
        with pytest.raises(BatchAPIError, match=f"batch {batch_id} .*another API key"):
            dsbatch.map(
                ds,
                prompt,
                model=MODEL,
                client=emu.client(api_key="key-three", max_retries=0),
                poll_interval=schedule,
                progress=False,
            )
        # A rotated key of the same workspace reads it and finishes the job.
        out = dsbatch.map(
            ds,
            prompt,
            model=MODEL,
            client=emu.client(api_key="key-two", max_retries=0),
            poll_interval=schedule,
            progress=False,
        )
        assert out["response"] == [f"echo: {t}" for t in texts(5)]
        assert emu.calls["create"] == 1


def test_the_client_comes_from_the_environment(emu, monkeypatch, tmp_path):
    ds = Dataset.from_dict({"text": ["from env"]})
    with pytest.raises(BatchAPIError, match="ANTHROPIC_API_KEY"):
        dsbatch.map(ds, prompt, model=MODEL, progress=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emu.base_url)
    out = dsbatch.map(ds, prompt, model=MODEL, poll_interval=0, progress=False)
    assert out["response"] == ["echo: from env"]
    cache = os.environ["DSBATCH_CACHE"]
    assert os.path.isdir(os.path.join(cache, "jobs")) and os.listdir(os.path.join(cache, "jobs"))
    for root, _, files in os.walk(cache):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert b"sk-test-env" not in f.read()


def test_an_answer_cut_at_max_tokens_says_so(emu):
    long_text = "word " * 400
    out = run(Dataset.from_dict({"text": [long_text]}), emu, params={"max_tokens": 10})
    status = out["dsbatch"][0]
    assert status["stop_reason"] == "max_tokens" and status["output_tokens"] <= 10
    assert len(out["response"][0]) < len(long_text)


def test_the_progress_bar_counts_requests(emu, capsys):
    run(Dataset.from_dict({"text": texts(30)}), emu, progress=True)
    err = capsys.readouterr().err
    assert "dsbatch" in err and "30/30" in err and "succeeded=30" in err


def test_a_rerun_with_another_output_column_is_still_free(emu):
    ds = Dataset.from_dict({"text": texts(10)})
    run(ds, emu)
    emu.reset_stats()
    out = run(ds, emu, output_column="summary")
    assert sum(emu.calls.values()) == 0
    assert out.column_names == ["text", "summary", "dsbatch"]
    assert out["summary"] == [f"echo: {t}" for t in texts(10)]


def test_a_second_call_of_the_same_job_reads_the_first_ones_batch_while_the_first_is_held_up():
    """No call owns a job: while the first call of a job sits in its wait (here: held in its
    sleep, as a stopped process would be), a second call of the same job polls the first one's
    batch itself and reads its results; the first then finds the job done. One create."""
    import threading

    ds = Dataset.from_dict({"text": texts(10)})
    first_waits, release_first = threading.Event(), threading.Event()

    def held_sleep(seconds):
        first_waits.set()
        release_first.wait(timeout=60)

    outcome = {}

    def first_call():
        outcome["first"] = run(
            ds, emu, poll_interval=dsbatch.PollSchedule(initial=60, sleep=held_sleep, clock=emu.now)
        )

    with Emulator(delay=600, responder=echo) as emu:
        first = threading.Thread(target=first_call)
        first.start()
        try:
            assert first_waits.wait(timeout=60)  # its batch is created, and it waits
            assert emu.calls["create"] == 1
            second = run(ds, emu, wait=60)
            assert second["response"] == [f"echo: {t}" for t in texts(10)]
            assert emu.calls["create"] == 1 and emu.calls["results"] == 1
        finally:
            release_first.set()
            first.join(timeout=60)
        assert not first.is_alive()
        assert outcome["first"]["response"] == second["response"]
        assert emu.calls["create"] == 1 and emu.calls["results"] == 1
        assert not emu.duplicate_custom_ids


def test_bad_arguments_are_plain_value_and_type_errors(emu):
    ds = Dataset.from_dict({"text": ["a"]})
    with pytest.raises(ValueError, match="on_error"):
        run(ds, emu, on_error="ignore")
    with pytest.raises(ValueError, match="max_attempts"):
        run(ds, emu, max_attempts=0)
    with pytest.raises(TypeError, match="Dataset"):
        run({"text": ["a"]}, emu)
    with pytest.raises(TypeError, match="poll_interval"):
        run(ds, emu, poll_interval="often")
    with pytest.raises(ValueError, match="max_tokens"):
        dsbatch.map(ds, prompt, model=MODEL, max_tokens=0, client=emu.client())
    with pytest.raises(TypeError, match="params"):
        run(ds, emu, params=[("temperature", 0)])
    assert sum(emu.calls.values()) == 0


def test_empty_and_fully_skipped_datasets_need_no_batch(emu):
    empty = run(Dataset.from_dict({"text": []}), emu)
    assert len(empty) == 0 and "dsbatch" in empty.column_names
    skipped = run(Dataset.from_dict({"text": ["a", "b"]}), emu, fn=lambda r: None)
    assert [s["status"] for s in skipped["dsbatch"]] == ["skipped", "skipped"]
    assert sum(emu.calls.values()) == 0


def test_a_same_size_batch_made_just_before_ours_is_passed_over(emu, tmp_path, caplog):
    # Another user of the same workspace (another cache) has a batch of the same size, made
    # ten seconds before our intent; our create's answer is lost: reconcile takes the batch
    # made after the intent, by the server's clock, and never theirs.
    theirs = Dataset.from_dict({"text": [f"theirs {i}" for i in range(20)]})
    run(theirs, emu, cache_dir=tmp_path / "their-cache")
    emu.advance(10)
    ours = Dataset.from_dict({"text": [f"ours {i}" for i in range(20)]})
    emu.faults.lose_create = 1
    out = run(ours, emu)
    assert out["response"] == [f"echo: ours {i}" for i in range(20)]
    assert len(emu.batches) == 2 and not emu.duplicate_custom_ids
    assert "someone else's" not in caplog.text


def test_requests_read_back_a_row_group_at_a_time_are_each_sent_with_their_own_params(
    emu, monkeypatch
):
    """A job reads its requests back from its file by row group: with groups of 3, batches of 4
    and retries scattered over the groups, every request goes out with its own params."""
    monkeypatch.setattr(dsbatch._ledger_data, "REQUEST_GROUP_ROWS", 3)
    emu.faults = Faults(errored=0.3)
    texts = [f"row {i}" for i in range(11)]
    out = run(Dataset.from_dict({"text": texts}), emu, max_batch_requests=4, max_attempts=4)
    statuses = [s["status"] for s in out["dsbatch"]]
    assert statuses.count("succeeded") >= 9
    for text, status, answer in zip(texts, statuses, out["response"]):
        assert answer == (f"echo: {text}" if status == "succeeded" else None)
    assert set(sent(emu)) == set(ids_of(texts)) and max(sent(emu).values()) > 1
    (requests,) = cache_root().glob("jobs/*/requests.parquet")
    assert pq.read_metadata(requests).num_row_groups == 4
