"""dsbatch.preview: a few rows through the Messages API, the columns map gives, and answers the
batch run then reuses (never another origin's, never what a batch holds in flight)."""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import anthropic
import pytest
from datasets import Dataset, DatasetDict
from pydantic import BaseModel
from support import MODEL, cache_root, echo, ids_of, run, sent, virtual, without_provenance

import dsbatch
from dsbatch.testing import Emulator, Faults, HttpFault

SYSTEM = ("You label customer messages. Follow the rubric exactly. " * 440)[:24_000]


def texts(n):
    return [f"message number {i}" for i in range(n)]


def preview(ds, emu, fn=None, **kwargs):
    kwargs.setdefault("poll_interval", 0)
    kwargs.setdefault("progress", False)
    return dsbatch.preview(
        ds, fn or (lambda r: r["text"]), model=MODEL, max_tokens=256, client=emu.client(), **kwargs
    )


def test_a_preview_of_5_rows_is_bought_live_and_the_batch_then_buys_5_fewer(emu):
    ds = Dataset.from_dict({"text": texts(400)})
    start = time.perf_counter()
    shown = preview(ds, emu, system=SYSTEM)
    took = time.perf_counter() - start
    print(f"preview of 5 rows: {took:.2f} s")
    assert len(emu.messages_received) == 5 and emu.calls["create"] == 0
    assert shown["text"] == texts(5)
    assert shown["response"] == [f"echo: {t}" for t in texts(5)]
    # The first request of the shared prefix went alone and wrote the cache; the others read it.
    used = [
        (s["cache_creation_input_tokens"], s["cache_read_input_tokens"]) for s in shown["dsbatch"]
    ]
    assert used == [(6_000, 0)] + [(0, 6_000)] * 4
    # Byte for byte the batch's own requests (prompt-cache breakpoint included).
    assert emu.messages_received[0]["system"][0]["cache_control"] == {
        "type": "ephemeral",
        "ttl": "1h",
    }

    out = run(ds, emu, system=SYSTEM, wait=60)
    print(f"the batch run then sent {sum(sent(emu).values())} requests")
    assert sum(sent(emu).values()) == 395
    # The preview's answers do not count as primed: the batch sends its own first request alone.
    batches = Counter(b for b, _ in emu.received)
    assert [batches[b] for b in dict.fromkeys(b for b, _ in emu.received)] == [1, 394]
    assert not set(sent(emu)) & {s["custom_id"] for s in shown["dsbatch"]}
    assert out.column_names == shown.column_names
    # The batch's status column carries the step's provenance (dsbatch.card); a preview's none.
    assert without_provenance(out.features) == shown.features
    assert out.select(range(5)).to_list() == shown.to_list()
    assert len(emu.messages_received) == 5  # nothing bought again
    # Haiku 4.5 per million tokens: $1 in, $5 out, $2 a 1-hour cache write, $0.10 a read; the
    # preview's answers at standard price, the batch's at half.
    first, later = shown["dsbatch"][0], out["dsbatch"][5]
    assert first["cost_usd"] == pytest.approx(
        (first["input_tokens"] + 5 * first["output_tokens"] + 2 * 6_000) / 1e6
    )
    assert later["cost_usd"] == pytest.approx(
        0.5 * (later["input_tokens"] + 5 * later["output_tokens"] + 0.1 * 6_000) / 1e6
    )


@pytest.mark.parametrize(("keyword", "value"), [("samples", 3), ("dry_run", True)])
def test_a_preview_refuses_samples_and_dry_runs_before_buying_anything(emu, keyword, value):
    ds = Dataset.from_dict({"text": texts(4)})
    with pytest.raises(
        ValueError, match=f"preview\\(\\) takes no {keyword}: .* pass {keyword} to dsbatch.map"
    ):
        preview(ds, emu, **{keyword: value})
    assert len(emu.messages_received) == 0 and emu.calls["create"] == 0


def test_a_seeded_preview_draws_random_rows_the_same_each_time(emu):
    ds = Dataset.from_dict({"text": texts(50), "n": list(range(50))})
    first = preview(ds, emu, n=4, seed=7)
    expected = sorted(random.Random(7).sample(range(50), 4))
    assert first["n"] == expected and expected != [0, 1, 2, 3]
    again = preview(ds, emu, n=4, seed=7)
    assert again.to_list() == first.to_list()
    assert len(emu.messages_received) == 4  # the second preview was answered by the cache


class Label(BaseModel):
    topic: str
    confidence: float


def words(row, message):
    return {"words": len(message["content"][0]["text"].split()), "first": row["text"][:7]}


def test_structured_and_parse_columns_are_the_ones_map_gives():
    ds = Dataset.from_dict({"text": texts(8)})
    with Emulator(delay=0) as emu:
        kwargs = {"response_format": Label, "parse": words}
        shown = preview(ds, emu, n=3, **kwargs)
        out = run(ds, emu, **kwargs)
    assert shown.column_names == out.column_names
    assert shown.column_names == [
        "text",
        "response",
        "topic",
        "confidence",
        "words",
        "first",
        "dsbatch",
    ]
    assert shown.features == without_provenance(out.features)
    assert shown.to_list() == out.select(range(3)).to_list()
    assert {s["status"] for s in shown["dsbatch"]} == {"succeeded"}


def test_a_preview_the_cache_already_answers_buys_nothing(emu):
    ds = Dataset.from_dict({"text": texts(6)})
    out = run(ds, emu)
    emu.reset_stats()
    shown = preview(ds, emu, n=6)
    assert sum(emu.calls.values()) == 0
    assert shown.to_list() == out.to_list()


def test_rows_a_batch_has_in_flight_are_passed_over():
    ds = Dataset.from_dict({"text": texts(40)})
    with Emulator(delay=600, responder=echo) as emu:
        job = dsbatch.map(
            ds, lambda r: r["text"], model=MODEL, max_tokens=256, system=SYSTEM,
            client=emu.client(), poll_interval=virtual(emu, 60), progress=False, wait=False,
        )  # fmt: skip
        (primer,) = [c for _, c in emu.received]  # row 0's request, in flight
        shown = preview(ds, emu, n=3, system=SYSTEM)
        assert shown["text"] == texts(4)[1:]
        assert primer not in [s["custom_id"] for s in shown["dsbatch"]]
        job.wait()
        assert sum(sent(emu).values()) == 1 + 36
        assert len(emu.messages_received) == 3


def test_a_previews_answers_serve_only_runs_at_its_origin(emu, api):
    ds = Dataset.from_dict({"text": texts(5)})
    preview(ds, emu, n=2)
    (entry,) = [
        json.loads(line) for line in (cache_root() / "previews.jsonl").read_text().splitlines()
    ]
    assert entry["origin"] == "emulator" and entry["requests"] == 2
    assert entry["batch_id"].startswith("preview_")
    client = anthropic.Anthropic(base_url=api.base_url, api_key="k", max_retries=0)
    dsbatch.map(ds, lambda r: r["text"], model=MODEL, max_tokens=256, client=client,
                poll_interval=0, progress=False)  # fmt: skip
    assert sent(api) == dict.fromkeys(ids_of(texts(5)), 1)  # the API run bought all five
    run(ds, emu)
    assert sent(emu) == dict.fromkeys(ids_of(texts(5)[2:]), 1)  # the emulator's reused two


def test_a_call_that_keeps_failing_is_an_errored_row_and_the_batch_buys_it():
    ds = Dataset.from_dict({"text": texts(3)})
    faults = Faults(http=[HttpFault("messages", 529, times=4)])
    with Emulator(delay=0, responder=echo, faults=faults) as emu:
        shown = preview(ds, emu, n=1)
        (status,) = shown["dsbatch"]
        assert status["status"] == "errored" and shown["response"] == [None]
        assert "HTTP 529" in status["error"] and "overloaded_error" in status["error"]
        assert emu.calls["messages"] == 4 and not (cache_root() / "previews.jsonl").exists()
        run(ds, emu)
        assert sent(emu) == dict.fromkeys(ids_of(texts(3)), 1)


def test_an_overload_that_passes_is_retried():
    ds = Dataset.from_dict({"text": texts(3)})
    faults = Faults(http=[HttpFault("messages", 529, times=2)])
    with Emulator(delay=0, responder=echo, faults=faults) as emu:
        shown = preview(ds, emu, n=1)
        assert shown["response"] == ["echo: message number 0"]
        assert emu.calls["messages"] == 3


def test_a_refused_key_is_raised_not_shown_as_rows():
    ds = Dataset.from_dict({"text": texts(3)})
    with Emulator(delay=0, responder=echo, api_key="right") as emu:
        client = emu.client(api_key="wrong")
        with pytest.raises(dsbatch.BatchAPIError, match="HTTP 401.*ANTHROPIC_API_KEY"):
            dsbatch.preview(ds, lambda r: r["text"], model=MODEL, client=client, poll_interval=0)


def test_a_datasetdict_gives_the_first_rows_across_its_splits(emu):
    dd = DatasetDict(
        {
            "train": Dataset.from_dict({"text": texts(3)}),
            "test": Dataset.from_dict({"text": [f"test {i}" for i in range(4)]}),
        }
    )
    shown = preview(dd, emu, n=5)
    assert isinstance(shown, DatasetDict) and list(shown) == ["train", "test"]
    assert shown["train"]["text"] == texts(3) and shown["test"]["text"] == ["test 0", "test 1"]
    assert shown["test"]["response"] == ["echo: test 0", "echo: test 1"]


def test_preview_takes_maps_keywords_and_says_what_is_wrong(emu):
    ds = Dataset.from_dict({"text": texts(3)})
    fn = lambda r: r["text"]  # noqa: E731
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        dsbatch.preview(ds, fn, model=MODEL, temprature=0.5)
    with pytest.raises(TypeError, match="missing required keyword argument: 'model'"):
        dsbatch.preview(ds, fn)
    with pytest.raises(ValueError, match="n must be a positive number of rows, not 0"):
        dsbatch.preview(ds, fn, n=0, model=MODEL)
    assert sum(emu.calls.values()) == 0
