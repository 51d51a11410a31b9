"""Answers: deterministic text, schema-valid JSON, forced tool calls, usage and max_tokens."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, Literal

import anthropic
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from pydantic import BaseModel, Field

from dsbatch._emulator._schema import generate_instance
from dsbatch.testing import Emulator, default_responder

from .helpers import LABEL_SCHEMA, forced_tool_params, json_schema_params, request, results_by_id


def _messages(emu: Emulator, reqs: list[Any]) -> dict[str, Any]:
    client = emu.client()
    batch = client.messages.batches.create(requests=reqs)
    client.messages.batches.retrieve(batch.id)
    return {cid: result.message for cid, result in results_by_id(client, batch.id).items()}


# --- schemas the generator must satisfy --------------------------------------------------------


class Color(str, Enum):
    red = "red"
    blue = "blue"


class Address(BaseModel):
    street: str
    city: str
    zip_code: str | None = None


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=130)
    email: str = Field(json_schema_extra={"format": "email"})
    color: Color
    kind: Literal["customer", "vendor"]
    home: Address
    past: list[Address] = Field(min_length=2)
    nickname: str | None = None
    score: float = Field(gt=0, lt=1)
    tags: list[str] = Field(default_factory=list, max_length=3)
    active: bool
    born: str = Field(json_schema_extra={"format": "date"})


class Tree(BaseModel):
    label: str
    children: list[Tree] = Field(default_factory=list)


RAW_SCHEMAS: list[dict[str, Any]] = [
    LABEL_SCHEMA,
    {"type": "string", "enum": ["a", "b", "c"]},
    {"const": 42},
    {"type": "array", "items": {"type": "integer", "multipleOf": 5}, "minItems": 3, "maxItems": 4},
    {"type": ["string", "null"], "minLength": 30, "maxLength": 40},
    {"type": "number", "exclusiveMinimum": 10, "exclusiveMaximum": 11},
    {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True, "maxItems": 2},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
    {
        "type": "object",
        "properties": {"when": {"type": "string", "format": "date-time"}},
        "required": ["when"],
        "additionalProperties": False,
    },
    {
        "allOf": [
            {"$ref": "#/$defs/A"},
            {"properties": {"b": {"type": "integer"}}, "required": ["b"]},
        ],
        "$defs": {
            "A": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
        },
    },
    {"type": "object", "additionalProperties": {"type": "integer", "minimum": 7}},
    {"oneOf": [{"type": "string", "format": "uuid"}, {"type": "integer", "maximum": -5}]},
]
PYDANTIC_MODELS: list[type[BaseModel]] = [Person, Tree, Address]


def _schemas() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, schema to generate from, schema to validate against)."""
    cases = [(f"raw{i}", s, s) for i, s in enumerate(RAW_SCHEMAS)]
    for model in PYDANTIC_MODELS:
        original = model.model_json_schema()
        cases.append((model.__name__, anthropic.transform_schema(model), original))
    return cases


@pytest.mark.parametrize(
    ("name", "schema", "check"), _schemas(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_generated_instances_are_valid_for_many_seeds(
    name: str, schema: dict[str, Any], check: dict[str, Any]
) -> None:
    # The original pydantic schema keeps the constraints transform_schema moves into
    # descriptions, so validating against it shows those hints are honoured as well.
    validator = Draft202012Validator(check, format_checker=FormatChecker())
    instances = [generate_instance(schema, seed) for seed in range(60)]
    for instance in instances:
        validator.validate(instance)
    assert generate_instance(schema, 7) == instances[7]
    assert len({json.dumps(i, sort_keys=True) for i in instances}) > 1 or "const" in schema


def test_generated_pydantic_answers_parse_back_into_the_model() -> None:
    schema = anthropic.transform_schema(Person)
    for seed in range(30):
        Person.model_validate(generate_instance(schema, seed))


# --- answers through the emulator ----------------------------------------------------------------


def test_the_same_request_always_gets_the_same_answer_and_different_prompts_differ() -> None:
    reqs = [request("a", "Tell me about owls."), request("b", "Tell me about cats.")]
    with Emulator() as one, Emulator() as two:
        first, second = _messages(one, reqs), _messages(two, reqs)
    assert first["a"].content[0].text == second["a"].content[0].text
    assert first["a"].content[0].text != first["b"].content[0].text
    assert "Tell me about owls." in first["a"].content[0].text


def test_json_schema_requests_get_json_valid_against_the_schema(emu: Emulator) -> None:
    schema = anthropic.transform_schema(Person)
    reqs = [request(f"p{i}", f"person {i}", **json_schema_params(schema)) for i in range(20)]
    for message in _messages(emu, reqs).values():
        assert message.stop_reason == "end_turn" and message.content[0].type == "text"
        Person.model_validate_json(message.content[0].text)


def test_a_forced_tool_gets_a_tool_use_block_valid_against_its_input_schema(emu: Emulator) -> None:
    reqs = [request(f"t{i}", f"label {i}", **forced_tool_params(LABEL_SCHEMA)) for i in range(20)]
    for message in _messages(emu, reqs).values():
        (block,) = message.content
        assert block.type == "tool_use" and block.name == "record"
        assert block.id.startswith("toolu_")
        assert message.stop_reason == "tool_use"
        Draft202012Validator(LABEL_SCHEMA).validate(block.input)


def test_tool_choice_any_uses_the_first_tool(emu: Emulator) -> None:
    params = forced_tool_params(LABEL_SCHEMA)
    params["tool_choice"] = {"type": "any"}
    (message,) = _messages(emu, [request("t", **params)]).values()
    assert message.content[0].type == "tool_use"


def test_usage_tracks_the_length_of_prompt_and_answer(emu: Emulator) -> None:
    short, long = "Hi there.", "A much longer prompt. " * 200
    messages = _messages(emu, [request("short", short), request("long", long, system="Be brief.")])
    usage = messages["long"].usage
    assert usage.input_tokens == pytest.approx(len(long + "Be brief.") / 4, abs=2)
    assert messages["short"].usage.input_tokens < 5
    text = messages["long"].content[0].text
    assert usage.output_tokens == pytest.approx(len(text) / 4, abs=1)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
    assert usage.service_tier == "batch"


def test_an_answer_over_max_tokens_is_cut_with_stop_reason_max_tokens(emu: Emulator) -> None:
    messages = _messages(
        emu,
        [
            request("text", max_tokens=3),
            request("json", max_tokens=4, **json_schema_params(LABEL_SCHEMA)),
            request("tool", max_tokens=4, **forced_tool_params(LABEL_SCHEMA)),
        ],
    )
    text = messages["text"]
    assert text.stop_reason == "max_tokens" and text.usage.output_tokens == 3
    assert len(text.content[0].text) == 12
    cut_json = messages["json"]
    assert cut_json.stop_reason == "max_tokens"
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut_json.content[0].text)
    tool = messages["tool"]
    assert tool.stop_reason == "max_tokens" and tool.content[0].type == "tool_use"


def test_stop_sequences_end_the_answer_early(emu: Emulator) -> None:
    (message,) = _messages(emu, [request("s", "alpha beta", stop_sequences=["beta"])]).values()
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "beta"
    assert message.content[0].text == "Summary of: alpha "


def test_a_user_responder_replaces_the_answers() -> None:
    def responder(custom_id: str, params: dict) -> str | dict:
        if custom_id == "refused":
            return {"type": "expired"}
        if custom_id == "raw":
            return {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": "api_error", "message": "boom"},
                    "request_id": None,
                },
            }
        return f"echo {custom_id}: " + default_responder(custom_id, params)

    with Emulator(responder=responder) as emu:
        client = emu.client()
        batch = client.messages.batches.create(
            requests=[request("kept"), request("refused"), request("raw")]
        )
        counts = client.messages.batches.retrieve(batch.id).request_counts
        assert (counts.succeeded, counts.expired, counts.errored) == (1, 1, 1)
        results = results_by_id(client, batch.id)
        assert results["kept"].message.content[0].text.startswith("echo kept: Summary of:")
        assert results["raw"].error.error.message == "boom"


def test_a_responder_returning_nonsense_makes_the_request_errored() -> None:
    with Emulator(responder=lambda custom_id, params: {"oops": True}) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=[request("a")])
        assert client.messages.batches.retrieve(batch.id).request_counts.errored == 1


def test_a_strict_tool_is_accepted_and_called_like_any_forced_tool(emu: Emulator) -> None:
    params = forced_tool_params(LABEL_SCHEMA)
    params["tools"][0]["strict"] = True
    (message,) = _messages(emu, [request("strict", **params)]).values()
    (block,) = message.content
    assert block.type == "tool_use" and message.stop_reason == "tool_use"
    Draft202012Validator(LABEL_SCHEMA).validate(block.input)
