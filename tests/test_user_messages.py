"""Messages a user meets after a small mistake say what to do: the with_indices hint, failed
rows described by their status, a parse function returning a key that is not a str."""

from __future__ import annotations

import pytest
from datasets import Dataset
from pydantic import BaseModel
from support import run

from dsbatch import PromptError, RowFailedError
from dsbatch.testing import Emulator, Faults


def test_a_prompt_taking_the_index_without_with_indices_gets_a_hint(emu):
    ds = Dataset.from_dict({"text": ["a", "b"]})

    with pytest.raises(PromptError) as info:
        run(ds, emu, fn=lambda row, idx: f"{idx}: {row['text']}")

    message = str(info.value)
    assert message.startswith("row 0: the prompt function raised TypeError: ")
    assert "missing 1 required positional argument: 'idx'" in message
    assert message.endswith(
        "(dsbatch calls prompt(row); to get the row's index too, pass with_indices=True "
        "and it calls prompt(row, idx))"
    )
    assert sum(emu.calls.values()) == 0


def test_with_indices_and_a_prompt_of_the_row_only_gets_the_other_hint(emu):
    ds = Dataset.from_dict({"text": ["a"]})

    with pytest.raises(PromptError, match=r"with_indices=True calls prompt\(row, idx\)"):
        run(ds, emu, fn=lambda row: row["text"], with_indices=True)


def test_a_type_error_inside_the_prompt_gets_no_hint(emu):
    def helper(text, width):
        return text[:width]

    def prompt(row):
        return helper(row["text"])  # the user's own bug, not how dsbatch called prompt

    with pytest.raises(PromptError) as info:
        run(Dataset.from_dict({"text": ["a"]}), emu, fn=prompt)

    assert "missing 1 required positional argument: 'width'" in str(info.value)
    assert "with_indices" not in str(info.value)


class Topic(BaseModel):
    topic: str


def test_row_failed_error_says_parse_errors_were_answered_and_paid():
    ds = Dataset.from_dict({"text": ["a", "b"]})
    with (
        Emulator(delay=0, faults=Faults(no_json=1.0)) as emu,
        pytest.raises(RowFailedError) as info,
    ):
        run(ds, emu, response_format=Topic, on_error="raise")

    message = str(info.value)
    assert message.startswith(
        "2 rows failed: 2 parse_error (answered and paid for, but the answer did not parse; "
        "the raw answer is in the output column) (row 0: parse_error: no JSON object"
    )
    assert "without an answer" not in message
    assert message.endswith(
        "Their results are cached: on_error='keep' returns the dataset without paying again."
    )
    assert info.value.rows == [0, 1]


def test_a_parse_returning_a_key_that_is_not_a_str_names_parse_and_the_key(emu):
    ds = Dataset.from_dict({"text": ["a", "b"]})

    def parse(row, message):
        return {1: "one"} if row["text"] == "a" else {"length": len(row["text"])}

    out = run(ds, emu, parse=parse)

    assert out["dsbatch"][0]["status"] == "parse_error"
    assert out["dsbatch"][0]["error"] == (
        "parse raised TypeError: parse returned the key 1 (int): column names must be str, e.g. '1'"
    )
    assert out["dsbatch"][1]["status"] == "succeeded"
    assert out["length"] == [None, 1]
