"""response_format models: the request params, the Arrow columns, and reading answers."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import enum
import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, Generic, Literal, Optional, TypeVar

import anthropic
import datasets
import pyarrow as pa
import pytest
from pydantic import BaseModel, field_validator

from dsbatch._emulator._schema import generate_instance
from dsbatch._structured import (
    Parsed,
    arrow_schema,
    check_response_format,
    columns,
    extract_json,
    features,
    parse_answer,
    request_params,
    tool_name,
)

UTC = dt.timezone.utc
CUT = "the answer was cut at max_tokens before the JSON was complete (raise max_tokens)"
REFUSED = "the model refused to answer (stop_reason refusal)"


class Mood(enum.Enum):
    HAPPY = "happy"
    GRUMPY = "grumpy"


class Author(BaseModel):
    name: str
    karma: int


class Review(BaseModel):
    """A product review, read by the model."""

    title: str
    stars: int
    score: float
    verified: bool
    tags: list[str]
    quotes: list[Author]
    author: Author
    helpful: Optional[int] = None  # noqa: UP045 - typing.Optional, as many users write it
    lang: Literal["en", "fr"]
    mood: Mood
    posted: dt.datetime
    day: dt.date


REVIEW_SCHEMA = pa.schema(
    [
        ("title", pa.string()),
        ("stars", pa.int64()),
        ("score", pa.float64()),
        ("verified", pa.bool_()),
        ("tags", pa.list_(pa.string())),
        ("quotes", pa.list_(pa.struct([("name", pa.string()), ("karma", pa.int64())]))),
        ("author", pa.struct([("name", pa.string()), ("karma", pa.int64())])),
        ("helpful", pa.int64()),
        ("lang", pa.string()),
        ("mood", pa.string()),
        ("posted", pa.timestamp("us", tz="UTC")),
        ("day", pa.date32()),
    ]
)

REVIEW_ANSWER = {
    "title": "Sturdy kettle",
    "stars": 4,
    "score": 0.75,
    "verified": True,
    "tags": ["kitchen", "steel"],
    "quotes": [{"name": "Ann", "karma": 3}, {"name": "Bo", "karma": -1}],
    "author": {"name": "Cy", "karma": 10},
    "helpful": None,
    "lang": "fr",
    "mood": "grumpy",
    "posted": "2024-05-01T12:30:00+02:00",
    "day": "2024-05-02",
}

# What a user finds in the dataset row for REVIEW_ANSWER.
REVIEW_ROW = {
    **REVIEW_ANSWER,
    "posted": dt.datetime(2024, 5, 1, 10, 30, tzinfo=UTC),
    "day": dt.date(2024, 5, 2),
}


def native(model: type[BaseModel], text: str, stop_reason: str = "end_turn") -> Parsed:
    return parse_answer(model, text=text, tool_input=None, stop_reason=stop_reason, mode="native")


class Point(BaseModel):
    x: int
    y: int


# --- the Arrow schema and datasets features ---------------------------------------------------


def test_every_field_type_gets_its_arrow_type_and_all_fields_are_nullable():
    schema = arrow_schema(Review)

    assert schema == REVIEW_SCHEMA
    assert all(field.nullable for field in schema)


def test_features_are_what_a_dataset_of_the_columns_has():
    parsed = native(Review, json.dumps(REVIEW_ANSWER))
    ds = datasets.Dataset(pa.table(columns(Review, [parsed])))

    assert ds.features == features(Review)
    assert features(Review)["title"] == datasets.Value("string")
    assert features(Review)["posted"] == datasets.Value("timestamp[us, tz=UTC]")
    assert features(Review)["author"] == {
        "name": datasets.Value("string"),
        "karma": datasets.Value("int64"),
    }
    assert ds[0]["author"] == {"name": "Cy", "karma": 10}
    assert ds[0]["quotes"][1] == {"name": "Bo", "karma": -1}


@pytest.mark.parametrize(
    ("annotation", "arrow_type"),
    [
        (tuple[int, ...], pa.list_(pa.int64())),
        (set[str], pa.list_(pa.string())),
        (Literal[1, 2], pa.int64()),
        (Literal[0.5, 1], pa.float64()),
        (dt.time, pa.string()),
        (decimal.Decimal, pa.string()),
        (uuid.UUID, pa.string()),
        (int | None, pa.int64()),
        (list[Optional[float]], pa.list_(pa.float64())),  # noqa: UP045
    ],
)
def test_more_field_types(annotation, arrow_type):
    model = _model_with(annotation)

    assert arrow_schema(model).field("x").type == arrow_type


# --- round trip -------------------------------------------------------------------------------


def test_an_answer_comes_back_as_typed_values_in_the_columns():
    parsed = native(Review, json.dumps(REVIEW_ANSWER))

    assert parsed.error is None
    table = pa.table(columns(Review, [parsed, None]))
    assert table.schema == REVIEW_SCHEMA
    assert table.to_pylist() == [REVIEW_ROW, dict.fromkeys(REVIEW_ROW)]


def test_values_are_plain_python_ready_for_arrow():
    values = native(Review, json.dumps(REVIEW_ANSWER)).values

    assert values is not None
    assert values["mood"] == "grumpy" and type(values["mood"]) is str
    assert values["author"] == {"name": "Cy", "karma": 10}
    assert values["posted"] == dt.datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
    assert values["posted"].tzinfo == UTC


def test_a_naive_datetime_is_taken_as_utc():
    model = _model_with(dt.datetime)

    values = native(model, '{"x": "2024-01-02T03:04:05"}').values

    assert values == {"x": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)}


def test_decimal_time_uuid_and_sets_become_stable_text_and_lists():
    class Odd(BaseModel):
        price: decimal.Decimal
        opens: dt.time
        ref: uuid.UUID
        labels: set[str]

    ref = "12345678-1234-5678-1234-567812345678"
    answer = {"price": "12.50", "opens": "09:30:00", "ref": ref, "labels": ["b", "c", "a"]}

    values = native(Odd, json.dumps(answer)).values

    assert values == {"price": "12.50", "opens": "09:30:00", "ref": ref, "labels": ["a", "b", "c"]}


def test_an_integer_too_big_for_int64_is_a_row_error_not_a_crash():
    parsed = native(Point, '{"x": 1, "y": 99999999999999999999}')

    assert parsed.values is None
    assert parsed.error == "y: 99999999999999999999 does not fit in a 64-bit integer column"


# --- finding the JSON in an answer ------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"x": 1, "y": 2}',
        '  \n{"x": 1, "y": 2}\n',
        'Sure! Here is the point:\n{"x": 1, "y": 2}',
        'Here you go:\n```json\n{"x": 1, "y": 2}\n```\nAnything else?',
        '```\n{"x": 1, "y": 2}\n```',
        '{"x": 1, "y": 2}\n\nI picked these because they are small.',
        'Use {curly braces} for sets. Answer: {"x": 1, "y": 2} (done)',
    ],
    ids=[
        "whole",
        "whitespace",
        "preamble",
        "json-fence",
        "plain-fence",
        "trailing",
        "prose-braces",
    ],
)
def test_extract_json_finds_the_object(text):
    assert extract_json(text) == {"x": 1, "y": 2}


def test_extract_json_reads_braces_and_quotes_inside_strings():
    text = 'The answer: {"note": "a } and a { and \\"quoted\\" }", "n": 1} - hope it helps'

    assert extract_json(text) == {"note": 'a } and a { and "quoted" }', "n": 1}


@pytest.mark.parametrize(
    "text", ["", "I'm not sure.", "{not json}", '{"x": 1, "y": ', "```json\n{oops}\n```"]
)
def test_extract_json_gives_none_without_json(text):
    assert extract_json(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "{" * 200_000,
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"a": "' * 100_000,
    ],
    ids=["open-braces", "deep-array", "deep-object", "open-strings"],
)
def test_pathological_answers_are_a_quick_error_not_a_crash(text):
    started = time.perf_counter()

    parsed = native(Point, text)

    assert parsed.error is not None
    assert parsed.error.startswith("no JSON object was found in the answer: ")
    assert time.perf_counter() - started < 2  # measured under 0.01 s


# --- errors a user sees -----------------------------------------------------------------------


def test_a_garbage_answer_is_an_error_saying_no_json_was_found():
    parsed = native(Point, "I would rather talk about the weather.")

    assert parsed.values is None
    assert parsed.error == (
        "no JSON object was found in the answer: 'I would rather talk about the weather.'"
    )


def test_an_empty_answer_says_so():
    assert native(Point, "").error == "no JSON object was found in the answer (it was empty)"


def test_an_answer_cut_at_max_tokens_says_to_raise_max_tokens():
    text = '{"title": "Sturdy kettle", "quotes": [{"name": "Ann", "karma": 3}, {"name": "B'

    assert native(Review, text, stop_reason="max_tokens") == Parsed(None, CUT)
    assert native(Point, '{"x": 1, "y":', stop_reason="max_tokens") == Parsed(None, CUT)


def test_a_piece_of_a_cut_answer_is_not_taken_for_the_answer():
    class Loose(BaseModel):
        name: str = "?"

    text = '{"people": [{"name": "Ann"}, {"name": "Bo'

    assert native(Loose, text, stop_reason="max_tokens").error == CUT


def test_a_complete_answer_that_then_hit_max_tokens_is_kept():
    parsed = native(Point, '{"x": 1, "y": 2}\nLet me explain why', stop_reason="max_tokens")

    assert parsed == Parsed({"x": 1, "y": 2}, None)


def test_a_refusal_is_reported_as_such_even_with_json_in_it():
    assert native(Point, "I can't help with that.", stop_reason="refusal") == Parsed(None, REFUSED)
    assert native(Point, '{"x": 1, "y": 2}', stop_reason="refusal") == Parsed(None, REFUSED)


def test_a_mismatched_answer_names_the_fields_and_what_was_wrong():
    parsed = native(Review, json.dumps({**REVIEW_ANSWER, "stars": "many", "lang": "de"}))

    assert parsed.values is None
    assert parsed.error is not None
    assert parsed.error.startswith("the answer does not match Review: ")
    assert "stars: Input should be a valid integer" in parsed.error
    assert "(got 'many')" in parsed.error
    assert "lang: Input should be 'en' or 'fr' (got 'de')" in parsed.error


def test_nested_error_paths_are_readable_and_long_lists_are_cut_short():
    answer = {**REVIEW_ANSWER, "quotes": [{"name": "Ann"}], "author": {}, "mood": 1, "day": 2}

    error = native(Review, json.dumps(answer)).error

    assert error == (
        "the answer does not match Review: quotes[0].karma: Field required; "
        "author.name: Field required; author.karma: Field required; and 2 more errors"
    )


def test_a_validator_that_rejects_a_value_names_the_field():
    class Rating(BaseModel):
        stars: int

        @field_validator("stars")
        @classmethod
        def one_to_five(cls, value: int) -> int:
            if not 1 <= value <= 5:
                raise ValueError("stars must be between 1 and 5")
            return value

    parsed = native(Rating, '{"stars": 9}')

    assert parsed.values is None
    assert parsed.error == (
        "the answer does not match Rating: stars: Value error, stars must be between 1 and 5 "
        "(got 9)"
    )


def test_changing_a_validator_changes_the_result_of_the_same_answer():
    class Strict(BaseModel):
        word: str

        @field_validator("word")
        @classmethod
        def lower(cls, value: str) -> str:
            if value != value.lower():
                raise ValueError("must be lower case")
            return value

    class Fixing(BaseModel):
        word: str

        @field_validator("word")
        @classmethod
        def lower(cls, value: str) -> str:
            return value.lower()

    text = '{"word": "Hello"}'

    assert "word: Value error, must be lower case" in (native(Strict, text).error or "")
    assert native(Fixing, text) == Parsed({"word": "hello"}, None)


# --- tool mode --------------------------------------------------------------------------------


def test_tool_mode_reads_the_tool_input():
    parsed = parse_answer(
        Point, text="", tool_input={"x": 3, "y": 4}, stop_reason="tool_use", mode="tool"
    )

    assert parsed == Parsed({"x": 3, "y": 4}, None)


def test_tool_mode_without_a_tool_call_reads_the_text():
    text = 'I will answer directly: {"x": 5, "y": 6}'

    parsed = parse_answer(Point, text=text, tool_input=None, stop_reason="end_turn", mode="tool")

    assert parsed == Parsed({"x": 5, "y": 6}, None)


def test_tool_mode_errors():
    bad = parse_answer(Point, text="", tool_input={"x": 1}, stop_reason="tool_use", mode="tool")
    cut = parse_answer(Point, text="", tool_input={}, stop_reason="max_tokens", mode="tool")
    nothing = parse_answer(Point, text="no.", tool_input=None, stop_reason="end_turn", mode="tool")

    assert bad.error == "the answer does not match Point: y: Field required"
    assert cut.error == CUT
    assert nothing.error == "no tool call and no JSON object was found in the answer: 'no.'"


# --- request params ---------------------------------------------------------------------------


def test_native_params_send_exactly_the_sdks_strict_schema():
    params = request_params(Review, "native")

    assert params == {
        "output_config": {
            "format": {"type": "json_schema", "schema": anthropic.transform_schema(Review)}
        }
    }
    # The same schema client.messages.parse(output_format=Review) sends.
    schema = params["output_config"]["format"]["schema"]
    assert schema == anthropic.transform_schema(Review.model_json_schema())
    assert schema["additionalProperties"] is False


def test_tool_params_force_one_strict_tool_with_the_same_schema():
    params = request_params(Review, "tool")

    (tool,) = params["tools"]
    assert tool == {
        "name": "Review",
        "description": "A product review, read by the model.",
        "input_schema": anthropic.transform_schema(Review),
        "strict": True,
    }
    assert params["tool_choice"] == {"type": "tool", "name": "Review"}


def test_tool_names_are_valid_for_the_api_and_stable():
    T = TypeVar("T")

    class Page(BaseModel, Generic[T]):
        items: list[T]

    name = tool_name(Page[int])

    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name)
    assert name == tool_name(Page[int]) == "Page_int_"
    assert request_params(Point, "tool")["tools"][0]["description"] == (
        "Record the answer as a Point object."
    )


def test_changing_returned_params_does_not_change_the_next_request():
    first = request_params(Point, "native")
    first["output_config"]["format"]["schema"]["properties"].clear()

    assert request_params(Point, "native")["output_config"]["format"]["schema"]["properties"]


def test_an_unknown_mode_is_refused():
    expected = "structured_output must be 'native' or 'tool', not 'json'"
    with pytest.raises(ValueError, match=expected):
        request_params(Point, "json")
    with pytest.raises(ValueError, match="structured_output must be"):
        parse_answer(Point, text="{}", tool_input=None, stop_reason=None, mode="xml")


# --- checking the model -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [Point(x=1, y=2), "Point", int, None])
def test_a_response_format_that_is_not_a_model_class_is_a_type_error(value):
    with pytest.raises(TypeError, match="response_format must be a pydantic BaseModel subclass"):
        check_response_format(value)


def test_a_json_schema_dict_is_a_type_error_pointing_at_params():
    with pytest.raises(TypeError, match="not a JSON schema dict.*output_config"):
        check_response_format({"type": "object"})


class Node(BaseModel):
    label: str
    children: list[Node]


class Empty(BaseModel):
    pass


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (Any, "field 'x' has type Any, but the API's strict schemas need a concrete type"),
        (int | str, "field 'x' has type int | str, a union of several types"),
        (tuple[int, int], "field 'x' has type tuple[int, int], a fixed-length tuple"),
        (bytes, "field 'x' has type bytes, not a type dsbatch can make a column of"),
        (dt.timedelta, "field 'x' has type timedelta"),
        (list, "field 'x' has type list, give the element type"),
        (list[Any], "field 'x[]' has type Any"),
        (Literal["a", 1], "its values are not all strings, all numbers or all bools"),
        (Node, "field 'x.children[]' refers back to Node: a recursive model"),
        (Empty, "'x' (Empty) has no fields"),
        (dict[str, int], "field 'x' has type dict[str, int], a free-form dict"),
        (dict, "field 'x' has type dict, a free-form dict"),
        (Mapping[str, str], "has type collections.abc.Mapping[str, str], a free-form dict"),
        (collections.Counter, "field 'x' has type Counter, a free-form dict"),
        (list[dict[str, float]], "field 'x[]' has type dict[str, float], a free-form dict"),
        (Optional[dict], "field 'x' has type dict, a free-form dict"),  # noqa: UP045
    ],
)
def test_a_field_type_without_a_column_type_is_a_value_error_naming_it(annotation, message):
    model = _model_with(annotation)

    with pytest.raises(ValueError, match=re.escape(message)):
        check_response_format(model)
    with pytest.raises(ValueError, match=re.escape(message)):
        request_params(model, "native")


def test_a_refused_field_points_to_the_docs_and_says_what_to_use():
    with pytest.raises(ValueError) as info:
        check_response_format(_model_with(dict[str, int]))

    message = str(info.value)
    # transform_schema makes the object strict with no properties: only {} could come back.
    assert anthropic.transform_schema(_model_with(dict[str, int]))["properties"]["x"] == {
        "type": "object",
        "title": "X",
        "properties": {},
        "additionalProperties": False,
    }
    assert "the answer could only ever be {}" in message
    assert "use a nested model with named fields, or list[Item]" in message
    assert message.endswith("(see docs/structured-outputs.md, 'Columns and their types')")
    assert "dsbatch._structured" not in message


def test_a_nested_field_is_named_by_its_path():
    class Inner(BaseModel):
        payload: bytes

    with pytest.raises(ValueError, match=re.escape("field 'x[].payload' has type bytes")):
        check_response_format(_model_with(list[Inner]))


# --- columns ----------------------------------------------------------------------------------


class Stamp(BaseModel):
    at: dt.datetime


@pytest.mark.parametrize(
    ("annotation", "answer", "column"),
    [
        (list[Optional[int]], [1, None, 3], [1, None, 3]),  # noqa: UP045
        (
            list[Optional[dt.datetime]],  # noqa: UP045
            ["2024-01-02T03:04:05Z", None],
            [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), None],
        ),
        (
            list[Optional[Stamp]],  # noqa: UP045
            [None, {"at": "2024-01-02T03:04:05+01:00"}],
            [None, {"at": dt.datetime(2024, 1, 2, 2, 4, 5, tzinfo=UTC)}],
        ),
    ],
)
def test_null_elements_of_a_list_stay_null_in_the_typed_column(annotation, answer, column):
    model = _model_with(annotation)

    parsed = native(model, json.dumps({"x": answer}))
    table = pa.table(columns(model, [parsed]))

    assert parsed.error is None
    assert table["x"].to_pylist() == [column]
    assert table["x"].type == arrow_schema(model).field("x").type
    assert table["x"].combine_chunks().values.null_count == 1


def test_columns_with_every_row_failed_are_typed_and_all_null():
    rows = [Parsed(None, "no JSON object was found in the answer (it was empty)"), None]

    cols = columns(Review, rows)

    assert list(cols) == REVIEW_SCHEMA.names
    assert pa.table(cols).schema == REVIEW_SCHEMA
    assert all(array.null_count == 2 for array in cols.values())


def test_columns_for_100k_rows_are_quick():
    good = native(Review, json.dumps(REVIEW_ANSWER))
    rows = [good if i % 10 else Parsed(None, "x") for i in range(100_000)]

    started = time.perf_counter()
    cols = columns(Review, rows)
    elapsed = time.perf_counter() - started

    assert len(cols["quotes"]) == 100_000 and cols["stars"].null_count == 10_000
    assert elapsed < 10  # measured about 0.2 s


# --- against the local emulator's answers ------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "tool"])
def test_the_emulators_schema_answers_parse_into_columns(mode):
    params = request_params(Review, mode)
    if mode == "native":
        schema = params["output_config"]["format"]["schema"]
    else:
        schema = params["tools"][0]["input_schema"]

    rows = []
    for seed in range(50):
        answer = generate_instance(schema, seed)
        if mode == "native":
            rows.append(parse_answer(Review, text=json.dumps(answer), mode=mode))
        else:
            rows.append(parse_answer(Review, text="", tool_input=answer, mode=mode))

    assert [row.error for row in rows] == [None] * 50
    assert pa.table(columns(Review, rows)).num_rows == 50


def _model_with(annotation: Any) -> type[BaseModel]:
    return type("Holder", (BaseModel,), {"__annotations__": {"x": annotation}})
