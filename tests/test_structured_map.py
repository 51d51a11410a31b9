"""Structured outputs end to end: dsbatch.map with response_format, parse and betas against the
emulator, checking what the user gets (typed columns, statuses, errors) and what was sent."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import importlib
import json
import os
import re
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Literal, Optional

import anthropic
import pyarrow as pa
import pytest
from datasets import Dataset, Features, Value
from pydantic import BaseModel, field_validator
from support import MODEL, run

from dsbatch import PromptError
from dsbatch.testing import Emulator, Faults

UTC = dt.timezone.utc
MODES = ["native", "tool"]
CUT = "the answer was cut at max_tokens before the JSON was complete (raise max_tokens)"
REFUSED = "the model refused to answer (stop_reason refusal)"


class Mood(enum.Enum):
    HAPPY = "happy"
    GRUMPY = "grumpy"


class Person(BaseModel):
    name: str
    karma: int


class Record(BaseModel):
    """Every field type the issue lists, and the documented text-typed ones."""

    title: str
    count: int
    score: float
    ok: bool
    tags: list[str]
    people: list[Person]
    author: Person
    note: Optional[str] = None  # noqa: UP045 - typing.Optional, as many users write it
    rank: int | None
    lang: Literal["en", "fr"]
    mood: Mood
    level: Literal[1, 2, 3]
    posted: dt.datetime
    day: dt.date
    at: dt.time
    price: decimal.Decimal
    uid: uuid.UUID
    labels: set[str]
    dims: tuple[float, ...]


def same_feature(found, expected):
    """Features compared by the Arrow type they declare: datasets 3 says Sequence where
    datasets 4+ says List for the same column."""
    return Features({"x": found}).type == Features({"x": expected}).type


PERSON = {"name": Value("string"), "karma": Value("int64")}
RECORD_FEATURES = {
    "title": Value("string"),
    "count": Value("int64"),
    "score": Value("float64"),
    "ok": Value("bool"),
    "tags": [Value("string")],
    "people": [PERSON],
    "author": PERSON,
    "note": Value("string"),
    "rank": Value("int64"),
    "lang": Value("string"),
    "mood": Value("string"),
    "level": Value("int64"),
    "posted": Value("timestamp[us, tz=UTC]"),
    "day": Value("date32"),
    "at": Value("string"),
    "price": Value("string"),
    "uid": Value("string"),
    "labels": [Value("string")],
    "dims": [Value("float64")],
}
PERSON_TYPE = pa.struct([("name", pa.string()), ("karma", pa.int64())])
RECORD_TYPES = {
    "title": pa.string(),
    "count": pa.int64(),
    "score": pa.float64(),
    "ok": pa.bool_(),
    "tags": pa.list_(pa.string()),
    "people": pa.list_(PERSON_TYPE),
    "author": PERSON_TYPE,
    "note": pa.string(),
    "rank": pa.int64(),
    "lang": pa.string(),
    "mood": pa.string(),
    "level": pa.int64(),
    "posted": pa.timestamp("us", tz="UTC"),
    "day": pa.date32(),
    "at": pa.string(),
    "price": pa.string(),
    "uid": pa.string(),
    "labels": pa.list_(pa.string()),
    "dims": pa.list_(pa.float64()),
}
RECORD_ANSWER = {
    "title": "Sturdy kettle",
    "count": 4,
    "score": 0.75,
    "ok": True,
    "tags": ["kitchen", "steel"],
    "people": [{"name": "Ann", "karma": 3}, {"name": "Bo", "karma": -1}],
    "author": {"name": "Cy", "karma": 10},
    "note": None,
    "rank": 2,
    "lang": "fr",
    "mood": "grumpy",
    "level": 3,
    "posted": "2024-05-01T12:30:00+02:00",
    "day": "2024-05-02",
    "at": "08:15:00",
    "price": "12.50",
    "uid": "12345678-1234-5678-1234-567812345678",
    "labels": ["b", "a"],
    "dims": [1.5, 2.0],
}
# What the user finds in the row for RECORD_ANSWER.
RECORD_ROW = {
    **RECORD_ANSWER,
    "posted": dt.datetime(2024, 5, 1, 10, 30, tzinfo=UTC),
    "day": dt.date(2024, 5, 2),
    "labels": ["a", "b"],
}


class Label(BaseModel):
    topic: Literal["sport", "art", "science"]
    confidence: float


LABEL = {"topic": "art", "confidence": 0.9}


def texts(n: int, prefix: str = "text") -> Dataset:
    return Dataset.from_dict({"text": [f"{prefix} {i}" for i in range(n)]})


def fixed(answer: object):
    """A responder giving every request the same answer: JSON text for a dict, else as is.

    For a structured request the emulator makes that text the text block (native) or the
    forced tool's input (tool)."""
    text = json.dumps(answer) if isinstance(answer, dict) else answer
    return lambda custom_id, params: text


def message(*content, stop_reason="end_turn", output_tokens=7):
    """A whole succeeded result, as a responder may return it."""
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
            "usage": {"input_tokens": 5, "output_tokens": output_tokens},
        },
    }


def text_block(text):
    return {"type": "text", "text": text}


def statuses(out, column="dsbatch"):
    return [s["status"] for s in out[column]]


def errors(out, column="dsbatch"):
    return [s["error"] for s in out[column]]


def sent_params(emu):
    return [request["params"] for request in emu.last_create_body["requests"]]


def nothing_sent(emu) -> bool:
    return sum(emu.calls.values()) == 0 and emu.received == []


def assert_record_columns(out):
    for name, feature in RECORD_FEATURES.items():
        assert same_feature(out.features[name], feature), name
        assert out.data.schema.field(name).type == RECORD_TYPES[name], name


# -- every field type, both modes ------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_every_field_type_becomes_a_typed_column(mode):
    with Emulator(delay=0, responder=fixed(RECORD_ANSWER)) as emu:
        out = run(texts(3), emu, response_format=Record, structured_output=mode)

        assert out.column_names == ["text", "response", *RECORD_FEATURES, "dsbatch"]
        assert_record_columns(out)
        assert statuses(out) == ["succeeded"] * 3 and errors(out) == [None] * 3
        row = out[1]
        assert {name: row[name] for name in RECORD_ROW} == RECORD_ROW
        # The raw answer stays beside the columns: the JSON text, or the forced tool's input.
        assert json.loads(row["response"]) == RECORD_ANSWER
        assert row["dsbatch"]["stop_reason"] == ("end_turn" if mode == "native" else "tool_use")

        schema = anthropic.transform_schema(Record)
        for params in sent_params(emu):
            if mode == "native":
                assert params["output_config"] == {
                    "format": {"type": "json_schema", "schema": schema}
                }
                assert "tools" not in params and "tool_choice" not in params
            else:
                assert params["tools"] == [
                    {
                        "name": "Record",
                        "description": "Every field type the issue lists, and the documented "
                        "text-typed ones.",
                        "input_schema": schema,
                        "strict": True,
                    }
                ]
                assert params["tool_choice"] == {"type": "tool", "name": "Record"}
                assert "output_config" not in params


class Generated(BaseModel):
    """Record without the Decimal: its schema (pydantic's) allows any string, so a
    schema-valid answer need not be a number."""

    title: str
    count: int
    score: float
    ok: bool
    tags: list[str]
    people: list[Person]
    author: Person
    note: Optional[str] = None  # noqa: UP045
    lang: Literal["en", "fr"]
    mood: Mood
    level: Literal[1, 2, 3]
    posted: dt.datetime
    day: dt.date
    at: dt.time
    uid: uuid.UUID
    labels: set[str]


@pytest.mark.parametrize("mode", MODES)
def test_schema_valid_answers_of_the_emulator_all_parse(mode):
    with Emulator(delay=0) as emu:
        out = run(texts(40), emu, response_format=Generated, structured_output=mode)

        assert statuses(out) == ["succeeded"] * 40, errors(out)
        for name in Generated.model_fields:
            assert same_feature(out.features[name], RECORD_FEATURES[name]), name
        assert None not in out["title"] and None not in out["posted"]
        assert set(out["mood"]) <= {"happy", "grumpy"} and set(out["level"]) <= {1, 2, 3}


# -- every row failed ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_columns_are_declared_even_when_every_row_failed(mode):
    with Emulator(delay=0, faults=Faults(expired=1.0)) as emu:
        out = run(texts(3), emu, response_format=Record, structured_output=mode, max_attempts=1)

        assert statuses(out) == ["expired"] * 3
        assert_record_columns(out)
        assert all(out[name] == [None] * 3 for name in RECORD_FEATURES)
        assert out["response"] == [None] * 3
        if mode == "native":
            dropped = run(texts(3), emu, response_format=Record, on_error="drop", max_attempts=1)
            assert dropped.num_rows == 0
            assert_record_columns(dropped)


# -- answers that are not clean JSON ---------------------------------------------------------

FENCED = f"Sure, here it is:\n```json\n{json.dumps(LABEL, indent=2)}\n```\nAnything else?"
WRONG = {"topic": "cooking", "confidence": "high"}
THINKING = {"type": "thinking", "thinking": "The user wants a label.", "signature": "sig"}
ANSWERS = {
    "clean": json.dumps(LABEL),
    "fenced": FENCED,
    "wrong": json.dumps(WRONG),
    "refusal": message(text_block("I can't help with that."), stop_reason="refusal"),
    "cut": json.dumps(LABEL),  # asked with max_tokens=4
    "thinking only": message(THINKING, stop_reason="max_tokens"),
    "empty": message(stop_reason="end_turn"),
}


def by_prompt(answers):
    """A responder answering each request by its (first) user message."""
    return lambda custom_id, params: answers[params["messages"][0]["content"]]


@pytest.mark.parametrize("mode", MODES)
def test_every_kind_of_answer_is_parsed_or_a_parse_error_that_says_why(mode):
    def prompt(row):
        if row["text"] == "cut":
            return {"messages": [{"role": "user", "content": "cut"}], "max_tokens": 4}
        return row["text"]

    tool = mode == "tool"
    none = ("no tool call and " if tool else "") + "no JSON object was found in the answer"
    with Emulator(delay=0, responder=by_prompt(ANSWERS)) as emu:
        ds = Dataset.from_dict({"text": list(ANSWERS)})
        out = run(ds, emu, prompt, response_format=Label, structured_output=mode)

    rows = {row["text"]: row for row in out}
    ok = ("clean", "fenced")
    for name in ok:
        assert rows[name]["dsbatch"]["status"] == "succeeded", name
        assert (rows[name]["topic"], rows[name]["confidence"]) == ("art", 0.9)
    assert rows["fenced"]["response"] == FENCED  # the raw answer, prose and all
    for name in ANSWERS.keys() - set(ok):
        assert rows[name]["dsbatch"]["status"] == "parse_error", name
        assert (rows[name]["topic"], rows[name]["confidence"]) == (None, None), name
    error = {name: rows[name]["dsbatch"]["error"] for name in ANSWERS}
    assert error["wrong"].startswith("the answer does not match Label: topic: Input should be")
    assert "confidence: Input should be a valid number" in error["wrong"]
    assert json.loads(rows["wrong"]["response"]) == WRONG
    assert error["refusal"] == REFUSED
    assert rows["refusal"]["response"] == "I can't help with that."
    assert error["cut"] == CUT
    # What was paid for is kept: the cut text, or the empty input of the cut tool call.
    assert rows["cut"]["response"] == ("{}" if tool else json.dumps(LABEL)[:16])
    assert error["thinking only"] == CUT and rows["thinking only"]["response"] is None
    assert error["empty"] == f"{none} (it was empty)" and rows["empty"]["response"] is None
    stop_reasons = {name: rows[name]["dsbatch"]["stop_reason"] for name in ANSWERS}
    assert stop_reasons["refusal"] == "refusal"
    assert stop_reasons["cut"] == stop_reasons["thinking only"] == "max_tokens"


PREAMBLE = "Here is the JSON you asked for:\n\n"
NO_JSON = "I am not able to give this answer in the requested structure"


@pytest.mark.parametrize("mode", MODES)
def test_the_preamble_and_no_json_faults_leave_every_row_parsed_or_a_parse_error(mode):
    with Emulator(delay=0, responder=fixed(LABEL), faults=Faults(preamble=0.4, no_json=0.3)) as emu:
        out = run(
            texts(40),
            emu,
            response_format=Label,
            structured_output=mode,
            parse=lambda row, message: {"blocks": [b["type"] for b in message["content"]]},
        )

    shapes = Counter()
    for row in out:
        status = row["dsbatch"]
        if status["status"] == "parse_error":
            prefix = "no tool call and " if mode == "tool" else ""
            assert status["error"].startswith(
                f"{prefix}no JSON object was found in the answer: 'I am not able to give"
            )
            assert (row["topic"], row["confidence"]) == (None, None)
            assert row["response"].startswith(NO_JSON) and status["stop_reason"] == "end_turn"
            assert row["blocks"] == ["text"]
            shapes["no_json"] += 1
            continue
        assert status["status"] == "succeeded" and status["error"] is None
        assert (row["topic"], row["confidence"]) == ("art", 0.9)
        if mode == "native":
            preamble = row["response"].startswith(PREAMBLE)
            assert row["response"].removeprefix(PREAMBLE) == json.dumps(LABEL)
        else:
            # The prose before the call is in the message; the column holds the call's input.
            preamble = row["blocks"] == ["text", "tool_use"]
            assert json.loads(row["response"]) == LABEL
        shapes["preamble" if preamble else "clean"] += 1
    assert min(shapes["clean"], shapes["preamble"], shapes["no_json"]) >= 5, shapes


# -- refused before any API call -------------------------------------------------------------


class InputClash(BaseModel):
    text: str
    score: float


class StatusClash(BaseModel):
    dsbatch: str


class OutputClash(BaseModel):
    response: str


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (
            InputClash,
            {},
            "the response_format field 'text' clashes with the dataset's column 'text'",
        ),
        (StatusClash, {}, "the response_format field 'dsbatch' has the name of the status column"),
        (OutputClash, {}, "the response_format field 'response' has the name of the output column"),
        (
            InputClash,
            {"status_column": "score"},
            "the response_format field 'score' has the name of the status column",
        ),
    ],
)
def test_a_field_named_like_another_column_is_refused_before_any_call(emu, model, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        run(texts(2), emu, response_format=model, **kwargs)
    assert nothing_sent(emu)


class Renamed(BaseModel):
    dsbatch: str
    response: str


def test_fields_named_like_the_default_columns_work_once_those_are_renamed():
    answer = {"dsbatch": "a", "response": "b"}
    with Emulator(delay=0, responder=fixed(answer)) as emu:
        out = run(texts(2), emu, response_format=Renamed, status_column="meta", output_column="raw")

    assert out.column_names == ["text", "raw", "dsbatch", "response", "meta"]
    assert out["dsbatch"] == ["a", "a"] and out["response"] == ["b", "b"]
    assert json.loads(out["raw"][0]) == answer
    assert statuses(out, "meta") == ["succeeded"] * 2


def test_a_parse_column_named_like_another_column_is_an_error_and_retrying_is_free():
    clashes = {
        "text": "the dataset's column",
        "topic": "the response_format field",
        "response": "the output column",
        "dsbatch": "the status column",
    }
    with Emulator(delay=0, responder=fixed(LABEL)) as emu:
        ds = texts(2)
        calls = []
        for key, what in clashes.items():
            with pytest.raises(ValueError, match=f"column '{key}', which is also {what} '{key}'"):
                run(ds, emu, response_format=Label, parse=lambda row, message, key=key: {key: 1})
            calls.append(sum(emu.calls.values()))
            emu.reset_stats()

        out = run(ds, emu, response_format=Label, parse=lambda row, message: {"my_text": 1})

        calls.append(sum(emu.calls.values()))
    assert calls[0] > 0 and calls[1:] == [0] * 4  # the answers were bought once, by the first
    assert out["my_text"] == [1, 1] and out["topic"] == ["art", "art"]
    assert statuses(out) == ["succeeded"] * 2


OWN_OUTPUT_CONFIG = {"format": {"type": "json_schema", "schema": {"type": "object"}}}
OWN_TOOLS = [{"name": "x", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize(
    ("mode", "key", "value"),
    [
        ("native", "output_config", OWN_OUTPUT_CONFIG),
        ("tool", "tools", OWN_TOOLS),
        ("tool", "tool_choice", {"type": "any"}),
        pytest.param(
            "native",
            "tools",
            OWN_TOOLS,
        ),
        pytest.param(
            "tool",
            "output_config",
            OWN_OUTPUT_CONFIG,
        ),
    ],
)
def test_a_prompt_with_its_own_structured_output_is_refused_before_any_call(emu, mode, key, value):
    def own(row):
        return {"messages": [{"role": "user", "content": row["text"]}], key: value}

    with pytest.raises(PromptError, match="response_format") as raised:
        run(texts(2), emu, own, response_format=Label, structured_output=mode)
    assert raised.value.row == 0
    assert nothing_sent(emu)


# -- parse(row, message) ---------------------------------------------------------------------


def test_changing_parse_reruns_the_join_only(emu):
    ds = texts(4)

    def length(row, message):
        return {"length": len(message["content"][0]["text"])}

    def words(row, message):
        return {"words": message["content"][0]["text"].split(), "row_text": row["text"]}

    first = run(ds, emu, parse=length)
    assert first["length"] == [len(f"echo: text {i}") for i in range(4)]
    emu.reset_stats()

    second = run(ds, emu, parse=words)

    assert sum(emu.calls.values()) == 0
    assert "length" not in second.column_names
    assert second["words"] == [["echo:", "text", str(i)] for i in range(4)]
    assert second["row_text"] == ds["text"]
    assert same_feature(second.features["words"], [Value("string")])
    assert statuses(second) == ["succeeded"] * 4


def _loose_label():
    class Label(BaseModel):
        topic: str
        confidence: float

    return Label


def _strict_label():
    class Label(BaseModel):
        topic: str
        confidence: float

        @field_validator("confidence")
        @classmethod
        def sure_enough(cls, value: float) -> float:
            if value < 0.95:
                raise ValueError("not confident enough")
            return value

    return Label


@pytest.mark.parametrize("mode", MODES)
def test_changing_a_validator_reruns_the_join_only(mode):
    with Emulator(delay=0, responder=fixed(LABEL)) as emu:
        ds = texts(3)
        loose = run(ds, emu, response_format=_loose_label(), structured_output=mode)
        assert statuses(loose) == ["succeeded"] * 3 and loose["confidence"] == [0.9] * 3
        emu.reset_stats()

        strict = run(ds, emu, response_format=_strict_label(), structured_output=mode)

        assert sum(emu.calls.values()) == 0
        assert statuses(strict) == ["parse_error"] * 3
        rejected = "the answer does not match Label: confidence: Value error, not confident enough"
        assert errors(strict) == [f"{rejected} (got 0.9)"] * 3
        assert strict["confidence"] == [None] * 3
        assert json.loads(strict["response"][0]) == LABEL


THRESHOLD = {"value": 0.5}


class GlobalRule(BaseModel):
    topic: str
    confidence: float

    @field_validator("confidence")
    @classmethod
    def sure_enough(cls, value: float) -> float:
        if value < THRESHOLD["value"]:
            raise ValueError("not confident enough")
        return value


def test_a_validator_whose_rule_changed_outside_the_class_gives_new_columns():
    with Emulator(delay=0, responder=fixed(LABEL)) as emu:
        ds = texts(2)
        THRESHOLD["value"] = 0.5
        assert statuses(run(ds, emu, response_format=GlobalRule)) == ["succeeded"] * 2
        try:
            THRESHOLD["value"] = 0.95
            out = run(ds, emu, response_format=GlobalRule)
        finally:
            THRESHOLD["value"] = 0.5
        assert statuses(out) == ["parse_error"] * 2


PARSE_MODULE = """
def parse(row, message):
    return {{"n": {n}}}
"""


def test_an_edited_parse_function_in_a_module_gives_new_columns(emu, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    source = tmp_path / "user_parse.py"
    source.write_text(PARSE_MODULE.format(n=1))
    module = importlib.import_module("user_parse")
    try:
        assert run(texts(2), emu, parse=module.parse)["n"] == [1, 1]
        source.write_text(PARSE_MODULE.format(n=2))
        module = importlib.reload(module)
        assert module.parse({}, {}) == {"n": 2}
        emu.reset_stats()

        out = run(texts(2), emu, parse=module.parse)

        assert sum(emu.calls.values()) == 0
        assert out["n"] == [2, 2]
    finally:
        sys.modules.pop("user_parse", None)


def test_an_exception_in_parse_marks_only_that_row(emu):
    def parse(row, message):
        if row["text"] == "text 1":
            raise KeyError("missing")
        if row["text"] == "text 2":
            return ["not", "a", "dict"]
        return {"upper": message["content"][0]["text"].upper()}

    out = run(texts(3), emu, parse=parse)

    assert statuses(out) == ["succeeded", "parse_error", "parse_error"]
    assert errors(out) == [
        None,
        "parse raised KeyError: 'missing'",
        "parse raised TypeError: parse must return a dict of columns, not list",
    ]
    assert out["upper"] == ["ECHO: TEXT 0", None, None]
    assert out["response"] == ["echo: text 0", "echo: text 1", "echo: text 2"]  # answers kept


TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "label", "input": {"topic": "art"}}


def test_parse_sees_the_whole_message_as_a_dict():
    answer = message(
        THINKING, text_block("Labelling."), TOOL_USE, stop_reason="tool_use", output_tokens=42
    )
    seen = []

    def parse(row, message):
        seen.append(message)
        kinds = [block["type"] for block in message["content"]]
        return {
            "kinds": kinds,
            "thought": message["content"][0]["thinking"],
            "tool_topic": message["content"][2]["input"]["topic"],
            "tokens": message["usage"]["output_tokens"],
            "why": message["stop_reason"],
        }

    with Emulator(delay=0, responder=lambda custom_id, params: answer) as emu:
        out = run(texts(2), emu, parse=parse)

    assert seen[0] == answer["message"]  # exactly as the API sent it
    assert out["kinds"] == [["thinking", "text", "tool_use"]] * 2
    assert out["thought"] == ["The user wants a label."] * 2
    assert out["tool_topic"] == ["art"] * 2
    assert out["tokens"] == [42] * 2 and out["why"] == ["tool_use"] * 2
    assert out["response"] == ["Labelling."] * 2


@pytest.mark.parametrize("mode", MODES)
def test_parse_runs_beside_response_format_and_sees_rows_that_failed_to_parse(mode):
    answers = {"text 0": json.dumps(LABEL), "text 1": "no idea"}

    def parse(row, message):
        return {"blocks": len(message["content"]), "kind": message["content"][-1]["type"]}

    with Emulator(delay=0, responder=by_prompt(answers)) as emu:
        out = run(texts(2), emu, response_format=Label, structured_output=mode, parse=parse)

    assert out.column_names == [
        "text",
        "response",
        "topic",
        "confidence",
        "blocks",
        "kind",
        "dsbatch",
    ]
    assert statuses(out) == ["succeeded", "parse_error"]
    assert out["topic"] == ["art", None]
    assert out["blocks"] == [1, 1]
    assert out["kind"] == ["tool_use" if mode == "tool" else "text", "text"]


# -- answers without text --------------------------------------------------------------------


def test_a_forced_tool_in_params_without_response_format_keeps_the_tool_input():
    tools = [
        {
            "name": "label",
            "input_schema": {
                "type": "object",
                "properties": {"topic": {"type": "string"}, "score": {"type": "integer"}},
                "required": ["topic", "score"],
                "additionalProperties": False,
            },
        }
    ]
    with Emulator(delay=0) as emu:
        params = {"tools": tools, "tool_choice": {"type": "tool", "name": "label"}}
        out = run(texts(3), emu, params=params)

        assert statuses(out) == ["succeeded"] * 3
        assert [s["stop_reason"] for s in out["dsbatch"]] == ["tool_use"] * 3
        for answer in out["response"]:
            value = json.loads(answer)
            assert set(value) == {"topic", "score"} and isinstance(value["score"], int)
        assert sent_params(emu)[0]["tool_choice"] == {"type": "tool", "name": "label"}


def test_a_thinking_only_or_empty_answer_has_no_text_but_is_reachable_through_parse():
    answers = {
        "text 0": message(THINKING, stop_reason="max_tokens"),
        "text 1": message(stop_reason="end_turn"),
    }

    def parse(row, message):
        return {"thinking": " ".join(b.get("thinking", "") for b in message["content"]) or None}

    with Emulator(delay=0, responder=by_prompt(answers)) as emu:
        out = run(texts(2), emu, parse=parse)

    assert out["response"] == [None, None]
    assert statuses(out) == ["succeeded"] * 2
    assert [s["stop_reason"] for s in out["dsbatch"]] == ["max_tokens", "end_turn"]
    assert out["thinking"] == ["The user wants a label.", None]


# -- betas -----------------------------------------------------------------------------------

BETA = "output-300k-2026-03-24"


def test_betas_go_out_as_the_anthropic_beta_header_of_the_create(emu):
    out = run(texts(3), emu, betas=[BETA])

    assert out["response"] == [f"echo: text {i}" for i in range(3)]
    (batch_id,) = {batch_id for batch_id, _ in emu.received}
    assert emu.batch_betas(batch_id) == [BETA]
    assert BETA in emu.last_create_headers["anthropic-beta"].split(",")
    assert all("betas" not in params for params in sent_params(emu))


def test_the_same_rows_with_and_without_betas_are_different_requests(emu):
    ds = texts(3)
    run(ds, emu)
    plain = {custom_id for _, custom_id in emu.received}
    emu.reset_stats()

    out = run(ds, emu, betas=[BETA])

    beta = {custom_id for _, custom_id in emu.received}
    assert len(beta) == 3 and not beta & plain  # all three sent again, under the beta
    assert {s["custom_id"] for s in out["dsbatch"]} == beta
    assert len(list(Path(os.environ["DSBATCH_CACHE"]).glob("jobs/*/"))) == 2  # two jobs
    emu.reset_stats()

    run(ds, emu, betas=[BETA])
    run(ds, emu)
    assert sum(emu.calls.values()) == 0  # each job is cached on its own


@pytest.mark.parametrize("where", ["prompt", "params"])
def test_a_betas_key_in_the_request_is_refused_and_points_at_betas(emu, where):
    def prompt(row):
        request = {"messages": [{"role": "user", "content": row["text"]}]}
        if where == "prompt":
            request["betas"] = [BETA]
        return request

    params = {"betas": [BETA]} if where == "params" else None
    with pytest.raises(PromptError, match=r"pass betas=\[\.\.\.\] to dsbatch.map"):
        run(texts(2), emu, prompt, params=params)
    assert nothing_sent(emu)
