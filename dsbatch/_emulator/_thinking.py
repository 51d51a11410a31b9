"""Extended thinking: the reasoning an answer starts with when a request thinks.

A request thinks when its ``thinking.type`` is "enabled" or "adaptive", and always on the
models that always think (``dsbatch._models``: ``always_thinking``). Its answer then starts with
a ``thinking`` block: deterministic reasoning text derived from the params and an opaque
``signature``. The reasoning tokens are billed as output and count toward ``max_tokens``
(with "enabled", the reasoning stays within ``budget_tokens``). On the models whose thinking is
omitted by default (``thinking_omitted_by_default``), and whenever ``thinking.display`` is
"omitted", the block's text is "" unless ``display`` is "summarized"; the tokens are billed
all the same. The ``redacted_thinking`` fault turns the block into
``{"type": "redacted_thinking", "data": ...}``.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from dsbatch._emulator._params import facts_of, thinking_type

__all__ = ["Thinking", "thinking_block", "thinking_for"]

_STEPS = [
    *("what is asked", "the key facts", "the likely intent", "a short answer"),
    *("the main point", "what to leave out", "the clearest wording", "a useful example"),
]


@dataclass(frozen=True)
class Thinking:
    """The reasoning of one answer: ``raw`` is what the model thought (and is billed for),
    ``shown`` what its block carries ("" when omitted)."""

    raw: str
    shown: str
    signature: str

    @property
    def tokens(self) -> int:
        return max(1, (len(self.raw) + 3) // 4)


def thinking_for(params: dict[str, Any], seed: int, topic: str) -> Thinking | None:
    """The reasoning an answer to ``params`` starts with, or None when the request does not
    think. ``topic`` is the start of the user's last message; ``seed`` varies the wording."""
    kind = thinking_type(params)
    if kind is None:
        return None
    steps = [_STEPS[(seed >> (3 * k)) % len(_STEPS)] for k in range(3)]
    raw = (
        f"The user asks about: {topic}\nI consider {steps[0]}, then {steps[1]}, "
        f"and settle on {steps[2]} before answering."
    )
    config = params.get("thinking")
    config = config if isinstance(config, dict) else {}
    budget = config.get("budget_tokens")
    if kind == "enabled" and isinstance(budget, int) and budget > 0:
        raw = raw[: budget * 4]
    display = config.get("display")
    facts = facts_of(params)
    omitted = display == "omitted" or (
        display != "summarized" and facts is not None and facts.thinking_omitted_by_default
    )
    digest = hashlib.blake2b(f"{seed}\x1f{raw}".encode(), digest_size=48).digest()
    signature = base64.b64encode(digest).decode("ascii")
    return Thinking(raw=raw, shown="" if omitted else raw, signature=signature)


def thinking_block(thinking: Thinking, *, redacted: bool, max_chars: int | None) -> dict[str, Any]:
    """The content block; ``max_chars`` cuts the text when ``max_tokens`` ends the reasoning."""
    if redacted:
        data = base64.b64encode(f"redacted:{thinking.signature}".encode()).decode("ascii")
        return {"type": "redacted_thinking", "data": data}
    shown = thinking.shown if max_chars is None else thinking.shown[:max_chars]
    return {"type": "thinking", "thinking": shown, "signature": thinking.signature}
