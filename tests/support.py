"""What the end-to-end tests of dsbatch.map share."""

from __future__ import annotations

import dsbatch

MODEL = "claude-haiku-4-5"


def text_of(content):
    """The text of a message's content, a string or a list of blocks."""
    if isinstance(content, str):
        return content
    return "|".join(block["text"] for block in content if block.get("type") == "text")


def echo(custom_id, params):
    """Answer with the prompt itself, so each row's answer proves which request it came from."""
    return "echo: " + text_of(params["messages"][-1]["content"])


def prompt(row):
    return row["text"]


def run(ds, emu, fn=prompt, **kwargs):
    """dsbatch.map against ``emu``, polling without waiting and without a progress bar."""
    kwargs.setdefault("poll_interval", 0)
    kwargs.setdefault("progress", False)
    return dsbatch.map(ds, fn, model=MODEL, max_tokens=256, client=emu.client(), **kwargs)
