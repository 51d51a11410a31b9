"""Thinking: a request that thinks gets a thinking block first, billed as output within
max_tokens; omitted text on the models that omit it; redacted on the fault's draw."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import validate

from dsbatch.testing import Emulator, Faults

from .helpers import LABEL_SCHEMA, json_schema_params

USER = [{"role": "user", "content": "Why is the sky blue?"}]
ENABLED = {"type": "enabled", "budget_tokens": 2000}


def _params(model: str = "claude-haiku-4-5", **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 4000, "messages": USER, **extra}


def _messages(emu: Emulator, *params: dict[str, Any]) -> list[dict[str, Any]]:
    items = [{"custom_id": f"r{i}", "params": p} for i, p in enumerate(params)]
    batch = emu.client().messages.batches.create(requests=items)
    lines = {line["custom_id"]: line["result"] for line in emu.results_of(batch.id)}
    return [lines[f"r{i}"]["message"] for i in range(len(params))]


def _kinds(message: dict[str, Any]) -> list[str]:
    return [block["type"] for block in message["content"]]


def test_each_way_of_thinking_starts_the_answer_with_a_thinking_block(emu: Emulator) -> None:
    plain, enabled, adaptive, always, disabled_on_always = _messages(
        emu,
        _params(),
        _params(thinking=ENABLED),
        _params("claude-sonnet-4-6", thinking={"type": "adaptive"}),
        _params("claude-opus-5-5"),  # always thinks, asked or not
        _params("claude-fable-5-1", thinking={"type": "disabled"}),
    )
    assert _kinds(plain) == ["text"]
    for message in (enabled, adaptive, always, disabled_on_always):
        assert _kinds(message) == ["thinking", "text"]
        block = message["content"][0]
        assert set(block) == {"type", "thinking", "signature"}
        assert len(block["signature"]) == 64
    thought = enabled["content"][0]["thinking"]
    assert thought.startswith("The user asks about: Why is the sky blue?\nI consider ")
    assert plain["usage"]["output_tokens_details"] is None
    thinking_tokens = (len(thought) + 3) // 4
    assert enabled["usage"]["output_tokens_details"] == {"thinking_tokens": thinking_tokens}
    answer_tokens = (len(enabled["content"][1]["text"]) + 3) // 4
    assert enabled["usage"]["output_tokens"] == thinking_tokens + answer_tokens


def test_the_same_request_thinks_the_same_and_another_request_differently(emu: Emulator) -> None:
    one, two = _messages(emu, _params(thinking=ENABLED), _params(thinking=ENABLED))
    other = {**_params(thinking=ENABLED), "messages": [{"role": "user", "content": "Why?"}]}
    (three,) = _messages(emu, other)
    assert one["content"][0] == two["content"][0]
    assert one["content"][0]["signature"] != three["content"][0]["signature"]


@pytest.mark.parametrize(
    ("model", "display", "shown"),
    [
        ("claude-opus-4-7", None, False),  # omitted by default
        ("claude-opus-4-7", "summarized", True),
        ("claude-fable-5", None, False),
        ("claude-sonnet-4-6", None, True),  # shown by default
        ("claude-sonnet-4-6", "omitted", False),
        ("claude-sonnet-5", None, True),
    ],
)
def test_thinking_text_is_omitted_by_default_on_the_models_that_omit_it(
    emu: Emulator, model: str, display: str | None, shown: bool
) -> None:
    thinking: dict[str, Any] = {"type": "adaptive"}
    if display is not None:
        thinking["display"] = display
    (message,) = _messages(emu, _params(model, thinking=thinking))
    block = message["content"][0]
    assert (block["type"], bool(block["thinking"]), bool(block["signature"])) == (
        "thinking",
        shown,
        True,
    )
    # billed all the same
    assert message["usage"]["output_tokens_details"]["thinking_tokens"] > 10


def test_thinking_counts_toward_max_tokens(emu: Emulator) -> None:
    short, starved = _messages(
        emu,
        _params("claude-sonnet-4-6", thinking={"type": "adaptive"}, max_tokens=50),
        _params("claude-sonnet-4-6", thinking={"type": "adaptive"}, max_tokens=10),
    )
    thinking_tokens = short["usage"]["output_tokens_details"]["thinking_tokens"]
    assert 20 < thinking_tokens < 50
    assert (short["stop_reason"], short["usage"]["output_tokens"]) == ("max_tokens", 50)
    assert _kinds(short) == ["thinking", "text"]
    assert len(short["content"][1]["text"]) == 4 * (50 - thinking_tokens)
    # the reasoning used every token: a cut thinking block and nothing else
    assert starved["stop_reason"] == "max_tokens" and _kinds(starved) == ["thinking"]
    assert len(starved["content"][0]["thinking"]) == 40
    assert starved["usage"]["output_tokens"] == 10
    assert starved["usage"]["output_tokens_details"] == {"thinking_tokens": 10}


def test_thinking_with_a_native_structured_answer_keeps_the_json_in_the_text_block(
    emu: Emulator,
) -> None:
    (message,) = _messages(emu, _params(thinking=ENABLED, **json_schema_params(LABEL_SCHEMA)))
    assert _kinds(message) == ["thinking", "text"]
    validate(json.loads(message["content"][1]["text"]), LABEL_SCHEMA)


def test_the_redacted_thinking_fault_replaces_the_block_for_its_fraction() -> None:
    reqs = [
        {
            "custom_id": f"r{i}",
            "params": {
                **_params(thinking=ENABLED),
                "messages": [{"role": "user", "content": f"Question {i}"}],
            },
        }
        for i in range(200)
    ]
    reqs.append({"custom_id": "plain", "params": _params()})
    with Emulator(faults=Faults(redacted_thinking=0.3)) as emu:
        batch = emu.client().messages.batches.create(requests=reqs)
        lines = {line["custom_id"]: line["result"]["message"] for line in emu.results_of(batch.id)}
    firsts = [lines[f"r{i}"]["content"][0] for i in range(200)]
    redacted = [block for block in firsts if block["type"] == "redacted_thinking"]
    assert 40 <= len(redacted) <= 80
    assert all(set(block) == {"type", "data"} and block["data"] for block in redacted)
    assert len(firsts) - len(redacted) == sum(block["type"] == "thinking" for block in firsts)
    assert _kinds(lines["plain"]) == ["text"]  # only answers that think are redacted


def test_the_messages_api_thinks_like_a_batch(emu: Emulator) -> None:
    client = emu.client()
    (in_batch,) = _messages(emu, _params(thinking=ENABLED))
    live = client.messages.create(**_params(thinking=ENABLED))
    assert [block.model_dump() for block in live.content] == [
        {k: v for k, v in block.items()} for block in in_batch["content"]
    ]
