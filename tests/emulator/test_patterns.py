"""Structured answers satisfy every constraint a schema states, the hints ``transform_schema``
moves into descriptions included: ``pattern``, lengths, bounds, formats, enums."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import json
import random
import re
import uuid
from collections import Counter
from typing import Annotated, Literal

import anthropic
import pytest
from datasets import Dataset
from pydantic import AnyUrl, BaseModel, Field, HttpUrl, ValidationError, conint, conlist, constr

import dsbatch
from dsbatch._emulator._regex import string_matching
from dsbatch._emulator._schema import generate_instance, hints
from dsbatch.testing import Emulator

from .helpers import forced_tool_params, json_schema_params, request

PATTERNS = [
    r"^[A-Z]{3}-\d{4}$",
    r"^\+?[0-9 ]{7,15}$",
    r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$",
    r"^[^\s@]+@[^\s@]+\.[^\s@]+$",
    r"^(yes|no)$",
    r"^(?:low|medium|high)$",
    r"^\d{5}(-\d{4})?$",
    r"^#[0-9a-fA-F]{6}$",
    r"^[a-z0-9_]{3,16}$",
    r"^(?:[01]\d|2[0-3]):[0-5]\d$",
    r"^v\d+\.\d+\.\d+(-[a-z]+)?$",
    r"^https?://[a-z]+\.com/\S*$",
    r"^[A-Z][a-z]+(?: [A-Z][a-z]+)*$",
    r"^\w+\s\w+$",
    r"^(?!^[-+.]*$)[+-]?0*\d*\.?\d*$",  # pydantic's decimal pattern: a lookahead
    r"\d+",  # unanchored: contains digits
    r"^.{3}$",
    r"^[^,]+,[^,]+$",
    r"^[\u00e0-\u00ff]{2}$",
    r"^x{2,}?y$",
    r"^a{,3}b$",
    r"^ISBN[- ]?\d{9}[\dX]$",
    r"^[A-Z]{2}\d{2}[A-Z0-9]{4}\d{7}([A-Z0-9]?){0,16}$",  # IBAN-ish
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_string_matching_each_realistic_pattern_is_made(pattern: str) -> None:
    rng = random.Random(7)
    made = [string_matching(pattern, rng) for _ in range(25)]
    assert all(text is not None and re.search(pattern, text) for text in made), made
    assert len(set(made)) > 1 or pattern == r"^(yes|no)$"


@pytest.mark.parametrize(
    ("pattern", "low", "high"),
    [(r"^[a-z0-9-]+$", 10, 12), (r"^[0-9 ]{7,15}$", 12, 13), (r"^[a-z]+$", 30, 40)],
)
def test_a_pattern_with_length_bounds_gets_a_string_within_them(
    pattern: str, low: int, high: int
) -> None:
    rng = random.Random(3)
    for _ in range(50):
        text = string_matching(pattern, rng, min_length=low, max_length=high)
        assert text is not None and re.search(pattern, text) and low <= len(text) <= high


@pytest.mark.parametrize("pattern", [r"(a)\1", r"^\p{L}+$", r"[", r"^a$(?<=b)"])
def test_an_unsupported_or_unsatisfiable_pattern_gives_none(pattern: str) -> None:
    assert string_matching(pattern, random.Random(1)) is None


def test_an_unsupported_pattern_falls_back_to_words_in_an_answer() -> None:
    schema = {"type": "string", "description": "{pattern: (a)\\1, maxLength: 9}"}
    text = generate_instance(schema, 1)
    assert isinstance(text, str) and 0 < len(text) <= 9


def test_hints_are_read_back_as_transform_schema_writes_them() -> None:
    class Hinted(BaseModel):
        code: str = Field(pattern=r"^[A-Z]{3}, \d{2}: x{2}$", description="A {code}")
        n: int = Field(default=3, ge=2, le=9, multiple_of=2)
        tags: set[str] = Field(min_length=2, max_length=4)

    properties = anthropic.transform_schema(Hinted)["properties"]
    assert hints(properties["code"]["description"]) == {"pattern": r"^[A-Z]{3}, \d{2}: x{2}$"}
    assert hints(properties["n"]["description"]) == {"minimum": 2, "maximum": 9, "multipleOf": 2}
    assert hints(properties["tags"]["description"]) == {
        "maxItems": 4,
        "uniqueItems": True,
        "minItems": 2,
    }
    assert hints("A plain description") == {} and hints(None) == {}


class Line(BaseModel):
    sku: str = Field(pattern=r"^[A-Z]{3}-\d{4}$")
    quantity: conint(ge=1, le=9)  # type: ignore[valid-type]


class Contact(BaseModel):
    """Everything the library accepts, each with the constraints users put on it."""

    code: str = Field(pattern=r"^[A-Z]{3}-\d{4}$", description="A code, like ABC-1234")
    phone: Annotated[str, Field(pattern=r"^\+?[0-9 ]{7,15}$")]
    email: str = Field(pattern=r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$")
    consent: str = Field(pattern=r"^(yes|no)$")
    initials: constr(min_length=3, max_length=5)  # type: ignore[valid-type]
    slug: constr(pattern=r"^[a-z0-9-]+$", min_length=10, max_length=12)  # type: ignore[valid-type]
    tags: conlist(str, min_length=2, max_length=3)  # type: ignore[valid-type]
    ids: set[int] = Field(min_length=3, max_length=4)
    age: int = Field(ge=18, le=20)
    score: float = Field(gt=0.5, lt=0.6, multiple_of=0.01)
    ratio: float = Field(ge=0, le=1)
    even: int = Field(default=4, ge=2, multiple_of=2)
    big: int = Field(gt=1000)
    below: float = Field(lt=-5)
    born: dt.date
    seen: dt.datetime
    at: dt.time
    key: uuid.UUID
    site: AnyUrl
    page: HttpUrl
    host: ipaddress.IPv4Address
    host6: ipaddress.IPv6Address
    amount: decimal.Decimal
    kind: Literal["person", "company"]
    note: str | None = Field(default=None, pattern=r"^x+$")
    lines: list[Line] = Field(min_length=1)


@pytest.mark.parametrize("mode", ["native", "tool"])
def test_200_structured_answers_all_validate_with_the_pydantic_model(mode: str) -> None:
    schema = anthropic.transform_schema(Contact)
    params = json_schema_params(schema) if mode == "native" else forced_tool_params(schema)
    reqs = [request(f"c{i}", f"Contact number {i}.", **params) for i in range(200)]
    with Emulator() as emu:
        batch = emu.client().messages.batches.create(requests=reqs)
        lines = emu.results_of(batch.id)
    errors = []
    answers = []
    for line in lines:
        block = line["result"]["message"]["content"][0]
        answer = block["text"] if mode == "native" else json.dumps(block["input"])
        answers.append(answer)
        try:
            Contact.model_validate_json(answer)
        except ValidationError as exc:
            errors.append(exc.errors()[0])
    assert (len(lines), errors) == (200, [])
    assert len(set(answers)) == 200


@pytest.mark.parametrize("mode", ["native", "tool"])
def test_a_pipeline_with_constrained_fields_passes_on_the_emulator(mode: str) -> None:
    ds = Dataset.from_dict({"text": [f"Contact {i}" for i in range(200)]})
    with Emulator() as emu:
        out = dsbatch.map(
            ds,
            lambda row: row["text"],
            model="claude-haiku-4-5",
            response_format=Contact,
            structured_output=mode,
            client=emu.client(),
            poll_interval=0,
            progress=False,
        )
    assert Counter(status["status"] for status in out["dsbatch"]) == {"succeeded": 200}
    assert all(re.fullmatch(r"[A-Z]{3}-\d{4}", code) for code in out["code"])
    assert all(consent in ("yes", "no") for consent in out["consent"])
