"""What a request may hold: per API version (the create's ``anthropic-version``), and at all."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic import Omit
from jsonschema import validate

from dsbatch._limits import API_VERSION_2026, API_VERSION_LEGACY
from dsbatch.testing import Emulator

from .helpers import LABEL_SCHEMA, request, results_by_id

LEGACY_HEADERS = {"anthropic-version": API_VERSION_LEGACY}

_CITATION = {
    "type": "char_location",
    "cited_text": "tea",
    "document_index": 0,
    "document_title": None,
    "start_char_index": 0,
    "end_char_index": 3,
}
_DOCUMENT = {
    "type": "document",
    "source": {"type": "text", "media_type": "text/plain", "data": "Tea is a drink."},
}


def _with_messages(custom_id: str, *messages: dict[str, Any]) -> Any:
    item = request(custom_id)
    item["params"]["messages"] = list(messages)
    return item


def _refused_from_2026() -> list[tuple[Any, str]]:
    """(request, start of its error message under 2026-10-21)."""
    return [
        (request("temperature", temperature=1.0), "temperature: not supported in API version"),
        (request("top_p", top_p=0.99), "top_p: not supported in API version"),
        (request("top_k", top_k=40), "top_k: not supported in API version"),
        (
            _with_messages(
                "assistant_document",
                {"role": "user", "content": "Quote the source."},
                {"role": "assistant", "content": [_DOCUMENT]},
                {"role": "user", "content": "Go on."},
            ),
            "messages.1.content.0: document blocks in assistant messages are not supported",
        ),
        (
            _with_messages(
                "user_citations",
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "About tea."},
                        {"type": "text", "text": "Tea.", "citations": [_CITATION]},
                    ],
                },
            ),
            "messages.0.content.1.citations: citations on user text blocks are not supported",
        ),
    ]


def _still_fine() -> list[Any]:
    """Requests near the refused ones that every version answers."""
    return [
        request("plain"),
        _with_messages(
            "user_document",
            {"role": "user", "content": [_DOCUMENT, {"type": "text", "text": "Summarize."}]},
        ),
        _with_messages(
            "empty_citations",
            {"role": "user", "content": [{"type": "text", "text": "Tea.", "citations": []}]},
        ),
        _with_messages(
            "assistant_text",
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
            {"role": "user", "content": "Tell me about tea."},
        ),
    ]


def test_the_sdk_default_version_errors_sampling_params_and_old_blocks_after_processing() -> None:
    refused = _refused_from_2026()
    with Emulator(delay=60) as emu:
        client = emu.client()
        batch = client.messages.batches.create(
            requests=[item for item, _ in refused] + _still_fine()
        )
        # validated asynchronously: the create is accepted and every request is processing
        assert batch.request_counts.processing == len(refused) + 4
        assert emu.batch_version(batch.id) == API_VERSION_2026
        emu.advance(60)
        ended = client.messages.batches.retrieve(batch.id)
        assert (ended.request_counts.errored, ended.request_counts.succeeded) == (len(refused), 4)
        results = results_by_id(client, batch.id)
    for item, message in refused:
        error = results[item["custom_id"]].error.error
        assert error.type == "invalid_request_error"
        assert error.message.startswith(message)
        assert error.message.endswith(f"in API version {API_VERSION_2026}")
    for item in _still_fine():
        assert results[item["custom_id"]].type == "succeeded"


def test_version_2023_06_01_answers_the_same_requests(emu: Emulator) -> None:
    client = emu.client(default_headers=LEGACY_HEADERS)
    reqs = [item for item, _ in _refused_from_2026()] + _still_fine()
    batch = client.messages.batches.create(requests=reqs)
    assert emu.batch_version(batch.id) == API_VERSION_LEGACY
    assert client.messages.batches.retrieve(batch.id).request_counts.succeeded == len(reqs)


def test_a_create_without_a_version_header_is_treated_as_2023_06_01(emu: Emulator) -> None:
    client = emu.client()
    batch = client.messages.batches.create(
        requests=[request("t", temperature=0.0)], extra_headers={"anthropic-version": Omit()}
    )
    assert "anthropic-version" not in emu.last_create_headers
    assert emu.batch_version(batch.id) == API_VERSION_LEGACY
    assert results_by_id(client, batch.id)["t"].type == "succeeded"


def test_the_version_is_that_of_each_create_not_of_the_emulator(emu: Emulator) -> None:
    new, old = emu.client(), emu.client(default_headers=LEGACY_HEADERS)
    first = new.messages.batches.create(requests=[request("a", top_k=5)])
    second = old.messages.batches.create(requests=[request("a", top_k=5)])
    assert results_by_id(new, first.id)["a"].type == "errored"
    assert results_by_id(new, second.id)["a"].type == "succeeded"


@pytest.mark.parametrize("key", ["betas", "frequency_penalty", "context_management"])
@pytest.mark.parametrize("headers", [{}, LEGACY_HEADERS], ids=["2026", "legacy"])
def test_a_param_the_api_does_not_know_ends_errored_naming_it(
    emu: Emulator, key: str, headers: dict[str, str]
) -> None:
    client = emu.client(default_headers=headers)
    item = request("extra")
    item["params"][key] = ["output-300k-2026-03-24"]
    batch = client.messages.batches.create(requests=[item, request("fine")])
    results = results_by_id(client, batch.id)
    error = results["extra"].error.error
    assert error.type == "invalid_request_error"
    assert error.message == f"{key}: Extra inputs are not permitted"
    assert results["fine"].type == "succeeded"


def test_every_known_param_is_accepted(emu: Emulator) -> None:
    item = request(
        "everything",
        system=[{"type": "text", "text": "Be brief."}],
        metadata={"user_id": "u1"},
        stop_sequences=["NEVER-SAID"],
        temperature=0.5,
        top_k=10,
        top_p=0.9,
        tools=[{"name": "record", "input_schema": LABEL_SCHEMA, "strict": True}],
        tool_choice={"type": "auto"},
        thinking={"type": "disabled"},
        output_config={"effort": "low"},
        service_tier="auto",
        container=None,
        inference_geo=None,
        cache_control={"type": "ephemeral"},
    )
    client = emu.client(default_headers=LEGACY_HEADERS)
    batch = client.messages.batches.create(requests=[item])
    assert results_by_id(client, batch.id)["everything"].type == "succeeded"


def test_output_format_still_gives_a_structured_answer(emu: Emulator) -> None:
    fmt = {"type": "json_schema", "schema": LABEL_SCHEMA}
    client = emu.client()
    batch = client.messages.batches.create(requests=[request("old", output_format=fmt)])
    message = results_by_id(client, batch.id)["old"].message
    validate(json.loads(message.content[0].text), LABEL_SCHEMA)
