"""Everything the SDK sends and the emulator answers, checked against the official OpenAPI spec."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import anthropic
import jsonschema
import pytest

from dsbatch import _limits as limits
from dsbatch._emulator._rules import KNOWN_PARAMS
from dsbatch._limits import CUSTOM_ID_PATTERN, MAX_BATCH_REQUESTS
from dsbatch.testing import Emulator, Faults, HttpFault

from .conftest import SpecValidators
from .helpers import LABEL_SCHEMA, forced_tool_params, json_schema_params, request, requests


def _json(raw: Any) -> Any:
    return raw.http_response.json()


def _check_batch(spec: SpecValidators, batch: dict[str, Any]) -> None:
    spec.validate("MessageBatch", batch)
    for field in ("created_at", "expires_at", "ended_at", "cancel_initiated_at", "archived_at"):
        if batch[field] is not None:
            assert datetime.fromisoformat(batch[field]).utcoffset() == timedelta(0)


def test_the_create_body_the_sdk_sends_is_valid(spec: SpecValidators, emu: Emulator) -> None:
    reqs = [
        request("plain", system="Be brief.", temperature=1.0, stop_sequences=["END"]),
        request("schema", **json_schema_params(anthropic.transform_schema(LABEL_SCHEMA))),
        request("tool", **forced_tool_params(LABEL_SCHEMA)),
        request("blocks", metadata={"user_id": "u1"}),
    ]
    reqs[3]["params"]["messages"] = [
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Go on."},
    ]
    emu.client().messages.batches.create(requests=reqs)
    spec.validate("CreateMessageBatchParams", emu.last_create_body)


def test_every_batch_object_in_every_state_is_valid(spec: SpecValidators) -> None:
    with Emulator(delay=100) as emu:
        raw = emu.client().messages.batches.with_raw_response
        created = _json(raw.create(requests=requests(4)))
        _check_batch(spec, created)
        assert created["processing_status"] == "in_progress"
        emu.advance(50)
        canceling = _json(raw.cancel(created["id"]))
        _check_batch(spec, canceling)
        assert canceling["processing_status"] == "canceling"
        ended = _json(raw.retrieve(created["id"]))
        _check_batch(spec, ended)
        assert ended["processing_status"] == "ended" and ended["results_url"]

        other = _json(raw.create(requests=requests(2)))
        emu.advance(100)
        _check_batch(spec, _json(raw.retrieve(other["id"])))


def test_list_pages_are_valid(spec: SpecValidators, emu: Emulator) -> None:
    raw = emu.client().messages.batches.with_raw_response
    empty = _json(raw.list())
    spec.validate("ListResponse_MessageBatch_", empty)
    for _ in range(3):
        raw.create(requests=requests(1))
    page = _json(raw.list(limit=2))
    spec.validate("ListResponse_MessageBatch_", page)
    assert page["has_more"] is True and len(page["data"]) == 2


def test_delete_answer_is_valid(spec: SpecValidators, emu: Emulator) -> None:
    raw = emu.client().messages.batches.with_raw_response
    batch = _json(raw.create(requests=requests(1)))
    raw.retrieve(batch["id"])
    spec.validate("DeleteMessageBatchResponse", _json(raw.delete(batch["id"])))


def _lines(emu: Emulator, batch_id: str) -> list[dict[str, Any]]:
    client = emu.client()
    client.messages.batches.retrieve(batch_id)
    with client.messages.batches.with_streaming_response.results(batch_id) as response:
        return [json.loads(line) for line in response.read().splitlines()]


def _kind(line: dict[str, Any]) -> str:
    result = line["result"]
    if result["type"] == "errored":
        return "errored:" + result["error"]["error"]["type"]
    if result["type"] == "succeeded":
        return "succeeded:" + result["message"]["content"][0]["type"]
    return result["type"]


def test_every_kind_of_result_line_is_valid(spec: SpecValidators) -> None:
    bad = request("bad_role")
    bad["params"]["messages"] = [{"role": "tool", "content": "x"}]
    reqs = [
        *requests(60),
        *requests(10, prefix="schema", **json_schema_params(LABEL_SCHEMA)),
        *requests(10, prefix="tool", **forced_tool_params(LABEL_SCHEMA)),
        request("cut_tool", max_tokens=2, **forced_tool_params(LABEL_SCHEMA)),
        request("cut_text", max_tokens=2),
        request("stop", "alpha beta", stop_sequences=["beta"]),
        bad,
    ]
    faults = Faults(errored=0.2, invalid=0.1, expired=0.1, preamble=0.2)
    kinds: set[str] = set()
    with Emulator(delay=100, faults=faults) as emu:
        batch = emu.client().messages.batches.create(requests=reqs)
        emu.advance(100)
        canceled = emu.client().messages.batches.create(requests=requests(4, prefix="c"))
        emu.advance(50)
        emu.client().messages.batches.cancel(canceled.id)
        for line in _lines(emu, batch.id) + _lines(emu, canceled.id):
            spec.validate("MessageBatchIndividualResponse", line)
            kinds.add(_kind(line))
    assert kinds == {
        "succeeded:text",
        "succeeded:tool_use",
        "errored:overloaded_error",
        "errored:api_error",
        "errored:invalid_request_error",
        "expired",
        "canceled",
    }


@pytest.mark.parametrize("status", [429, 500, 529])
def test_error_bodies_are_valid(spec: SpecValidators, status: int) -> None:
    with Emulator(faults=Faults(http=[HttpFault("list", status)])) as emu:
        with pytest.raises(anthropic.APIStatusError) as caught:
            emu.client(max_retries=0).messages.batches.list()
        spec.validate("ErrorResponse", caught.value.body)


def test_4xx_error_bodies_are_valid(spec: SpecValidators, emu: Emulator) -> None:
    client = emu.client(max_retries=0)
    errors = []
    for call in (
        lambda: client.messages.batches.retrieve("msgbatch_nope"),
        lambda: client.messages.batches.create(requests=[request("bad id")]),
        lambda: client.messages.batches.list(extra_headers={"Authorization": anthropic.Omit()}),
    ):
        with pytest.raises(anthropic.APIStatusError) as caught:
            call()
        errors.append(caught.value)
    assert [e.status_code for e in errors] == [404, 400, 401]
    for error in errors:
        spec.validate("ErrorResponse", error.body)


def test_the_spec_check_would_catch_a_missing_required_nullable_field(
    spec: SpecValidators, emu: Emulator
) -> None:
    batch = emu.client().messages.batches.create(requests=requests(1))
    line = emu.results_of(batch.id)[0]
    del line["result"]["message"]["container"]
    with pytest.raises(jsonschema.ValidationError):
        spec.validate("MessageBatchIndividualResponse", line)
    wire = dict(emu.batches[batch.id])
    del wire["archived_at"]
    with pytest.raises(jsonschema.ValidationError, match="archived_at"):
        spec.validate("MessageBatch", wire)


# --- the constants the emulator takes from the spec ------------------------------------------


def test_known_params_are_the_specs_create_message_params_and_output_format(
    spec_document: dict[str, Any],
) -> None:
    schemas = spec_document["components"]["schemas"]
    item = schemas["MessageBatchIndividualRequestParams"]
    params = schemas[item["properties"]["params"]["$ref"].rsplit("/", 1)[1]]
    assert params["additionalProperties"] is False
    assert {*params["properties"], "output_format"} == KNOWN_PARAMS


def test_the_shared_limits_match_the_spec(spec_document: dict[str, Any]) -> None:
    schemas = spec_document["components"]["schemas"]
    requests_schema = schemas["CreateMessageBatchParams"]["properties"]["requests"]
    assert requests_schema["maxItems"] == MAX_BATCH_REQUESTS
    custom_id = schemas["MessageBatchIndividualRequestParams"]["properties"]["custom_id"]
    assert custom_id["pattern"] == CUSTOM_ID_PATTERN
    assert limits.__all__ == sorted(limits.__all__)


def test_spoiled_tool_answers_are_valid_result_lines(spec: SpecValidators) -> None:
    reqs = requests(20, **forced_tool_params(LABEL_SCHEMA))
    with Emulator(faults=Faults(preamble=0.5, no_json=0.5)) as emu:
        batch = emu.client().messages.batches.create(requests=reqs)
        shapes = set()
        for line in _lines(emu, batch.id):
            spec.validate("MessageBatchIndividualResponse", line)
            shapes.add(tuple(block["type"] for block in line["result"]["message"]["content"]))
    assert shapes == {("text", "tool_use"), ("text",)}


# --- the newer answers: thinking, caching, the beta form, the live endpoints ------------------


def _varied_requests() -> list[Any]:
    system = [{"type": "text", "text": "s" * 20_000, "cache_control": {"type": "ephemeral"}}]
    thinking = {"type": "enabled", "budget_tokens": 1024}
    return [
        *requests(10),
        *requests(5, prefix="cached", system=system),
        *requests(10, prefix="think", thinking=thinking, max_tokens=2048),
        *requests(3, prefix="omitted", model="claude-opus-4-7", thinking={"type": "adaptive"}),
        request("starved", model="claude-opus-5-5", max_tokens=5),
        *requests(4, prefix="schema", **json_schema_params(LABEL_SCHEMA)),
        *requests(4, prefix="tool", **forced_tool_params(LABEL_SCHEMA)),
        request("invalid", model="claude-opus-4-7", thinking=thinking),
        request("no_max_tokens", max_tokens=None),
    ]


def _raw_lines(emu: Emulator, batch_id: str, beta: bool) -> list[dict[str, Any]]:
    client = emu.client()
    query = {"beta": "true"} if beta else {}
    response = client.get(
        f"/v1/messages/batches/{batch_id}/results",
        cast_to=anthropic._response.BinaryAPIResponse,  # type: ignore[attr-defined]
        options={"params": query},
    )
    return [json.loads(line) for line in response.read().splitlines()]


def test_every_line_validates_against_the_beta_schema_when_read_through_the_beta_endpoint(
    spec: SpecValidators,
) -> None:
    reqs = _varied_requests()
    reqs[-1]["params"].pop("max_tokens")
    with Emulator(faults=Faults(redacted_thinking=0.3, errored=0.1)) as emu:
        batch = emu.client().messages.batches.create(requests=reqs)
        emu.client().messages.batches.retrieve(batch.id)
        plain, beta = _raw_lines(emu, batch.id, False), _raw_lines(emu, batch.id, True)
    kinds = set()
    for line in plain:
        spec.validate("MessageBatchIndividualResponse", line)
    for line in beta:
        spec.validate("BetaMessageBatchIndividualResponse", line)
        result = line["result"]
        if result["type"] == "succeeded":
            message = result["message"]
            assert (message["diagnostics"], message["context_management"]) == (None, None)
            assert (message["usage"]["iterations"], message["usage"]["speed"]) == (None, None)
            kinds.update(block["type"] for block in message["content"])
            if message["usage"]["cache_read_input_tokens"]:
                kinds.add("cache_read")
        else:
            kinds.add(result["type"])
    assert kinds == {
        "text",
        "tool_use",
        "thinking",
        "redacted_thinking",
        "cache_read",
        "errored",
    }
    # the plain form lacks exactly what the beta schema adds
    assert "diagnostics" not in json.dumps(plain)
    succeeded = next(line for line in plain if line["result"]["type"] == "succeeded")
    with pytest.raises(jsonschema.ValidationError, match="is a required property"):
        spec.validate("BetaMessage", succeeded["result"]["message"])


def test_live_answers_validate_against_the_spec(spec: SpecValidators, emu: Emulator) -> None:
    client = emu.client()
    for params in [
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Hi"}],
        },
        {
            **request("t", thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2048)[
                "params"
            ]
        },
        {**request("s", **json_schema_params(LABEL_SCHEMA))["params"]},
    ]:
        spec.validate("CreateMessageParams", params)
        spec.validate("Message", client.post("/v1/messages", body=params, cast_to=object))
        beta = client.post(
            "/v1/messages", body=params, cast_to=object, options={"params": {"beta": "true"}}
        )
        spec.validate("BetaMessage", beta)
    counted = client.post(
        "/v1/messages/count_tokens",
        body={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "Hi"}]},
        cast_to=object,
    )
    spec.validate("CountMessageTokensResponse", counted)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.post("/v1/messages", body={"model": "claude-haiku-4-5"}, cast_to=object)
    spec.validate("ErrorResponse", refused.value.body)
