"""What the API refuses in a request, as the emulator models it (``_rules``): each rule ends a
batch request ``errored`` with the API's wording at processing time (never at create), and the
Messages API refuses the same request with 400 and the same message."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from dsbatch._emulator._rules import BLOCK_FIELDS, COUNT_TOKENS_PARAMS
from dsbatch._limits import API_VERSION_LEGACY
from dsbatch.testing import Emulator

from .helpers import LABEL_SCHEMA, forced_tool_params

LEGACY = {"anthropic-version": API_VERSION_LEGACY}
USER = [{"role": "user", "content": "Tell me about tea."}]
HAIKU = {"model": "claude-haiku-4-5", "max_tokens": 2048, "messages": USER}
SONNET_46 = {**HAIKU, "model": "claude-sonnet-4-6"}
OPUS_47 = {**HAIKU, "model": "claude-opus-4-7"}
FABLE_51 = {**HAIKU, "model": "claude-fable-5-1"}
THINK = {"type": "enabled", "budget_tokens": 1024}
FORCED = forced_tool_params(LABEL_SCHEMA)
DEPRECATED = "`temperature` is deprecated for this model."
FORCED_WHILE_THINKING = "Thinking may not be enabled when tool_choice forces tool use."
BUDGET = (
    "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
    "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
    "#max-tokens-and-context-window-size"
)


def _post_message(client: anthropic.Anthropic, params: dict[str, Any]) -> Any:
    """POST /v1/messages as is: the SDK's ``messages.create`` refuses some of these itself
    (sampling params it no longer types, a max_tokens it would want streamed)."""
    return client.post("/v1/messages", body=params, cast_to=anthropic.types.Message)


def _text(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


# (name, params, the API's message); every one is refused under API version 2023-06-01
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    # thinking with a forced tool, in every combination the API refuses
    ("enabled+tool", {**HAIKU, "thinking": THINK, **FORCED}, FORCED_WHILE_THINKING),
    (
        "enabled+any",
        {**HAIKU, "thinking": THINK, **FORCED, "tool_choice": {"type": "any"}},
        FORCED_WHILE_THINKING,
    ),
    (
        "adaptive+tool",
        {**OPUS_47, "thinking": {"type": "adaptive"}, **FORCED},
        FORCED_WHILE_THINKING,
    ),
    ("always-thinking+tool", {**FABLE_51, **FORCED}, FORCED_WHILE_THINKING),
    # the thinking budget
    (
        "budget-below-1024",
        {**HAIKU, "thinking": {"type": "enabled", "budget_tokens": 1023}},
        "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
    ),
    (
        "budget-equal-max-tokens",
        {**HAIKU, "max_tokens": 1024, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        BUDGET,
    ),
    (
        "budget-missing",
        {**HAIKU, "thinking": {"type": "enabled"}},
        "thinking.enabled.budget_tokens: Field required",
    ),
    # thinking forms a model does not take
    (
        "enabled-on-claude-5",
        {**HAIKU, "model": "claude-sonnet-5", "thinking": THINK},
        "thinking.type.enabled is not supported for this model. "
        "Use thinking.type.adaptive and output_config.effort",
    ),
    (
        "enabled-on-opus-4-7",
        {**OPUS_47, "thinking": THINK},
        "thinking.type.enabled is not supported for this model. "
        "Use thinking.type.adaptive and output_config.effort",
    ),
    (
        "adaptive-on-haiku-4-5",
        {**HAIKU, "thinking": {"type": "adaptive"}},
        "thinking.type.adaptive is not supported for this model. "
        "Use thinking.type.enabled with budget_tokens",
    ),
    # sampling params on models that reject them, whatever the version
    ("temperature-opus-4-7", {**OPUS_47, "temperature": 1.0}, DEPRECATED),
    (
        "top_p-sonnet-5",
        {**HAIKU, "model": "claude-sonnet-5", "top_p": 0.9},
        "`top_p` is deprecated for this model.",
    ),  # fmt: skip
    (
        "top_k-newer-model",
        {**HAIKU, "model": "claude-opus-9", "top_k": 5},
        "`top_k` is deprecated for this model.",
    ),  # fmt: skip
    # max_tokens above the output limit
    (
        "max-tokens-haiku",
        {**HAIKU, "max_tokens": 64_001},
        "max_tokens: 64001 > 64000, which is the maximum allowed number of output tokens for "
        "claude-haiku-4-5",
    ),
    (
        "max-tokens-huge",
        {**SONNET_46, "max_tokens": 10**30},
        f"max_tokens: {10**30} > 128000, which is the maximum allowed number of output tokens "
        "for claude-sonnet-4-6",
    ),
    # empty and whitespace-only text
    (
        "empty-string",
        {**HAIKU, "messages": [{"role": "user", "content": ""}]},
        "messages.0: all messages must have non-empty content except for the optional final "
        "assistant message",
    ),
    (
        "whitespace-string",
        {**HAIKU, "messages": [{"role": "user", "content": " \n\t"}]},
        "messages: text content blocks must contain non-whitespace text",
    ),
    (
        "empty-text-block",
        {**HAIKU, "messages": _text({"type": "text", "text": ""})},
        "messages: text content blocks must be non-empty",
    ),
    (
        "whitespace-text-block",
        {
            **HAIKU,
            "messages": _text({"type": "text", "text": "hi"}, {"type": "text", "text": "  "}),
        },
        "messages: text content blocks must contain non-whitespace text",
    ),
    (
        "whitespace-system-block",
        {**HAIKU, "system": [{"type": "text", "text": "   "}]},
        "system: text content blocks must contain non-whitespace text",
    ),
    # a final assistant turn ending in whitespace
    (
        "prefill-trailing-space",
        {**HAIKU, "messages": [*USER, {"role": "assistant", "content": "The answer is "}]},
        "messages: final assistant content cannot end with trailing whitespace",
    ),
    (
        "prefill-trailing-newline",
        {**HAIKU, "messages": [*USER, {"role": "assistant", "content": "Sure:\n"}]},
        "messages: final assistant content cannot end with trailing whitespace",
    ),
    (
        "prefill-block-trailing-newline",
        {
            **HAIKU,
            "messages": [
                *USER,
                {"role": "assistant", "content": [{"type": "text", "text": "Sure:\n"}]},
            ],
        },
        "messages: final assistant content cannot end with trailing whitespace",
    ),
    # tool_choice naming a missing tool
    (
        "tool-choice-missing-tool",
        {**HAIKU, **FORCED, "tool_choice": {"type": "tool", "name": "nope"}},
        "tool_choice.name: tool 'nope' is not in tools",
    ),
    # content blocks
    (
        "unknown-block-type",
        {**HAIKU, "messages": _text({"type": "video", "url": "x"})},
        "messages.0.content.0: Input tag 'video' found using 'type' does not match any of the "
        "expected tags: " + ", ".join(f"'{name}'" for name in sorted(BLOCK_FIELDS)),
    ),
    (
        "text-block-without-text",
        {**HAIKU, "messages": _text({"type": "text"})},
        "messages.0.content.0.text.text: Field required",
    ),
    (
        "image-without-source",
        {**HAIKU, "messages": _text({"type": "image"}, {"type": "text", "text": "What is it?"})},
        "messages.0.content.0.image.source: Field required",
    ),
    # unknown params, and cache breakpoints
    (
        "unknown-param",
        {**HAIKU, "stop_sequence": ["END"]},
        "stop_sequence: Extra inputs are not permitted",
    ),  # fmt: skip
    (
        "five-breakpoints",
        {
            **HAIKU,
            "cache_control": {"type": "ephemeral"},
            "messages": _text(
                *[
                    {"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}}
                    for i in range(4)
                ]  # fmt: skip
            ),
        },
        "A maximum of 4 blocks with cache_control may be provided. Found 5.",
    ),
    (
        "bad-ttl",
        {**HAIKU, "cache_control": {"type": "ephemeral", "ttl": "10m"}},
        "cache_control.ephemeral.ttl: Input should be '5m' or '1h'",
    ),
]

# Close to the refused ones, and answered.
ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("enabled+auto-tool", {**HAIKU, "thinking": THINK, **FORCED, "tool_choice": {"type": "auto"}}),
    ("adaptive-on-opus-4-7", {**OPUS_47, "thinking": {"type": "adaptive"}}),
    ("both-forms-sonnet-4-6", {**SONNET_46, "thinking": {"type": "adaptive"}}),
    ("budget-just-below", {**HAIKU, "max_tokens": 1025, "thinking": THINK}),
    ("temperature-haiku-legacy", {**HAIKU, "temperature": 0.2}),
    ("max-tokens-at-limit", {**HAIKU, "max_tokens": 64_000}),
    ("unknown-model-any-max-tokens", {**HAIKU, "model": "claude-3-5-haiku", "max_tokens": 10**6}),
    ("empty-final-prefill", {**HAIKU, "messages": [*USER, {"role": "assistant", "content": ""}]}),
    ("prefill", {**HAIKU, "messages": [*USER, {"role": "assistant", "content": "The answer:"}]}),
    (
        "whitespace-in-earlier-assistant-turn",
        {
            **HAIKU,
            "messages": [
                *USER,
                {"role": "assistant", "content": "Tea. "},
                {"role": "user", "content": "More."},
            ],
        },
    ),
    ("four-breakpoints", {**HAIKU, "cache_control": {"type": "ephemeral", "ttl": "1h"}}),
    ("stream-false", {**HAIKU, "stream": False}),
]


def test_each_refused_request_ends_errored_with_the_apis_message_and_the_rest_succeed() -> None:
    items = [{"custom_id": f"bad{i}", "params": params} for i, (_, params, _) in enumerate(REFUSED)]
    items += [{"custom_id": f"ok{i}", "params": params} for i, (_, params) in enumerate(ACCEPTED)]
    with Emulator(delay=60) as emu:
        client = emu.client(default_headers=LEGACY)
        batch = client.messages.batches.create(requests=items)  # nothing fails at create
        assert batch.request_counts.processing == len(items)
        emu.advance(60)
        counts = client.messages.batches.retrieve(batch.id).request_counts
        results = {line["custom_id"]: line["result"] for line in emu.results_of(batch.id)}
    assert (counts.errored, counts.succeeded) == (len(REFUSED), len(ACCEPTED))
    for i, (name, _, message) in enumerate(REFUSED):
        error = results[f"bad{i}"]["error"]["error"]
        assert (name, error["type"], error["message"]) == (name, "invalid_request_error", message)
    for i, (name, _) in enumerate(ACCEPTED):
        assert (name, results[f"ok{i}"]["type"]) == (name, "succeeded")


@pytest.mark.parametrize(("name", "params", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_the_messages_api_refuses_the_same_request_at_once_with_the_same_message(
    emu: Emulator, name: str, params: dict[str, Any], message: str
) -> None:
    client = emu.client(max_retries=0, default_headers=LEGACY)
    with pytest.raises(anthropic.BadRequestError) as caught:
        _post_message(client, params)
    body: Any = caught.value.body
    assert (body["error"]["type"], body["error"]["message"]) == ("invalid_request_error", message)
    assert emu.messages_received == []


@pytest.mark.parametrize(("name", "params"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_the_messages_api_answers_what_a_batch_answers(
    emu: Emulator, name: str, params: dict[str, Any]
) -> None:
    message = _post_message(emu.client(default_headers=LEGACY), params)
    assert message.type == "message" and message.content
    assert emu.messages_received == [params]


def test_the_output_300k_beta_raises_the_limit_in_batches_of_models_that_support_it() -> None:
    big = {**SONNET_46, "max_tokens": 300_000}
    too_big = {**SONNET_46, "max_tokens": 300_001}
    haiku = {**HAIKU, "max_tokens": 100_000}  # Haiku 4.5 has no 300k output
    items = [
        {"custom_id": name, "params": params}
        for name, params in (("big", big), ("too_big", too_big), ("haiku", haiku))
    ]
    with Emulator() as emu:
        client = emu.client()
        plain = client.messages.batches.create(requests=items)
        beta = client.messages.batches.create(
            requests=items, extra_headers={"anthropic-beta": "output-300k-2026-03-24"}
        )
        outcome = {
            (which, line["custom_id"]): line["result"]
            for which, batch_id in (("plain", plain.id), ("beta", beta.id))
            for line in emu.results_of(batch_id)
        }
        # the beta is for batches only: the Messages API keeps the model's own limit
        beta_client = emu.client(default_headers={"anthropic-beta": "output-300k-2026-03-24"})
        with pytest.raises(anthropic.BadRequestError, match="300000 > 128000"):
            _post_message(beta_client, big)
    assert outcome["beta", "big"]["type"] == "succeeded"
    assert outcome["beta", "too_big"]["error"]["error"]["message"].startswith(
        "max_tokens: 300001 > 300000"
    )
    assert outcome["plain", "big"]["error"]["error"]["message"].startswith(
        "max_tokens: 300000 > 128000"
    )
    assert outcome["beta", "haiku"]["error"]["error"]["message"].startswith(
        "max_tokens: 100000 > 64000"
    )


def test_under_2026_10_21_sampling_breaks_the_version_rule_or_else_the_model_rule(
    emu: Emulator,
) -> None:
    client = emu.client(max_retries=0)  # the SDK's default version: 2026-10-21
    batch = client.messages.batches.create(
        requests=[
            {"custom_id": "old", "params": {**HAIKU, "temperature": 0.5}},
            {"custom_id": "new", "params": {**OPUS_47, "temperature": 0.5}},
        ]
    )
    messages = {
        line["custom_id"]: line["result"]["error"]["error"]["message"]
        for line in emu.results_of(batch.id)
    }
    assert messages == {
        "old": "temperature: not supported in API version 2026-10-21",
        "new": DEPRECATED,
    }


def test_count_tokens_checks_its_body_like_the_api(emu: Emulator) -> None:
    client = emu.client(max_retries=0)
    no_max = {"model": "claude-haiku-4-5", "messages": USER}
    assert client.messages.count_tokens(**no_max).input_tokens > 0
    cases = [
        ({"messages": USER}, "model: Field required"),
        ({"model": "claude-haiku-4-5"}, "messages: Field required"),
        ({**no_max, "max_tokens": 10}, "max_tokens: Extra inputs are not permitted"),
        ({**no_max, "temperature": 1.0}, "temperature: Extra inputs are not permitted"),
        (
            {**no_max, "messages": _text({"type": "text", "text": " "})},
            "messages: text content blocks must contain non-whitespace text",
        ),
        ({**no_max, "thinking": THINK, **FORCED}, FORCED_WHILE_THINKING),
    ]
    for body, message in cases:
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.post("/v1/messages/count_tokens", body=body, cast_to=object)
        error: Any = caught.value.body
        assert error["error"]["message"] == message


# --- the tables the rules keep, against the spec ------------------------------------------------


def test_the_block_table_is_the_specs_request_blocks_and_their_required_fields(
    spec_document: dict[str, Any],
) -> None:
    schemas = spec_document["components"]["schemas"]
    mapping = schemas["InputContentBlock"]["discriminator"]["mapping"]
    spec_fields = {
        kind: tuple(sorted(set(schemas[ref.rsplit("/", 1)[1]]["required"]) - {"type"}))
        for kind, ref in mapping.items()
    }
    assert spec_fields == BLOCK_FIELDS


def test_the_count_tokens_params_are_the_specs_and_output_format(
    spec_document: dict[str, Any],
) -> None:
    params = spec_document["components"]["schemas"]["CountMessageTokensParams"]
    assert params["additionalProperties"] is False
    assert {*params["properties"], "output_format"} == COUNT_TOKENS_PARAMS
