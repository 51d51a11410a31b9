"""What the emulator refuses, and how the SDK reports it: the field is named in the message."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from anthropic import Omit

from dsbatch.testing import Emulator

from .helpers import request, requests, results_by_id


def _message(error: anthropic.APIStatusError) -> str:
    body: Any = error.body
    return body["error"]["message"]


def test_a_call_without_any_key_is_401(emu: Emulator) -> None:
    client = emu.client(max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.batches.list(extra_headers={"Authorization": Omit()})
    assert caught.value.status_code == 401
    assert caught.value.type == "authentication_error"


def test_x_api_key_and_bearer_are_both_accepted() -> None:
    with Emulator(api_key="sk-right") as emu:
        bearer = emu.client()
        assert bearer.api_key == "sk-right"
        bearer.messages.batches.list()
        bearer.messages.batches.list(
            extra_headers={"Authorization": Omit(), "x-api-key": "sk-right"}
        )
        assert emu.calls["list"] == 2


def test_a_wrong_key_is_401_when_the_emulator_requires_one() -> None:
    with Emulator(api_key="sk-right") as emu:
        client = emu.client(api_key="sk-wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.batches.create(requests=requests(1))
        assert not emu.batches


@pytest.mark.parametrize(
    ("custom_ids", "field"),
    [
        (["ok", "has space"], "requests.1.custom_id"),
        (["a" * 65], "requests.0.custom_id"),
        ([""], "requests.0.custom_id"),
        (["a", "b", "c", "bad/slash"], "requests.3.custom_id"),
    ],
)
def test_a_custom_id_outside_the_pattern_is_400_naming_it(
    emu: Emulator, custom_ids: list[str], field: str
) -> None:
    client = emu.client()
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.batches.create(requests=[request(cid) for cid in custom_ids])
    assert _message(caught.value).startswith(f"{field}: String should match pattern")
    assert caught.value.type == "invalid_request_error"
    assert emu.calls["create"] == 1 and not emu.batches and not emu.received


def test_a_repeated_custom_id_is_400_naming_the_second_use(emu: Emulator) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        emu.client().messages.batches.create(requests=[request("a"), request("b"), request("a")])
    assert _message(caught.value).startswith("requests.2.custom_id: Duplicate custom_id 'a'")


def test_an_empty_batch_is_400(emu: Emulator) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        emu.client().messages.batches.create(requests=[])
    assert _message(caught.value).startswith("requests: List should have at least 1 item")


def test_more_requests_than_the_limit_is_400() -> None:
    with Emulator(max_requests=5) as emu:
        client = emu.client()
        client.messages.batches.create(requests=requests(5))
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.batches.create(requests=requests(6))
        assert _message(caught.value) == (
            "requests: List should have at most 5 items after validation, not 6"
        )
        assert len(emu.batches) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": None}, "model: Field required"),
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
        ({"max_tokens": "many"}, "max_tokens: Input should be a valid integer"),
        ({"messages": None}, "messages: Field required"),
        ({"messages": []}, "messages: List should have at least 1 item after validation, not 0"),
        ({"system": 3}, "system: Input should be a valid string or list of text blocks"),
        ({"stop_sequences": "END"}, "stop_sequences: Input should be a valid list of strings"),
        ({"tools": {"name": "x"}}, "tools: Input should be a valid list of tools"),
    ],
)
def test_params_missing_a_field_or_of_the_wrong_type_end_errored_and_never_block_the_batch(
    emu: Emulator, change: dict[str, Any], message: str
) -> None:
    bad = request("b")
    for key, value in change.items():
        if value is None:
            del bad["params"][key]
        else:
            bad["params"][key] = value
    client = emu.client()
    batch = client.messages.batches.create(requests=[request("a"), bad, request("c")])
    counts = client.messages.batches.retrieve(batch.id).request_counts
    assert (counts.succeeded, counts.errored) == (2, 1)
    # exactly the shape of a real errored line (``details`` null), plus the request_id the
    # spec's ErrorResponse requires
    (line,) = [line for line in emu.results_of(batch.id) if line["custom_id"] == "b"]
    assert line == {
        "custom_id": "b",
        "result": {
            "type": "errored",
            "error": {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": message, "details": None},
                "request_id": None,
            },
        },
    }


def test_stream_true_is_refused_at_create_and_stream_false_is_accepted(emu: Emulator) -> None:
    client = emu.client()
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.batches.create(requests=[request("a"), request("b", stream=True)])
    assert _message(caught.value) == (
        "requests.1.params.stream: Streaming is not supported in Message Batches requests"
    )
    assert not emu.batches
    batch = client.messages.batches.create(requests=[request("a", stream=False)])
    assert results_by_id(client, batch.id)["a"].type == "succeeded"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (None, "requests.1.params: Field required"),
        (["model"], "requests.1.params: Input should be a valid dictionary or object"),
        ("text", "requests.1.params: Input should be a valid dictionary or object"),
    ],
)
def test_params_that_are_not_an_object_fail_the_create(
    emu: Emulator, params: Any, message: str
) -> None:
    item: dict[str, Any] = {"custom_id": "b"}
    if params is not None:
        item["params"] = params
    with pytest.raises(anthropic.BadRequestError) as caught:
        emu.client().messages.batches.create(requests=[request("a"), item])
    assert _message(caught.value) == message
    assert not emu.batches and emu.calls["create"] == 1


def test_a_body_over_the_byte_limit_is_413_and_the_server_keeps_serving() -> None:
    with Emulator(max_bytes=20_000) as emu:
        client = emu.client(max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as caught:
            client.messages.batches.create(requests=requests(400))
        assert caught.value.status_code == 413
        assert caught.value.type == "request_too_large"
        assert isinstance(caught.value, anthropic.RequestTooLargeError)
        assert not emu.batches
        assert client.messages.batches.create(requests=requests(10)).id in emu.batches


def test_a_body_far_over_the_byte_limit_is_refused_without_breaking_the_connection() -> None:
    with Emulator(max_bytes=1_000) as emu:
        client = emu.client(max_retries=0)
        huge = [request(f"r{i}", "x" * 10_000) for i in range(800)]  # about 8 MB
        with pytest.raises(anthropic.APIStatusError) as caught:
            client.messages.batches.create(requests=huge)
        assert caught.value.status_code == 413


def test_an_unknown_batch_is_404_on_every_endpoint(emu: Emulator) -> None:
    batches = emu.client(max_retries=0).messages.batches
    missing = "msgbatch_000000000000000000000000"
    for call in (batches.retrieve, batches.cancel, batches.delete, batches.results):
        with pytest.raises(anthropic.NotFoundError) as caught:
            call(missing)
        assert caught.value.type == "not_found_error"
        assert missing in _message(caught.value)


def test_an_unknown_route_is_404(emu: Emulator) -> None:
    with pytest.raises(anthropic.NotFoundError):
        emu.client(max_retries=0).get("/v1/messages/batches/x/y/z", cast_to=object)
    assert sum(emu.calls.values()) == 0


def test_a_batch_still_processing_cannot_be_deleted_or_downloaded() -> None:
    with Emulator(delay=60) as emu:
        client = emu.client(max_retries=0)
        batch = client.messages.batches.create(requests=requests(1))
        with pytest.raises(anthropic.BadRequestError, match="cannot be deleted"):
            client.messages.batches.delete(batch.id)
        with pytest.raises(anthropic.AnthropicError, match="results_url"):
            client.messages.batches.results(batch.id)  # the SDK checks results_url first
        with pytest.raises(anthropic.BadRequestError, match="has not finished processing"):
            client.get(f"/v1/messages/batches/{batch.id}/results", cast_to=object)


def test_bad_messages_are_accepted_and_end_errored_like_the_real_api(emu: Emulator) -> None:
    bad_role = request("bad_role")
    bad_role["params"]["messages"] = [{"role": "tool", "content": "hi"}]
    empty = request("empty", "")
    client = emu.client()
    batch = client.messages.batches.create(requests=[request("fine"), bad_role, empty])
    assert client.messages.batches.retrieve(batch.id).request_counts.errored == 2
    results = results_by_id(client, batch.id)
    assert results["fine"].type == "succeeded"
    for custom_id, field in (("bad_role", "messages.0.role"), ("empty", "messages.0")):
        error = results[custom_id].error.error
        assert error.type == "invalid_request_error"
        assert error.message.startswith(field)
