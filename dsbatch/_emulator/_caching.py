"""Input tokens and prompt caching, modelled: the one counting rule behind every usage figure.

Counting: a request's input is read as blocks in the API's order: each tool, the system prompt
(a string is one block, else each text block), then each message's content (a string is one
block, else each content block). A block counts ``ceil(characters / 4)`` tokens of its text:
the text of a text block or string, else the canonical JSON of the block (a tool, an image, a
tool result...) without its ``cache_control``. A request's input tokens are the sum; that sum is
what ``count_tokens`` answers and what ``input_tokens + cache_creation_input_tokens +
cache_read_input_tokens`` adds up to in the usage of its answer.

Caching: a ``cache_control`` breakpoint (on a tool, a system block or a message content block;
``ttl`` "5m" by default or "1h") marks the prefix up to and including its block; a top-level
``cache_control`` (automatic caching) marks the prefix up to the last block. A prefix shorter
than the model's minimum cacheable length (``dsbatch._models``, ``minimum_cacheable``) is not
cached, without error. For each request, in the order requests are processed:

- read: the longest prefix already cached, looked up at each breakpoint and at the 20 blocks
  before it (as the API looks back), counts as ``cache_read_input_tokens``; reading it
  refreshes its TTL;
- write: every breakpoint past it that is long enough writes its prefix, the tokens beyond
  what was read counting as ``cache_creation_input_tokens``, split by the breakpoint's TTL into
  ``cache_creation.ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``;
- ``input_tokens`` counts the rest.

Entries are kept per workspace and model, and live on the emulator's clock: written at the
moment their request was processed, alive for their TTL from their last use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dsbatch._emulator._ids import canonical_json, stable_hash
from dsbatch._models import DEFAULT_CACHE_MIN_TOKENS, model_facts

__all__ = ["CacheUse", "PromptCache", "input_blocks", "input_tokens"]

_LOOKBACK = 20
_TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
_PRUNE_AT = 200_000  # entries kept before the expired ones are dropped


@dataclass(frozen=True)
class Block:
    """One block of a request's input: its tokens, the digest of the prefix ending with it,
    and its ``cache_control`` (None when it carries none)."""

    tokens: int
    digest: int
    control: Any = None


@dataclass(frozen=True)
class CacheUse:
    """What one request read from and wrote to the cache, in tokens."""

    read: int = 0
    write_5m: int = 0
    write_1h: int = 0

    @property
    def creation(self) -> int:
        return self.write_5m + self.write_1h


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _without_control(block: Any) -> Any:
    if isinstance(block, dict) and "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _text_of(block: Any) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, dict) and block.get("type") == "text" and isinstance(block["text"], str):
        return block["text"]
    return canonical_json(_without_control(block))


def input_blocks(params: dict[str, Any]) -> list[Block]:
    """The request's input as blocks, in the API's order (tools, system, messages)."""
    parts: list[tuple[str, Any]] = [("tool", tool) for tool in params.get("tools") or ()]
    system = params.get("system")
    if isinstance(system, str):
        parts.append(("system", system))
    elif isinstance(system, list):
        parts.extend(("system", block) for block in system)
    for index, message in enumerate(params["messages"]):
        content = message["content"]
        where = f"{message['role']}:{index}"  # a block's place: its message and role
        if isinstance(content, str):
            parts.append((where, content))
        else:
            parts.extend((where, block) for block in content)
    blocks = []
    digest = stable_hash("prefix", params.get("model"))
    for where, block in parts:
        text = _text_of(block)
        digest = stable_hash(digest, where, canonical_json(_without_control(block)))
        control = block.get("cache_control") if isinstance(block, dict) else None
        blocks.append(Block(_tokens(text), digest, control))
    return blocks


def input_tokens(params: dict[str, Any]) -> int:
    """Every input token of the request, cached or not (what ``count_tokens`` answers)."""
    return sum(block.tokens for block in input_blocks(params))


@dataclass
class _Entry:
    created: float
    expires: float
    ttl: float


@dataclass
class PromptCache:
    """The cached prefixes of every workspace, keyed by (workspace, digest of the prefix)."""

    entries: dict[tuple[str, int], _Entry] = field(default_factory=dict)

    def use(self, params: dict[str, Any], workspace: str, now: float) -> CacheUse:
        """Process one request's breakpoints at emulator time ``now``: what it reads and
        writes (see the module's docstring)."""
        blocks = input_blocks(params)
        points = _breakpoints(params, blocks)
        if not points:
            return CacheUse()
        prefix = []
        total = 0
        for block in blocks:
            total += block.tokens
            prefix.append(total)
        read_at = self._longest_alive(blocks, points, workspace, now)
        read = prefix[read_at] if read_at >= 0 else 0
        facts = model_facts(str(params["model"]))
        minimum = facts.minimum_cacheable if facts is not None else DEFAULT_CACHE_MIN_TOKENS
        written = {"5m": 0, "1h": 0}
        boundary = read
        for index, ttl in points:
            if index <= read_at or prefix[index] < minimum:
                continue
            written[ttl] += prefix[index] - boundary
            boundary = prefix[index]
            seconds = _TTL_SECONDS[ttl]
            self.entries[workspace, blocks[index].digest] = _Entry(now, now + seconds, seconds)
        if len(self.entries) > _PRUNE_AT:
            self.entries = {k: e for k, e in self.entries.items() if e.expires >= now}
        return CacheUse(read=read, write_5m=written["5m"], write_1h=written["1h"])

    def _longest_alive(
        self, blocks: list[Block], points: list[tuple[int, str]], workspace: str, now: float
    ) -> int:
        """The index of the block ending the longest cached prefix found (-1: none); its TTL
        starts again."""
        found = -1
        for index, _ in points:
            for at in range(index, max(-1, index - _LOOKBACK), -1):
                entry = self.entries.get((workspace, blocks[at].digest))
                if entry is not None and entry.created <= now <= entry.expires:
                    found = max(found, at)
                    break
        if found >= 0:
            entry = self.entries[workspace, blocks[found].digest]
            entry.expires = max(entry.expires, now + entry.ttl)
        return found


def _breakpoints(params: dict[str, Any], blocks: list[Block]) -> list[tuple[int, str]]:
    """(block index, ttl) of every breakpoint, in order; the top-level ``cache_control``
    marks the last block."""
    points: dict[int, str] = {}
    for index, block in enumerate(blocks):
        if isinstance(block.control, dict):
            points[index] = block.control.get("ttl", "5m")
    automatic = params.get("cache_control")
    if isinstance(automatic, dict) and blocks:
        points.setdefault(len(blocks) - 1, automatic.get("ttl", "5m"))
    return sorted(points.items())
