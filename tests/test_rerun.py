"""Reruns without rendering: the same call again returns the finished job's output without
calling the prompt function, and anything that could change the output renders again."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import textwrap
from dataclasses import fields

import anthropic
import pytest
from datasets import Dataset, DatasetDict
from pydantic import BaseModel
from support import MODEL, answers, cache_root, echo, run, sent

import dsbatch
from dsbatch._backend import Backend
from dsbatch._ledger import Ledger
from dsbatch._options import MapOptions
from dsbatch._records import BatchState
from dsbatch._recovery import job_records
from dsbatch._rerun import NOT_IN_KEY, call_digest, rerun_key
from dsbatch.testing import Emulator

TEXTS = ["alpha", "beta", "gamma"]


class Calls:
    """Counts the prompt's calls without being part of what the key hashes (it pickles as a
    new counter), as a counter the user's prompt does not have."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (Calls, ())


CALLS = Calls()


def counted(row, idx=None):
    CALLS.n += 1
    return row["text"]


@pytest.fixture(autouse=True)
def _reset():
    CALLS.n = 0


def data(texts=TEXTS) -> Dataset:
    return Dataset.from_dict({"text": list(texts)})


def same_output(a, b) -> None:
    """What a user could tell apart: rows, columns, features, fingerprint."""
    assert a.to_list() == b.to_list()
    assert a.column_names == b.column_names
    assert a.features == b.features
    assert a._fingerprint == b._fingerprint


def test_a_rerun_calls_no_prompt_sends_nothing_and_returns_what_rendering_returns(emu):
    first = run(data(), emu, counted)
    assert CALLS.n == 6  # each row, and again to check it renders the same
    creates = emu.calls["create"]
    CALLS.n = 0
    hit = run(data(), emu, counted)
    assert CALLS.n == 0
    assert emu.calls["create"] == creates and sum(sent(emu).values()) == 3
    rendered = run(data(), emu, counted, load_from_cache_file=False)
    assert CALLS.n == 3  # rendered (a known job: no determinism check)
    same_output(hit, rendered)
    same_output(hit, first)
    assert hit["response"] == answers(TEXTS)


def test_a_dataset_read_from_disk_is_served_too(emu, tmp_path):
    data().save_to_disk(str(tmp_path / "ds"))
    rendered = run(dsbatch_load(tmp_path), emu, counted)
    CALLS.n = 0
    hit = run(dsbatch_load(tmp_path), emu, counted)
    assert CALLS.n == 0
    same_output(hit, rendered)
    # Other rows on disk: another fingerprint, rendered.
    data(["x", "y", "z"]).save_to_disk(str(tmp_path / "ds2"))
    other = run(dsbatch_load(tmp_path, "ds2"), emu, counted)
    assert CALLS.n == 6 and other["response"] == answers(["x", "y", "z"])


def dsbatch_load(tmp_path, name="ds"):
    from datasets import load_from_disk

    return load_from_disk(str(tmp_path / name))


# -- what the key sees of the prompt function --------------------------------------------------

MODULE = """
from test_rerun import CALLS

TEMPLATE = "{greeting}: {text}"


def helper(text):
    return text.upper()


def prompt(row, greeting="A"):
    CALLS.n += 1
    return TEMPLATE.format(greeting=greeting, text=helper(row["text"]))
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's, importable by name (dill would pickle its functions by name
    alone), that a test edits and imports again, as a user edits a file and reruns."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    path = tmp_path / "user_prompts.py"

    def write(source: str):
        path.write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        if "user_prompts" in sys.modules:
            return importlib.reload(sys.modules["user_prompts"])
        return importlib.import_module("user_prompts")

    yield write
    sys.modules.pop("user_prompts", None)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("return TEMPLATE", "return '! ' + TEMPLATE"), "! A: ALPHA"),  # the function's code
        (('TEMPLATE = "{greeting}: {text}"', 'TEMPLATE = "{greeting}> {text}"'), "A> ALPHA"),
        (("return text.upper()", "return text.title()"), "A: Alpha"),  # a helper it calls
        (('greeting="A"', 'greeting="B"'), "B: ALPHA"),  # a default argument
    ],
    ids=["code", "global", "helper", "default"],
)
def test_editing_the_prompt_function_renders_again(emu, user_module, edit, expected):
    module = user_module(MODULE)
    assert run(data(), emu, module.prompt)["response"][0] == "echo: A: ALPHA"
    CALLS.n = 0
    module = user_module(MODULE)  # imported again, unchanged
    assert run(data(), emu, module.prompt)["response"][0] == "echo: A: ALPHA"
    assert CALLS.n == 0
    module = user_module(MODULE.replace(*edit))
    out = run(data(), emu, module.prompt)
    assert out["response"][0] == f"echo: {expected}"
    assert CALLS.n == 6


def test_a_global_changed_in_place_renders_again(emu):
    shots = ["one"]

    def prompt(row):
        CALLS.n += 1
        return f"{' '.join(shots)} {row['text']}"

    run(data(), emu, prompt)
    shots.append("two")
    CALLS.n = 0
    out = run(data(), emu, prompt)
    assert CALLS.n == 6 and out["response"][0] == "echo: one two alpha"


def test_a_module_attribute_the_prompt_reads_is_hashed(emu, user_module, monkeypatch):
    module = user_module(MODULE)

    def prompt(row):
        CALLS.n += 1
        return module.TEMPLATE.format(greeting="G", text=row["text"])

    run(data(), emu, prompt)
    monkeypatch.setattr(module, "TEMPLATE", "{greeting}| {text}")
    CALLS.n = 0
    out = run(data(), emu, prompt)
    assert CALLS.n == 6 and out["response"][0] == "echo: G| alpha"


def test_a_prompt_that_cannot_be_hashed_renders_with_one_line_saying_why(emu, caplog):
    pending = (i for i in range(3))  # a generator: dill cannot pickle it

    def prompt(row):
        CALLS.n += 1
        assert pending is not None
        return row["text"]

    first = run(data(), emu, prompt)
    CALLS.n = 0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dsbatch"):
        again = run(data(), emu, prompt)
    assert CALLS.n == 3  # rendered; no batch: the answers are cached
    said = [r.getMessage() for r in caplog.records if "cannot be hashed" in r.getMessage()]
    assert len(said) == 1
    assert "the prompt function test_a_prompt_that_cannot_be_hashed" in said[0]
    assert "(TypeError: cannot pickle 'generator' object)" in said[0]
    same_output(first, again)


def test_a_parse_that_cannot_be_hashed_renders(emu, caplog):
    pending = (i for i in range(3))

    def parse(row, message):
        assert pending is not None
        return {"n": len(message["content"])}

    run(data(), emu, counted, parse=parse)
    CALLS.n = 0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dsbatch"):
        run(data(), emu, counted, parse=parse)
    assert CALLS.n == 3
    assert [
        r.getMessage()[:40] for r in caplog.records if "cannot be hashed" in r.getMessage()
    ] == ["dsbatch: rendering every row: parse test"]


# -- every keyword is part of the key ----------------------------------------------------------


class Topic(BaseModel):
    topic: str


def parse_length(row, message):
    return {"length": len(message["content"])}


CHANGED = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 128,
    "system": "Be brief.",
    "params": {"stop_sequences": ["END"]},
    "response_format": Topic,
    "parse": parse_length,
    "output_column": "answer",
    "status_column": "state",
    "structured_output": "tool",
    "betas": ["output-300k-2026-03-24"],
    "with_indices": True,
    "max_attempts": 5,
    "on_error": "drop",
    "resend_canceled": True,
    "max_batch_requests": 2,
    "max_batch_bytes": 1_000_000,
    "check_determinism": False,
    "samples": 2,
    "samples_as": "rows",
    "thinking_column": "reasoning",
    "conversation_column": "messages",
    "budget_usd": 100.0,
    "dry_run": True,
    "max_queued_requests": 50,
    "prices": {MODEL: {"input": 1, "output": 2}},
    "prompt_caching": "off",
}


def test_every_keyword_but_the_few_that_change_nothing_is_in_the_key():
    keywords = {f.name for f in fields(MapOptions) if f.init}
    assert sorted(NOT_IN_KEY) == [
        "cache_dir",
        "load_from_cache_file",
        "num_proc",
        "poll_interval",
        "progress",
    ]
    assert set(CHANGED) == keywords - NOT_IN_KEY


@pytest.mark.parametrize("keyword", sorted(CHANGED))
def test_changing_any_keyword_renders_again(emu, keyword, monkeypatch):
    run(data(), emu, counted)
    CALLS.n = 0
    run(data(), emu, counted, **{keyword: CHANGED[keyword]})
    assert CALLS.n >= 3  # every row rendered (twice for a new job)
    CALLS.n = 0
    run(data(), emu, counted)  # the first call's key still finds its job
    assert CALLS.n == 0


def test_the_keywords_that_change_nothing_still_hit(emu):
    run(data(), emu, counted)
    CALLS.n = 0
    out = run(data(), emu, counted, progress=True, poll_interval=5, num_proc=2)
    assert CALLS.n == 0 and out["response"] == answers(TEXTS)


# -- the server --------------------------------------------------------------------------------


def test_the_key_names_the_server_and_its_api_version(emu, tmp_path):
    ledger = Ledger(tmp_path / "cache")
    options = MapOptions.build(**{**base_keywords(), "cache_dir": str(tmp_path / "cache")})
    splits = {"data": data()}

    def key(client):
        backend = Backend(client)
        digest = call_digest(splits, counted, options, backend, labelled=False)
        assert digest is not None
        return rerun_key(digest, backend, ledger)

    emulator = key(emu.client())
    api = key(anthropic.Anthropic(api_key="x"))  # api.anthropic.com: known without a call
    other_version = key(
        anthropic.Anthropic(api_key="x", default_headers={"anthropic-version": "2023-06-01"})
    )
    assert len({emulator, api, other_version}) == 3 and None not in {emulator, api}
    # A server this cache never heard from: no key (it could hold no finished job of it).
    assert key(anthropic.Anthropic(api_key="x", base_url="http://127.0.0.1:9")) is None


def test_the_first_call_to_a_server_the_cache_did_not_know_is_served_next_time(emu):
    # A plain client: what the server is gets known during the first call (it asks).
    client = anthropic.Anthropic(base_url=emu.base_url, api_key="x")
    keywords = {"model": MODEL, "client": client, "poll_interval": 0, "progress": False}
    first = dsbatch.map(data(), counted, **keywords)
    CALLS.n = 0
    again = dsbatch.map(data(), counted, **keywords)
    assert CALLS.n == 0
    same_output(first, again)


def test_another_emulator_renders_but_pays_nothing(emu):
    first = run(data(), emu, counted)
    CALLS.n = 0
    with Emulator(delay=0, responder=echo) as other:
        again = run(data(), other, counted)
        assert other.calls["create"] == 0  # the answers of every emulator serve each other
    assert CALLS.n == 3
    assert again.to_list() == first.to_list()


def base_keywords() -> dict:
    """map's defaults, as MapOptions takes them."""
    import inspect

    return {
        name: p.default
        for name, p in inspect.signature(dsbatch.map).parameters.items()
        if name in {f.name for f in fields(MapOptions) if f.init}
    } | {"model": MODEL}


# -- what must never be served -----------------------------------------------------------------


def only_job():
    ledger = Ledger(cache_root())
    (fingerprint,) = ledger.job_fingerprints()
    return ledger, ledger.job(fingerprint)


def test_a_job_not_finished_is_not_served(emu):
    run(data(), emu, counted)
    ledger, job = only_job()

    def running(manifest):
        manifest.state = "running"

    job.update_manifest(job.read_manifest(), running)
    CALLS.n = 0
    run(data(), emu, counted)
    assert CALLS.n == 3
    assert job.read_manifest().state == "finished"
    CALLS.n = 0
    run(data(), emu, counted)
    assert CALLS.n == 0


def test_a_job_with_a_batch_in_flight_is_not_served(emu):
    run(data(), emu, counted)
    ledger, job = only_job()
    (record,) = job_records(job)
    job.change(record, lambda fresh: setattr(fresh, "state", BatchState.SUBMITTED))
    CALLS.n = 0
    out = run(data(), emu, counted)
    assert CALLS.n == 3 and out["response"] == answers(TEXTS)
    assert emu.calls["create"] == 1


def test_a_pruned_job_renders_and_downloads_instead_of_buying(emu):
    run(data(), emu, counted)
    ledger, job = only_job()
    ledger.remove_job(job.fingerprint)
    for batch_id in ledger.results_files():
        ledger.remove_results(batch_id)
    CALLS.n = 0
    out = run(data(), emu, counted)
    assert CALLS.n == 6 and out["response"] == answers(TEXTS)  # a new job: checked twice
    assert emu.calls["create"] == 1


def test_lost_outputs_are_joined_again_without_rendering_or_sending(emu, monkeypatch):
    import datetime as dt
    import types

    from dsbatch import _job

    first = run(data(), emu, counted)
    ledger, job = only_job()
    for path in (job.dir / "output").rglob("*.arrow"):
        path.unlink()
    CALLS.n = 0
    # Joined again an hour later: the output is the same, its provenance's times included.
    later = dt.datetime.now() + dt.timedelta(hours=1)
    shifted = types.SimpleNamespace(datetime=types.SimpleNamespace(now=lambda: later))
    monkeypatch.setattr(_job, "dt", shifted)
    again = run(data(), emu, counted)
    assert CALLS.n == 0 and emu.calls["create"] == 1
    same_output(first, again)


def test_lost_outputs_and_results_render(emu):
    run(data(), emu, counted)
    ledger, job = only_job()
    for path in (job.dir / "output").rglob("*.arrow"):
        path.unlink()
    for batch_id in ledger.results_files():
        ledger.remove_results(batch_id)
    CALLS.n = 0
    out = run(data(), emu, counted)
    assert CALLS.n == 3 and out["response"] == answers(TEXTS)
    assert emu.calls["create"] == 1  # downloaded again, not bought


def test_in_memory_datasets_are_told_apart_by_their_rows(emu):
    run(data(), emu, counted)
    CALLS.n = 0
    out = run(data(["alpha", "beta", "delta"]), emu, counted)
    assert CALLS.n == 6 and out["response"] == answers(["alpha", "beta", "delta"])


def test_a_dataset_without_a_stable_fingerprint_renders_every_time(emu):
    # datasets gives a random fingerprint to the result of a transform it cannot hash.
    pending = (i for i in range(3))

    def unstable():
        return data().map(lambda row: {"text": row["text"] + str(pending is None)})

    first = run(unstable(), emu, counted)
    CALLS.n = 0
    again = run(unstable(), emu, counted)
    assert CALLS.n == 3
    assert first.to_list() == again.to_list()


def test_samples_are_served_as_rendered(emu):
    run(data(), emu, counted, samples=2)
    CALLS.n = 0
    hit = run(data(), emu, counted, samples=2)
    assert CALLS.n == 0
    same_output(hit, run(data(), emu, counted, samples=2, load_from_cache_file=False))
    assert hit["response"][0] == ["echo: alpha", "echo: alpha"]


def test_a_dataset_dict_is_served_whole_and_each_split_counts(emu):
    def splits(test=("delta",)):
        return DatasetDict({"train": data(), "test": data(test)})

    run(splits(), emu, counted)
    CALLS.n = 0
    hit = run(splits(), emu, counted)
    assert CALLS.n == 0 and isinstance(hit, DatasetDict)
    rendered = run(splits(), emu, counted, load_from_cache_file=False)
    for split in ("train", "test"):
        same_output(hit[split], rendered[split])
    CALLS.n = 0
    run(splits(test=("epsilon",)), emu, counted)
    assert CALLS.n == 8  # 4 rows, rendered twice for the new job
    CALLS.n = 0
    run(DatasetDict({"train": data()}), emu, counted)  # a split fewer
    assert CALLS.n == 6


def test_with_indices_rows_in_another_order_render(emu):
    def indexed(row, idx):
        CALLS.n += 1
        return f"{idx}: {row['text']}"

    run(data(), emu, indexed, with_indices=True)
    CALLS.n = 0
    out = run(data().select([2, 1, 0]), emu, indexed, with_indices=True)
    assert CALLS.n == 6 and out["response"] == answers(["0: gamma", "1: beta", "2: alpha"])


def test_response_format_and_parse_are_served_as_rendered(emu):
    def parse(row, message):
        return {"chars": len(message["content"][0]["text"])}

    keywords = {"response_format": Topic, "parse": parse, "on_error": "keep"}
    run(data(), emu, counted, **keywords)
    CALLS.n = 0
    hit = run(data(), emu, counted, **keywords)
    assert CALLS.n == 0
    same_output(hit, run(data(), emu, counted, load_from_cache_file=False, **keywords))
    assert "chars" in hit.column_names and "topic" in hit.column_names


def test_wait_false_and_dry_run_are_never_served(emu):
    run(data(), emu, counted)
    CALLS.n = 0
    job = dsbatch.map(
        data(),
        counted,
        model=MODEL,
        max_tokens=256,
        client=emu.client(),
        progress=False,
        poll_interval=0,
        wait=False,
    )
    assert isinstance(job, dsbatch.Job) and CALLS.n == 3
    CALLS.n = 0
    plan = run(data(), emu, counted, dry_run=True)
    assert isinstance(plan, dsbatch.Plan) and CALLS.n == 3


# -- describe: what of the user's code the key sees --------------------------------------------


def digest(obj) -> str:
    from datasets.fingerprint import Hasher

    from dsbatch._describe import describe

    return Hasher.hash(describe(obj))


def test_a_response_format_is_described_by_its_fields_and_validators():
    from pydantic import field_validator

    def model(kind, suffix):
        class Label(BaseModel):
            topic: kind  # type: ignore[valid-type]

            @field_validator("topic")
            @classmethod
            def tidy(cls, value):
                return value + suffix

        return Label

    same = {digest(model(str, "!")) for _ in range(2)}
    assert len(same) == 1
    assert len({*same, digest(model(int, "!")), digest(model(str, "?"))}) == 3


def test_partials_bound_methods_and_callable_objects_are_described_by_what_they_hold():
    import functools

    class Prompter:
        def __init__(self, prefix):
            self.prefix = prefix

        def __call__(self, row):
            return self.prefix + row["text"]

    def prompt(row, prefix):
        return prefix + row["text"]

    assert digest(Prompter("a")) == digest(Prompter("a")) != digest(Prompter("b"))
    assert digest(Prompter("a").__call__) != digest(Prompter("b").__call__)
    partial = functools.partial
    assert digest(partial(prompt, prefix="a")) == digest(partial(prompt, prefix="a"))
    assert digest(partial(prompt, prefix="a")) != digest(partial(prompt, prefix="b"))


def test_a_function_that_calls_itself_is_described_once():
    def nested(value):
        return value if not isinstance(value, list) else [nested(v) for v in value]

    assert digest(nested) == digest(nested)


def test_the_description_is_the_same_in_another_process(tmp_path, monkeypatch):
    # A notebook restarted, a script run again: new ids, another hash seed, the same key.
    import subprocess

    (tmp_path / "user_code.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel, field_validator

            STOP = {"the", "a", "an"}


            class Label(BaseModel):
                topic: str

                @field_validator("topic")
                @classmethod
                def tidy(cls, value):
                    return value.strip()


            def prompt(row, shots=("one", "two")):
                words = [w for w in row["text"].split() if w not in STOP]
                return " ".join([*shots, *words])
            """
        )
    )
    script = (
        "import user_code; from datasets.fingerprint import Hasher; "
        "from dsbatch._describe import describe; "
        "print(Hasher.hash(describe(user_code.prompt)), Hasher.hash(describe(user_code.Label)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "1" if sys.flags.hash_randomization else "2"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *sys.path])
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    user_code = importlib.import_module("user_code")
    monkeypatch.setitem(sys.modules, "user_code", user_code)  # gone again after the test
    here = f"{digest(user_code.prompt)} {digest(user_code.Label)}"
    assert done.stdout.strip() == here


# -- columns made by the user's code, stored while the code is the same -------------------------
JOINS = Calls()  # counts the joins from answers to columns (a spy on output_slices)


@pytest.fixture
def joins(monkeypatch):
    import dsbatch._collect as collect_module

    real = collect_module.output_slices

    def spy(*args, **kwargs):
        JOINS.n += 1
        return real(*args, **kwargs)

    JOINS.n = 0
    monkeypatch.setattr(collect_module, "output_slices", spy)
    return JOINS


LIMIT = 3


def short(row, message):
    CALLS.n += 1
    return {"short": message["content"][0]["text"][:LIMIT]}


def test_parse_columns_are_read_back_while_parse_is_the_same(emu, joins, monkeypatch):
    first = run(data(), emu, counted, parse=short)
    assert joins.n == 1 and CALLS.n == 9  # 6 prompt calls, 3 parse calls
    assert first["short"] == ["ech"] * 3
    CALLS.n = joins.n = 0
    again = run(data(), emu, counted, parse=short, load_from_cache_file=False)
    assert joins.n == 0 and CALLS.n == 3  # rendered, but nor joined nor parsed
    same_output(first, again)
    monkeypatch.setattr(sys.modules[__name__], "LIMIT", 6)  # a global parse reads
    CALLS.n = joins.n = 0
    edited = run(data(), emu, counted, parse=short, load_from_cache_file=False)
    assert joins.n == 1 and CALLS.n == 6  # 3 renders, 3 parses
    assert edited["short"] == ["echo: "] * 3
    assert edited._fingerprint != first._fingerprint
    assert emu.calls["create"] == 1


def test_parse_columns_follow_the_rows_parse_reads(emu, joins):
    def tagged(row, message):
        return {"tagged": f"{row['tag']}:{message['content'][0]['text']}"}

    rows = {"text": TEXTS, "tag": ["a", "b", "c"]}
    first = run(Dataset.from_dict(rows), emu, counted, parse=tagged)
    other = run(Dataset.from_dict({**rows, "tag": ["x", "y", "z"]}), emu, counted, parse=tagged)
    assert first["tagged"] == ["a:echo: alpha", "b:echo: beta", "c:echo: gamma"]
    assert other["tagged"] == ["x:echo: alpha", "y:echo: beta", "z:echo: gamma"]
    assert joins.n == 2 and emu.calls["create"] == 1  # the same job, joined for each rows


class Strict(BaseModel):
    topic: str


def as_json(row):
    return json.dumps({"topic": row["text"]})  # the echo answer holds it: "echo: {...}"


def test_response_format_columns_are_read_back_until_a_validator_changes(emu, joins):
    from pydantic import field_validator

    keywords = {"load_from_cache_file": False, "on_error": "keep"}
    first = run(data(), emu, as_json, response_format=Strict, **keywords)
    again = run(data(), emu, as_json, response_format=Strict, **keywords)
    assert joins.n == 1
    same_output(first, again)

    class Strict2(BaseModel):  # the same fields and name: the same requests
        topic: str

        @field_validator("topic")
        @classmethod
        def upper(cls, value: str) -> str:
            return value.upper()

    Strict2.__name__ = Strict2.__qualname__ = "Strict"
    Strict2.__module__ = Strict.__module__
    checked = run(data(), emu, as_json, response_format=Strict2, **keywords)
    assert joins.n == 2 and emu.calls["create"] == 1
    assert first["topic"] == TEXTS
    assert checked["topic"] == ["ALPHA", "BETA", "GAMMA"]


def test_code_that_cannot_be_hashed_is_joined_again_every_call(emu, joins):
    pending = (i for i in range(3))

    def parse(row, message):
        assert pending is not None
        return {"n": 1}

    keywords = {"parse": parse, "load_from_cache_file": False}
    first = run(data(), emu, counted, **keywords)
    again = run(data(), emu, counted, **keywords)
    assert joins.n == 2 and first["n"] == again["n"] == [1, 1, 1]
