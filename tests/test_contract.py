"""The library and the emulator agree on what a bad request is: one table of bad requests, each
refused by dsbatch before any call (the row named), and by the emulator as the real API would
(a 400 at create, or an errored result once the batch ends)."""

from __future__ import annotations

import json

import anthropic
import pytest
from datasets import Dataset

from dsbatch import PromptError
from dsbatch._limits import API_VERSION_2026
from dsbatch._render import Rendered, RequestShape, render_split
from dsbatch.testing import Emulator

BASE = {"model": "claude-haiku-4-5", "max_tokens": 64}
USER = [{"role": "user", "content": "hello"}]
THINK = {"type": "enabled", "budget_tokens": 1024}
TOOL = {"name": "lookup", "input_schema": {"type": "object", "properties": {}}}


def _blocks(*blocks):
    return [{"role": "user", "content": list(blocks)}]


BAD_REQUESTS = [
    ("no model", {"max_tokens": 64, "messages": USER}),
    ("max_tokens 0", {**BASE, "max_tokens": 0, "messages": USER}),
    ("max_tokens as text", {**BASE, "max_tokens": "64", "messages": USER}),
    ("no messages", {**BASE, "messages": []}),
    ("stream", {**BASE, "messages": USER, "stream": True}),
    ("a system role", {**BASE, "messages": [{"role": "system", "content": "x"}]}),
    ("an unknown role", {**BASE, "messages": [{"role": "bot", "content": "x"}]}),
    ("empty content", {**BASE, "messages": [{"role": "user", "content": ""}]}),
    ("empty block list", {**BASE, "messages": [{"role": "user", "content": []}]}),
    ("a block that is a string", {**BASE, "messages": [{"role": "user", "content": ["hi"]}]}),
    ("a block with no type", {**BASE, "messages": [{"role": "user", "content": [{"text": "x"}]}]}),
    ("system as a number", {**BASE, "messages": USER, "system": 3}),
    ("system of non-text blocks", {**BASE, "messages": USER, "system": [{"type": "image"}]}),
    ("betas in params", {**BASE, "messages": USER, "betas": ["output-300k-2026-03-24"]}),
    ("temperature", {**BASE, "messages": USER, "temperature": 0.5}),
    ("top_p", {**BASE, "messages": USER, "top_p": 0.9}),
    ("top_k", {**BASE, "messages": USER, "top_k": 5}),
    (
        "a document in an assistant message",
        {
            **BASE,
            "messages": [
                *USER,
                {
                    "role": "assistant",
                    "content": [
                        {"type": "document", "source": {"type": "text", "data": "d"}},
                    ],
                },
                {"role": "user", "content": "and?"},
            ],
        },
    ),
    (
        "citations on a user text block",
        {
            **BASE,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "x", "citations": [{"type": "x"}]}],
                }
            ],
        },
    ),
    # Issue 11: what the API refuses at processing time, refused up front too.
    ("a misspelled max_tokens", {**BASE, "max_token": 5, "messages": USER}),
    ("a misspelled stop_sequences", {**BASE, "stop_sequence": ["END"], "messages": USER}),
    ("workspace_id in params", {**BASE, "messages": USER, "workspace_id": "wrkspc_1"}),
    ("a text block without text", {**BASE, "messages": _blocks({"type": "text"})}),
    ("an empty text block", {**BASE, "messages": _blocks({"type": "text", "text": ""})}),
    ("a whitespace text block", {**BASE, "messages": _blocks({"type": "text", "text": " \n"})}),
    ("whitespace content", {**BASE, "messages": [{"role": "user", "content": "  "}]}),
    ("an unknown block type", {**BASE, "messages": _blocks({"type": "images", "source": {}})}),
    ("an image without source", {**BASE, "messages": _blocks({"type": "image"})}),
    ("max_tokens of 10**30", {**BASE, "max_tokens": 10**30, "messages": USER}),
    (
        "max_tokens above the model's limit",
        {**BASE, "model": "claude-sonnet-4-6", "max_tokens": 200_000, "messages": USER},
    ),
    (
        "a prefill ending in whitespace",
        {**BASE, "messages": [*USER, {"role": "assistant", "content": "The answer is "}]},
    ),
    (
        "a thinking budget not below max_tokens",
        {**BASE, "max_tokens": 1024, "thinking": THINK, "messages": USER},
    ),
    (
        "a thinking budget below 1024",
        {**BASE, "thinking": {"type": "enabled", "budget_tokens": 500}, "messages": USER},
    ),
    (
        "thinking with a forced tool",
        {
            **BASE,
            "max_tokens": 4096,
            "thinking": THINK,
            "tools": [TOOL],
            "tool_choice": {"type": "tool", "name": "lookup"},
            "messages": USER,
        },
    ),
    (
        "a forced tool on an always-thinking model",
        {
            **BASE,
            "model": "claude-opus-5-5",
            "tools": [TOOL],
            "tool_choice": {"type": "any"},
            "messages": USER,
        },
    ),
    (
        "manual thinking on a model that refuses it",
        {**BASE, "model": "claude-opus-5", "max_tokens": 4096, "thinking": THINK, "messages": USER},
    ),
    (
        "adaptive thinking on a model that only knows manual",
        {**BASE, "thinking": {"type": "adaptive"}, "messages": USER},
    ),
    (
        "a tool_choice naming a missing tool",
        {
            **BASE,
            "tools": [TOOL],
            "tool_choice": {"type": "tool", "name": "other"},
            "messages": USER,
        },
    ),
]


@pytest.mark.parametrize(("name", "params"), BAD_REQUESTS, ids=[n for n, _ in BAD_REQUESTS])
def test_dsbatch_refuses_it_before_any_call(name, params):
    rendered = Rendered()
    with pytest.raises(PromptError, match="^row 1: "):
        render_split(
            rendered,
            "data",
            Dataset.from_dict({"i": [0, 1]}),
            lambda row: {**BASE, "messages": USER} if row["i"] == 0 else params,
            shape=RequestShape({}, api_version=API_VERSION_2026),
            with_indices=False,
            label=None,
        )


@pytest.mark.parametrize(("name", "params"), BAD_REQUESTS, ids=[n for n, _ in BAD_REQUESTS])
def test_the_emulator_refuses_it_as_the_api_does(name, params):
    with Emulator(delay=0) as emu:
        client = emu.client(max_retries=0)  # it sends anthropic-version 2026-10-21
        body = {"requests": [{"custom_id": "bad", "params": params}]}
        try:
            batch = client.post(
                "/v1/messages/batches",
                cast_to=anthropic.types.messages.MessageBatch,
                content=json.dumps(body).encode(),
                options={"headers": {"Content-Type": "application/json"}},
            )
        except anthropic.BadRequestError:
            return  # refused at create, as the API checks some fields synchronously
        (line,) = emu.results_of(batch.id)
        result = line["result"]
        assert result["type"] == "errored", result
        assert result["error"]["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("extra", [{}, {"stream": False}], ids=["plain", "stream false"])
def test_a_good_request_passes_both(extra):
    with Emulator(delay=0) as emu:
        batch = emu.client().messages.batches.create(
            requests=[{"custom_id": "good", "params": {**BASE, **extra, "messages": USER}}]
        )
        assert emu.results_of(batch.id)[0]["result"]["type"] == "succeeded"
    rendered = Rendered()
    render_split(
        rendered,
        "data",
        Dataset.from_dict({"i": [0]}),
        lambda row: {**extra, "messages": USER},
        shape=RequestShape(BASE),
        with_indices=False,
        label=None,
    )
    assert len(rendered.bodies) == 1
