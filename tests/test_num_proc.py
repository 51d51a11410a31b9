"""num_proc=N: the rows are rendered in N worker processes, and everything that comes of it is
what one process makes: the same requests (bytes, custom_ids, order, the first row of each), the
same prompt-cache plan and primers, the same output; a failing row is named by its index in its
split. Each pool costs a fraction of a second: these tests start a handful."""

from __future__ import annotations

import dataclasses
import inspect
import logging

import dill
import multiprocess
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from pydantic import BaseModel
from support import MODEL, answers, echo, run, sent

import dsbatch
from dsbatch import _map, _parallel
from dsbatch._backend import Backend
from dsbatch._options import MapOptions
from dsbatch.testing import Emulator

SYSTEM = ("You label customer messages. Follow the rubric exactly. " * 440)[:24_000]


class Topic(BaseModel):
    topic: str


def texts(n, prefix="message"):
    # Repeats within and across shards: each request keeps the first row that asked for it.
    return [f"{prefix} {i % 7 if i % 3 else i}" for i in range(n)]


def splits():
    return DatasetDict(
        {
            "train": Dataset.from_dict({"text": texts(50)}),
            "test": Dataset.from_dict({"text": texts(23, "other")}),
        }
    )


def prepared(ds, prompt, **keywords):
    """What map renders of ``ds``: (row custom_ids, bodies in order, first rows, text templates'
    bytes, prompt-cache groups)."""
    given = {
        name: p.default
        for name, p in inspect.signature(dsbatch.map).parameters.items()
        if name in {f.name for f in dataclasses.fields(MapOptions) if f.init}
    }
    options = MapOptions.build(**{**given, "model": MODEL, "max_tokens": 256, **keywords})
    labelled = isinstance(ds, DatasetDict)
    parts = dict(ds) if labelled else {"data": ds}
    labels = {split: split if labelled else None for split in parts}
    out = _map.prepare(parts, prompt, options, Backend(None), labels)
    rendered = out.rendered
    return (
        rendered.row_custom_ids,
        list(rendered.bodies.items()),
        list(rendered.first_row.items()),
        rendered.templates,
        out.groups,
    )


@pytest.mark.parametrize(
    "keywords",
    [
        {"system": SYSTEM},  # the prompt-cache marks are made in the workers
        {"with_indices": True, "samples": 2, "response_format": Topic},
    ],
    ids=["prompt-caching", "indices-samples-response_format"],
)
def test_the_requests_are_the_bytes_one_process_makes(keywords):
    def prompt(row, idx=None):
        return row["text"] if idx is None else f"{row['text']} ({idx % 4})"

    one = prepared(splits(), prompt, **keywords)
    three = prepared(splits(), prompt, num_proc=3, **keywords)
    ids, bodies, first_row, templates, groups = one
    assert three == one
    # The case is not trivial: shared requests, rows past the first shard, a cache plan.
    assert len({c for row_ids in ids.values() for c in row_ids}) < sum(map(len, ids.values()))
    assert max(row for _, (_, row) in first_row) >= 34  # the third shard of train's 50 rows
    assert [split for _, (split, _) in first_row].count("test") > 0
    assert len(templates) == 2  # one per split, as one process makes them
    if "system" in keywords:
        assert set(groups.values()) == {0} and len(groups) == len(bodies)


def test_a_datasetdict_sends_the_same_requests_and_returns_the_same_output(emu, tmp_path):
    def prompt(row, idx):
        return f"{row['text']} #{idx}"

    keywords = {"with_indices": True, "samples": 2}
    one = run(splits(), emu, prompt, cache_dir=tmp_path / "one", **keywords)
    sent_by_one = sent(emu)
    emu.reset_stats()
    two = run(splits(), emu, prompt, cache_dir=tmp_path / "two", num_proc=2, **keywords)
    assert sent(emu) == sent_by_one and len(sent_by_one) == 2 * (50 + 23)
    for split in ("train", "test"):
        assert two[split].to_list() == one[split].to_list()
    assert two["train"]["response"][37] == ["echo: " + texts(50)[37] + " #37"] * 2


def test_primers_go_first_as_with_one_process(tmp_path):
    rows = [f"message {i}" for i in range(20)]
    ds = Dataset.from_dict({"text": rows})
    sizes, ids = [], []
    for cache, num_proc in (("one", None), ("two", 2)):
        with Emulator(delay=300, responder=echo) as emu:
            out = run(
                ds, emu, lambda r: r["text"], system=SYSTEM, wait=30, num_proc=num_proc,
                cache_dir=tmp_path / cache,
            )  # fmt: skip
            sizes.append(_batch_sizes(emu))
            assert out["response"] == answers(rows)
            status = out["dsbatch"]
            assert status[0]["cache_creation_input_tokens"] == 6_000
            assert {s["cache_read_input_tokens"] for s in status[1:]} == {6_000}
            ids.append(list(sent(emu)))
    assert sizes == [[1, 19]] * 2  # the primer alone, then the rest
    assert ids[0] == ids[1] and len(ids[0]) == 20


def _batch_sizes(emu):
    batches = [b for b, _ in emu.received]
    return [batches.count(b) for b in dict.fromkeys(batches)]


def fails_at_37_and_45(row, idx):
    if idx in (37, 45):
        raise KeyError(row["text"])
    return row["text"]


def test_a_failing_row_is_named_by_its_index_in_its_split(emu):
    ds = DatasetDict({"a": Dataset.from_dict({"text": texts(9)}), "b": splits()["train"]})
    with pytest.raises(dsbatch.PromptError) as one:
        run(ds, emu, fails_at_37_and_45, with_indices=True)
    # 50 rows in 3 shards (17, 17, 16): row 37 is the fourth row of the third; row 45 of the
    # same shard fails too, later, and the first failure in row order is the one raised.
    with pytest.raises(dsbatch.PromptError) as three:
        run(ds, emu, fails_at_37_and_45, with_indices=True, num_proc=3)
    assert (three.value.row, three.value.split) == (37, "b")
    assert (
        str(three.value)
        == str(one.value)
        == (f"row 37 of split 'b': the prompt function raised KeyError: {texts(50)[37]!r}")
    )
    assert "KeyError" in str(three.value.__cause__)  # the worker's traceback
    assert emu.calls["create"] == 0
    assert multiprocess.active_children() == []  # the pool is gone


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "2"])
def test_num_proc_takes_none_or_a_positive_number_of_processes(emu, value):
    ds = Dataset.from_dict({"text": ["a"]})
    message = "num_proc must be None or a positive number of processes to render the rows in"
    with pytest.raises(ValueError, match=f"{message}, not {value!r}".replace("(", r"\(")):
        run(ds, emu, num_proc=value)
    with pytest.raises(ValueError, match="num_proc must be None or a positive number"):
        dsbatch.preview(ds, lambda r: r["text"], model=MODEL, client=emu.client(), num_proc=value)
    assert sum(emu.calls.values()) == 0


def test_a_lambda_more_processes_than_rows_and_a_preview_work(emu, tmp_path):
    ds = Dataset.from_dict({"text": ["a", "b", "c"]})
    out = run(ds, emu, lambda r: r["text"].upper(), num_proc=8)
    assert out["response"] == answers(["A", "B", "C"])
    shown = dsbatch.preview(
        ds, lambda r: r["text"] * 2, n=2, model=MODEL, max_tokens=256, client=emu.client(),
        num_proc=2, cache_dir=tmp_path / "preview",
    )  # fmt: skip
    assert shown["response"] == answers(["aa", "bb"])


def test_a_prompt_that_cannot_be_pickled_renders_in_this_process_with_a_warning(emu, caplog):
    held = (i for i in range(3))  # a generator: dill cannot pickle it

    def prompt(row):
        return f"{row['text']} {type(held).__name__}"

    ds = Dataset.from_dict({"text": ["a", "b"]})
    with caplog.at_level(logging.WARNING, "dsbatch"):
        out = run(ds, emu, prompt, num_proc=2)
    assert out["response"] == answers(["a generator", "b generator"])
    (warning,) = [r.getMessage() for r in caplog.records if "num_proc" in r.getMessage()]
    assert warning.startswith(
        "dsbatch: num_proc=2: rendering in this process only, as the prompt function cannot be "
        "sent to worker processes (TypeError: cannot pickle 'generator' object)"
    )


def test_a_worker_gets_its_shard_of_an_in_memory_dataset_not_the_whole_table():
    features = Features({"text": Value("string"), "label": ClassLabel(names=["no", "yes"])})
    rows = {"text": [t * 40 for t in texts(400)], "label": [i % 2 for i in range(400)]}
    ds = Dataset.from_dict(rows, features)
    tasks = list(_parallel._tasks(b"", {"data": ds}, {"data": None}, 4))
    assert [start for *_, start in tasks] == [0, 100, 200, 300]
    whole = len(dill.dumps(ds))
    for *_, shard, start in tasks:
        assert shard.features == features
        assert shard.to_list() == ds.select(range(start, start + 100)).to_list()
        assert len(dill.dumps(shard)) < whole / 3
