"""samples=k: k answers per row, each its own request (sample 0 the plain one), bought once
however k changes, returned as lists of k or as k rows per input row."""

from __future__ import annotations

import pyarrow as pa
import pytest
from datasets import Dataset
from pydantic import BaseModel
from support import MODEL, answers, ids_of, job_dirs, run, sent

import dsbatch
from dsbatch import RowFailedError
from dsbatch._ledger import Ledger
from dsbatch._options import MapOptions
from dsbatch._plan import job_fingerprint
from dsbatch._render import sample_custom_id
from dsbatch.testing import Emulator, Faults

TEXTS = ["a cat", "a dog", "a cat", "a bird"]  # rows 0 and 2 ask the same
STATUS_FIELDS = [
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
]


class Topic(BaseModel):
    topic: str
    score: int


@pytest.fixture
def model_emu():
    """An emulator with its own answers: JSON that fits a structured request's schema."""
    with Emulator(delay=0) as emulator:
        yield emulator


def blocks(row, message):
    return {"blocks": len(message["content"]), "text_len": len(row["text"])}


def sample_ids_of(text: str, k: int) -> list[str]:
    return [sample_custom_id(ids_of([text])[0], j) for j in range(k)]


def samples_of(custom_id: str, k: int) -> list[str]:
    return [custom_id] + [f"{custom_id}_s{j}" for j in range(1, k)]


def test_samples_are_distinct_stable_requests_and_sample_0_is_the_plain_one(emu):
    ds = Dataset.from_dict({"text": TEXTS})
    out = run(ds, emu, samples=3)
    ids = [[s["custom_id"] for s in row] for row in out["dsbatch"]]
    assert ids == [sample_ids_of(t, 3) for t in TEXTS]
    assert ids[0] == [
        ids_of(["a cat"])[0],
        ids_of(["a cat"])[0] + "_s1",
        ids_of(["a cat"])[0] + "_s2",
    ]
    assert len({c for row in ids for c in row}) == 9  # 3 distinct requests x 3 samples
    # Each sample bought once; identical rows share their samples.
    assert sent(emu) == {c: 1 for c in {c for row in ids for c in row}}
    # The params sent are the same bytes for every sample: only the custom_id differs.
    (job,) = job_dirs()
    bodies = Ledger().job(job.name).read_requests()
    assert len(bodies) == 9
    for row in ids:
        assert {bodies[c] for c in row} == {bodies[row[0]]}
    # The emulator's answers are a function of the params: every sample gets the same text.
    assert out["response"] == [[a] * 3 for a in answers(TEXTS)]


def test_one_sample_is_exactly_a_plain_run_and_more_samples_buy_only_the_new_ones(emu):
    ds = Dataset.from_dict({"text": TEXTS})
    plain = run(ds, emu)
    again = run(ds, emu, samples=1)
    assert len(job_dirs()) == 1  # the same job: samples=1 is no new job
    assert again.features == plain.features and again.to_list() == plain.to_list()
    assert sum(sent(emu).values()) == 3
    emu.reset_stats()
    run(ds, emu, samples=2)
    assert sorted(sent(emu)) == sorted(c + "_s1" for c in set(ids_of(TEXTS)))
    assert job_fingerprint({"data": ids_of(TEXTS)}, "o") == job_fingerprint(
        {"data": ids_of(TEXTS)}, "o", 1
    )
    assert job_fingerprint({"data": ids_of(TEXTS)}, "o", 2) != job_fingerprint(
        {"data": ids_of(TEXTS)}, "o", 3
    )


def test_raising_then_lowering_samples_sends_only_what_was_never_bought(emu):
    texts = [f"text {i}" for i in range(10)]
    ds = Dataset.from_dict({"text": texts})
    three = run(ds, emu, samples=3)
    assert sum(sent(emu).values()) == 30
    emu.reset_stats()
    five = run(ds, emu, samples=5)
    assert sorted(sent(emu)) == sorted(
        c + suffix for c in ids_of(texts) for suffix in ("_s3", "_s4")
    )
    assert sum(sent(emu).values()) == 20
    assert [row[:3] for row in five["dsbatch"]] == list(three["dsbatch"])
    emu.reset_stats()
    back = run(ds, emu, samples=3)
    assert sum(sent(emu).values()) == 0 and emu.calls["create"] == 0
    assert back.to_list() == three.to_list()
    assert len(job_dirs()) == 2  # one job per number of samples


def test_lists_of_k_follow_row_order_with_structured_fields_and_parse(model_emu):
    emu = model_emu
    ds = Dataset.from_dict({"text": TEXTS})
    out = run(ds, emu, samples=3, response_format=Topic, parse=blocks)
    assert out.column_names == [
        "text",
        "response",
        "topic",
        "score",
        "blocks",
        "text_len",
        "dsbatch",
    ]
    schema = out.data.schema
    assert schema.field("topic").type == pa.list_(pa.string())
    assert schema.field("score").type == pa.list_(pa.int64())
    assert schema.field("blocks").type == pa.list_(pa.int64())
    assert [f.name for f in schema.field("dsbatch").type.value_type] == STATUS_FIELDS
    firsts = [row[0]["custom_id"] for row in out["dsbatch"]]
    assert len(set(firsts)) == 3 and firsts[0] == firsts[2]  # rows 0 and 2 ask the same
    for text, first, row in zip(TEXTS, firsts, out, strict=True):
        assert [s["custom_id"] for s in row["dsbatch"]] == samples_of(first, 3)
        assert [s["status"] for s in row["dsbatch"]] == ["succeeded"] * 3
        assert len(row["topic"]) == len(row["score"]) == 3
        assert row["blocks"] == [1, 1, 1] and row["text_len"] == [len(text)] * 3


def test_rows_come_back_k_times_with_a_sample_column(model_emu):
    emu = model_emu
    ds = Dataset.from_dict({"text": TEXTS, "n": [0, 1, 2, 3]})
    out = run(ds, emu, samples=3, samples_as="rows", response_format=Topic, parse=blocks)
    assert out.column_names == [
        "text", "n", "response", "topic", "score", "blocks", "text_len", "sample", "dsbatch",
    ]  # fmt: skip
    assert len(out) == 12
    assert out["n"] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert out["sample"] == [0, 1, 2] * 4
    ids = [s["custom_id"] for s in out["dsbatch"]]
    assert ids == [c for first in ids[::3] for c in samples_of(first, 3)]
    assert len(set(ids)) == 9
    assert out.data.schema.field("topic").type == pa.string()
    assert out["blocks"] == [1] * 12
    # The same job, the other shape: no request, and the lists hold the same values.
    emu.reset_stats()
    lists = run(ds, emu, samples=3, response_format=Topic, parse=blocks)
    assert sum(sent(emu).values()) == 0
    assert [t for row in lists["topic"] for t in row] == out["topic"]


def test_the_shape_is_an_output_option_of_the_job_not_a_new_one(emu):
    ds = Dataset.from_dict({"text": TEXTS})
    lists = run(ds, emu, samples=2)
    rows = run(ds, emu, samples=2, samples_as="rows")
    assert len(job_dirs()) == 1 and sum(sent(emu).values()) == 6
    assert len(lists) == 4 and len(rows) == 8
    assert rows["response"] == [a for row in lists["response"] for a in row]


def test_failed_samples_follow_on_error_per_row_of_lists_or_per_sample_row():
    texts = [f"text {i}" for i in range(12)]
    ds = Dataset.from_dict({"text": texts})
    with Emulator(delay=0, faults=Faults(invalid=0.3)) as emu:
        kept = run(ds, emu, samples=2)
        failed = [[s["status"] != "succeeded" for s in row] for row in kept["dsbatch"]]
        assert 0 < sum(map(any, failed)) < 12  # some rows have a failed sample, some not
        for row, flags in zip(kept["response"], failed, strict=True):
            assert [a is None for a in row] == flags
        dropped = run(ds, emu, samples=2, on_error="drop")
        assert dropped["text"] == [t for t, f in zip(texts, failed, strict=True) if not any(f)]
        by_sample = run(ds, emu, samples=2, samples_as="rows", on_error="drop")
        assert len(by_sample) == 24 - sum(map(sum, failed))
        assert all(s["status"] == "succeeded" for s in by_sample["dsbatch"])
        first = next(i for i, f in enumerate(failed) if any(f))
        with pytest.raises(RowFailedError, match=rf"rows failed: .*\(row {first} sample ") as e:
            run(ds, emu, samples=2, on_error="raise")
        assert e.value.rows[0] == first
        with pytest.raises(RowFailedError, match=rf"samples failed: .*\(row {first} sample "):
            run(ds, emu, samples=2, samples_as="rows", on_error="raise")
        assert sum(sent(emu).values()) == 24  # failures are final: never sent again


def test_a_skipped_row_has_k_skipped_samples(emu):
    ds = Dataset.from_dict({"text": ["a", "", "b"]})
    out = run(ds, emu, lambda row: row["text"] or None, samples=2)
    assert out["response"][1] == [None, None]
    assert [s["status"] for s in out["dsbatch"][1]] == ["skipped", "skipped"]
    assert sum(sent(emu).values()) == 4


def test_a_job_with_samples_is_collected_elsewhere_from_its_stored_options(emu):
    ds = Dataset.from_dict({"text": TEXTS})
    out = run(ds, emu, samples=3, samples_as="rows", conversation_column="messages")
    (job,) = job_dirs()
    loaded = dsbatch.Job.load(job.name[:10], client=emu.client(), poll_interval=0)
    assert loaded._opts().samples == 3 and loaded._opts().conversation_column == "messages"
    again = loaded.result()
    assert again.features == out.features and again.to_list() == out.to_list()
    # Collected again from the cached answers, with the options the job kept.
    assert loaded.result(parse=blocks)["blocks"] == [1] * 12


def test_options_a_job_kept_before_these_keywords_existed_mean_their_defaults():
    kept = MapOptions.build(**_keywords()).to_json()
    for name in ("samples", "samples_as", "thinking_column", "conversation_column"):
        del kept[name]
    options, missing = MapOptions.from_json(kept)
    assert missing == {}
    assert (options.samples, options.samples_as) == (1, "lists")
    assert (options.thinking_column, options.conversation_column) == ("thinking", None)


def _keywords(**changes):
    base = dict(
        model=MODEL, max_tokens=256, system=None, params=None, response_format=None, parse=None,
        output_column="response", status_column="dsbatch", structured_output="native",
        betas=None, with_indices=False, cache_dir=None, max_attempts=3, on_error="keep",
        poll_interval=None, resend_canceled=False, progress=False, max_batch_requests=10,
        max_batch_bytes=1000, check_determinism=True, samples=1, samples_as="lists",
        thinking_column="thinking", conversation_column=None, budget_usd=None, dry_run=False,
        max_queued_requests=100_000, prices=None, prompt_caching="off",
        load_from_cache_file=True, num_proc=None,
    )  # fmt: skip
    return {**base, **changes}


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"samples": 0}, "samples must be a positive integer, not 0"),
        ({"samples": 2.0}, "samples must be a positive integer, not 2.0"),
        ({"samples_as": "columns"}, "samples_as must be 'lists' or 'rows', not 'columns'"),
        ({"thinking_column": ""}, "thinking_column must be a non-empty column name"),
        (
            {"conversation_column": "response"},
            "output_column and conversation_column are both 'response': give them different",
        ),
        (
            {"samples_as": "rows", "conversation_column": "sample"},
            "conversation_column and the sample column of samples_as='rows' are both 'sample'",
        ),
    ],
)
def test_bad_sample_and_column_keywords_are_refused(changes, error):
    with pytest.raises((TypeError, ValueError), match=error.replace("(", r"\(")):
        MapOptions.build(**_keywords(**changes))


def test_a_sample_column_in_the_dataset_is_refused_before_anything_is_sent(emu):
    ds = Dataset.from_dict({"text": ["a"], "sample": [7]})
    with pytest.raises(ValueError, match="already has a column 'sample', which the sample"):
        run(ds, emu, samples=2, samples_as="rows")
    assert emu.calls["create"] == 0
    assert run(ds, emu, samples=2)["sample"] == [7]  # lists add no sample column
