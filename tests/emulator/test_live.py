"""The synchronous endpoints: ``POST /v1/messages`` (what ``dsbatch.preview`` calls) and
``POST /v1/messages/count_tokens``, through the official SDK."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from jsonschema import validate

from dsbatch.testing import Emulator, Faults, HttpFault, default_responder

from .helpers import LABEL_SCHEMA, MODEL, forced_tool_params, json_schema_params, request

USER = [{"role": "user", "content": "Tell me about tea."}]
PARAMS: dict[str, Any] = {"model": MODEL, "max_tokens": 256, "messages": USER}


def _batch_message(emu: Emulator, params: dict[str, Any]) -> dict[str, Any]:
    batch = emu.client().messages.batches.create(requests=[{"custom_id": "b", "params": params}])
    (line,) = emu.results_of(batch.id)
    message: dict[str, Any] = line["result"]["message"]
    return message


def _without_ids(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in block.items() if k != "id"} for block in blocks]


@pytest.mark.parametrize(
    "extra",
    [{}, json_schema_params(LABEL_SCHEMA), forced_tool_params(LABEL_SCHEMA), {"max_tokens": 5}],
    ids=["text", "native", "tool", "cut"],
)
def test_the_messages_api_answers_what_a_batch_answers_the_same_params(
    emu: Emulator, extra: dict[str, Any]
) -> None:
    params = {**PARAMS, **extra}
    live = emu.client().messages.with_raw_response.create(**params).http_response.json()
    in_batch = _batch_message(emu, params)
    # the same blocks, but for the tool call's id (each message has its own)
    assert _without_ids(live["content"]) == _without_ids(in_batch["content"])
    assert (live["stop_reason"], live["usage"]["output_tokens"]) == (
        in_batch["stop_reason"],
        in_batch["usage"]["output_tokens"],
    )
    assert live["usage"]["input_tokens"] == in_batch["usage"]["input_tokens"]
    assert (live["usage"]["service_tier"], in_batch["usage"]["service_tier"]) == (
        "standard",
        "batch",
    )
    assert emu.messages_received == [params]


def test_structured_live_answers_are_valid(emu: Emulator) -> None:
    client = emu.client()
    native = client.messages.create(**PARAMS, **json_schema_params(LABEL_SCHEMA))
    validate(json.loads(native.content[0].text), LABEL_SCHEMA)
    tool = client.messages.create(**PARAMS, **forced_tool_params(LABEL_SCHEMA))
    assert tool.stop_reason == "tool_use" and tool.content[0].type == "tool_use"
    validate(tool.content[0].input, LABEL_SCHEMA)


def test_each_live_message_has_its_own_id(emu: Emulator) -> None:
    client = emu.client()
    ids = {client.messages.create(**PARAMS).id for _ in range(3)}
    assert len(ids) == 3 and all(i.startswith("msg_") for i in ids)


def test_the_responder_answers_live_calls_with_an_empty_custom_id() -> None:
    seen: list[str] = []

    def responder(custom_id: str, params: dict[str, Any]) -> str | dict[str, Any]:
        seen.append(custom_id)
        text = params["messages"][-1]["content"]
        if text == "overloaded":
            return {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": "overloaded_error", "message": "busy"},
                },
            }
        if text == "expire":
            return {"type": "expired"}
        return "echo: " + default_responder(custom_id, params)

    with Emulator(responder=responder) as emu:
        client = emu.client(max_retries=0)
        assert client.messages.create(**PARAMS).content[0].text.startswith("echo: Summary of:")
        with pytest.raises(anthropic.APIStatusError) as busy:
            client.messages.create(
                **{**PARAMS, "messages": [{"role": "user", "content": "overloaded"}]}
            )
        with pytest.raises(anthropic.InternalServerError) as odd:
            client.messages.create(
                **{**PARAMS, "messages": [{"role": "user", "content": "expire"}]}
            )
    assert seen == ["", "", ""]
    assert (busy.value.status_code, busy.value.type) == (529, "overloaded_error")
    assert "cannot give" in str(odd.value)


def test_streaming_is_refused_with_a_400_that_says_why(emu: Emulator) -> None:
    client = emu.client(max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="does not stream"):
        client.post("/v1/messages", body={**PARAMS, "stream": True}, cast_to=object)


@pytest.mark.parametrize("endpoint", ["messages", "count_tokens"])
def test_http_faults_hit_the_live_endpoints_by_name(endpoint: str) -> None:
    faults = Faults(http=[HttpFault(endpoint, 529, times=2), HttpFault("list", 500)])
    with Emulator(faults=faults) as emu:
        client = emu.client(max_retries=0)
        call = (
            (lambda: client.messages.create(**PARAMS))
            if endpoint == "messages"
            else (lambda: client.messages.count_tokens(model=MODEL, messages=USER))
        )
        for _ in range(2):
            with pytest.raises(anthropic.APIStatusError) as caught:
                call()
            assert caught.value.status_code == 529
        call()  # the fault is used up
        assert emu.calls[endpoint] == 3
        assert faults.http[1].times == 1  # a fault of another endpoint is untouched


def test_the_live_endpoints_need_a_key_like_every_other(emu: Emulator) -> None:
    with Emulator(api_key="sk-right") as locked:
        client = locked.client(api_key="sk-wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.create(**PARAMS)
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.count_tokens(model=MODEL, messages=USER)


def test_count_tokens_counts_tools_system_and_messages(emu: Emulator) -> None:
    client = emu.client()
    tools = forced_tool_params(LABEL_SCHEMA)["tools"]
    bare = client.messages.count_tokens(model=MODEL, messages=USER).input_tokens
    with_system = client.messages.count_tokens(
        model=MODEL, messages=USER, system="Answer in one word."
    ).input_tokens
    with_tools = client.messages.count_tokens(model=MODEL, messages=USER, tools=tools).input_tokens
    assert bare == (len("Tell me about tea.") + 3) // 4 == 5
    assert with_system == bare + (len("Answer in one word.") + 3) // 4
    assert with_tools > bare + 20
    # the same N a batch request's usage reports
    batch_usage = _batch_message(emu, {**PARAMS, "tools": tools})["usage"]
    assert batch_usage["input_tokens"] == with_tools


def test_a_live_call_is_not_a_batch_request(emu: Emulator) -> None:
    emu.client().messages.create(**request("x")["params"])
    assert emu.received == [] and not emu.batches and emu.calls["messages"] == 1
