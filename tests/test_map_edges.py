"""dsbatch.map at its edges: reordered datasets, odd prompts and answers, fault storms, damaged
caches, and what the output dataset does afterwards."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_from_disk
from support import MODEL, answers, cache_root, echo, prompt, run, virtual

import dsbatch
from dsbatch import BatchAPIError, LedgerError, PromptError, RequestTooLargeError, RowFailedError
from dsbatch.testing import Emulator, Faults, HttpFault


def texts(n, prefix="text"):
    return [f"{prefix} {i}" for i in range(n)]


class Stop(BaseException):
    """Stands for the process dying while it waits."""


def stop(_seconds):
    raise Stop()


# -- datasets that are not plain tables ------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Specifying null_placement:FutureWarning")  # datasets
def test_answers_land_on_the_right_rows_through_an_indices_mapping(emu):
    base = Dataset.from_dict({"text": texts(60), "n": list(range(60))})
    views = {
        "shuffle": base.shuffle(seed=1),
        "select with repeats": base.select([5, 3, 3, 59, 0]),
        "filter": base.filter(lambda r: r["n"] % 3 == 0),
        "sort": base.sort("text", reverse=True),
        "shard": base.shard(4, 1),
        "split": base.train_test_split(test_size=0.25, seed=0)["test"],
    }
    for name, view in views.items():
        out = run(view, emu)
        assert list(out["response"]) == answers(view["text"]), name
        assert list(out["n"]) == list(view["n"]), name
        assert len(out) == len(view), name
    # Everything above asked for rows of one 60-row pool: each was paid once.
    assert len(emu.received) == len({cid for _, cid in emu.received}) <= 60


def test_drop_on_a_shuffled_dataset_keeps_the_right_rows():
    with Emulator(delay=0, responder=echo, faults=Faults(errored=0.4)) as emu:
        view = Dataset.from_dict({"text": texts(80), "n": list(range(80))}).shuffle(seed=7)
        kept = run(view, emu, max_attempts=1, on_error="drop")
        assert 10 < len(kept) < 70
        assert list(kept["response"]) == answers(kept["text"])
        assert [f"text {n}" for n in kept["n"]] == list(kept["text"])
        assert {s["status"] for s in kept["dsbatch"]} == {"succeeded"}


def test_dataset_dict_with_shared_prompts_an_empty_split_and_indices_per_split(emu):
    base = Dataset.from_dict({"text": texts(20)})
    dd = DatasetDict(
        {
            "train": base.select(range(12)),
            "test": base.select(range(8, 20)),
            "empty": base.select([]),
        }
    )
    out = run(dd, emu, fn=lambda r, i: f"{i}/{r['text']}", with_indices=True)
    assert isinstance(out, DatasetDict) and list(out) == ["train", "test", "empty"]
    assert list(out["train"]["response"]) == answers(f"{i}/text {i}" for i in range(12))
    assert list(out["test"]["response"]) == answers(f"{i}/text {i + 8}" for i in range(12))
    assert len(out["empty"]) == 0 and out["empty"].column_names == ["text", "response", "dsbatch"]
    assert out["empty"].features == out["train"].features
    # Indices restart per split, so "0/text 8" and "0/text 0" differ: 24 distinct requests.
    assert len(emu.received) == 24 and emu.calls["create"] == 1

    shared = run(DatasetDict({"a": base, "b": base.shuffle(seed=2)}), emu)
    assert list(shared["b"]["response"]) == answers(shared["b"]["text"])


def test_input_columns_the_new_columns_would_overwrite_are_refused_before_any_call(emu):
    ds = Dataset.from_dict({"text": texts(5), "response": [1, 2, 3, 4, 5], "dsbatch": ["x"] * 5})
    with pytest.raises(ValueError, match="already has a column 'response'.*output_column="):
        run(ds, emu)
    with pytest.raises(ValueError, match="already has a column 'dsbatch'.*status_column="):
        run(ds, emu, output_column="answer")
    assert sum(emu.calls.values()) == 0
    out = run(ds, emu, output_column="answer", status_column="status")
    assert out.column_names == ["text", "response", "dsbatch", "answer", "status"]
    assert list(out["response"]) == [1, 2, 3, 4, 5] and list(out["dsbatch"]) == ["x"] * 5
    assert out.features["answer"] == Value("string")
    assert out.features["status"]["attempts"] == Value("int64")
    assert list(out["answer"]) == answers(texts(5))


def test_chaining_a_second_dsbatch_step_takes_one_keyword(emu):
    first = run(Dataset.from_dict({"text": texts(6)}), emu)
    with pytest.raises(ValueError, match="status column of an earlier dsbatch step"):
        run(first, emu, fn=lambda r: "judge " + r["response"], output_column="verdict")
    judged = run(
        first.shuffle(seed=4),
        emu,
        fn=lambda r: "judge " + r["response"],
        output_column="verdict",
        status_column="judge",
    )
    assert judged.column_names == ["text", "response", "dsbatch", "verdict", "judge"]
    assert list(judged["verdict"]) == [f"echo: judge echo: {t}" for t in judged["text"]]
    assert list(judged["response"]) == answers(judged["text"])  # the first step's, untouched
    assert {s["status"] for s in judged["judge"]} == {"succeeded"}


def test_a_dataset_whose_only_column_is_named_like_the_output_column(emu):
    ds = Dataset.from_dict({"response": ["draft a", "draft b", "draft c"]})
    with pytest.raises(ValueError, match="'response'"):
        run(ds, emu, fn=lambda r: "improve " + r["response"])
    out = run(ds, emu, fn=lambda r: "improve " + r["response"], output_column="improved")
    assert out.column_names == ["response", "improved", "dsbatch"]
    assert list(out["improved"]) == answers(
        ["improve draft a", "improve draft b", "improve draft c"]
    )


def test_nested_features_none_values_and_class_labels_survive(emu):
    features = Features(
        {
            "text": Value("string"),
            "label": ClassLabel(names=["neg", "pos"]),
            "meta": {"a": Value("int64"), "tags": [Value("string")]},
        }
    )
    ds = Dataset.from_dict(
        {
            "text": ["p", None, "q"],
            "label": [0, 1, None],
            "meta": [{"a": 1, "tags": ["x"]}, {"a": None, "tags": []}, None],
        },
        features=features,
    )
    out = run(ds, emu, fn=lambda r: f"{r['text']} {r['label']} {r['meta']}")
    assert list(out["response"]) == [
        "echo: p 0 {'a': 1, 'tags': ['x']}",
        "echo: None 1 {'a': None, 'tags': []}",
        "echo: q None None",
    ]
    for name in ("text", "label", "meta"):
        assert out.features[name] == features[name]
    # A prompt returning the None it found skips the row.
    skipped = run(ds, emu, fn=lambda r: r["text"])
    assert [s["status"] for s in skipped["dsbatch"]] == ["succeeded", "skipped", "succeeded"]


def test_the_format_of_the_input_dataset_is_kept(emu):
    ds = Dataset.from_dict({"text": texts(3), "n": [1, 2, 3]}).with_format("numpy")
    out = run(ds, emu)
    assert out.format["type"] == "numpy"


# -- odd prompts, odd answers ----------------------------------------------------------------


UNUSUAL = [
    "héllo 👋🏽 and 🇺🇦",
    "مرحبا بالعالم",
    "שלום \u202e reversed \u202c",
    "zero\u200bwidth\ufeffbom",
    'tab\there\nnew line "quoted" \\ backslash',
    "line\u2028separator\u2029paragraph",
    "control \x01\x02\x7f chars",
    '{"looks": ["like", "json"]}',
]


def test_unicode_rtl_emoji_and_control_characters_round_trip(emu):
    out = run(Dataset.from_dict({"text": UNUSUAL}), emu)
    assert list(out["response"]) == answers(UNUSUAL)
    assert {s["status"] for s in out["dsbatch"]} == {"succeeded"}


def test_content_block_lists_and_system_block_lists(emu):
    def blocks(row):
        return {
            "system": [
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": row["text"]},
                        {"type": "text", "text": "second block"},
                    ],
                }
            ],
        }

    out = run(Dataset.from_dict({"text": UNUSUAL[:3]}), emu, fn=blocks)
    assert list(out["response"]) == [f"echo: {t}|second block" for t in UNUSUAL[:3]]
    params = emu.last_create_body["requests"][0]["params"]
    assert params["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert params["max_tokens"] == 256 and params["model"] == MODEL


def test_a_long_prompt_is_sent_whole(emu):
    long_text = "lorem ipsum dolor " * 20_000  # 360 kB
    out = run(Dataset.from_dict({"text": [long_text, "short"]}), emu)
    sent = emu.last_create_body["requests"]
    assert {r["params"]["messages"][0]["content"] for r in sent} == {long_text, "short"}
    assert out["dsbatch"][0]["input_tokens"] >= len(long_text) // 4
    assert out["dsbatch"][0]["stop_reason"] == "max_tokens"  # the echo is longer than 256 tokens


def test_stop_sequences_cut_the_answer_and_say_so(emu):
    out = run(
        Dataset.from_dict({"text": ["alpha STOP beta"]}), emu, params={"stop_sequences": ["STOP"]}
    )
    assert out["response"][0] == "echo: alpha "
    assert out["dsbatch"][0]["stop_reason"] == "stop_sequence"


TOOLS = [
    {
        "name": "label",
        "description": "Label the text",
        "input_schema": {
            "type": "object",
            "properties": {"topic": {"type": "string"}},
            "required": ["topic"],
        },
    }
]


def test_forced_tool_use_succeeds_and_is_never_paid_twice():
    with Emulator(delay=0) as emu:

        def forced(row):
            return {
                "messages": [{"role": "user", "content": row["text"]}],
                "tools": TOOLS,
                "tool_choice": {"type": "tool", "name": "label"},
            }

        ds = Dataset.from_dict({"text": texts(4)})
        out = run(ds, emu, fn=forced)
        for status in out["dsbatch"]:
            assert status["status"] == "succeeded" and status["error"] is None
            assert status["stop_reason"] == "tool_use"
            assert status["output_tokens"] > 0 and status["attempts"] == 1
        # The answer is a tool call with no text block: the text column has nothing to hold,
        # but the call is paid for and cached, so asking again costs nothing.
        emu.reset_stats()
        run(ds, emu, fn=forced, output_column="labels")
        assert sum(emu.calls.values()) == 0


def _message(*content, stop_reason="end_turn"):
    return {
        "type": "succeeded",
        "message": {
            "id": "msg_x",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": list(content),
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 7},
        },
    }


def test_text_blocks_are_joined_and_a_lone_tool_call_is_the_answer():
    answers_by_prompt = {
        "thinking": _message(
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "first, "},
            {"type": "text", "text": "then second"},
        ),
        "tool": _message(
            {"type": "tool_use", "id": "toolu_1", "name": "label", "input": {"topic": "x"}},
            stop_reason="tool_use",
        ),
        "mixed": _message(
            {"type": "text", "text": "calling"},
            {"type": "tool_use", "id": "toolu_2", "name": "label", "input": {}},
            stop_reason="tool_use",
        ),
    }

    def responder(custom_id, params):
        return answers_by_prompt.get(params["messages"][0]["content"], "plain")

    with Emulator(delay=0, responder=responder) as emu:
        ds = Dataset.from_dict({"text": ["thinking", "tool", "mixed", "other"]})
        out = run(ds, emu)
        # A tool call with no text is still a paid answer: its input, as JSON, is the answer.
        assert list(out["response"]) == ["first, then second", '{"topic": "x"}', "calling", "plain"]
        statuses = out["dsbatch"]
        assert [s["status"] for s in statuses] == ["succeeded"] * 4
        assert [s["stop_reason"] for s in statuses] == [
            "end_turn",
            "tool_use",
            "tool_use",
            "end_turn",
        ]
        # Answers that predate prompt caching report no cache counts: read as 0.
        assert statuses[0]["cache_read_input_tokens"] == 0
        assert statuses[0]["input_tokens"] == 5 and statuses[0]["output_tokens"] == 7


# -- faults, all at once ---------------------------------------------------------------------


def _ledger_batch_records():
    return list(cache_root().glob("jobs/*/batches/*.json"))


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 4])
def test_a_fault_storm_ends_every_row_consistently(max_attempts):
    faults = Faults(
        errored=0.2,
        expired=0.1,
        invalid=0.1,
        lose_create=2,
        cut_results=1,
        http=[HttpFault("*", 429, times=3)],
    )
    rows = [f"storm {i % 80}" for i in range(100)]  # 80 distinct requests, some fanned out
    with Emulator(delay=0, responder=echo, faults=faults) as emu:
        ds = Dataset.from_dict({"text": rows})
        out = run(ds, emu, max_attempts=max_attempts, max_batch_requests=7)

        # Every one-off fault was met along the way.
        assert emu.faults.lose_create == emu.faults.cut_results == emu.faults.http[0].times == 0
        sent = Counter(cid for _, cid in emu.received)
        assert len(sent) == 80
        assert max(sent.values()) <= max_attempts
        # A lost create answer was reconciled, never created again.
        assert len(emu.batches) == len(_ledger_batch_records())
        assert all(len(emu.results_of(b)) <= 7 for b in emu.batches)

        by_custom_id = {}
        for text, response, status in zip(rows, out["response"], out["dsbatch"]):
            cid = status["custom_id"]
            assert by_custom_id.setdefault(cid, (response, status)) == (response, status)
            assert status["attempts"] == sent[cid]
            kind = status["status"]
            if kind == "succeeded":
                assert response == f"echo: {text}" and status["error"] is None
                assert status["output_tokens"] > 0
            elif kind == "errored" and status["error"].startswith("invalid_request_error"):
                assert response is None and status["attempts"] == 1
            else:
                assert kind in ("errored", "expired"), status
                assert response is None and status["error"]
                assert status["attempts"] == max_attempts
        statuses = Counter(s["status"] for s in out["dsbatch"])
        assert statuses["succeeded"] > 50

        # The same call again is free; one more attempt retries only what may still succeed.
        emu.reset_stats()
        again = run(ds, emu, max_attempts=max_attempts, max_batch_requests=7)
        assert sum(emu.calls.values()) == 0
        assert list(again["dsbatch"]) == list(out["dsbatch"])
        retryable = {
            s["custom_id"]
            for s in out["dsbatch"]
            if s["status"] != "succeeded" and not s["error"].startswith("invalid_request_error")
        }
        more = run(ds, emu, max_attempts=max_attempts + 1, max_batch_requests=7)
        assert Counter(cid for _, cid in emu.received) == dict.fromkeys(retryable, 1)
        assert sum(s["status"] == "succeeded" for s in more["dsbatch"]) >= statuses["succeeded"]


def test_many_small_batches_under_a_tight_byte_limit():
    with Emulator(delay=0, responder=echo, max_bytes=1500) as emu:
        rows = [f"row {i} " + "x" * (i * 7 % 300) for i in range(60)]
        out = run(Dataset.from_dict({"text": rows}), emu, max_batch_bytes=1500)
        assert list(out["response"]) == answers(rows)
        # Every batch fitted the API's limit: none was refused.
        assert emu.calls["create"] == len(emu.batches) >= 10


def test_a_request_too_large_fails_before_any_batch_is_created(emu):
    rows = texts(20)
    rows[17] = "x" * 5000
    with pytest.raises(RequestTooLargeError, match="row 17"):
        run(Dataset.from_dict({"text": rows}), emu, max_batch_requests=5, max_batch_bytes=1000)
    assert emu.calls["create"] == 0


def _cancel_the_first_batch_halfway(emu, canceled):
    """A sleep that, the first time, lets half the batch run and then cancels it from outside."""
    outsider = emu.client()

    def sleep(seconds):
        if not canceled:
            emu.advance(50)
            canceled.append(outsider.messages.batches.cancel(next(iter(emu.batches))).id)
        else:
            emu.advance(seconds)

    return dsbatch.PollSchedule(initial=10, sleep=sleep)


def test_a_batch_canceled_behind_our_back_is_final_until_resend_canceled():
    with Emulator(delay=100, responder=echo) as emu:
        canceled = []
        schedule = _cancel_the_first_batch_halfway(emu, canceled)
        ds = Dataset.from_dict({"text": texts(20)})
        out = run(ds, emu, poll_interval=schedule)
        assert emu.batches[canceled[0]]["request_counts"]["canceled"] == 10
        assert Counter(s["status"] for s in out["dsbatch"]) == {"succeeded": 10, "canceled": 10}
        assert {s["attempts"] for s in out["dsbatch"]} == {1}
        assert len(emu.batches) == 1 and len(emu.received) == 20  # nothing bought again
        again = run(ds, emu)
        assert list(again["dsbatch"]) == list(out["dsbatch"]) and len(emu.received) == 20
        # The one explicit way to send them again.
        more = run(ds, emu, resend_canceled=True, wait=100)
        assert list(more["response"]) == answers(texts(20))
        canceled_ids = {s["custom_id"] for s in out["dsbatch"] if s["status"] == "canceled"}
        assert len(emu.received) == 30 and {c for _, c in emu.received[20:]} == canceled_ids
        assert Counter(s["attempts"] for s in more["dsbatch"]) == {1: 10, 2: 10}


def test_a_batch_canceled_behind_our_back_with_max_attempts_1_says_canceled():
    with Emulator(delay=100, responder=echo) as emu:
        schedule = _cancel_the_first_batch_halfway(emu, [])
        ds = Dataset.from_dict({"text": texts(20)})
        out = run(ds, emu, max_attempts=1, poll_interval=schedule)
        statuses = Counter(s["status"] for s in out["dsbatch"])
        assert statuses == {"succeeded": 10, "canceled": 10}
        for response, status in zip(out["response"], out["dsbatch"]):
            if status["status"] == "canceled":
                assert response is None and "resend_canceled=True" in status["error"]
                assert status["attempts"] == 1
        with pytest.raises(
            RowFailedError, match=r"10 rows failed: 10 canceled \(no answer; not billed\)"
        ):
            run(ds, emu, max_attempts=1, on_error="raise")
        # Canceled sends do not use up attempts: resend_canceled works at max_attempts=1.
        more = run(ds, emu, max_attempts=1, resend_canceled=True, wait=100)
        assert {s["status"] for s in more["dsbatch"]} == {"succeeded"}


@pytest.mark.parametrize("trouble", ["create refused with 429", "create answer lost"])
def test_a_retried_create_never_adopts_another_jobs_batch(emu, trouble):
    first = Dataset.from_dict({"text": texts(20, "first")})
    second = Dataset.from_dict({"text": texts(20, "second")})
    run(first, emu)
    emu.advance(60)  # a minute later, another job of the same size
    if trouble == "create refused with 429":
        emu.faults.http.append(HttpFault("create", 429))
    else:
        emu.faults.lose_create = 1
    out = run(second, emu)
    assert list(out["response"]) == answers(second["text"])
    assert len(emu.batches) == 2


def test_a_list_outage_while_reconciling_is_waited_out():
    faults = Faults(lose_create=1, http=[HttpFault("list", 500, times=3)])
    with Emulator(delay=0, responder=echo, faults=faults) as emu:
        ds = Dataset.from_dict({"text": texts(10)})
        out = run(ds, emu)
        assert list(out["response"]) == answers(texts(10))
        assert len(emu.batches) == 1


def test_a_results_outage_is_waited_out_like_a_polling_outage():
    with Emulator(delay=60, responder=echo) as emu:
        emu.faults.http.append(HttpFault("results", 503, times=4))
        ds = Dataset.from_dict({"text": texts(10)})
        out = run(ds, emu, retries=0, wait=60)
        assert list(out["response"]) == answers(texts(10))


def test_a_batch_deleted_before_its_results_were_fetched_is_sent_again_once_gone_a_while(caplog):
    with Emulator(delay=100, responder=echo) as emu:
        ds = Dataset.from_dict({"text": texts(10)})
        with pytest.raises(Stop):
            run(ds, emu, poll_interval=dsbatch.PollSchedule(sleep=stop))
        outsider = emu.client()
        batch_id = next(iter(emu.batches))
        outsider.messages.batches.cancel(batch_id)
        outsider.messages.batches.retrieve(batch_id)
        outsider.messages.batches.delete(batch_id)
        slept = []
        schedule = virtual(emu, 60, factor=1)
        schedule.sleep = lambda s: (slept.append(s), emu.advance(s))
        out = run(ds, emu, poll_interval=schedule, retries=0)
        assert list(out["response"]) == answers(texts(10))
        # Resent only after ten minutes of not finding it, with a warning that says so.
        assert sum(slept[: slept.index(60) + 10]) >= 600
        assert emu.calls["create"] == 2
        assert f"batch {batch_id}" in caplog.text and "paid for again" in caplog.text
        assert {s["attempts"] for s in out["dsbatch"]} == {2}


def test_a_rerun_after_raise_on_a_dataset_dict_is_free_and_names_the_split():
    with Emulator(delay=0, responder=echo, faults=Faults(errored=0.3)) as emu:
        dd = DatasetDict(
            {
                "train": Dataset.from_dict({"text": texts(30)}),
                "test": Dataset.from_dict({"text": []}),
            }
        )
        with pytest.raises(RowFailedError, match="in split 'train'") as info:
            run(dd, emu, max_attempts=1, on_error="raise")
        emu.reset_stats()
        kept = run(dd, emu, max_attempts=1)
        assert sum(emu.calls.values()) == 0
        failed = [i for i, s in enumerate(kept["train"]["dsbatch"]) if s["status"] != "succeeded"]
        assert info.value.rows == failed and failed
        assert info.value.custom_ids == [kept["train"]["dsbatch"][i]["custom_id"] for i in failed]
        assert f"row {failed[0]}: errored" in str(info.value)


def test_a_rerun_after_the_finished_output_was_deleted_makes_no_api_call(emu):
    dd = DatasetDict(
        {"a": Dataset.from_dict({"text": texts(10)}), "b": Dataset.from_dict({"text": texts(3)})}
    )
    first = run(dd, emu)
    outputs = list(cache_root().glob("jobs/*/output/*/*.arrow"))
    assert len(outputs) == 2
    for path in outputs:
        path.unlink()
    emu.reset_stats()
    second = run(dd, emu)
    assert sum(emu.calls.values()) == 0
    for split in dd:
        assert list(second[split]["dsbatch"]) == list(first[split]["dsbatch"])
        assert list(second[split]["response"]) == list(first[split]["response"])


def _forget_results():
    files = list(cache_root().glob("results/*.parquet")) + list(
        cache_root().glob("jobs/*/output/*/*.arrow")
    )
    assert files
    for path in files:
        path.unlink()


def test_a_rerun_after_the_results_were_deleted_downloads_them_again(emu):
    ds = Dataset.from_dict({"text": texts(12)})
    first = run(ds, emu)
    _forget_results()
    emu.reset_stats()
    out = run(ds, emu)
    assert list(out["response"]) == answers(texts(12))
    assert emu.calls["create"] == 0 and emu.calls["results"] == 1
    assert list(out["dsbatch"]) == list(first["dsbatch"])


def test_results_gone_from_cache_and_api_alike_are_bought_again_after_a_while(emu, caplog):
    ds = Dataset.from_dict({"text": texts(12)})
    run(ds, emu, max_attempts=2)
    _forget_results()
    for batch_id in list(emu.batches):
        emu.client().messages.batches.delete(batch_id)
    emu.reset_stats()
    out = run(ds, emu, max_attempts=2, poll_interval=virtual(emu, 120))
    assert list(out["response"]) == answers(texts(12))
    assert len(emu.received) == 12 and emu.calls["create"] == 1
    assert "paid for again" in caplog.text


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "pattern", ["jobs/*/manifest.json", "jobs/*/output/data/*.arrow", "results/*.parquet"]
)
def test_damaged_manifest_output_or_results_cost_at_most_a_download(emu, pattern, caplog):
    ds = Dataset.from_dict({"text": texts(5)})
    # Read before the damage: the output maps the file this test truncates in place.
    first = list(run(ds, emu)["dsbatch"])
    (damaged,) = cache_root().glob(pattern)
    _truncate(damaged)
    if "output" not in pattern:
        for output in cache_root().glob("jobs/*/output/*/*.arrow"):
            output.unlink()  # make the rerun read the damaged file
    emu.reset_stats()
    out = run(ds, emu)
    assert list(out["dsbatch"]) == first
    assert list(out["response"]) == answers(texts(5))
    assert emu.calls["create"] == 0
    assert emu.calls["results"] == (1 if "results" in pattern else 0)
    assert str(damaged) in caplog.text


@pytest.mark.parametrize("pattern", ["jobs/*/batches/000000.json", "jobs/*/batches/*.ids.arrow"])
def test_a_damaged_batch_record_or_ids_file_is_a_ledger_error_saying_what_to_do(pattern):
    with Emulator(delay=600, responder=echo) as emu:
        ds = Dataset.from_dict({"text": texts(5)})
        with pytest.raises(Stop):
            run(ds, emu, poll_interval=dsbatch.PollSchedule(sleep=stop))
        (damaged,) = cache_root().glob(pattern)
        _truncate(damaged)
        emu.reset_stats()
        with pytest.raises(LedgerError) as info:
            run(ds, emu, wait=600)
        assert str(damaged) in str(info.value) and "Delete it" in str(info.value)
        assert info.value.path == str(damaged)
        assert emu.calls["create"] == 0
        damaged.unlink()  # what the message says to do: it is rebuilt, the batch is not rebought
        out = run(ds, emu, wait=600)
        assert list(out["response"]) == answers(texts(5))
        assert emu.calls["create"] == 0 and len(emu.batches) == 1


# -- the output dataset ----------------------------------------------------------------------


def test_the_output_dataset_behaves_like_any_dataset(emu, tmp_path):
    ds = Dataset.from_dict({"text": texts(8), "n": list(range(8))})
    out = run(ds.shuffle(seed=5), emu)
    frame = out.to_pandas()
    assert list(frame.columns) == ["text", "n", "response", "dsbatch"]
    assert frame["dsbatch"][0]["status"] == "succeeded"
    assert list(frame["response"]) == answers(frame["text"])

    out.save_to_disk(tmp_path / "saved", num_shards=2)
    loaded = load_from_disk(tmp_path / "saved")
    assert loaded.features == out.features
    assert loaded.to_list() == out.to_list()

    lengths = loaded.map(lambda r: {"length": len(r["response"])})
    assert list(lengths["length"]) == [len(r) for r in out["response"]]
    assert list(out.select([2, 0])["text"]) == [out["text"][2], out["text"][0]]


def test_the_output_fingerprint_is_stable_and_tracks_what_changed(emu):
    ds = Dataset.from_dict({"text": texts(6)})
    first = run(ds, emu)
    assert run(ds, emu)._fingerprint == first._fingerprint
    others = [
        run(ds, emu, fn=lambda r: r["text"] + "?"),
        run(ds, emu, output_column="summary"),
        run(ds.map(lambda r: {"extra": 1}), emu),
        run(ds, emu, on_error="drop"),
    ]
    fingerprints = {first._fingerprint, *(o._fingerprint for o in others)}
    assert len(fingerprints) == 5


def test_more_attempts_give_a_new_fingerprint_so_map_does_not_serve_stale_results(tmp_path):
    Dataset.from_dict({"text": texts(40)}).save_to_disk(tmp_path / "source")
    source = load_from_disk(tmp_path / "source")  # on disk, so .map caches by fingerprint
    with Emulator(delay=0, responder=echo, faults=Faults(errored=0.5)) as emu:
        few = run(source, emu, max_attempts=1)
        many = run(source, emu, max_attempts=6)
    assert list(few["response"]) != list(many["response"])

    def answered(row):
        return {"answered": row["response"] is not None}

    few.map(answered)
    assert list(many.map(answered)["answered"]) == [r is not None for r in many["response"]]
    assert few._fingerprint != many._fingerprint


# -- errors name what went wrong -------------------------------------------------------------


def test_prompt_errors_name_the_row_and_split_and_send_nothing(emu):
    dd = DatasetDict(
        {
            "train": Dataset.from_dict({"text": texts(3)}),
            "test": Dataset.from_dict({"text": ["a", "b"]}),
        }
    )

    def picky(row):
        if row["text"] == "b":
            raise KeyError("missing_field")
        return row["text"]

    with pytest.raises(
        PromptError, match="row 1 of split 'test': the prompt function raised KeyError"
    ) as info:
        run(dd, emu, fn=picky)
    assert info.value.row == 1 and info.value.split == "test"
    with pytest.raises(PromptError, match="row 2 of split 'train': .*max_tokens"):
        run(
            dd,
            emu,
            fn=lambda r: (
                {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}
                if r["text"] == "text 2"
                else r["text"]
            ),
        )
    with pytest.raises(PromptError, match="row 0: .*not valid JSON"):
        run(
            Dataset.from_dict({"t": [float("nan")]}),
            emu,
            fn=lambda r: {
                "messages": [{"role": "user", "content": "x"}],
                # A free-form place (the SDK's types take any JSON there): NaN is not JSON.
                "tools": [{"name": "t", "input_schema": {"type": "object", "n": r["t"]}}],
            },
        )
    assert sum(emu.calls.values()) == 0


def test_a_passing_404_while_polling_does_not_resend_the_batch():
    with Emulator(delay=60, responder=echo) as emu:
        emu.faults.http.append(HttpFault("retrieve", 404, times=2))
        out = dsbatch.map(
            Dataset.from_dict({"text": ["x", "y"]}),
            prompt,
            model=MODEL,
            client=emu.client(max_retries=0),
            progress=False,
            poll_interval=dsbatch.PollSchedule(initial=60, sleep=emu.advance),
        )
        assert emu.calls["create"] == 1 and len(emu.batches) == 1
        assert out["response"] == ["echo: x", "echo: y"]


def test_a_failing_batch_call_names_the_batch():
    with Emulator(delay=60, responder=echo) as emu:
        emu.faults.http.append(HttpFault("retrieve", 403, times=1))
        with pytest.raises(BatchAPIError) as info:
            dsbatch.map(
                Dataset.from_dict({"text": ["x"]}),
                prompt,
                model=MODEL,
                client=emu.client(max_retries=0),
                progress=False,
                poll_interval=dsbatch.PollSchedule(initial=60, sleep=emu.advance),
            )
        (batch_id,) = emu.batches
        assert info.value.batch_id == batch_id and info.value.status_code == 403
        assert batch_id in str(info.value)


def test_a_client_of_the_wrong_kind_is_a_type_error_before_any_call(emu):
    ds = Dataset.from_dict({"text": ["a"]})
    with pytest.raises(TypeError, match="Anthropic"):
        dsbatch.map(ds, prompt, model=MODEL, client="sk-ant-api03-not-a-client", progress=False)
    assert not list(cache_root().glob("jobs/*/batches/*.json"))


def test_a_request_too_large_names_the_first_row_and_split_that_asked_for_it(emu):
    from datasets import DatasetDict

    train, test = texts(6), texts(9)
    huge = "x" * 5000
    train[4] = test[2] = test[7] = huge  # asked by three rows, first by train's row 4
    data = DatasetDict(
        {"train": Dataset.from_dict({"text": train}), "test": Dataset.from_dict({"text": test})}
    )
    with pytest.raises(RequestTooLargeError, match="row 4 of split 'train'"):
        run(data, emu, max_batch_bytes=1000)
    # Samples: each sample's request is the first asker's too; only the test split asks now.
    data = DatasetDict(
        {"train": Dataset.from_dict({"text": texts(6)}), "test": Dataset.from_dict({"text": test})}
    )
    with pytest.raises(RequestTooLargeError, match="row 2 of split 'test'"):
        run(data, emu, max_batch_bytes=1000, samples=3)
    assert emu.calls["create"] == 0
