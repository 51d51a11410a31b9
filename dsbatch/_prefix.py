"""Prompt caching of the prefixes a job's requests share (``prompt_caching="auto"``).

Most jobs send the same long system prompt, few-shot turns or tool definitions with every row.
With a ``cache_control`` breakpoint (1-hour TTL) at the end of that shared prefix, the first
request writes it to the prompt cache (2x the input price) and every later one reads it (0.1x).
This pass finds those prefixes and places the breakpoints after rendering, before the custom_ids
and the job fingerprint are made from the bytes: both follow the exact bytes sent.

A request's input is read as the API reads it, in blocks: each tool, the system prompt (a str is
one block, a list one block each), then each message's content (likewise). A prefix is a run of
whole blocks; two requests share one when the model and the blocks are the same (same place,
same JSON) and, from the first message on, ``tool_choice``, ``thinking`` and whether the prompt
holds images are the same too (changing those invalidates the message part of the cache).

Tokens are estimated as dsbatch's emulator counts them: ``ceil(characters / 4)`` per block, of
the text of a text block, else of the block's JSON, where images, documents and base64 data count
nothing (their token cost follows pixels and pages, not bytes). English runs 3.5 to 4 characters
per token, code and most other languages fewer, so real counts are at least the estimate: a
prefix estimated long enough to be cached is.

A breakpoint goes at the end of every prefix that

- at least ``MIN_SHARING`` (3) distinct requests share: with a 1-hour TTL a write costs 2x and a
  read 0.1x, so 2 requests sharing a prefix would pay 2.1x for it instead of 2x; from 3 on
  caching pays;
- is at least the model's minimum cacheable length (``dsbatch._models``; a model the table does
  not know: the largest known minimum), shorter prefixes are not cached by the API anyway;
- ends where the requests sharing it part (its last block that they all share, and that can
  carry a breakpoint: a thinking block cannot).

A request gets at most ``MAX_BREAKPOINTS`` (4, the API's limit): its deepest ones. A str system
prompt or message content that carries one becomes a one-block list. A request that sets
``cache_control`` anywhere itself (on a block, or the top-level automatic caching) is left
exactly as it is. The API's automatic caching is never used: in a batch it would cache up to each
row's own last block, a write per request and no reads.

The deepest breakpoint of a request names its prefix group: one request of each group is sent
first, in a batch of its own, and the rest once it has ended (``_priming``).

What it costs per row: the rows a text prompt makes (a str, the common case) come from one text
template, which render marks as it makes it (``TemplateMarks``): those requests are only
compared here, never parsed, and rendered again only when the plan takes the breakpoint back
(fewer than 3 requests). Other requests too short for any model are skipped unread; the rest
are parsed once to be counted, and again when they get a breakpoint.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any, NamedTuple

import xxhash

from dsbatch._models import DEFAULT_CACHE_MIN_TOKENS, model_facts
from dsbatch._render import CUSTOM_ID_PREFIX, Rendered, canonical_json, custom_id_for

__all__ = [
    "CACHE_CONTROL",
    "MAX_BREAKPOINTS",
    "MIN_SHARING",
    "SMALLEST_MINIMUM",
    "PrefixCaching",
    "TemplateMarks",
    "estimate_tokens",
    "plan_prefix_caching",
]

CACHE_CONTROL = {"type": "ephemeral", "ttl": "1h"}
MIN_SHARING = 3
MAX_BREAKPOINTS = 4

# How a request that sets cache_control itself is recognised without parsing it: in canonical
# JSON a key is `"cache_control":`, while the same words inside a string are escaped (\").
_OWN = b'"cache_control":'
_IMAGES = b'"type":"image"'
_UNMARKABLE = frozenset({"thinking", "redacted_thinking"})
_NO_TOKENS = frozenset({"image", "document"})
_BASE_ID = len(CUSTOM_ID_PREFIX) + 32  # what follows is a suffix of render's (a sample's)
# The smallest minimum cacheable length of any model (Sonnet 4.5's). A request's estimated
# tokens are at most a quarter of its body's bytes (a block's JSON costs at least 4 bytes more
# than its text), so a shorter body holds no prefix worth a breakpoint and is never parsed.
SMALLEST_MINIMUM = 1024
_SHORT = 4 * SMALLEST_MINIMUM
_HOLE = "\x00dsbatch-prefix-hole\x00"
_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode

# Where a block sits: ("tools", i), ("system", i | None), ("messages", m, i | None); None is a
# str system prompt or message content (one block).
Where = tuple[Any, ...]


class _Block(NamedTuple):
    """One block of a request's input: the prefix ending with it (``node``), the estimated
    tokens of that prefix, and where the block sits."""

    node: int
    tokens: int
    where: Where
    markable: bool


def estimate_tokens(block: Any) -> int:
    """The estimated tokens of one block (see the module's docstring)."""
    if isinstance(block, str):
        return (len(block) + 3) // 4
    if not isinstance(block, dict):
        return 0
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return (len(block["text"]) + 3) // 4
    if kind in _NO_TOKENS:
        return 0
    text = _JSON(block)
    chars = len(text) - (_data_chars(block) if '"data":"' in text else 0)
    return (max(chars, 0) + 3) // 4


def _data_chars(value: Any) -> int:
    """Characters of base64 ``data`` fields anywhere in a block (images inside tool results)."""
    if isinstance(value, dict):
        return sum(
            len(v) if k == "data" and isinstance(v, str) else _data_chars(v)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return sum(_data_chars(v) for v in value)
    return 0


def _blocks(params: Mapping[str, Any], images: bool) -> list[_Block]:
    """The request's input as blocks, in the API's order, each with the prefix it ends."""
    node = xxhash.xxh3_64_intdigest(b"model\x00" + str(params.get("model")).encode())
    tokens = 0
    out: list[_Block] = []

    def add(tag: bytes, where: Where, block: Any, markable: bool) -> None:
        nonlocal node, tokens
        h = xxhash.xxh3_64(seed=node)
        h.update(tag)
        if block.__class__ is str:
            h.update(b"\x00\x01")
            h.update(block.encode("utf-8", "surrogatepass"))
            tokens += (len(block) + 3) // 4
        elif block.__class__ is dict and len(block) == 2 and block.get("type") == "text":
            # A plain text block (the common one): its text, without encoding it as JSON.
            h.update(b"\x00\x03")
            h.update(str(block["text"]).encode("utf-8", "surrogatepass"))
            tokens += estimate_tokens(block)
        else:
            h.update(b"\x00\x02")
            h.update(_JSON(block).encode("utf-8", "surrogatepass"))
            tokens += estimate_tokens(block)
        node = h.intdigest()
        out.append(_Block(node, tokens, where, markable))

    tools = params.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        add(b"tool", ("tools", i), tool, isinstance(tool, dict))
    system = params.get("system")
    if isinstance(system, str):
        add(b"system", ("system", None), system, bool(system.strip()))
    elif isinstance(system, list):
        for i, block in enumerate(system):
            add(b"system", ("system", i), block, _markable(block))
    messages = params.get("messages")
    if not isinstance(messages, list):
        return out
    context = {key: params[key] for key in ("tool_choice", "thinking") if key in params}
    node = xxhash.xxh3_64_intdigest(_JSON([context, images]).encode(), node)
    for m, message in enumerate(messages):
        if not isinstance(message, dict):
            break
        tag = f"{message.get('role')}:{m}".encode()
        content = message.get("content")
        if isinstance(content, str):
            add(tag, ("messages", m, None), content, bool(content.strip()))
        elif isinstance(content, list):
            for i, block in enumerate(content):
                add(tag, ("messages", m, i), block, _markable(block))
    return out


def _markable(block: Any) -> bool:
    if not isinstance(block, dict) or block.get("type") in _UNMARKABLE:
        return False
    text = block.get("text")
    return not (block.get("type") == "text" and not (isinstance(text, str) and text.strip()))


@functools.lru_cache(maxsize=64)
def _minimum(model: str | None) -> int:
    facts = model_facts(model) if model is not None else None
    return facts.minimum_cacheable if facts is not None else DEFAULT_CACHE_MIN_TOKENS


# -- placing breakpoints ------------------------------------------------------------------------


def _text_block(text: str, control: Mapping[str, str] | None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if control is not None:
        block["cache_control"] = dict(control)
    return block


def _place(params: dict[str, Any], where: Where, control: Mapping[str, str] | None) -> None:
    """Put a breakpoint (``control``) on one block of ``params`` (copying what it changes); a
    str system prompt or content becomes a one-block list even without one."""

    def marked(block: Any) -> Any:
        return block if control is None else {**block, "cache_control": dict(control)}

    kind, index = where[0], where[1]
    if kind == "tools":
        tools = params["tools"] = list(params["tools"])
        tools[index] = marked(tools[index])
    elif kind == "system":
        if index is None:
            params["system"] = [_text_block(params["system"], control)]
        else:
            system = params["system"] = list(params["system"])
            system[index] = marked(system[index])
    else:
        messages = params["messages"] = list(params["messages"])
        message = messages[index] = dict(messages[index])
        if where[2] is None:
            message["content"] = [_text_block(message["content"], control)]
        else:
            content = message["content"] = list(message["content"])
            content[where[2]] = marked(content[where[2]])


def _kept(points: Sequence[_Block]) -> set[Where]:
    """Where the breakpoints go of ``points`` (shallowest first): the deepest ``MAX_BREAKPOINTS``
    (the API takes no more; a deeper one also caches what the shallower ones would)."""
    return {p.where for p in points[-MAX_BREAKPOINTS:]}


def _with_breakpoints(params: dict[str, Any], points: Sequence[_Block]) -> dict[str, Any]:
    """``params`` with a breakpoint on the deepest ``MAX_BREAKPOINTS`` of ``points``."""
    out = dict(params)
    kept = _kept(points)
    for point in points:
        _place(out, point.where, CACHE_CONTROL if point.where in kept else None)
    return out


# -- placing breakpoints in a body's own bytes -----------------------------------------------------
# Encoding a request again costs far more than reading it (a long prompt is escaped character
# by character): a breakpoint is spliced into the canonical JSON text instead, around the
# block's own bytes, which canonical JSON (sorted keys, no spaces) makes exact.

_CONTROL = _JSON(CACHE_CONTROL)
_VALUE = json.JSONDecoder().raw_decode
_LISTED = frozenset({"tools", "system"})


def _locate(text: str) -> tuple[dict[str, Any], dict[Where, tuple[int, int]]]:
    """The params of a request's canonical JSON text, and where each block's JSON is in it."""
    params: dict[str, Any] = {}
    spans: dict[Where, tuple[int, int]] = {}
    i = 1
    while text[i] != "}":
        key, i = scanstring(text, i + 1)
        i += 1  # the colon
        start = i
        if key == "messages" and text[i] == "[":
            params[key], i = _messages(text, i, spans)
        else:
            params[key], i = _VALUE(text, i)
            if key in _LISTED and isinstance(params[key], list):
                _elements(text, start, (key,), spans)
            elif key == "system":
                spans["system", None] = (start, i)
        if text[i] == ",":
            i += 1
    return params, spans


def _elements(text: str, i: int, where: Where, spans: dict[Where, tuple[int, int]]) -> int:
    """Note the span of each element of the array at ``i``; returns where the array ends."""
    i += 1
    index = 0
    while text[i] != "]":
        _, end = _VALUE(text, i)
        spans[where + (index,)] = (i, end)
        index += 1
        i = end + 1 if text[end] == "," else end
    return i + 1


def _messages(text: str, i: int, spans: dict[Where, tuple[int, int]]) -> tuple[list[Any], int]:
    messages: list[Any] = []
    i += 1
    while text[i] != "]":
        message: dict[str, Any] = {}
        i += 1
        while text[i] != "}":
            key, i = scanstring(text, i + 1)
            i += 1
            start = i
            message[key], i = _VALUE(text, i)
            if key == "content":
                m = len(messages)
                if isinstance(message[key], list):
                    _elements(text, start, ("messages", m), spans)
                else:
                    spans["messages", m, None] = (start, i)
            if text[i] == ",":
                i += 1
        messages.append(message)
        i += 1  # the closing brace
        if text[i] == ",":
            i += 1
    return messages, i + 1


def _spliced(text: str, spans: Mapping[Where, tuple[int, int]], points: Sequence[_Block]) -> str:
    """``text`` with breakpoints on the deepest ``MAX_BREAKPOINTS`` of ``points`` (and every
    str among them made a one-block list): ``canonical_json(_with_breakpoints(...))`` without
    encoding the request again."""
    kept = _kept(points)
    out = text
    for point in sorted(points, key=lambda p: spans[p.where][0], reverse=True):
        start, end = spans[point.where]
        value = out[start:end]
        control = f'"cache_control":{_CONTROL},' if point.where in kept else ""
        if value[0] == '"':  # a str: a one-block list
            value = f'[{{{control}"text":{value},"type":"text"}}]'
        elif control:
            first, _ = scanstring(value, 2)
            if first > "cache_control":  # its first key sorts after: the new key goes first
                value = "{" + control + value[1:]
            else:
                value = _JSON({**_VALUE(value)[0], "cache_control": CACHE_CONTROL})
        out = out[:start] + value + out[end:]
    return out


def _parts(params: Mapping[str, Any]) -> tuple[bytes, bytes] | None:
    """The canonical JSON of ``params`` around its messages (as a text template holds it);
    None when a param holds the placeholder text itself."""
    hole = _JSON(_HOLE).encode()
    text = canonical_json({**params, "messages": _HOLE})
    if text.count(hole) != 1:
        return None
    head, tail = text.split(hole)
    return head, tail


class TemplateMarks:
    """Marks what every text request of a job shares as render makes the job's text template
    (``RequestShape.mark``), so that those rows are rendered with their breakpoint at no cost
    per row: the tools and system prompt end in one, when they are long enough. The plan
    confirms it (3 requests at least...) or has ``apply`` render those rows again."""

    def __init__(self) -> None:
        # canonical JSON of a marked skeleton (messages aside) -> the skeleton before marking
        self.made: dict[bytes, dict[str, Any]] = {}

    def __call__(self, params: dict[str, Any]) -> dict[str, Any]:
        skeleton = {k: v for k, v in params.items() if k != "messages"}
        if _OWN in canonical_json(skeleton):
            return params
        points = [b for b in _blocks(skeleton, images=False) if b.markable]
        model = params.get("model")
        if not points or points[-1].tokens < _minimum(model if isinstance(model, str) else None):
            return params
        marked = _with_breakpoints(params, points[-1:])
        self.made[canonical_json({k: v for k, v in marked.items() if k != "messages"})] = skeleton
        return marked


@dataclass
class _Template:
    """Requests made from one text template (``_render``): the same bytes around their one
    message, so the shared part is read once and each request is only compared, never parsed."""

    head: bytes  # as rendered (breakpoints of ``TemplateMarks`` included)
    tail: bytes
    blocks: list[_Block]  # the tools and system prompt, before any breakpoint of ours
    skeleton: dict[str, Any]  # the params before any breakpoint of ours, messages aside
    requests: int = 0
    target: tuple[bytes, bytes] | None = None  # head and tail as the plan wants them
    group: int | None = None  # the node of its deepest breakpoint

    def middle(self, body: bytes) -> bytes | None:
        """The messages of ``body`` when it is made from this template."""
        if len(body) > len(self.head) + len(self.tail) and (
            body.startswith(self.head) and body.endswith(self.tail)
        ):
            return body[len(self.head) : len(body) - len(self.tail)]
        return None

    def place(self, points: Sequence[_Block]) -> None:
        """Aim at the breakpoints on ``points`` (none: the rows as the prompt made them)."""
        parts = _parts(_with_breakpoints(self.skeleton, points))
        if parts is not None:  # else a param holds the placeholder text: left as rendered
            self.target, self.group = parts, points[-1].node if points else None


def _templates(rendered: Rendered, marks: TemplateMarks | None) -> list[_Template]:
    out: dict[tuple[bytes, bytes], _Template] = {}
    for head, tail in rendered.templates:
        if (head, tail) in out:
            continue
        skeleton = json.loads(head + b"null" + tail)
        del skeleton["messages"]
        skeleton = (marks.made if marks else {}).get(canonical_json(skeleton), skeleton)
        if _OWN in canonical_json(skeleton):
            continue  # the prompt's own breakpoints: left alone
        out[head, tail] = _Template(head, tail, _blocks(skeleton, images=False), skeleton)
    return list(out.values())


@dataclass
class PrefixCaching:
    """The breakpoints of a job: which shared prefixes get one (``chosen``, by the node that
    ends them), placed on any rendering of the job's rows by ``apply``."""

    chosen: set[int]
    templates: list[_Template]
    betas: tuple[str, ...]
    tokens: dict[int, int] = field(default_factory=dict)  # node -> estimated prefix tokens
    groups: list[int] = field(default_factory=list)  # group number -> its node (set by apply)
    # custom_id -> nodes of the requests the plan read (``apply`` parses only those it marks)
    paths: dict[str, list[_Block]] = field(default_factory=dict)
    template_of: dict[str, _Template] = field(default_factory=dict)  # requests made from one

    def _marked(self, key: str, body: bytes) -> tuple[bytes, int | None] | None:
        """The body as it goes out and the node of its deepest breakpoint; None: as it is,
        without one."""
        template = self.template_of.pop(key, None)
        middle = None
        if template is not None:
            middle = body[len(template.head) : len(body) - len(template.tail)]
        elif key not in self.paths:
            found = _match(self.templates, body)
            if found is not None:
                template, middle = found
                if _OWN in middle:
                    return None
        if template is not None and middle is not None:
            if template.target is None:
                return None
            if template.target == (template.head, template.tail):
                return (body, template.group) if template.group is not None else None
            head, tail = template.target
            return head + middle + tail, template.group
        path = self.paths.pop(key, None)
        if path is None and (len(body) < _SHORT or _OWN in body):
            return None
        if path is not None and self.chosen.isdisjoint(b.node for b in path):
            return None  # the plan read it already: nothing to place, nothing to parse
        text = body.decode()
        params, spans = _locate(text)
        if path is None:
            path = [b for b in _blocks(params, _IMAGES in body) if b.markable]
        points = [b for b in path if b.node in self.chosen]
        if not points:
            return None
        return _spliced(text, spans, points).encode(), points[-1].node

    def apply(self, rendered: Rendered) -> dict[str, int]:
        """Place the breakpoints in ``rendered`` (bodies, custom_ids, row maps); returns
        custom_id -> prefix group (numbered in order of first request) of every request that
        got one."""
        groups: dict[str, int] = {}
        numbers: dict[int, int] = {}
        kept = {id(t) for t in self.templates if t.target == (t.head, t.tail)}
        if (
            self.template_of
            and all(id(t) in kept for t in self.templates)
            and self.template_of.keys() == set(rendered.bodies)
        ):
            # Every request was rendered from a template with its breakpoints already (the
            # common case): no body, id or row changes, only the groups are read.
            for key, made in self.template_of.items():
                if made.group is not None:
                    groups[key] = numbers.setdefault(made.group, len(numbers))
            self.template_of = {}
            self.groups = [node for node, _ in sorted(numbers.items(), key=lambda item: item[1])]
            return groups
        old, rendered.bodies = rendered.bodies, rendered.bodies.empty_like()
        bodies = rendered.bodies
        renamed: dict[str, str] = {}
        for key in list(old):
            body = old.pop(key)  # one body in memory at a time, not two of each
            new_key = key
            template = self.template_of.get(key)
            marked: tuple[bytes, int | None] | None
            if template is not None and id(template) in kept:
                # Rendered with its breakpoints already (the common case): nothing to redo.
                del self.template_of[key]
                marked = None if template.group is None else (body, template.group)
            else:
                marked = self._marked(key, body)
            if marked is not None:
                new_body, node = marked
                if new_body is not body:
                    body = new_body
                    new_key = custom_id_for(body, self.betas) + key[_BASE_ID:]
                    renamed[key] = new_key
                if node is not None:
                    groups[new_key] = numbers.setdefault(node, len(numbers))
            if new_key in bodies:  # the same bytes as an earlier request that set them itself
                continue
            bodies[new_key] = body
        self.groups = [node for node, _ in sorted(numbers.items(), key=lambda item: item[1])]
        if renamed:
            for split, ids in rendered.row_custom_ids.items():
                rendered.row_custom_ids[split] = [
                    None if c is None else renamed.get(c, c) for c in ids
                ]
        return groups

    def describe(self, groups: Mapping[str, int]) -> str:
        """What ``apply`` placed, for the log."""
        sizes = [f"~{self.tokens[node]:,}" for node in self.groups[:5]]
        more = " ..." if len(self.groups) > 5 else ""
        return (
            f"{len(groups):,} requests share {len(self.groups)} long prompt prefixes "
            f"({', '.join(sizes)}{more} tokens, estimated): each gets a 1-hour cache_control "
            "breakpoint at its end"
        )


def _match(templates: Sequence[_Template], body: bytes) -> tuple[_Template, bytes] | None:
    """The template ``body`` was made from, and its messages."""
    for template in templates:
        middle = template.middle(body)
        if middle is not None:
            return template, middle
    return None


def plan_prefix_caching(
    rendered: Rendered, betas: Sequence[str] = (), marks: TemplateMarks | None = None
) -> PrefixCaching | None:
    """Find the prefixes of ``rendered``'s requests that deserve a breakpoint (see the module's
    docstring); None when none does. ``marks``: the breakpoints render placed already."""
    templates = _templates(rendered, marks)
    counts: Counter[int] = Counter()
    tokens: dict[int, int] = {}
    minimum: dict[int, int] = {}
    paths: dict[str, list[_Block]] = {}  # custom_id -> its markable blocks
    template_of: dict[str, _Template] = {}
    last: _Template | None = None
    bodies: Iterable[tuple[str, bytes]] = rendered.bodies.items()
    if len(templates) == 1 and rendered.from_template == len(rendered.bodies):
        # Every body was made from the one template (render counted them): its shared part is
        # known without reading a body, and no body's messages hold a breakpoint (a text is a
        # JSON string there, its quotes escaped).
        (only,) = templates
        only.requests = len(rendered.bodies)
        template_of = dict.fromkeys(rendered.bodies, only)
        bodies = ()
    for key, body in bodies:
        found = None
        if last is not None and (middle := last.middle(body)) is not None:
            found = last, middle
        else:
            found = _match(templates, body)
        if found is not None:
            last = found[0]
            if _OWN not in found[1]:
                found[0].requests += 1
                template_of[key] = found[0]
            continue
        if len(body) < _SHORT or _OWN in body:
            continue
        params = json.loads(body)
        model = params.get("model")
        least = _minimum(model if isinstance(model, str) else None)
        path = [b for b in _blocks(params, _IMAGES in body) if b.markable]
        for block in path:
            counts[block.node] += 1
            tokens[block.node], minimum[block.node] = block.tokens, least
        paths[key] = path
    shared = [tuple(b.node for b in path) for path in paths.values()]
    after: dict[int, int] = {}  # node -> most requests sharing the next markable block
    for template in templates:
        path = [b for b in template.blocks if b.markable]
        model = template.skeleton.get("model")
        least = _minimum(model if isinstance(model, str) else None)
        for block in path:
            counts[block.node] += template.requests
            tokens[block.node], minimum[block.node] = block.tokens, least
        if path and template.requests:
            shared.append(tuple(b.node for b in path))
            # Its rows' own messages follow, each in one request only.
            after[path[-1].node] = max(after.get(path[-1].node, 0), 1)
    for nodes in shared:
        for node, following in zip(nodes, nodes[1:]):
            after[node] = max(after.get(node, 0), counts[following])
    chosen = {
        node
        for node, n in counts.items()
        if n >= MIN_SHARING and after.get(node, 0) < n and tokens[node] >= minimum[node]
    }
    for template in templates:
        template.place([b for b in template.blocks if b.markable and b.node in chosen])
    if not chosen and all(t.target in (None, (t.head, t.tail)) for t in templates):
        return None
    return PrefixCaching(
        chosen,
        templates,
        tuple(betas),
        tokens={n: tokens[n] for n in chosen},
        paths=paths,
        template_of=template_of,
    )
