"""Strings that match a regular expression, for ``pattern`` constraints in structured answers.

A small parser covers the regexes people put in schemas: literals and escapes, classes
(``[a-z0-9_]``, ``[^,]``), ``.``, ``\\d \\w \\s`` and their negations, quantifiers (``? * +
{m} {m,} {m,n}``, lazy or possessive), groups (capturing, ``(?:``, named), alternation and
anchors. Lookarounds and word boundaries are skipped while generating; every candidate is then
checked with ``re.search`` (JSON Schema's ``pattern`` is unanchored, as pydantic's is), so a
string is returned only when it really matches. Back-references, inline flags other than
at the start, Unicode property classes and the like are not supported: ``string_matching``
returns None and the caller falls back to plain words.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass

__all__ = ["string_matching"]

_DIGITS = string.digits
_WORD = string.ascii_letters + string.digits + "_"
_PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "
_DOT = string.ascii_letters + string.digits
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}
# \s as a plain space: tabs and newlines match too, but read worse in an answer
_CLASSES = {"d": _DIGITS, "w": _WORD, "s": " "}
_ANCHORS = frozenset("bBAZzG")
_ATTEMPTS = 40
_LONGEST = 10_000


class _Unsupported(Exception):
    pass


@dataclass(frozen=True)
class _Chars:
    choices: str  # one character out of these


@dataclass(frozen=True)
class _Seq:
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Alt:
    options: tuple[_Node, ...]


@dataclass(frozen=True)
class _Repeat:
    node: _Node
    low: int
    high: int | None  # None: unbounded


_Node = _Chars | _Seq | _Alt | _Repeat


def string_matching(
    pattern: str,
    rng: random.Random,
    *,
    min_length: int = 0,
    max_length: int | None = None,
) -> str | None:
    """A string that ``re.search(pattern, ...)`` matches, with a length in
    [min_length, max_length]; None when none was found (an unsupported or unsatisfiable one)."""
    try:
        compiled = re.compile(pattern)
        tree = _Parser(pattern).parse()
    except (re.error, _Unsupported, RecursionError):
        return None
    # How far unbounded quantifiers (* + {m,}) go past their minimum, attempt after attempt:
    # short first, then aimed at the length bounds (one repeated character needs just that).
    wanted = max_length if max_length is not None else min_length + 8
    windows = (
        (0, 3),
        (0, 8),
        (max(0, min_length - 1), max(0, min_length - 1, wanted - 1)),
        (min_length // 2, max(min_length, 1)),
        (0, 24),
    )
    for attempt in range(_ATTEMPTS):
        text = _generate(tree, rng, windows[attempt % len(windows)])
        if len(text) > _LONGEST or len(text) < min_length:
            continue
        if max_length is not None and len(text) > max_length:
            continue
        if compiled.search(text):
            return text
    return None


def _generate(node: _Node, rng: random.Random, window: tuple[int, int]) -> str:
    if isinstance(node, _Chars):
        return rng.choice(node.choices)
    if isinstance(node, _Seq):
        return "".join(_generate(item, rng, window) for item in node.items)
    if isinstance(node, _Alt):
        return _generate(rng.choice(node.options), rng, window)
    if node.high is None:
        count = node.low + rng.randint(*window)
    else:
        count = rng.randint(node.low, max(node.low, node.high))
    return "".join(_generate(node.node, rng, window) for _ in range(count))


class _Parser:
    """Recursive descent over the pattern text: alternation > sequence > quantified atom."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.at = 0

    def parse(self) -> _Node:
        if self.text.startswith("(?") and re.match(r"\(\?[aiLmsux]+\)", self.text):
            # leading inline flags: case-insensitive matching still accepts the literal case
            self.at = self.text.index(")") + 1
        node = self.alternation()
        if self.at != len(self.text):
            raise _Unsupported(f"unbalanced ')' at {self.at}")
        return node

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise _Unsupported("unexpected end of pattern")
        self.at += 1
        return char

    def alternation(self) -> _Node:
        options = [self.sequence()]
        while self.peek() == "|":
            self.at += 1
            options.append(self.sequence())
        return options[0] if len(options) == 1 else _Alt(tuple(options))

    def sequence(self) -> _Node:
        items: list[_Node] = []
        while self.peek() not in ("", "|", ")"):
            atom = self.atom()
            if atom is None:
                continue  # an anchor or a lookaround: nothing to write
            items.append(self.quantified(atom))
        return items[0] if len(items) == 1 else _Seq(tuple(items))

    def quantified(self, atom: _Node) -> _Node:
        char = self.peek()
        if char in ("?", "*", "+"):
            self.at += 1
            low, high = {"?": (0, 1), "*": (0, None), "+": (1, None)}[char]
        elif char == "{":
            bounds = re.compile(r"\{(\d*)(,?)(\d*)\}").match(self.text, self.at)
            if bounds is None or not (bounds[1] or bounds[3]):
                return atom  # a literal "{", as Python reads it
            self.at = bounds.end()
            low = int(bounds[1] or 0)
            high = int(bounds[3]) if bounds[3] else (None if bounds[2] else low)
        else:
            return atom
        if self.peek() in ("?", "+"):  # lazy or possessive: the same strings match
            self.at += 1
        return _Repeat(atom, low, high)

    def atom(self) -> _Node | None:
        char = self.take()
        if char in "^$":
            return None
        if char == ".":
            return _Chars(_DOT)
        if char == "[":
            return self.char_class()
        if char == "(":
            return self.group()
        if char == "\\":
            return self.escape()
        if char in "*+?":
            raise _Unsupported(f"nothing to repeat at {self.at - 1}")
        return _Chars(char)

    def group(self) -> _Node | None:
        lookaround = False
        if self.text.startswith("?", self.at):
            rest = self.text[self.at :]
            named = re.match(r"\?P?<[A-Za-z_]\w*>", rest)
            if rest.startswith("?:"):
                self.at += 2
            elif named:
                self.at += named.end()
            elif rest[:2] in ("?=", "?!") or rest[:3] in ("?<=", "?<!"):
                self.at += 3 if rest[1] == "<" else 2
                lookaround = True
            else:
                raise _Unsupported(f"group syntax {rest[:4]!r}")
        node = self.alternation()
        if self.take() != ")":
            raise _Unsupported("unclosed group")
        return None if lookaround else node

    def escape(self) -> _Node | None:
        char = self.take()
        if char in _CLASSES:
            return _Chars(_CLASSES[char])
        if char in "DWS":
            return _Chars(_outside(_CLASSES[char.lower()]))
        if char in _ANCHORS:
            return None
        return _Chars(self.escaped_char(char))

    def escaped_char(self, char: str) -> str:
        """The character an escape inside or outside a class stands for."""
        if char in _ESCAPES:
            return _ESCAPES[char]
        if char in "xu":
            width = 2 if char == "x" else 4
            digits = self.text[self.at : self.at + width]
            if len(digits) != width or not all(c in string.hexdigits for c in digits):
                raise _Unsupported(f"\\{char} escape")
            self.at += width
            return chr(int(digits, 16))
        if char.isdigit() or char in "pPkN":
            raise _Unsupported(f"\\{char}")  # back-references, Unicode properties
        return char

    def char_class(self) -> _Node:
        negated = self.peek() == "^"
        if negated:
            self.at += 1
        members: set[str] = set()
        first = True
        while True:
            char = self.take()
            if char == "]" and not first:
                break
            first = False
            if char == "[" and self.peek() == ":":
                raise _Unsupported("POSIX class")
            if char == "\\":
                escaped = self.take()
                if escaped in _CLASSES:
                    members.update(_CLASSES[escaped])
                    continue
                if escaped in "DWS":
                    members.update(_outside(_CLASSES[escaped.lower()]))
                    continue
                char = "\b" if escaped == "b" else self.escaped_char(escaped)
            if self.peek() == "-" and self.text[self.at + 1 : self.at + 2] not in ("]", ""):
                self.at += 1
                end = self.take()
                if end == "\\":
                    end = self.escaped_char(self.take())
                if ord(end) < ord(char):
                    raise _Unsupported(f"bad range {char}-{end}")
                members.update(chr(code) for code in range(ord(char), ord(end) + 1))
            else:
                members.add(char)
        if negated:
            return _Chars(_outside("".join(members)))
        if not members:
            raise _Unsupported("empty class")
        # Printable members first, so [\x00-\x7f] reads as text; order fixed for determinism.
        return _Chars("".join(sorted(members, key=lambda c: (not c.isprintable(), ord(c)))))


def _outside(excluded: str) -> str:
    """Printable ASCII characters not in ``excluded`` (for ``[^...]``, ``\\D`` and the like)."""
    left = "".join(c for c in _PRINTABLE if c not in excluded)
    if not left:
        raise _Unsupported("a negated class that excludes every printable character")
    return left
