"""The Messages request schema, read from the installed ``anthropic`` SDK's own request types.

dsbatch keeps no list of parameter names or content-block shapes of its own: they come from the
SDK's ``MessageCreateParamsNonStreaming`` (the beta one when a job sends ``betas``), the type of
a batch request's ``params``, so a new SDK release with a new parameter or block type works
without a change here. Each TypedDict becomes a ``Check`` once (cached): its keys, which are
required (the SDK's modules use ``from __future__ import annotations``, so
``__required_keys__`` is empty and ``Required[...]`` is read from the resolved annotations),
and a check per value. A check refuses only what is certainly wrong (an unknown key, a missing
required key, an unknown ``type``, a value of the wrong JSON kind); what it cannot judge (a
free-form dict, a file-like object) passes.
"""

from __future__ import annotations

import collections.abc
import contextlib
import difflib
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

import anthropic
import typing_extensions

__all__ = [
    "Check",
    "SchemaProblem",
    "batch_header_params",
    "compile_type",
    "content_block_check",
    "describe_value",
    "nearest",
    "request_fields",
]

_REQUIRED = {typing_extensions.Required, getattr(typing, "Required", None)} - {None}
_NOT_REQUIRED = {typing_extensions.NotRequired, getattr(typing, "NotRequired", None)} - {None}
_LITERAL = {typing.Literal, typing_extensions.Literal}
_LISTS = (
    collections.abc.Iterable,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    list,
    tuple,
)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
# The keys that tell the members of a union of objects apart, most telling first.
_TAGS = ("type", "role")


class SchemaProblem(ValueError):
    """A value that does not fit the SDK's request types; the message names where."""


class Check:
    """Raises ``SchemaProblem`` when a value does not fit one type."""

    def quick(self, value: Any) -> bool:
        """True when the value surely fits (cheap; no path spelled out); False: ``check`` it."""
        return False

    def check(self, value: Any, where: str) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class _Any(Check):
    def check(self, value: Any, where: str) -> None:
        return None

    def quick(self, value: Any) -> bool:
        return True

    def describe(self) -> str:
        return "any value"


_ANY = _Any()


class _Instance(Check):
    """A JSON scalar (str, int, float, bool) or some other class."""

    def __init__(self, kinds: tuple[type, ...], name: str) -> None:
        self.kinds = kinds
        self.name = name
        self.bool_ok = bool in kinds

    def quick(self, value: Any) -> bool:
        return isinstance(value, self.kinds) and (self.bool_ok or value.__class__ is not bool)

    def check(self, value: Any, where: str) -> None:
        if isinstance(value, bool) and not self.bool_ok:
            raise SchemaProblem(f"{where} must be {self.name}, not {describe_value(value)}")
        if not isinstance(value, self.kinds):
            raise SchemaProblem(f"{where} must be {self.name}, not {describe_value(value)}")

    def describe(self) -> str:
        return self.name


class _Literal(Check):
    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values
        self.strings = frozenset(v for v in values if isinstance(v, str))
        self.kinds = frozenset(type(v) for v in values)

    def quick(self, value: Any) -> bool:
        return value.__class__ is str and value in self.strings

    def check(self, value: Any, where: str) -> None:
        for allowed in self.values:
            if value == allowed and type(value) is type(allowed):
                return
        raise SchemaProblem(f"{where} must be {self.describe()}, not {value!r}")

    def describe(self) -> str:
        shown = [repr(v) for v in self.values]
        return shown[0] if len(shown) == 1 else f"one of {', '.join(shown)}"


class _List(Check):
    def __init__(self, item: Check) -> None:
        self.item = item

    def quick(self, value: Any) -> bool:
        # An empty list fits; a list of strings fits a list of str without a path per item.
        if value.__class__ is not list:
            return False
        return not value or (self.item.quick(value[0]) and all(self.item.quick(v) for v in value))

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, (list, tuple)):
            raise SchemaProblem(f"{where} must be a list, not {describe_value(value)}")
        check = self.item.check
        for i, item in enumerate(value):
            check(item, f"{where}[{i}]")

    def describe(self) -> str:
        return "a list"


class _Mapping(Check):
    def check(self, value: Any, where: str) -> None:
        if not _is_mapping(value):
            raise SchemaProblem(f"{where} must be an object (a dict), not {describe_value(value)}")

    def quick(self, value: Any) -> bool:
        return _is_mapping(value)

    def describe(self) -> str:
        return "an object (a dict)"


_ANY_MAPPING = _Mapping()


class _Object(Check):
    """One TypedDict: its keys are resolved on first use (the SDK's types refer to each other)."""

    def __init__(self, typed_dict: type) -> None:
        self.typed_dict = typed_dict
        self._fields: dict[str, Check] | None = None
        self.required: frozenset[str] = frozenset()
        self.tags: dict[str, tuple[Any, ...]] = {}  # tag key -> its Literal values
        self.required_tags: frozenset[str] = frozenset()

    @property
    def fields(self) -> dict[str, Check]:
        if self._fields is None:
            hints = typing.get_type_hints(self.typed_dict, include_extras=True)
            fields: dict[str, Check] = {}
            required = set()
            for key, annotation in hints.items():
                tp, is_required = _peel(annotation, getattr(self.typed_dict, "__total__", True))
                if is_required:
                    required.add(key)
                if key in _TAGS and (values := _literal_values(tp)):
                    self.tags[key] = values
                fields[key] = compile_type(tp)
            self.required = frozenset(required)
            self.required_tags = frozenset(k for k in self.tags if k in required)
            self._fields = fields
        return self._fields

    def name(self) -> str:
        _ = self.fields  # resolves the tags
        tag = self.tags.get("type")
        if tag and len(tag) == 1:
            kind = "block" if self.typed_dict.__name__.endswith("BlockParam") else "object"
            return f"{_article(str(tag[0]))} {tag[0]!r} {kind}"
        return "an object"

    def check(self, value: Any, where: str) -> None:
        fields = self._fields if self._fields is not None else self.fields
        if not _is_mapping(value):
            raise SchemaProblem(f"{where} must be {self.name()}, not {describe_value(value)}")
        if not self.required <= value.keys():
            key = min(self.required - value.keys())
            raise SchemaProblem(
                f"{where} ({self.name()}) has no {key!r}, which the API requires "
                f"({key!r} must be {fields[key].describe()})"
            )
        for key, item in value.items():
            check = fields.get(key)
            if check is None:
                raise SchemaProblem(
                    f"{where} has an unknown key {key!r}{nearest(key, fields)}, which the API "
                    f"refuses ('{key}: Extra inputs are not permitted')"
                )
            if not check.quick(item):  # the path is spelled out only when needed
                check.check(item, f"{where}.{key}")

    def describe(self) -> str:
        return self.name()


class _Union(Check):
    def __init__(self, options: list[Check], optional: bool) -> None:
        self.optional = optional
        self.objects = [o for o in options if isinstance(o, _Object)]
        self.others = [o for o in options if not isinstance(o, _Object)]
        # A dict that fits a free-form mapping member fits: nothing more can be said of it.
        self.any_mapping = any(isinstance(o, (_Mapping, _Any)) for o in options)
        self._tag: str | None | bool = False  # False: not looked for yet
        self._by_tag: dict[str, dict[Any, list[_Object]]] = {}

    @property
    def tag(self) -> str | None:
        """The key every object member requires as a Literal (``type``, ``role``), if any."""
        if self._tag is False:
            self._tag = next(
                (
                    t
                    for t in _TAGS
                    if self.objects and all(t in o.fields and t in o.tags for o in self.objects)
                ),
                None,
            )
        return self._tag  # type: ignore[return-value]

    def check(self, value: Any, where: str) -> None:
        if value is None and self.optional:
            return
        if _is_mapping(value):
            if self.objects:
                self._check_object(value, where)
                return
            if self.any_mapping:
                return
        others = self.others
        for option in others:
            if option.quick(value):
                return
        # Only a member of the value's own kind (a list for a list) can still take it: its
        # check says where deeper down it does not fit.
        if isinstance(value, (list, tuple)):
            for option in others:
                if isinstance(option, _List):
                    option.check(value, where)
                    return
        if _is_mapping(value):
            for option in others:
                if isinstance(option, _Mapping):
                    return
        for option in others:
            if isinstance(option, _Literal) and value.__class__ in option.kinds:
                option.check(value, where)
                return
        raise SchemaProblem(f"{where} must be {self.describe()}, not {describe_value(value)}")

    def quick(self, value: Any) -> bool:
        if value is None:
            return self.optional
        return any(option.quick(value) for option in self.others)

    def _candidates(self, tag: str) -> dict[Any, list[_Object]]:
        """Tag value -> the members that take it (made once per tag)."""
        table = self._by_tag.get(tag)
        if table is None:
            table = {}
            for option in self.objects:
                for value in option.tags.get(tag, ()):
                    table.setdefault(value, []).append(option)
            self._by_tag[tag] = table
        return table

    def _check_object(self, value: Mapping[str, Any], where: str) -> None:
        tag = self.tag
        if tag is None:
            tag = "type" if "type" in value else None
        candidates = self.objects
        if tag is not None:
            given = value.get(tag)
            table = self._candidates(tag)
            try:
                candidates = table[given]
            except (KeyError, TypeError):  # TypeError: an unhashable value
                # Members that do not require the tag may still take the value without it.
                untagged = [o for o in self.objects if tag not in o.required_tags]
                if given is None and untagged:
                    candidates = untagged
                elif self.any_mapping:
                    return
                else:
                    raise SchemaProblem(_unknown_tag(where, tag, given, list(table))) from None
        if len(candidates) == 1 and not self.any_mapping:
            candidates[0].check(value, where)
            return
        problems = []
        for option in candidates:
            try:
                option.check(value, where)
            except SchemaProblem as e:
                problems.append(e)
            else:
                return
        if self.any_mapping:
            return
        raise problems[0]

    def describe(self) -> str:
        parts = [d for o in self.others if (d := o.describe()) and o is not _ANY]
        tag = self.tag
        if self.objects:
            if tag is not None:
                values = ", ".join(repr(v) for v in self._candidates(tag))
                parts.append(f"an object whose {tag!r} is one of {values}")
            else:
                parts.append("an object")
        if self.optional:
            parts.append("null")
        return " or ".join(dict.fromkeys(parts))


def _is_mapping(value: Any) -> bool:
    return value.__class__ is dict or isinstance(value, Mapping)


def _unknown_tag(where: str, tag: str, given: Any, known: list[Any]) -> str:
    listed = ", ".join(repr(v) for v in known)
    if given is None:
        return f"{where} has no {tag!r}; it must be one of {listed}"
    hint = nearest(given, known) if isinstance(given, str) else ""
    return (
        f"{where} has {tag} {given!r}{hint}, which the installed anthropic SDK "
        f"({anthropic.__version__}) does not know; it knows {listed}"
    )


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _literal_values(tp: Any) -> tuple[Any, ...]:
    """The values of a Literal (or an Optional Literal); () for any other type."""
    if typing.get_origin(tp) in _LITERAL:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if options and all(typing.get_origin(a) in _LITERAL for a in options):
            return tuple(v for a in options for v in typing.get_args(a))
    return ()


def _peel(annotation: Any, total: bool) -> tuple[Any, bool]:
    """The annotation without Required/NotRequired/Annotated, and whether the key is required."""
    required = total
    while True:
        origin = typing.get_origin(annotation)
        if origin in _REQUIRED:
            required = True
        elif origin in _NOT_REQUIRED:
            required = False
        elif origin is not typing.Annotated:
            return annotation, required
        annotation = typing.get_args(annotation)[0]


def _is_typed_dict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__")


_CACHE: dict[Any, Check] = {}


def compile_type(tp: Any) -> Check:
    """The check of one annotation (cached: every TypedDict is compiled once)."""
    try:
        return _CACHE[tp]
    except (KeyError, TypeError):
        pass
    check = _compile(tp)
    # An unhashable annotation (Annotated metadata) is compiled each time.
    with contextlib.suppress(TypeError):
        _CACHE[tp] = check
    return check


def _compile(tp: Any) -> Check:
    tp, _ = _peel(tp, True)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return _ANY
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        optional = len(options) != len(args)
        flat: list[Check] = []
        for option in options:
            compiled = compile_type(option)
            if isinstance(compiled, _Union):  # nested unions (Annotated[Union[...]]) flattened
                flat.extend([*compiled.objects, *compiled.others])
                optional = optional or compiled.optional
            else:
                flat.append(compiled)
        if len(flat) == 1 and not optional:
            return flat[0]
        return _Union(flat, optional=optional)
    if origin in _LITERAL:
        return _Literal(args)
    if _is_typed_dict(tp):
        return _Object(tp)
    if origin in _MAPPINGS or tp in _MAPPINGS:
        return _ANY_MAPPING
    if origin in _LISTS or getattr(origin, "__name__", "") == "SequenceNotStr":
        return _List(compile_type(args[0]) if args else _ANY)
    if tp is str:
        return _Instance((str,), "a str")
    if tp is bool:
        return _Instance((bool,), "true or false")
    if tp is int:
        return _Instance((int,), "an integer")
    if tp is float:
        return _Instance((int, float), "a number")
    if isinstance(tp, type) and not issubclass(tp, (dict, list)):
        # Another class (a pydantic response model, os.PathLike): only an instance of it fits,
        # which a JSON value never is; the union it belongs to decides (and does not name it).
        return _Instance((tp,), "")
    return _ANY  # something this reader does not understand is not refused


def nearest(name: Any, known: collections.abc.Iterable[Any]) -> str:
    """ " (did you mean 'max_tokens'?)" for a misspelled name, else ""."""
    if not isinstance(name, str):
        return ""
    candidates = [k for k in known if isinstance(k, str)]
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def describe_value(value: Any) -> str:
    text = repr(value)
    shown = text if len(text) <= 60 else text[:59] + "…"
    return f"{type(value).__name__} {shown}"


# -- the SDK's request types -------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _request_type(beta: bool) -> type:
    if beta:
        from anthropic.types.beta import message_create_params as beta_params

        return beta_params.MessageCreateParamsNonStreaming
    from anthropic.types import message_create_params

    return message_create_params.MessageCreateParamsNonStreaming


@functools.lru_cache(maxsize=2)
def request_fields(beta: bool) -> Mapping[str, Check]:
    """Every top-level param of a batch request -> its check (the beta types with betas)."""
    check = compile_type(_request_type(beta))
    assert isinstance(check, _Object)
    headers = batch_header_params(beta)
    return {k: v for k, v in check.fields.items() if k not in headers}


@functools.lru_cache(maxsize=2)
def batch_header_params(beta: bool) -> frozenset[str]:
    """Keys the SDK's request type has that are settings of the whole batch create, sent as
    headers (``betas``, ``workspace_id``...): the SDK's ``BatchCreateParams`` has them beside
    ``requests``, and the API refuses them inside one request's params."""
    if beta:
        from anthropic.types.beta.messages import batch_create_params
    else:
        from anthropic.types.messages import batch_create_params  # type: ignore[no-redef]
    hints = typing.get_type_hints(batch_create_params.BatchCreateParams)
    return frozenset(hints) - {"requests"}


@functools.lru_cache(maxsize=8)
def content_block_check(beta: bool, role: str) -> Check | None:
    """The check of one content block of a message with ``role`` (None: no such role)."""
    messages = request_fields(beta)["messages"]
    assert isinstance(messages, _List)
    union = messages.item
    members = union.objects if isinstance(union, _Union) else [union]
    for member in members:
        if not isinstance(member, _Object) or "content" not in member.fields:
            continue
        if role not in member.tags.get("role", ()):
            continue
        content = member.fields["content"]
        options = content.others if isinstance(content, _Union) else [content]
        for option in options:
            if isinstance(option, _List):
                return option.item
    return None
