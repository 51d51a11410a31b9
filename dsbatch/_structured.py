"""Structured answers: a pydantic model in, typed Arrow columns out.

``dsbatch.map(..., response_format=Label)`` asks every request for a JSON object shaped like
``Label`` and turns each answer into one typed column per field. ``structured_output="native"``
sends ``output_config.format`` (a JSON schema); ``"tool"`` forces a strict tool call whose
``input_schema`` is that same schema. The schema is exactly what ``anthropic.transform_schema``
makes of the model, as the SDK's own ``client.messages.parse`` sends it.

Answers are validated by the model itself (``model_validate_json``), so its validators run when
results are joined: changing a validator changes the columns without paying for a new answer.

How field types become columns (every column is nullable: a row that failed has nulls; the
``datasets`` feature is what ``Features.from_arrow_schema`` makes of the Arrow type)::

    Python field type                        Arrow type (datasets feature)
    ---------------------------------------  -------------------------------------------------
    str (and str subclasses, EmailStr)       string  (Value("string"))
    int                                      int64
    float                                    float64
    bool                                     bool
    list[X], tuple[X, ...], set[X],          list<X>  (a list of X's feature); sets come back
      frozenset[X], Sequence[X]                sorted, so one answer always gives one column
    a nested BaseModel                       struct<one field per model field>  (a dict)
    Optional[X], X | None                    X, null when None
    Literal["a", "b"], an Enum of str        string: the value, not the member name
    Literal/Enum of ints / numbers / bools   int64 / float64 / bool: the value
    datetime                                 timestamp[us, tz=UTC]; a naive time counts as UTC
    date                                     date32
    time                                     string, ISO ("12:30:00", "12:30:00+02:00")
    Decimal                                  string, exact ("12.50")
    UUID, AnyUrl/HttpUrl, Path, IP address   string, str() of the value

Decimal is text rather than Arrow decimal128 because the model gives no fixed precision and a
float would lose the exactness the user asked for. Not accepted (``check_response_format``
raises ``ValueError`` naming the field and pointing to docs/structured-outputs.md):
``Any``/``object``/bare ``list`` (the API's strict schemas need a type), free-form dicts
(``dict[str, X]``, ``dict``, ``Mapping``: ``transform_schema`` makes every object
``additionalProperties: false`` with only its declared properties, so the answer could only
ever hold ``{}``; use a nested model, or ``list[Item]`` for keyed data), unions of several
non-None types, fixed-length tuples like ``tuple[int, int]`` (``transform_schema`` drops
``prefixItems``), ``bytes``, ``timedelta``, recursive models, and models without fields.

What ``transform_schema`` does to the rest was checked type by type: every accepted type keeps
its JSON type; ``format`` stays for date-time, date, time, uuid, uri, email and IP addresses;
constraints the API does not enforce (``ge``/``le``, lengths, ``pattern``, ``uniqueItems``) move
into the field's description as hints, and are enforced here when the answer is validated.
"""

from __future__ import annotations

import collections.abc
import contextlib
import copy
import dataclasses
import datetime as dt
import decimal
import enum
import functools
import inspect
import ipaddress
import json
import pathlib
import re
import types
import typing
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anthropic
import datasets
import pyarrow as pa
import pydantic
import pydantic_core
from pydantic import BaseModel

__all__ = [
    "MODES",
    "Parsed",
    "arrow_schema",
    "check_response_format",
    "columns",
    "extract_json",
    "features",
    "parse_answer",
    "request_params",
    "tool_name",
]

# How a structured answer is asked for: output_config.format, or a forced tool.
MODES = ("native", "tool")
_CUT_ERROR = "the answer was cut at max_tokens before the JSON was complete (raise max_tokens)"
_REFUSAL_ERROR = "the model refused to answer (stop_reason refusal)"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MAX_SHOWN_ERRORS = 3
_UTC = dt.timezone.utc
_LIST_ORIGINS = (
    list,
    tuple,
    set,
    frozenset,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Set,
    collections.abc.MutableSet,
)
_DICT_ORIGINS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
# Values whose str() is the natural, round-trippable text form.
_STRINGIFIED: tuple[type, ...] = (
    dt.time,
    decimal.Decimal,
    uuid.UUID,
    pathlib.PurePath,
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
    pydantic.AnyUrl,
    pydantic_core.Url,
    pydantic_core.MultiHostUrl,
)
_TOOL_NAME_BAD = re.compile(r"[^a-zA-Z0-9_-]")
_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_+.-]*[ \t]*\r?\n?(.*?)```", re.DOTALL)
_OBJECT_START = re.compile(r'\{\s*["}]')
_MAX_BROKEN_STARTS = 100
_DECODER = json.JSONDecoder()


@dataclasses.dataclass(frozen=True)
class Parsed:
    """One answer read against a response_format: Arrow-ready field values, or why not."""

    values: dict[str, Any] | None
    error: str | None = None


class _Unrepresentable(ValueError):
    """A validated value that its Arrow column cannot hold (an int beyond int64)."""


@dataclasses.dataclass(frozen=True)
class _Node:
    """The Arrow type of one field (or element) and how to turn its Python value into it."""

    type: Any  # pa.DataType
    convert: Callable[[Any], Any]  # never called with None


@dataclasses.dataclass(frozen=True)
class _Plan:
    fields: tuple[tuple[str, _Node], ...]
    schema: Any  # pa.Schema
    json_schema: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Checking the model and the request params


def check_response_format(model_cls: object) -> None:
    """Raise TypeError unless ``model_cls`` is a BaseModel subclass, ValueError if unusable."""
    if isinstance(model_cls, dict):
        raise TypeError(
            "response_format must be a pydantic BaseModel subclass, not a JSON schema dict; "
            "to send your own schema pass params={'output_config': {'format': ...}} and parse="
        )
    if not (inspect.isclass(model_cls) and issubclass(model_cls, BaseModel)):
        shown = _short(repr(model_cls), 60)
        raise TypeError(
            "response_format must be a pydantic BaseModel subclass "
            f"(like `class Label(BaseModel): ...`), not {type(model_cls).__name__} {shown}"
        )
    _plan(model_cls)


def tool_name(model_cls: type[BaseModel]) -> str:
    """The name of the forced tool in ``structured_output="tool"`` mode: the class name, cleaned."""
    return _TOOL_NAME_BAD.sub("_", model_cls.__name__)[:64] or "response"


def request_params(model_cls: type[BaseModel], mode: str = "native") -> dict[str, Any]:
    """The Messages params that ask every request for an answer shaped like ``model_cls``."""
    check_response_format(model_cls)
    schema = copy.deepcopy(_plan(model_cls).json_schema)
    if mode == "native":
        return {"output_config": {"format": {"type": "json_schema", "schema": schema}}}
    if mode == "tool":
        name = tool_name(model_cls)
        own_doc = model_cls.__dict__.get("__doc__")
        description = (
            inspect.cleandoc(own_doc)
            if isinstance(own_doc, str) and own_doc.strip()
            else f"Record the answer as a {model_cls.__name__} object."
        )
        tool = {"name": name, "description": description, "input_schema": schema, "strict": True}
        return {"tools": [tool], "tool_choice": {"type": "tool", "name": name}}
    raise ValueError(_bad_mode(mode))


# ---------------------------------------------------------------------------------------------
# Arrow schema


def arrow_schema(model_cls: type[BaseModel]) -> pa.Schema:
    """One nullable Arrow field per model field, typed as the module docstring's table says."""
    check_response_format(model_cls)
    return _plan(model_cls).schema


def features(model_cls: type[BaseModel]) -> datasets.Features:
    """The ``datasets.Features`` of the columns ``columns`` builds for ``model_cls``."""
    return datasets.Features.from_arrow_schema(arrow_schema(model_cls))


@functools.lru_cache(maxsize=256)
def _plan(model_cls: type[BaseModel]) -> _Plan:
    name = model_cls.__name__
    if issubclass(model_cls, pydantic.RootModel):
        raise ValueError(
            f"response_format {name} is a RootModel; the answer must be a JSON object, "
            "so use a BaseModel with named fields"
        )
    node = _model_node(model_cls, name, ())
    # A model's node always converts with a _StructConvert (see _model_node).
    struct, convert = node.type, typing.cast(_StructConvert, node.convert)
    fields = tuple(
        (field_name, _Node(struct.field(field_name).type, field_convert))
        for field_name, field_convert in zip(convert.names, convert.fields)
    )
    try:
        json_schema = anthropic.transform_schema(model_cls)
    except (pydantic.PydanticUserError, pydantic_core.SchemaError) as exc:
        raise ValueError(f"response_format {name} has no usable JSON schema: {exc}") from exc
    except (ValueError, AssertionError) as exc:
        raise ValueError(
            f"the JSON schema of response_format {name} cannot be made strict for the API "
            f"(anthropic.transform_schema: {exc})"
        ) from exc
    schema = pa.schema([pa.field(n, f.type, nullable=True) for n, f in fields])
    return _Plan(fields=fields, schema=schema, json_schema=json_schema)


class _StructConvert:
    """Nested model instance → dict of Arrow-ready values (kept for the field converters)."""

    def __init__(self, names: tuple[str, ...], fields: tuple[Callable[[Any], Any], ...]):
        self.names = names
        self.fields = fields

    def __call__(self, value: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, convert in zip(self.names, self.fields):
            item = getattr(value, name)
            out[name] = None if item is None else convert(item)
        return out


def _model_node(model_cls: type[BaseModel], where: str, stack: tuple[type, ...]) -> _Node:
    if model_cls in stack:
        raise ValueError(
            f"field {where!r} refers back to {model_cls.__name__}: a recursive model cannot be "
            "a fixed Arrow struct"
        )
    if not model_cls.model_fields:
        raise ValueError(f"{where!r} ({model_cls.__name__}) has no fields to make columns of")
    inner = (*stack, model_cls)
    arrow_fields = []
    converters = []
    for field_name, info in model_cls.model_fields.items():
        path = field_name if not stack else f"{where}.{field_name}"
        node = _type_node(info.annotation, path, inner)
        arrow_fields.append(pa.field(field_name, node.type, nullable=True))
        converters.append(node.convert)
    convert = _StructConvert(tuple(model_cls.model_fields), tuple(converters))
    return _Node(pa.struct(arrow_fields), convert)


def _type_node(tp: Any, where: str, stack: tuple[type, ...]) -> _Node:
    while True:  # peel wrappers that do not change the value's type
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif hasattr(tp, "__supertype__"):  # typing.NewType
            tp = tp.__supertype__
        else:
            break
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _type_node(options[0], where, stack)
        raise _unsupported(where, tp, "a union of several types; use one type or a nested model")
    if origin is typing.Literal:
        return _literal_node(list(args), where, tp)
    if origin in _LIST_ORIGINS:
        return _list_node(tp, origin, args, where, stack)
    if origin in _DICT_ORIGINS or tp in _DICT_ORIGINS or _is_mapping_type(tp, origin):
        raise _unsupported(
            where,
            tp,
            "a free-form dict: structured outputs make every object strict (only its declared "
            "keys, additionalProperties false), so the answer could only ever be {}; use a "
            "nested model with named fields, or list[Item] with a model Item(key: str, "
            "value: ...) for keyed data",
        )
    if tp is Any or tp is object:
        raise _unsupported(where, tp, "but the API's strict schemas need a concrete type")
    if not inspect.isclass(tp):
        raise _unsupported(where, tp, "not a type dsbatch can make a column of")
    if issubclass(tp, BaseModel):
        if issubclass(tp, pydantic.RootModel):
            root = _type_node(tp.model_fields["root"].annotation, where, (*stack, tp))
            root_convert = root.convert
            return _Node(root.type, lambda value: _none_or(root_convert, value.root))
        return _model_node(tp, where, stack)
    if issubclass(tp, enum.Enum):
        return _literal_node([member.value for member in tp], where, tp)
    if tp is bool:
        return _Node(pa.bool_(), _identity)
    if issubclass(tp, int):
        return _Node(pa.int64(), functools.partial(_checked_int, where))
    if issubclass(tp, float):
        return _Node(pa.float64(), _identity)
    if issubclass(tp, str) or tp is pydantic.EmailStr:
        return _Node(pa.string(), _identity)
    if issubclass(tp, dt.datetime):
        return _Node(pa.timestamp("us", tz="UTC"), _utc)
    if issubclass(tp, dt.date):
        return _Node(pa.date32(), _identity)
    if issubclass(tp, _STRINGIFIED) or (tp.__module__ == "pydantic.networks"):
        return _Node(pa.string(), str)
    if tp in (list, tuple, set, frozenset):
        raise _unsupported(where, tp, f"give the element type, e.g. {tp.__name__}[str]")
    raise _unsupported(where, tp, "not a type dsbatch can make a column of")


def _is_mapping_type(tp: Any, origin: Any) -> bool:
    """A dict or Mapping type by another name (OrderedDict, Counter, a dict subclass)."""
    cls = origin if inspect.isclass(origin) else tp
    typed_dict = hasattr(cls, "__total__")  # declared keys: not free-form (refused elsewhere)
    return inspect.isclass(cls) and issubclass(cls, collections.abc.Mapping) and not typed_dict


def _list_node(
    tp: Any, origin: Any, args: tuple[Any, ...], where: str, stack: tuple[type, ...]
) -> _Node:
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            # transform_schema moves prefixItems into the description: the API would not
            # know the element types.
            raise _unsupported(where, tp, "a fixed-length tuple; use tuple[X, ...] or a model")
        element = args[0]
    elif args:
        element = args[0]
    else:
        raise _unsupported(where, tp, "give the element type, e.g. list[str]")
    item = _type_node(element, f"{where}[]", stack)
    item_convert = item.convert
    ordered = origin in (set, frozenset, collections.abc.Set, collections.abc.MutableSet)

    def convert(value: Any) -> list[Any]:
        out = [None if v is None else item_convert(v) for v in value]
        if ordered:  # sets have no order; sort so the same answer always gives the same column
            with contextlib.suppress(TypeError):
                out.sort()
        return out

    return _Node(pa.list_(item.type), convert)


def _literal_node(values: list[Any], where: str, tp: Any) -> _Node:
    plain = [v.value if isinstance(v, enum.Enum) else v for v in values]
    plain = [v for v in plain if v is not None]
    if plain and all(isinstance(v, str) for v in plain):
        arrow_type = pa.string()
    elif plain and all(isinstance(v, bool) for v in plain):
        arrow_type = pa.bool_()
    elif plain and all(isinstance(v, int) and not isinstance(v, bool) for v in plain):
        arrow_type = pa.int64()
    elif plain and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in plain):
        arrow_type = pa.float64()
    else:
        raise _unsupported(where, tp, "its values are not all strings, all numbers or all bools")
    return _Node(arrow_type, _enum_value)


_DOCS = "docs/structured-outputs.md, 'Columns and their types'"


def _unsupported(where: str, tp: Any, why: str) -> ValueError:
    return ValueError(f"field {where!r} has type {_type_name(tp)}, {why} (see {_DOCS})")


def _type_name(tp: Any) -> str:
    if inspect.isclass(tp) and not typing.get_args(tp):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def _identity(value: Any) -> Any:
    return value


def _none_or(convert: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else convert(value)


def _enum_value(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _checked_int(where: str, value: int) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise _Unrepresentable(f"{where}: {value} does not fit in a 64-bit integer column")
    return int(value)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)


# ---------------------------------------------------------------------------------------------
# Reading answers


def extract_json(text: str) -> object | None:
    """The JSON in an answer: all of it, else a fenced block, else the first ``{…}`` that parses."""
    found = _find_json(text)
    return None if found is None else found[0]


def _find_json(text: str) -> tuple[object, str, bool] | None:
    """(value, its JSON text, whether an unparseable ``{`` came before it) or None."""
    return next(_candidates(text), None)


def _candidates(text: str) -> Iterator[tuple[object, str, bool]]:
    stripped = text.strip()
    if not stripped:
        return
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):
        pass
    else:
        yield value, stripped, False
    for match in _FENCE.finditer(text):
        body = match.group(1).strip()
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            continue
        yield value, body, False
    # raw_decode reads strings as JSON does, so braces inside them never unbalance the scan.
    # Each failed attempt costs up to the length of the text: only '{' that can open an object
    # are tried, and only so many.
    broken = 0
    end = 0
    for match in _OBJECT_START.finditer(text):
        start = match.start()
        if start < end:
            continue
        try:
            value, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            broken += 1
            if broken >= _MAX_BROKEN_STARTS:
                return
            continue
        yield value, text[start:end], broken > 0


def parse_answer(
    model_cls: type[BaseModel],
    *,
    text: str | None,
    tool_input: object | None = None,
    stop_reason: str | None = None,
    mode: str = "native",
) -> Parsed:
    """Validate one answer against ``model_cls``: its field values, or an error a user can read.

    ``text`` is the answer's text; ``tool_input`` the ``input`` of the forced ``tool_use`` block
    (``mode="tool"``; without one the text is read instead).
    """
    if mode not in MODES:
        raise ValueError(_bad_mode(mode))
    if stop_reason == "refusal":
        return Parsed(None, _REFUSAL_ERROR)
    cut = stop_reason == "max_tokens"
    try:
        if mode == "tool" and tool_input is not None:
            instance = model_cls.model_validate_json(json.dumps(tool_input))
        else:
            found = _find_json(text or "")
            # Under max_tokens, an object found after a broken "{" is most likely a piece of
            # the cut answer, not the answer.
            if found is None or (cut and found[2]):
                return Parsed(None, _CUT_ERROR if cut else _no_json(text, mode))
            instance = model_cls.model_validate_json(found[1])
    except pydantic.ValidationError as exc:
        return Parsed(None, _CUT_ERROR if cut else _validation_message(model_cls, exc))
    try:
        values = {
            name: None if (value := getattr(instance, name)) is None else node.convert(value)
            for name, node in _plan(model_cls).fields
        }
    except _Unrepresentable as exc:
        return Parsed(None, str(exc))
    return Parsed(values, None)


def _no_json(text: str | None, mode: str) -> str:
    prefix = "no tool call and " if mode == "tool" else ""
    stripped = (text or "").strip()
    if not stripped:
        return f"{prefix}no JSON object was found in the answer (it was empty)"
    return f"{prefix}no JSON object was found in the answer: {_short(repr(stripped), 80)}"


def _validation_message(model_cls: type[BaseModel], exc: pydantic.ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:_MAX_SHOWN_ERRORS]:
        where = _loc(err["loc"]) or model_cls.__name__
        message = err["msg"]
        shown = err.get("input")
        if err["type"] != "missing" and (shown is None or isinstance(shown, (str, int, float))):
            message += f" (got {_short(repr(shown), 40)})"
        parts.append(f"{where}: {message}")
    hidden = len(errors) - _MAX_SHOWN_ERRORS
    if hidden > 0:
        parts.append(f"and {hidden} more error{'s' if hidden > 1 else ''}")
    return f"the answer does not match {model_cls.__name__}: " + "; ".join(parts)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bad_mode(mode: object) -> str:
    return f"structured_output must be 'native' or 'tool', not {mode!r}"


# ---------------------------------------------------------------------------------------------
# Columns


def columns(model_cls: type[BaseModel], parsed: Sequence[Parsed | None]) -> dict[str, pa.Array]:
    """One typed Arrow array per field, row for row; null where a row has no values."""
    check_response_format(model_cls)
    rows = [None if p is None else p.values for p in parsed]
    out: dict[str, pa.Array] = {}
    for field in _plan(model_cls).schema:
        name = field.name
        data = [None if values is None else values.get(name) for values in rows]
        out[name] = pa.array(data, type=field.type)
    return out
