"""dsbatch.card: the provenance of every dsbatch step travels with the data and makes a Hub card."""

from __future__ import annotations

import hashlib
import inspect
import json

import anthropic
import pytest
import yaml
from datasets import Dataset, DatasetDict, load_from_disk
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData
from support import MODEL, cache_root, echo, run

import dsbatch
from dsbatch.testing import Emulator

JUDGE = "claude-sonnet-4-5"
SYSTEM = "Answer in one short sentence."


def prompt(row):
    # None: the row is skipped (no request)
    return None if row["text"] is None else row["text"]


def judge(row):
    return f"Is this a good answer? {row['response']}"


def responder(custom_id, params):
    """Echo, but a request saying "bad" is refused as invalid (errored, never retried)."""
    text = params["messages"][-1]["content"]
    if "bad" in text:
        error = {"type": "invalid_request_error", "message": "too silly"}
        return {"type": "errored", "error": {"type": "error", "error": error}}
    return echo(custom_id, params)


@pytest.fixture
def refusing():
    with Emulator(delay=0, responder=responder) as emulator:
        yield emulator


def sha(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def batch_ids(emu) -> list[str]:
    """The emulator's batches, in the order they were made."""
    return list(dict.fromkeys(b for b, _ in emu.received))


def cell(text: str, name: str) -> str:
    """The value of the first ``| name | value |`` row of a card."""
    for line in text.splitlines():
        if line.startswith(f"| {name} | "):
            return line[len(f"| {name} | ") : -2]
    raise AssertionError(f"no row {name!r} in the card")


def stats(text: str) -> list[dict[str, str]]:
    """Every row of every per-split table (Split, Rows, statuses..., Cost (USD))."""
    rows, head = [], None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| Split |"):
            head = cells
        elif head and line.startswith("|") and not line.startswith("|---"):
            rows.append(dict(zip(head, cells, strict=True)))
        else:
            head = None if not line.startswith("|---") else head
    return rows


def distinct(statuses) -> dict[str, dict]:
    return {s["custom_id"]: s for s in statuses if s["custom_id"] is not None}


TEXTS = ["good one", "bad one", "good one", None, "good two"]


def test_a_card_pins_the_step_and_what_its_rows_hold(refusing):
    ds = Dataset.from_dict({"text": TEXTS})
    out = run(ds, refusing, prompt, system=SYSTEM)
    made = dsbatch.card(out)
    assert isinstance(made, DatasetCard)
    text = made.text
    assert "in 1 step." in text and "## Step 1: `dsbatch`" in text and "## Step 2" not in text
    assert cell(text, "Model") == MODEL
    assert cell(text, "Status column") == "`dsbatch`"
    job = dsbatch.jobs()[0]
    assert cell(text, "Job fingerprint") == f"`{job.fingerprint}`"
    assert (
        cell(text, "Prompt function (sha256 of its source)")
        == f"`{sha(inspect.getsource(prompt))}`"
    )
    assert cell(text, "System prompt (sha256)") == f"`{sha(json.dumps(SYSTEM))}`"
    assert cell(text, "Params (sha256)") == "none"
    assert cell(text, "max_tokens") == "256"
    assert cell(text, "dsbatch version") == dsbatch.__version__
    assert cell(text, "Anthropic SDK version") == anthropic.__version__
    assert cell(text, "API version") == "2026-10-21"
    assert cell(text, "Batches") == ", ".join(f"`{b}`" for b in batch_ids(refusing))
    assert len(batch_ids(refusing)) == 1
    assert cell(text, "Started").startswith(f"{job.status(refresh=False).created_at:%Y-%m-%d}T")

    # Counted from the rows: 2 succeeded rows share one request, paid once.
    statuses = out["dsbatch"]
    paid = distinct(statuses)
    assert len(paid) == 3
    inputs = sum(s["input_tokens"] or 0 for s in paid.values())
    assert inputs < sum(s["input_tokens"] or 0 for s in statuses)  # the shared one once
    cost = sum(s["cost_usd"] for s in paid.values())
    assert cost > 0
    assert stats(text) == [
        {
            "Split": "train",
            "Rows": "5",
            "succeeded": "3",
            "errored": "1",
            "skipped": "1",
            "Requests": "3",
            "Input tokens": f"{inputs:,}",
            "Output tokens": f"{sum(s['output_tokens'] or 0 for s in paid.values()):,}",
            "Cache read tokens": "0",
            "Cache write tokens": "0",
            "Cost (USD)": f"{cost:.6f}",
        }
    ]
    assert made.data.tags == ["dsbatch", "synthetic"]
    # No secret anywhere: the emulator client's key, the prompt text, the system prompt.
    for secret in ("test-key", SYSTEM, "good one"):
        assert secret not in str(made)
        assert secret not in json.dumps(out.features.to_dict())


def test_a_two_step_chain_gives_a_card_with_both_steps(refusing):
    first = run(Dataset.from_dict({"text": TEXTS}), refusing, prompt)
    made_first = batch_ids(refusing)
    judged = run(
        first, refusing, judge, model=JUDGE, status_column="judge", output_column="verdict"
    )
    made_second = [b for b in batch_ids(refusing) if b not in made_first]
    text = dsbatch.card(judged).text
    assert "in 2 steps." in text
    one, two = text.split("## Step 2: `judge`")
    assert "## Step 1: `dsbatch`" in one
    assert cell(one, "Model") == MODEL and cell(two, "Model") == JUDGE
    assert cell(one, "Batches") == f"`{made_first[0]}`"
    assert cell(two, "Batches") == f"`{made_second[0]}`"
    assert (
        cell(one, "Prompt function (sha256 of its source)") == f"`{sha(inspect.getsource(prompt))}`"
    )
    assert (
        cell(two, "Prompt function (sha256 of its source)") == f"`{sha(inspect.getsource(judge))}`"
    )
    # The judge was asked of every row (its prompt never skips); the rows without an answer
    # (errored, skipped) ask it the same: 5 rows, 3 distinct requests.
    assert [(r["Rows"], r["succeeded"], r["Requests"]) for r in stats(two)] == [("5", "5", "3")]
    assert [(r["Rows"], r["succeeded"], r["Requests"]) for r in stats(one)] == [("5", "3", "3")]
    # The first step's card is unchanged by the second step.
    assert (
        one.split("## Step 1")[1]
        == dsbatch.card(first).text.split("## Step 1")[1].split("Tokens and cost count")[0]
    )


def test_the_provenance_survives_save_to_disk_parquet_and_the_hubs_yaml(refusing, tmp_path):
    out = run(Dataset.from_dict({"text": TEXTS}), refusing, prompt, system=SYSTEM)
    expected = str(dsbatch.card(out))
    out.save_to_disk(str(tmp_path / "saved"))
    assert str(dsbatch.card(load_from_disk(str(tmp_path / "saved")))) == expected
    out.to_parquet(str(tmp_path / "out.parquet"))
    assert str(dsbatch.card(Dataset.from_parquet(str(tmp_path / "out.parquet")))) == expected
    # The Hub keeps the features in the card's YAML (dataset_info), as push_to_hub writes them.
    data = DatasetCardData()
    DatasetInfosDict.from_dataset_card_data(dsbatch.card(out).data).to_dataset_card_data(data)
    features = DatasetInfosDict.from_dataset_card_data(
        DatasetCardData(**yaml.safe_load(data.to_yaml()))
    )["default"].features
    again = Dataset.from_parquet(str(tmp_path / "out.parquet"), features=features)
    assert str(dsbatch.card(again)) == expected
    assert dsbatch.card(out).data.configs == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]


def test_a_card_counts_the_rows_the_dataset_holds_after_filter_and_drop(refusing):
    ds = Dataset.from_dict({"text": TEXTS})
    kept = run(ds, refusing, prompt).filter(lambda row: row["text"] != "good two")
    assert [(r["Rows"], r["succeeded"], r["Requests"]) for r in stats(dsbatch.card(kept).text)] == [
        ("4", "2", "2")
    ]
    dropped = run(ds, refusing, prompt, on_error="drop")
    rows = stats(dsbatch.card(dropped).text)
    assert [(r["Rows"], r["succeeded"], "errored" in r) for r in rows] == [("4", "3", False)]


def test_a_dataset_dict_card_has_each_split_and_the_whole(refusing, tmp_path):
    dd = DatasetDict(
        train=Dataset.from_dict({"text": ["good one", "good two", "bad one"]}),
        test=Dataset.from_dict({"text": ["good one", "good three"]}),
    )
    out = run(dd, refusing, prompt)
    text = dsbatch.card(out).text
    assert text.count("## Step ") == 1
    every = list(out["train"]["dsbatch"]) + list(out["test"]["dsbatch"])
    inputs = sum(s["input_tokens"] or 0 for s in distinct(every).values())
    rows = {r["Split"]: r for r in stats(text)}
    assert list(rows) == ["train", "test", "**all**"]
    assert [(r["Rows"], r["succeeded"], r["errored"], r["Requests"]) for r in rows.values()] == [
        ("3", "2", "1", "3"),
        ("2", "2", "0", "2"),
        ("5", "4", "1", "4"),  # "good one" asked by both splits, paid once
    ]
    assert rows["**all**"]["Input tokens"] == f"{inputs:,}"
    assert cell(text, "Batches") == ", ".join(f"`{b}`" for b in batch_ids(refusing))
    out.save_to_disk(str(tmp_path / "dd"))
    assert str(dsbatch.card(load_from_disk(str(tmp_path / "dd")))) == str(dsbatch.card(out))
    assert [s["split"] for s in dsbatch.card(out).data.configs[0]["data_files"]] == [
        "train",
        "test",
    ]


def test_samples_are_counted_per_answer(emu):
    out = run(Dataset.from_dict({"text": ["a", "b", "c"]}), emu, samples=2)
    text = dsbatch.card(out).text
    assert cell(text, "Samples per row") == "2"
    assert [(r["Rows"], r["succeeded"], r["Requests"]) for r in stats(text)] == [("3", "6", "6")]


def shout(row):
    return row["text"].upper()


def shout_again(row):
    # the same requests as shout: the same job, but another function
    return row["text"].upper()


def whisper(row):
    return row["text"].lower()


def test_the_prompt_hash_follows_the_prompt_function(emu):
    ds = Dataset.from_dict({"text": ["Hello", "World"]})

    def prompt_hash(fn):
        return cell(dsbatch.card(run(ds, emu, fn)).text, "Prompt function (sha256 of its source)")

    assert prompt_hash(shout) == f"`{sha(inspect.getsource(shout))}`"
    assert prompt_hash(whisper) == f"`{sha(inspect.getsource(whisper))}`"
    sent = len(emu.received)
    # An edit that renders the same requests buys nothing, and the card names the new function.
    assert prompt_hash(shout_again) == f"`{sha(inspect.getsource(shout_again))}`"
    assert len(emu.received) == sent
    assert len({sha(inspect.getsource(f)) for f in (shout, shout_again, whisper)}) == 3


def test_the_system_prompt_and_params_hashes_change_with_them(emu):
    ds = Dataset.from_dict({"text": ["Hello"]})
    one = dsbatch.card(run(ds, emu, system="Be terse.", params={"stop_sequences": ["END"]})).text
    two = dsbatch.card(run(ds, emu, system="Be kind.", params={"stop_sequences": ["STOP"]})).text
    assert cell(one, "System prompt (sha256)") == f"`{sha(json.dumps('Be terse.'))}`"
    assert cell(two, "System prompt (sha256)") == f"`{sha(json.dumps('Be kind.'))}`"
    assert (
        cell(one, "Params (sha256)")
        == f"`{sha(json.dumps({'stop_sequences': ['END']}, separators=(',', ':')))}`"
    )
    assert (
        cell(two, "Params (sha256)")
        == f"`{sha(json.dumps({'stop_sequences': ['STOP']}, separators=(',', ':')))}`"
    )


def test_a_job_collected_later_or_from_the_cache_carries_the_same_provenance(emu):
    ds = Dataset.from_dict({"text": ["one", "two", "three"]})
    client = emu.client()
    job = dsbatch.map(
        ds, prompt, model=MODEL, max_tokens=256, client=client, wait=False, progress=False
    )
    later = dsbatch.Job.load(job.fingerprint, client=client, poll_interval=0).result()
    direct = run(ds, emu, prompt)  # answered from the cache: no call
    assert len(batch_ids(emu)) == 1
    assert str(dsbatch.card(later)) == str(dsbatch.card(direct))
    assert cell(dsbatch.card(direct).text, "Batches") == f"`{batch_ids(emu)[0]}`"
    assert cell(dsbatch.card(direct).text, "Prompt function (sha256 of its source)") != "unknown"


def test_a_dataset_without_a_dsbatch_step_is_refused(emu):
    plain = Dataset.from_dict({"text": ["a"]})
    with pytest.raises(ValueError, match=r"carries no dsbatch step \(its columns: text\)"):
        dsbatch.card(plain)
    out = run(plain, emu)
    with pytest.raises(ValueError, match="still has that column"):
        dsbatch.card(out.remove_columns("dsbatch"))
    # Renamed, the status column still carries its step.
    assert "## Step 1: `status`" in dsbatch.card(out.rename_column("dsbatch", "status")).text
    with pytest.raises(TypeError, match="not list"):
        dsbatch.card([1])


def test_a_job_kept_by_an_older_dsbatch_says_what_was_not_recorded(emu):
    ds = Dataset.from_dict({"text": ["one", "two"]})
    out = run(ds, emu, prompt)
    job = dsbatch.jobs()[0]
    manifest = cache_root() / "jobs" / job.fingerprint / "manifest.json"
    kept = json.loads(manifest.read_text())
    del kept["provenance"]  # as an older dsbatch wrote it
    manifest.write_text(json.dumps(kept))
    text = dsbatch.card(dsbatch.Job.load(job.fingerprint).result()).text
    assert cell(text, "Model") == MODEL  # the manifest names it
    assert cell(text, "Prompt function (sha256 of its source)") == "not recorded"
    assert cell(text, "dsbatch version") == "not recorded"
    assert cell(text, "Betas") == "not recorded"
    assert cell(text, "Batches") == cell(dsbatch.card(out).text, "Batches")
