"""Render's fast paths make what its plain paths make, byte for byte: a text row (the template)
and the same request as a dict; the prompt-cache plan of a job rendered from one template
(bodies not read) and of the same job read body by body; the model of each request kept with
it; the bodies store's one-call check-and-set."""

from __future__ import annotations

import json
import logging

import pytest
from datasets import Dataset
from PIL import Image

import dsbatch
from dsbatch import PromptError
from dsbatch._bodies import Bodies
from dsbatch._cost import model_of
from dsbatch._map import _template_model, _with_models
from dsbatch._prefix import TemplateMarks, plan_prefix_caching
from dsbatch._provenance import _models
from dsbatch._render import Rendered, RequestShape, custom_id_for, render_split

MODEL = "claude-haiku-4-5"
DEFAULTS = {"model": MODEL, "max_tokens": 64}
LONG = ("You label customer messages. Follow the rubric exactly. " * 440)[:24_000]
TRICKY = [
    "café",
    "日本語の文",
    'quote " and \\ backslash',
    "line\nbreak\ttab\r",
    "\u2028 and \u2029 separators",
    "emoji 💥 and \x00 NUL and \x1f",
    '"model":"claude-opus-4-5"',
    '"cache_control":{"type":"ephemeral"}',
    "\x00dsbatch-messages\x00",
    "x" * 5000,
]


def _render(splits, prompt, *, defaults=DEFAULTS, samples=1, marks=None, betas=()):
    rendered = Rendered()
    shape = RequestShape(defaults, betas=tuple(betas), mark=marks)
    for split, rows in splits.items():
        render_split(
            rendered,
            split,
            Dataset.from_dict({"t": rows}),
            prompt,
            shape=shape,
            with_indices=False,
            label=split,
            samples=samples,
        )
    return rendered


def _as_text(row):
    return row["t"]


def _as_dict(row):
    return {"messages": [{"role": "user", "content": row["t"]}]}


@pytest.mark.parametrize("betas", [(), ("output-300k-2026-03-24",)])
@pytest.mark.parametrize("samples", [1, 3])
def test_a_text_row_and_the_same_request_as_a_dict_make_the_same_bytes_and_ids(samples, betas):
    splits = {"a": TRICKY, "b": [*TRICKY[:3], "only in b"]}
    fast = _render(splits, _as_text, samples=samples, betas=betas)
    plain = _render(splits, _as_dict, samples=samples, betas=betas)
    assert list(fast.bodies.items()) == list(plain.bodies.items())
    assert fast.row_custom_ids == plain.row_custom_ids
    assert fast.first_row == plain.first_row
    # 11 distinct requests (b's first three repeat a's), each once per sample.
    assert len(fast.bodies) == 11 * samples
    assert fast.from_template == 11 * samples and plain.from_template == 0
    for custom_id in fast.row_custom_ids["a"]:
        assert custom_id == custom_id_for(fast.bodies[custom_id], betas)
    assert json.loads(fast.bodies[fast.row_custom_ids["a"][8]])["messages"][0]["content"] == (
        "\x00dsbatch-messages\x00"
    )


@pytest.mark.parametrize("text", ["", "  \n\t"])
def test_empty_and_whitespace_text_are_refused_on_both_paths_naming_the_row(text):
    for prompt in (_as_text, _as_dict):
        with pytest.raises(PromptError, match=r"empty content|whitespace only") as e:
            _render({"data": ["fine", text]}, prompt)
        assert e.value.row == 1


def test_a_lone_surrogate_is_refused_on_both_paths():
    for prompt in (_as_text, _as_dict):

        def lone(row, prompt=prompt):
            return prompt({"t": row["t"].replace("bad", "\ud800")})  # arrow holds no surrogate

        with pytest.raises(PromptError, match="not valid JSON") as e:
            _render({"data": ["fine", "bad"]}, lone)
        assert e.value.row == 1


def _mixed(row):
    # Rows of other shapes among text rows: nested lists, None, an image block.
    if row["t"].startswith("list"):
        return [{"role": "user", "content": [{"type": "text", "text": row["t"]}]}]
    if row["t"].startswith("skip"):
        return None
    if row["t"].startswith("image"):
        image = Image.new("RGB", (2, 2), (255, 0, 0))
        block = {"type": "image", "source": image}
        return [{"role": "user", "content": [block, {"type": "text", "text": row["t"]}]}]
    return row["t"]


def _planned(splits, prompt, *, read_bodies, samples=1, system=LONG):
    """(bodies, row ids, first rows, groups) after the prompt-cache plan and apply; with
    ``read_bodies`` the plan is made to read every body (the path without render's count)."""
    marks = TemplateMarks()
    rendered = _render(
        splits, prompt, defaults={**DEFAULTS, "system": system}, samples=samples, marks=marks
    )
    if read_bodies:
        rendered.from_template = 0
    plan = plan_prefix_caching(rendered, marks=marks)
    groups = plan.apply(rendered) if plan is not None else {}
    return list(rendered.bodies.items()), rendered.row_custom_ids, rendered.first_row, groups


@pytest.mark.parametrize(
    ("rows", "samples", "system", "grouped"),
    [
        ([f"message {i}" for i in range(6)], 1, LONG, 6),  # the breakpoint render placed, kept
        ([f"message {i}" for i in range(6)], 2, LONG, 12),  # ... with samples
        (["message 0", "message 0"], 1, LONG, 0),  # too few to share: the breakpoint removed
        ([f"message {i}" for i in range(6)], 1, "Short.", 0),  # too short to cache
        (["message 0", "list 1", "skip 2", "image 3", *TRICKY], 1, LONG, 13),  # mixed rows
    ],
)
def test_the_plan_of_a_job_rendered_from_its_template_is_the_plan_read_body_by_body(
    rows, samples, system, grouped
):
    # The test split repeats the first two rows and adds one, when the train split has more.
    splits = {"train": rows, "test": [*rows[:2], *(["message test"] if len(set(rows)) > 1 else [])]}
    fast = _planned(splits, _mixed, read_bodies=False, samples=samples, system=system)
    slow = _planned(splits, _mixed, read_bodies=True, samples=samples, system=system)
    assert fast == slow
    bodies, _, _, groups = fast
    assert len(groups) == grouped + (samples if grouped else 0)
    for custom_id, body in bodies:
        assert custom_id.split("_s")[0] == custom_id_for(body)
        assert body.count(b'"cache_control"') == (1 if custom_id in groups else 0)


def test_a_rendering_applied_again_is_read_body_by_body_and_gets_the_same_bytes():
    # What the determinism check does: apply the job's plan to a second rendering of some rows.
    marks = TemplateMarks()
    shape = {**DEFAULTS, "system": LONG}
    rows = [f"message {i}" for i in range(6)]
    rendered = _render({"data": rows}, _as_text, defaults=shape, marks=marks)
    plan = plan_prefix_caching(rendered, marks=marks)
    assert plan is not None
    groups = plan.apply(rendered)
    again = _render({"data": rows[2:4]}, _as_text, defaults=shape, marks=marks)
    assert plan.apply(again) == {c: 0 for c in again.row_custom_ids["data"]}
    assert again.row_custom_ids["data"] == rendered.row_custom_ids["data"][2:4]
    assert set(groups) == set(rendered.bodies) and set(groups.values()) == {0}


def test_an_unstable_prompt_with_a_cached_prefix_is_still_warned_about(emu, caplog, tmp_path):
    from support import run

    calls = iter(range(10**6))
    rows = [f"message {i}" for i in range(6)]
    with caplog.at_level(logging.WARNING, logger="dsbatch"):
        run(
            Dataset.from_dict({"text": rows}),
            emu,
            lambda row: f"{row['text']} #{next(calls)}",
            system=LONG,
            cache_dir=tmp_path,
        )
    warned = [r.getMessage() for r in caplog.records if "when called again" in r.getMessage()]
    assert len(warned) == 1 and "row 0" in warned[0] and "messages[0].content" in warned[0]


BODIES = [
    b'{"max_tokens":1,"messages":[],"model":"claude-haiku-4-5"}',
    b'{"max_tokens":1,"messages":[],"model":"claude-opus-4-5"}',
    b'{"max_tokens":1,"messages":[],"tools":[{"input_schema":{"model":"x"}}]}',
    # The default's key and value nested in a tool, and another model at the top.
    b'{"model":"claude-opus-4-5","tools":[{"input_schema":{"p":{"model":"claude-haiku-4-5"}}}]}',
    b'{"model":"claude-haiku-4-5","tools":[{"input_schema":{"p":{"model":"claude-opus-4-5"}}}]}',
    b'{"max_tokens":1,"model":7}',
    b'{"max_tokens":1}',
]


@pytest.mark.parametrize("default", [MODEL, "claude-opus-4-5", None])
def test_the_model_kept_with_each_request_is_model_of_its_body(default):
    seen: set[str | None] = set()
    bodies = {f"id{i}": body for i, body in enumerate(BODIES)}
    rendered = Rendered()
    rendered.bodies.update(bodies)
    kept = list(_with_models(rendered, default, seen))
    assert kept == [(c, b, model_of(b, default)) for c, b in bodies.items()]
    assert seen == {model_of(b, default) for b in BODIES}
    assert _models(default, seen) == ["claude-haiku-4-5", "claude-opus-4-5"]
    assert _models(default, {None}) == ([] if default is None else [default])


@pytest.mark.parametrize("spill_bytes", [10**9, 0])
def test_add_sets_a_body_once_and_keeps_the_first(spill_bytes):
    store = Bodies(spill_bytes)
    assert store.add("a", b"first") is True
    assert store.add("b", b"second") is True
    assert store.add("a", b"other") is False
    assert list(store.items()) == [("a", b"first"), ("b", b"second")]
    assert store.spilled == (spill_bytes == 0)
    small = Bodies(8)
    assert small.add("a", b"12345") and not small.spilled
    assert small.add("b", b"67890") and small.spilled  # past 8 bytes held: spilled
    assert small.add("b", b"x") is False and dict(small.items()) == {"a": b"12345", "b": b"67890"}


@pytest.mark.parametrize("mixed", [False, True])
def test_rendered_in_two_processes_the_plan_is_the_plan_of_one(mixed):
    from dsbatch._parallel import render_splits

    rows = [f"message {i}" for i in range(8)]
    if mixed:
        rows[5] = "list 5"  # in the second shard only: the first is all text
    planned = []
    for num_proc in (None, 2):
        marks = TemplateMarks()
        rendered = Rendered()
        render_splits(
            rendered,
            {"data": Dataset.from_dict({"t": rows})},
            _mixed,
            shape=RequestShape({**DEFAULTS, "system": LONG}, mark=marks),
            with_indices=False,
            labels={"data": None},
            num_proc=num_proc,
        )
        assert rendered.from_template == (7 if mixed and num_proc is None else 0 if mixed else 8)
        plan = plan_prefix_caching(rendered, marks=marks)
        assert plan is not None
        groups = plan.apply(rendered)
        planned.append((list(rendered.bodies.items()), rendered.row_custom_ids, groups))
    assert planned[0] == planned[1]
    assert len(planned[0][2]) == 8


# -- the join: whether a job thinks, read in Arrow from its requests file ------------------------

THINKING_CASES = [
    # (bodies, thinks)
    ([b'{"max_tokens":9,"messages":[],"model":"claude-haiku-4-5"}'], False),
    ([b'{"model":"claude-haiku-4-5","thinking":{"budget_tokens":1024,"type":"enabled"}}'], True),
    ([b'{"model":"claude-opus-4-6","thinking":{"type":"adaptive"}}'], True),
    ([b'{"model":"claude-haiku-4-5","thinking":{"type":"disabled"}}'], False),
    # A "thinking" object nested in a tool's schema asks for nothing.
    ([b'{"model":"claude-haiku-4-5","tools":[{"input_schema":{"thinking":{"type":"enabled"}}}]}'],
     False),
    ([b'{"max_tokens":9,"model":"claude-opus-5-5"}'], True),  # a model that always thinks
    # ... named only inside a tool's schema: not the request's model.
    ([b'{"model":"claude-haiku-4-5","tools":[{"input_schema":{"model":"claude-opus-5-5"}}]}'],
     False),
    ([b'{"model":"claude-haiku-4-5"}'] * 3 + [b'{"model":"claude-fable-5-1"}'], True),
]  # fmt: skip


@pytest.mark.parametrize(("bodies", "thinks"), THINKING_CASES)
@pytest.mark.parametrize("models_kept", [True, False])
def test_whether_a_job_thinks_is_any_thinks_of_its_bodies(tmp_path, bodies, thinks, models_kept):
    # A requests file that does not say (an older dsbatch's): its bodies are read.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dsbatch._collect import _thinks
    from dsbatch._ledger import Ledger
    from dsbatch._reasoning import any_thinks

    job = Ledger(tmp_path).job("job-a")
    requests = {f"id{i}": body for i, body in enumerate(bodies)}
    job.write_requests((c, b, model_of(b, MODEL)) for c, b in requests.items())
    assert job.requests_think() is None
    if not models_kept:  # a requests file of an older dsbatch: no model column
        path = job.dir / "requests.parquet"
        pq.write_table(pq.read_table(path).drop_columns(["model"]), path)
        assert job.request_model_column() is None
    else:
        assert isinstance(job.request_model_column(), pa.Array)
    assert any_thinks(requests.values()) is thinks
    assert _thinks(job, requests) is thinks


@pytest.mark.parametrize("said", [True, False])
def test_a_requests_file_that_says_whether_its_requests_think_is_believed(tmp_path, said):
    # What the rendering found is kept with the requests: the join reads no body back (a million
    # bodies took 0.67 s to read and search).
    from dsbatch._collect import _thinks
    from dsbatch._ledger import Ledger

    job = Ledger(tmp_path).job("job-a")
    body = b'{"model":"claude-haiku-4-5"}'
    job.write_requests(((f"id{i}", body, MODEL) for i in range(3)), thinks=said)
    assert job.requests_think() is said

    def unread(*args):
        raise AssertionError("a body was read")

    job.read_request_params = unread
    assert _thinks(job, {}) is said


@pytest.mark.parametrize(
    ("prompt", "params", "thinks"),
    [
        (lambda r: r["t"], {}, False),
        (lambda r: r["t"], {"thinking": {"type": "enabled", "budget_tokens": 1024}}, True),
        # Rows of their own shape (no template): their bodies are searched.
        (lambda r: {"messages": [{"role": "user", "content": r["t"]}]}, {}, False),
        (lambda r: r["t"] if r["t"] != "b" else {
            "max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": "b"}]}, {}, True),
    ],
)  # fmt: skip
def test_a_job_s_requests_file_says_whether_its_requests_think(tmp_path, prompt, params, thinks):
    from dsbatch._ledger import Ledger
    from dsbatch._reasoning import any_thinks
    from dsbatch.testing import Emulator

    with Emulator() as emu:
        job = dsbatch.map(
            Dataset.from_dict({"t": ["a", "b", "c"]}), prompt, model=MODEL, max_tokens=2048,
            params=params, client=emu.client(), cache_dir=str(tmp_path), progress=False,
            wait=False,
        )  # fmt: skip
        data = Ledger(tmp_path).job(job.fingerprint)
        assert any_thinks(data.read_requests().values()) is thinks
        assert data.requests_think() is thinks
        out = job.result()
    assert ("thinking" in out.column_names) is thinks


TOOL = {"name": "t", "input_schema": {"type": "object", "properties": {"thinking": {}}}}


@pytest.mark.parametrize(
    ("defaults", "prompt", "thinks"),
    [
        (DEFAULTS, _as_text, False),
        ({**DEFAULTS, "max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024}},
         _as_text, True),
        ({**DEFAULTS, "thinking": {"type": "disabled"}}, _as_text, False),
        ({**DEFAULTS, "model": "claude-opus-5-5"}, _as_text, True),
        ({**DEFAULTS, "tools": [TOOL]}, _as_text, False),
        # One row of another shape asks for thinking itself: every body is read.
        (DEFAULTS, lambda r: r["t"] if r["t"] != "café" else {
            "max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": "café"}]}, True),
    ],
)  # fmt: skip
def test_whether_a_rendering_thinks_is_any_thinks_of_its_bodies(defaults, prompt, thinks):
    from dsbatch._map import _thinks
    from dsbatch._reasoning import any_thinks

    rendered = _render({"a": TRICKY, "b": TRICKY[:2]}, prompt, defaults=defaults, samples=2)
    assert any_thinks(rendered.bodies.values()) is thinks
    assert _thinks(rendered) is thinks
    assert _thinks(Rendered()) is False


def _other_model(row):
    # A dict row naming its own model among text rows made from the template.
    if row["t"].startswith("list"):
        return {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": row["t"]}]}
    return row["t"]


@pytest.mark.parametrize("default", [MODEL, "claude-opus-4-5", None])
@pytest.mark.parametrize("model", [MODEL, "claude-opus-4-5"])
@pytest.mark.parametrize("prompt", [_as_text, _mixed, _other_model])
def test_the_model_of_requests_made_from_one_template_is_model_of_each_body(default, model, prompt):
    rendered = _render(
        {"a": ["list 0", *TRICKY]}, prompt, defaults={**DEFAULTS, "model": model}, samples=2
    )
    seen: set[str | None] = set()
    only = _template_model(rendered, default)
    # Bodies all from one template have its model (written as columns); others are read.
    assert (only is None) == (prompt is not _as_text)
    if only is None:
        kept = list(_with_models(rendered, default, seen))
    else:
        kept, seen = [(c, b, only[0]) for c, b in rendered.bodies.items()], {only[0]}
    assert kept == [(c, b, model_of(b, default)) for c, b in rendered.bodies.items()]
    models = {model, "claude-sonnet-4-5"} if prompt is _other_model else {model}
    assert seen == models and len(kept) == 22


def test_a_thinking_request_in_a_later_row_group_of_the_requests_file_is_found(
    tmp_path, monkeypatch
):
    from dsbatch import _ledger_data
    from dsbatch._collect import _thinks
    from dsbatch._ledger import Ledger

    monkeypatch.setattr(_ledger_data, "REQUEST_GROUP_ROWS", 2)
    plain = b'{"model":"claude-haiku-4-5","tools":[{"input_schema":{"thinking":{}}}]}'
    thinking = b'{"model":"claude-haiku-4-5","thinking":{"type":"adaptive"}}'
    for at, thinks in ((None, False), (0, True), (4, True)):
        job = Ledger(tmp_path / str(at)).job("job-a")
        bodies = [thinking if i == at else plain for i in range(5)]
        job.write_requests((f"id{i}", b, MODEL) for i, b in enumerate(bodies))
        assert len(job.request_groups()) == 3
        assert _thinks(job, {}) is thinks
