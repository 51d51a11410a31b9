"""What the API would refuse is refused at render time, the row named, with the message a user
reads: one case per rule of ``_requests.RULES``, and what the rules let through."""

from __future__ import annotations

import anthropic
import pytest
from datasets import Dataset
from PIL import Image
from pydantic import BaseModel
from support import run

from dsbatch import PromptError
from dsbatch._limits import API_VERSION_2026, API_VERSION_LEGACY
from dsbatch._models import OUTPUT_300K_BETA
from dsbatch._render import Rendered, RequestShape, render_split
from dsbatch._requests import MAX_TOKENS_BOUND, RULES
from dsbatch._sdk_schema import batch_header_params, request_fields
from dsbatch._structured import request_params

DEFAULTS = {"model": "claude-haiku-4-5", "max_tokens": 2048}
USER = [{"role": "user", "content": "hello"}]
THINK = {"type": "enabled", "budget_tokens": 1024}
TOOL = {"name": "lookup", "input_schema": {"type": "object", "properties": {}}}
SDK = anthropic.__version__
VERSION_KEEP = (
    "or keep it with a client made with anthropic.Anthropic(default_headers="
    "{'anthropic-version': '2023-06-01'})"
)


class Label(BaseModel):
    topic: str


def render(answer, *, defaults=DEFAULTS, **shape):
    """Render two rows: row 0 a plain request, row 1 ``answer``."""
    rendered = Rendered()
    render_split(
        rendered,
        "data",
        Dataset.from_dict({"i": [0, 1]}),
        lambda row: answer if row["i"] else "fine",
        shape=RequestShape(defaults, **shape),
        with_indices=False,
        label=None,
    )
    return rendered


def refusal(answer, **shape) -> str:
    with pytest.raises(PromptError) as info:
        render(answer, **shape)
    assert info.value.row == 1
    return str(info.value)


CASES = [
    (
        "typo-max_token",
        {"max_token": 5, "messages": USER},
        "unknown parameter 'max_token' (did you mean 'max_tokens'?): the API refuses it "
        "('max_token: Extra inputs are not permitted'), and the installed anthropic SDK's "
        "request types do not have it",
    ),
    (
        "typo-stop_sequence",
        {"stop_sequence": ["END"], "messages": USER},
        "unknown parameter 'stop_sequence' (did you mean 'stop_sequences'?): the API refuses it "
        "('stop_sequence: Extra inputs are not permitted'), and the installed anthropic SDK's "
        "request types do not have it",
    ),
    (
        "text-block-without-text",
        [{"role": "user", "content": [{"type": "text"}]}],
        "messages[0].content[0] (a 'text' block) has no 'text', which the API requires ('text' "
        "must be a str)",
    ),
    (
        "whitespace-text-block",
        [{"role": "user", "content": [{"type": "text", "text": " \n"}]}],
        "messages[0].content[0] is a text block of whitespace only (the API says: 'messages: "
        "text content blocks must contain non-whitespace text')",
    ),
    (
        "empty-text-block",
        [{"role": "user", "content": [{"type": "text", "text": ""}]}],
        "messages[0].content[0] is a text block with empty text (the API says: 'messages: text "
        "content blocks must be non-empty')",
    ),
    (
        "whitespace-content",
        [{"role": "user", "content": "  \n "}],
        "messages[0] has content of whitespace only (the API says: 'messages: text content "
        "blocks must contain non-whitespace text')",
    ),
    (
        "unknown-block-type",
        [{"role": "user", "content": [{"type": "images", "source": {}}]}],
        f"messages[0].content[0] has type 'images' (did you mean 'image'?), which the installed "
        f"anthropic SDK ({SDK}) does not know; it knows 'text', 'image', 'document'",
    ),
    (
        "image-without-source",
        [{"role": "user", "content": [{"type": "image"}]}],
        "messages[0].content[0] (an 'image' block) has no 'source', which the API requires "
        "('source' must be an object whose 'type' is one of 'base64', 'url', 'file')",
    ),
    (
        "unknown-block-key",
        [{"role": "user", "content": [{"type": "text", "text": "x", "cache": {}}]}],
        "messages[0].content[0] has an unknown key 'cache', which the API refuses ('cache: "
        "Extra inputs are not permitted')",
    ),
    (
        "tool-result-block-inside",
        [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{}]}],
            },
        ],
        "messages[2].content[0].content[0] has no 'type'; it must be one of 'text', 'image'",
    ),
    (
        "max_tokens-above-the-model-limit",
        {"max_tokens": 10**30, "messages": USER},
        "max_tokens 1000000000000000000000000000000 is above the output limit of "
        "claude-haiku-4-5, which the API refuses ('max_tokens: 1000000000000000000000000000000 "
        "> 64000, which is the maximum allowed number of output tokens for claude-haiku-4-5'): "
        "ask for at most 64,000",
    ),
    (
        "max_tokens-above-the-limit-without-the-beta",
        {"model": "claude-sonnet-4-6", "max_tokens": 200_000, "messages": USER},
        "max_tokens 200000 is above the output limit of claude-sonnet-4-6, which the API "
        "refuses ('max_tokens: 200000 > 128000, which is the maximum allowed number of output "
        "tokens for claude-sonnet-4-6'): ask for at most 128,000, or pass "
        f"betas=['{OUTPUT_300K_BETA}'] to dsbatch.map (up to 300,000)",
    ),
    (
        "max_tokens-absurd-for-an-unknown-model",
        {"model": "claude-opus-9", "max_tokens": 10**30, "messages": USER},
        "max_tokens 1000000000000000000000000000000 is above what any model can answer "
        "(dsbatch sends at most 1,000,000 for a model whose limit it does not know, like "
        "'claude-opus-9'): ask for the answer length you need",
    ),
    (
        "max_tokens-0",
        {"max_tokens": 0, "messages": USER},
        "max_tokens is 0 (pre-warming the prompt cache), which a batch does not allow: give a "
        "positive number of tokens",
    ),
    (
        "prefill-trailing-whitespace",
        [USER[0], {"role": "assistant", "content": "The answer is "}],
        "messages[1], the final assistant turn (a prefill), ends with whitespace, which the API "
        "refuses ('final assistant content cannot end with trailing whitespace'): strip it",
    ),
    (
        "prefill-block-trailing-whitespace",
        [USER[0], {"role": "assistant", "content": [{"type": "text", "text": "Sure:\n"}]}],
        "messages[1].content[-1], the final assistant turn (a prefill), ends with whitespace",
    ),
    (
        "budget-not-below-max_tokens",
        {"max_tokens": 1024, "thinking": THINK, "messages": USER},
        "thinking.budget_tokens (1,024) is not below max_tokens (1,024), which the API refuses "
        "('`max_tokens` must be greater than `thinking.budget_tokens`'): thinking counts toward "
        "max_tokens, so raise max_tokens above the budget",
    ),
    (
        "budget-below-1024",
        {"thinking": {"type": "enabled", "budget_tokens": 500}, "messages": USER},
        "thinking.budget_tokens is 500, which the API refuses ('thinking.enabled.budget_tokens: "
        "Input should be greater than or equal to 1024'): give at least 1,024",
    ),
    (
        "thinking-without-budget",
        {"thinking": {"type": "enabled"}, "messages": USER},
        "thinking (an 'enabled' object) has no 'budget_tokens', which the API requires "
        "('budget_tokens' must be an integer)",
    ),
    (
        "tool_choice-missing-tool",
        {"tools": [TOOL], "tool_choice": {"type": "tool", "name": "lookups"}, "messages": USER},
        "tool_choice names the tool 'lookups' (did you mean 'lookup'?), which is not in tools "
        "(they are 'lookup')",
    ),
    (
        "tool_choice-without-tools",
        {"tool_choice": {"type": "any"}, "messages": USER},
        "tool_choice {'type': 'any'} forces a tool call, but the request has no tools",
    ),
    (
        "thinking-with-a-forced-tool",
        {"thinking": THINK, "tools": [TOOL], "tool_choice": {"type": "any"}, "messages": USER},
        "tool_choice {'type': 'any'} forces a tool call while thinking is on (the API says: "
        "'Thinking may not be enabled when tool_choice forces tool use'): use tool_choice "
        "{'type': 'auto'}, or drop thinking",
    ),
    (
        "manual-thinking-on-a-5-model",
        {"model": "claude-opus-5", "thinking": THINK, "messages": USER},
        "claude-opus-5 refuses thinking.type 'enabled' (the API says: 'thinking.type.enabled is "
        "not supported for this model. Use thinking.type.adaptive and output_config.effort'): "
        "ask for {'type': 'adaptive'} and set output_config.effort",
    ),
    (
        "adaptive-thinking-on-haiku-4-5",
        {"thinking": {"type": "adaptive"}, "messages": USER},
        "claude-haiku-4-5 knows only manual thinking: ask for {'type': 'enabled', "
        "'budget_tokens': N} (N at least 1,024 and below max_tokens) instead of 'adaptive'",
    ),
    (
        "forced-tool-on-an-always-thinking-model",
        {
            "model": "claude-opus-5-5",
            "tools": [TOOL],
            "tool_choice": {"type": "tool", "name": "lookup"},
            "messages": USER,
        },
        "claude-opus-5-5 always thinks, and the API refuses a forced tool call with thinking "
        "(the API says: 'Thinking may not be enabled when tool_choice forces tool use'): use "
        "tool_choice {'type': 'auto'}",
    ),
    (
        "temperature-under-2026",
        {"temperature": 0.5, "messages": USER},
        f"'temperature' is rejected by API version 2026-10-21, which this client sends: remove "
        f"it, {VERSION_KEEP}",
    ),
    (
        "temperature-on-a-model-that-rejects-it",
        {"model": "claude-sonnet-5", "top_p": 0.5, "messages": USER},
        "claude-sonnet-5 rejects 'top_p' whatever the API version (the API says: '`top_p` is "
        "deprecated for this model.'): remove it",
    ),
    (
        "stream-true",
        {"stream": True, "messages": USER},
        "'stream' is not allowed in a batch request (a batch never streams): remove it, or give "
        "false",
    ),
    (
        "workspace_id-in-params",
        {"workspace_id": "wrkspc_1", "messages": USER},
        "'workspace_id' is a setting of the whole batch (the anthropic-workspace-id header), not "
        "a request parameter: remove it, and make the client with anthropic.Anthropic("
        "default_headers={'anthropic-workspace-id': ...})",
    ),
    (
        "a-beta-param-without-betas",
        {"context_management": {}, "messages": USER},
        "unknown parameter 'context_management': the API refuses it ('context_management: Extra "
        "inputs are not permitted'), and the installed anthropic SDK's request types do not "
        "have it (its beta request types do: pass the beta's name in betas=[...])",
    ),
    (
        "a-value-of-the-wrong-type",
        {"stop_sequences": "END", "messages": USER},
        "stop_sequences must be a list, not str 'END'",
    ),
    (
        "a-literal-out-of-range",
        {
            "system": [
                {"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "2h"}}
            ],
            "messages": USER,
        },
        "system[0].cache_control.ttl must be one of '5m', '1h', not '2h'",
    ),
    (
        "a-message-key-typo",
        [{"role": "user", "contents": "hi", "content": "hi"}],
        "messages[0] has an unknown key 'contents' (did you mean 'content'?), which the API "
        "refuses ('contents: Extra inputs are not permitted')",
    ),
]


@pytest.mark.parametrize(("answer", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule_refuses_with_the_row_named_and_what_to_do(answer, message):
    text = refusal(answer)
    assert text.startswith("row 1: ")
    assert message in text


def test_thinking_with_structured_output_tool_says_use_native():
    additions = request_params(Label, "tool")

    text = refusal({"thinking": THINK, "messages": USER}, additions=additions)

    assert text == (
        "row 1: structured_output='tool' forces a tool call while thinking is on (the API says: "
        "'Thinking may not be enabled when tool_choice forces tool use'): use "
        "structured_output='native' (the default), which forces no tool, or drop thinking"
    )
    # Native mode forces no tool: the same request goes out.
    native = request_params(Label, "native")
    assert len(render({"thinking": THINK, "messages": USER}, additions=native).bodies) == 2


@pytest.mark.parametrize(
    "answer",
    [
        {"temperature": 0.5, "top_k": 5, "messages": USER},  # API 2023-06-01 still takes them
        {"speed": "fast", "service_tier": "auto", "messages": USER},  # the SDK's own params
        {"thinking": THINK, "max_tokens": 4096, "messages": USER},
        {"tools": [TOOL], "tool_choice": {"type": "tool", "name": "lookup"}, "messages": USER},
        [USER[0], {"role": "assistant", "content": "The answer is"}],
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
            }
        ],
        {"model": "claude-opus-9", "max_tokens": MAX_TOKENS_BOUND, "messages": USER},
        {"model": "some-proxy-model", "max_tokens": 50_000, "messages": USER},
    ],
)
def test_what_the_api_takes_goes_through(answer):
    assert len(render(answer, api_version=API_VERSION_LEGACY).bodies) == 2


def test_the_output_300k_beta_raises_the_limit_where_the_model_supports_it():
    ask = {"model": "claude-sonnet-4-6", "max_tokens": 200_000, "messages": USER}
    assert len(render(ask, betas=(OUTPUT_300K_BETA,)).bodies) == 2
    # Haiku 4.5 does not support it: its limit stays 64,000.
    haiku = {"max_tokens": 100_000, "messages": USER}
    assert "ask for at most 64,000" in refusal(haiku, betas=(OUTPUT_300K_BETA,))


def test_sampling_params_follow_the_api_version_and_the_model():
    legacy = {"temperature": 0.5, "messages": USER}
    assert len(render(legacy, api_version=API_VERSION_LEGACY).bodies) == 2
    rejecting = {"model": "claude-opus-4-7", "temperature": 0.5, "messages": USER}
    assert "claude-opus-4-7 rejects 'temperature' whatever the API version" in refusal(
        rejecting, api_version=API_VERSION_LEGACY
    )
    assert "rejected by API version 2026-10-21" in refusal(legacy, api_version=API_VERSION_2026)


def test_the_params_come_from_the_installed_sdks_request_types():
    from anthropic.types.message_create_params import MessageCreateParamsNonStreaming

    sdk = set(MessageCreateParamsNonStreaming.__annotations__)
    headers = batch_header_params(False)
    assert set(request_fields(False)) == sdk - headers
    assert {"max_tokens", "messages", "model", "thinking", "tools"} <= set(request_fields(False))
    # With betas, the beta types (which know more params) are the reference.
    assert "context_management" in request_fields(True)
    assert "context_management" not in request_fields(False)
    ask = {"context_management": {"edits": []}, "messages": USER}
    assert len(render(ask, betas=("context-management-2025-06-27",)).bodies) == 2


def test_the_rule_table_says_where_each_rule_applies():
    names = [rule.name for rule in RULES]
    assert len(names) == len(set(names))
    assert all(rule.applies for rule in RULES)
    assert all((rule.check is None) != (rule.block is None) for rule in RULES)
    by_name = {rule.name: rule for rule in RULES}
    assert by_name["sampling-version"].since == API_VERSION_2026
    assert by_name["thinking-forced-tool"].api_says == (
        "Thinking may not be enabled when tool_choice forces tool use"
    )


# --- PIL images -------------------------------------------------------------------------------


def test_a_pil_image_anywhere_but_a_block_is_refused_with_the_line_to_write():
    image = Image.new("RGB", (4, 4))
    hint = (
        "put the image in a message's content list as {'type': 'image', 'source': "
        "row['image']} (or as the image itself): dsbatch sends it as a base64 image block"
    )
    in_text = [{"role": "user", "content": [{"type": "text", "text": image}]}]
    assert refusal(in_text) == f"row 1: messages[0].content[0] holds a PIL image: {hint}"
    as_content = [{"role": "user", "content": image}]
    assert refusal(as_content) == f"row 1: messages[0] content is a PIL image: {hint}"
    in_data = [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": image},
                }
            ],
        }
    ]
    assert hint in refusal(in_data)


# --- betas ------------------------------------------------------------------------------------


def test_betas_in_another_order_or_repeated_give_the_same_ids_and_header(emu, tmp_path):
    ds = Dataset.from_dict({"text": ["a", "b"]})
    beta = "context-management-2025-06-27"

    first = run(ds, emu, betas=[OUTPUT_300K_BETA, beta, beta], cache_dir=tmp_path / "one")
    first_header = emu.last_create_headers["anthropic-beta"]
    second = run(ds, emu, betas=[beta, OUTPUT_300K_BETA], cache_dir=tmp_path / "two")

    assert first_header == emu.last_create_headers["anthropic-beta"]
    assert first_header == f"{beta},{OUTPUT_300K_BETA}"
    ids = [s["custom_id"] for s in first["dsbatch"]]
    assert ids == [s["custom_id"] for s in second["dsbatch"]]
    assert len(emu.batches) == 2 and len(set(ids)) == 2
    plain = run(ds, emu, cache_dir=tmp_path / "three")
    assert not set(ids) & {s["custom_id"] for s in plain["dsbatch"]}


@pytest.mark.parametrize("betas", [OUTPUT_300K_BETA, [OUTPUT_300K_BETA, ""], [None]])
def test_betas_must_be_a_list_of_names(emu, betas):
    with pytest.raises(TypeError, match="betas must be a list of beta names"):
        run(Dataset.from_dict({"text": ["a"]}), emu, betas=betas)
    assert sum(emu.calls.values()) == 0


def test_the_docs_list_every_rule_in_order():
    from pathlib import Path

    docs = (Path(__file__).parent.parent / "docs" / "requests.md").read_text()
    listed = [line.split("`")[1] for line in docs.splitlines() if line.startswith("| `")]
    assert [name for name in listed if name in {r.name for r in RULES}] == [r.name for r in RULES]
