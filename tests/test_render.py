"""Rows become requests; every mistake in a row is named before any network call."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from dsbatch import PromptError
from dsbatch._limits import API_VERSION_2026, API_VERSION_LEGACY
from dsbatch._render import (
    CUSTOM_ID_PREFIX,
    Rendered,
    RequestShape,
    canonical_json,
    custom_id_for,
    render_split,
)

DEFAULTS = {"model": "claude-haiku-4-5", "max_tokens": 64}


def render(rows, prompt, *, defaults=DEFAULTS, with_indices=False, **shape):
    rendered = Rendered()
    render_split(
        rendered,
        "data",
        Dataset.from_list(rows),
        prompt,
        shape=RequestShape(defaults, **shape),
        with_indices=with_indices,
        label=None,
    )
    return rendered


def params_of(rendered, row):
    return json.loads(rendered.bodies[rendered.row_custom_ids["data"][row]])


def test_a_string_becomes_one_user_message_over_the_defaults():
    rendered = render([{"t": "hello"}], lambda r: f"Say: {r['t']}")
    assert params_of(rendered, 0) == {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say: hello"}],
    }


TEXTS = [
    "café",
    "日本語の文",
    'quote " and \\ backslash',
    "line\nbreak\ttab",
    "\u2028 sep",
    "emoji 💥",
]


def test_a_string_is_written_byte_for_byte_as_the_canonical_json_of_its_params():
    rendered = render([{"t": t} for t in TEXTS], lambda r: r["t"])
    for row, text in enumerate(TEXTS):
        params = {**DEFAULTS, "messages": [{"role": "user", "content": text}]}
        expected = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        custom_id = rendered.row_custom_ids["data"][row]
        assert rendered.bodies[custom_id] == expected.encode()
        assert custom_id == custom_id_for(expected.encode())
    assert "café".encode() in rendered.bodies[rendered.row_custom_ids["data"][0]]


def test_a_dict_is_merged_over_the_defaults_and_the_prompt_wins():
    rendered = render(
        [{"t": "x"}],
        lambda r: {
            "max_tokens": 5,
            "stop_sequences": ["END"],
            "messages": [{"role": "user", "content": r["t"]}],
        },
    )
    params = params_of(rendered, 0)
    assert params["max_tokens"] == 5 and params["stop_sequences"] == ["END"]
    assert params["model"] == "claude-haiku-4-5"


def test_a_list_is_the_messages_and_none_skips_the_row():
    convo = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]
    rendered = render([{"k": 1}, {"k": 0}], lambda r: convo if r["k"] else None)
    assert params_of(rendered, 0)["messages"] == convo
    assert rendered.row_custom_ids["data"][1] is None


def test_identical_requests_share_one_custom_id_and_body():
    rendered = render([{"t": "a"}, {"t": "b"}, {"t": "a"}], lambda r: r["t"])
    ids = rendered.row_custom_ids["data"]
    assert ids[0] == ids[2] != ids[1]
    assert len(rendered.bodies) == 2
    assert all(i.startswith(CUSTOM_ID_PREFIX) and len(i) <= 64 for i in ids)


def test_custom_id_ignores_key_order_but_not_values():
    a = canonical_json({"b": 1, "a": [1, {"y": 2, "x": "é"}]})
    b = canonical_json({"a": [1, {"x": "é", "y": 2}], "b": 1})
    assert a == b and "é".encode() in a and b" " not in a
    assert canonical_json({"a": 1}) != canonical_json({"a": 2})


def test_with_indices_passes_the_row_index():
    rendered = render([{"t": "a"}, {"t": "a"}], lambda r, i: f"{i}: {r['t']}", with_indices=True)
    assert params_of(rendered, 1)["messages"][0]["content"] == "1: a"


USER = [{"role": "user", "content": "x"}]
TEXT_SOURCE = {"type": "text", "media_type": "text/plain", "data": "a document"}


def _tool(schema_value):
    """A tool whose input_schema (free-form JSON to the SDK's types) holds ``schema_value``."""
    return {"name": "t", "input_schema": {"type": "object", "x": schema_value}}


def _deep(depth):
    value = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        ({"messages": [{"role": "system", "content": "x"}]}, "use system=|pass system="),
        ({"messages": [{"role": "bot", "content": "x"}]}, "role 'bot'"),
        ({"messages": []}, "no messages"),
        ("   ", "whitespace only"),
        ({"messages": [{"role": "user", "content": []}]}, "empty content list"),
        ({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"stream": True, "messages": [{"role": "user", "content": "x"}]}, "stream"),
        ({"tools": [_tool({"n": float("nan")})], "messages": USER}, "JSON"),
        ({"tools": [_tool({1, 2})], "messages": USER}, "JSON"),
        (42, "must return a str"),
        ({"tools": [_tool(_deep(5000))], "messages": USER}, "too deeply"),
        ({"messages": [{"role": "user", "content": ["just a string"]}]}, "content[0] must be"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "content[0] must be"),
        ({"system": 42, "messages": [{"role": "user", "content": "x"}]}, "system must be"),
        ({"system": [{"type": "image"}], "messages": [{"role": "user", "content": "x"}]}, "system"),
        ({"betas": ["x"], "messages": [{"role": "user", "content": "x"}]}, "pass betas=[...]"),
        ({"temperature": 0.2, "messages": [{"role": "user", "content": "x"}]}, "'temperature'"),
        ({"top_p": 1.0, "messages": [{"role": "user", "content": "x"}]}, "'top_p'"),
        ({"top_k": 5, "messages": [{"role": "user", "content": "x"}]}, "'top_k'"),
        (
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": [{"type": "document", "source": TEXT_SOURCE}]},
            ],
            "document block in an assistant message",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": "t", "citations": [{}]}]}],
            "citations",
        ),
    ],
)
def test_bad_requests_name_the_row_before_any_call(answer, fragment):
    rows = [{"k": 0}, {"k": 0}, {"k": 1}]
    with pytest.raises(PromptError) as info:
        render(rows, lambda r: answer if r["k"] else "fine")
    assert info.value.row == 2
    assert str(info.value).startswith("row 2: ")
    assert any(f in str(info.value) for f in fragment.split("|"))


def test_a_missing_model_is_named():
    with pytest.raises(PromptError, match="row 0: no model"):
        render([{"t": "a"}], lambda r: r["t"], defaults={"max_tokens": 10})


def test_a_prompt_that_raises_keeps_the_original_as_cause():
    def prompt(row):
        return row["missing"]

    with pytest.raises(PromptError, match="row 0: the prompt function raised KeyError") as info:
        render([{"t": "a"}], prompt)
    assert isinstance(info.value.__cause__, KeyError)


def test_api_version_2026_names_the_way_to_keep_sampling_params():
    ask = {"temperature": 0.5, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(PromptError, match=f"API version {API_VERSION_2026}") as info:
        render([{"t": "a"}], lambda r: ask)
    assert "default_headers={'anthropic-version': '2023-06-01'}" in str(info.value)
    # A client that keeps the old version sends them, and empty citations are fine anyway.
    legacy = render([{"t": "a"}], lambda r: ask, api_version=API_VERSION_LEGACY)
    assert params_of(legacy, 0)["temperature"] == 0.5
    fine = [{"role": "user", "content": [{"type": "text", "text": "t", "citations": []}]}]
    assert params_of(render([{"t": "a"}], lambda r: fine), 0)["messages"] == fine


def test_betas_change_the_custom_id_but_not_the_body():
    plain = render([{"t": "a"}], lambda r: r["t"])
    beta = render([{"t": "a"}], lambda r: r["t"], betas=("output-300k-2026-03-24",))
    (body,) = plain.bodies.values()
    assert list(beta.bodies.values()) == [body]
    assert list(plain.bodies) == [custom_id_for(body)] != list(beta.bodies)


def test_response_format_additions_are_added_and_clashes_refused():
    fmt = {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    rendered = render([{"t": "a"}], lambda r: r["t"], additions={"output_config": fmt})
    assert params_of(rendered, 0)["output_config"] == fmt
    # Other output_config settings are kept beside the format.
    effort = render(
        [{"t": "a"}],
        lambda r: {"messages": USER, "output_config": {"effort": "low"}},
        additions={"output_config": fmt},
    )
    assert params_of(effort, 0)["output_config"] == {"effort": "low", **fmt}
    for own in ({"output_config": fmt}, {"tools": []}, {"tool_choice": {"type": "any"}}):
        with pytest.raises(PromptError, match="row 0: the request already has"):
            render(
                [{"t": "a"}],
                lambda r, own=own: {"messages": [{"role": "user", "content": "x"}], **own},
                additions={"output_config": fmt},
            )


def test_the_first_row_of_each_request_and_of_its_samples_is_found_from_the_rows():
    from dsbatch._parallel import render_splits
    from dsbatch._render import Rendered, sample_custom_id

    rows = {"a": ["x", "y", "x"], "b": ["z", "y", "w"]}
    rendered = Rendered()
    render_splits(
        rendered,
        {split: Dataset.from_dict({"text": texts}) for split, texts in rows.items()},
        lambda row: row["text"],
        shape=RequestShape(defaults=DEFAULTS),
        with_indices=False,
        labels={"a": "a", "b": "b"},
        samples=2,
    )
    ids = rendered.row_custom_ids
    x, y, z, w = ids["a"][0], ids["a"][1], ids["b"][0], ids["b"][2]
    first = {x: ("a", 0), y: ("a", 1), z: ("b", 0), w: ("b", 2)}
    expected = {**first, **{sample_custom_id(c, 1): at for c, at in first.items()}}
    assert dict(rendered.first_row) == expected and len(rendered.first_row) == 8
    assert set(rendered.first_row) == set(rendered.bodies)
    assert rendered.first_row[sample_custom_id(w, 1)] == ("b", 2)
    with pytest.raises(KeyError):
        rendered.first_row[sample_custom_id(w, 2)]  # no third sample
    assert rendered.first_row.get("dsb_unknown", (None, None)) == (None, None)
