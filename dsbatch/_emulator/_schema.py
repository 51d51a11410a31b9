"""Deterministic JSON instances of a JSON schema, for structured answers.

Covers what ``anthropic.transform_schema(Model.model_json_schema())`` produces: objects
(properties, required, additionalProperties), strings (enum, format, length, pattern), integers
and numbers (bounds, multipleOf), booleans, null, arrays (items, prefixItems, min/maxItems,
uniqueItems), ``$defs``/``$ref``, ``anyOf``/``oneOf``/``allOf``, ``enum`` and ``const``.

``transform_schema`` moves the constraints the API does not enforce into the description, as
``"A code\n\n{pattern: ^[A-Z]{3}$, minLength: 3}"``; those hints are honoured like the
schema's own keywords, as a model reading them would: bounds, lengths, item counts,
``multipleOf``, ``uniqueItems``, ``format`` and ``pattern`` (strings made to match the regular
expression by ``_regex``; a pattern it cannot handle falls back to plain words).
"""

from __future__ import annotations

import math
import random
import re
import uuid
from typing import Any

from dsbatch._emulator._regex import string_matching

__all__ = ["generate_instance", "hints"]

_MAX_DEPTH = 8
# A hint block: "{key: value, key: value}" at the end of the description, after a blank line
# or alone. Values are str() of the keyword's value and may hold ", " themselves (a pattern):
# entries split only where ", " is followed by "identifier: ".
_HINT_ENTRY = re.compile(r"(?:\A|, )(?P<key>[A-Za-z_$][A-Za-z0-9_]*): ")
_NUMERIC_HINTS = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
    }
)
_TEXT_HINTS = frozenset({"pattern", "format"})
_WORDS = [
    *("amber", "river", "quiet", "signal", "harbor", "lantern", "meadow", "orbit", "pebble"),
    *("cedar", "falcon", "summit", "velvet", "ember", "prism", "willow", "canyon", "drift"),
    *("harvest", "beacon"),
]


def generate_instance(schema: dict[str, Any], seed: int) -> Any:
    """A value valid against ``schema``; the same schema and seed always give the same value."""
    return _Generator(schema, random.Random(seed)).value(schema, 0)


def hints(description: object) -> dict[str, Any]:
    """The constraints ``transform_schema`` wrote into a description, as schema keywords."""
    if not isinstance(description, str):
        return {}
    text = description.rstrip()
    start = text.rfind("\n\n{")
    if not text.endswith("}") or (start < 0 and not text.startswith("{")):
        return {}
    body = text[start + 3 if start >= 0 else 1 : -1]
    entries = list(_HINT_ENTRY.finditer(body))
    found: dict[str, Any] = {}
    for index, entry in enumerate(entries):
        end = entries[index + 1].start() if index + 1 < len(entries) else len(body)
        key, raw = entry["key"], body[entry.end() : end]
        if key in _TEXT_HINTS:
            found[key] = raw
        elif key == "uniqueItems":
            found[key] = raw == "True"
        elif key in _NUMERIC_HINTS:
            try:
                number = float(raw)
            except ValueError:
                continue
            found[key] = int(number) if number.is_integer() else number
    return found


def _with_hints(schema: dict[str, Any]) -> dict[str, Any]:
    found = hints(schema.get("description"))
    if not found:
        return schema
    return {**{k: v for k, v in found.items() if k not in schema}, **schema}


class _Generator:
    def __init__(self, root: dict[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise ValueError(f"only local $ref are supported, not {ref!r}")
        node: Any = self.root
        for part in ref[1:].split("/"):
            if part:
                node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def value(self, schema: Any, depth: int) -> Any:
        if schema is True or schema == {}:
            return self.words(1, 3)
        if not isinstance(schema, dict):
            return None
        if "$ref" in schema:
            target = self.resolve(schema["$ref"])
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            return self.value({**target, **siblings} if siblings else target, depth + 1)
        if "allOf" in schema:
            return self.value(self.merge_all(schema), depth)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.value(self.choose(schema[key], depth), depth)
        schema = _with_hints(schema)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"] or ["null"]
            kind = self.rng.choice(kinds)
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, depth)
        if kind == "integer":
            return self.integer(schema)
        if kind == "number":
            return self.number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self.string(schema)

    def merge_all(self, schema: dict[str, Any]) -> dict[str, Any]:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, dict) and "$ref" in part:
                part = {
                    **self.resolve(part["$ref"]),
                    **{k: v for k, v in part.items() if k != "$ref"},
                }
            if not isinstance(part, dict):
                continue
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return merged

    def choose(self, options: list[Any], depth: int) -> Any:
        def is_null(option: Any) -> bool:
            return isinstance(option, dict) and option.get("type") == "null"

        if not options:
            return {}
        nulls = [o for o in options if is_null(o)]
        others = [o for o in options if not is_null(o)]
        if nulls and (not others or depth >= _MAX_DEPTH or self.rng.random() < 0.25):
            return nulls[0]
        # A number beside a plain string (pydantic's Decimal) is a number the model may also
        # write as text: answer the number, as a model would, not free words.
        if any(_type_of(o) in ("number", "integer") for o in others):
            others = [o for o in others if not _is_plain_string(o)] or others
        return self.rng.choice(others)

    def object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        out: dict[str, Any] = {}
        for name, sub in properties.items():
            if name in required or (depth < _MAX_DEPTH and self.rng.random() < 0.5):
                out[name] = self.value(sub, depth + 1)
        for name in required - out.keys():
            out[name] = self.words(1, 2)
        extra = schema.get("additionalProperties")
        if not properties and isinstance(extra, dict) and extra and depth < _MAX_DEPTH:
            for index in range(self.rng.randint(1, 2)):
                out[f"key{index + 1}"] = self.value(extra, depth + 1)
        return out

    def array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {} if not prefix else False)
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        if items is False:
            high = len(prefix) if high is None else min(int(high), len(prefix))
        elif high is None:
            high = max(low, 1) + 2
        high = int(high)
        if depth >= _MAX_DEPTH:
            count = low
        else:
            count = self.rng.randint(min(max(low, 1), high), max(low, min(high, low + 3)))
        out: list[Any] = []
        seen: set[str] = set()
        unique = bool(schema.get("uniqueItems"))
        for index in range(count):
            sub = prefix[index] if index < len(prefix) else items
            for _ in range(20):
                candidate = self.value(sub, depth + 1)
                key = repr(candidate)
                if not unique or key not in seen:
                    break
            seen.add(key)
            out.append(candidate)
        return out

    def integer(self, schema: dict[str, Any]) -> int:
        low, high = _bounds(schema, step=1)
        low_i = math.ceil(low) if low is not None else None
        high_i = math.floor(high) if high is not None else None
        if low_i is None and high_i is None:
            low_i, high_i = 0, 100
        elif low_i is None:
            low_i = high_i - 100  # type: ignore[operator]
        elif high_i is None:
            high_i = low_i + 100
        assert low_i is not None and high_i is not None
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            first, last = math.ceil(low_i / step), math.floor(high_i / step)
            if first <= last:
                return self.rng.randint(first, last) * step
        return self.rng.randint(low_i, max(low_i, high_i))

    def number(self, schema: dict[str, Any]) -> float | int:
        low, high = _bounds(schema, step=1e-6)
        if low is None and high is None:
            low, high = 0.0, 1.0
        elif low is None:
            low = high - 100.0  # type: ignore[operator]
        elif high is None:
            high = low + 100.0
        assert low is not None and high is not None
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
            # 0.01 * 53 is 0.53000000000000003: round to the step's own decimals
            digits = max(0, -math.floor(math.log10(step))) + 2 if step < 1 else 0
            for _ in range(20):
                value = round(self.rng.randint(first, last) * step, digits) if first <= last else 0
                if first <= last and _within(schema, value):
                    return value
        value = round(self.rng.uniform(low, high), 2)
        return value if low <= value <= high else (low + high) / 2

    def string(self, schema: dict[str, Any]) -> str:
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        high = None if high is None else int(high)
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            text = string_matching(pattern, self.rng, min_length=low, max_length=high)
            if text is not None:
                return text
        fmt = schema.get("format")
        maker = _FORMATS.get(fmt) if isinstance(fmt, str) else None
        text = maker(self.rng) if maker else self.words(1, 4)
        while len(text) < low:
            text += " " + self.words(1, 3)
        if high is not None and len(text) > high:
            text = text[:high].rstrip() or text[:high]
        return text

    def words(self, low: int, high: int) -> str:
        return " ".join(self.rng.choice(_WORDS) for _ in range(self.rng.randint(low, high)))


def _type_of(schema: Any) -> Any:
    return schema.get("type") if isinstance(schema, dict) else None


def _is_plain_string(schema: Any) -> bool:
    """A string schema with nothing that says which strings (no enum, format or pattern)."""
    if _type_of(schema) != "string":
        return False
    keys = {"enum", "const", "format", "pattern"}
    return not (keys & schema.keys() or keys & hints(schema.get("description")).keys())


def _within(schema: dict[str, Any], value: float) -> bool:
    """Whether ``value`` keeps the schema's bounds (exclusive ones included)."""
    checks = (
        ("minimum", lambda b: value >= b),
        ("maximum", lambda b: value <= b),
        ("exclusiveMinimum", lambda b: value > b),
        ("exclusiveMaximum", lambda b: value < b),
    )
    return all(
        not isinstance(schema.get(key), (int, float)) or holds(schema[key]) for key, holds in checks
    )


def _bounds(schema: dict[str, Any], step: float) -> tuple[float | None, float | None]:
    low = schema.get("minimum")
    high = schema.get("maximum")
    exclusive_low = schema.get("exclusiveMinimum")
    exclusive_high = schema.get("exclusiveMaximum")
    if isinstance(exclusive_low, (int, float)) and not isinstance(exclusive_low, bool):
        low = max(low, exclusive_low + step) if low is not None else exclusive_low + step
    if isinstance(exclusive_high, (int, float)) and not isinstance(exclusive_high, bool):
        high = min(high, exclusive_high - step) if high is not None else exclusive_high - step
    return low, high


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


_FORMATS = {
    "date-time": lambda r: (
        f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
        f"T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z"
    ),
    "date": lambda r: f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    "time": lambda r: f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z",
    "duration": lambda r: f"P{r.randint(1, 30)}D",
    "email": lambda r: f"{r.choice(_WORDS)}{r.randint(1, 99)}@example.com",
    "hostname": lambda r: f"{r.choice(_WORDS)}{r.randint(1, 99)}.example.com",
    "uri": lambda r: f"https://example.com/{r.choice(_WORDS)}/{r.randint(1, 999)}",
    "ipv4": lambda r: f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
    "ipv6": lambda r: f"2001:db8::{r.randint(1, 0xFFFF):x}",
    "uuid": _uuid,
}
