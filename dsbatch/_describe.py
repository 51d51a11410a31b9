"""The user's code as data to hash: what a rerun's key and the stored columns' key are made of.

``datasets.fingerprint.Hasher`` hashes map functions with dill, which pickles a function it can
import back (one defined in a module rather than in a notebook or script) by its name alone, so
an edit to its code or to a global it reads would go unseen. Here every function of the user's
code is described by value, recursively: its code (without line numbers), the globals and
module attributes it reads, its defaults and closure; a class by its functions, plain
attributes, annotations and (a pydantic model) its schema; functions, classes and modules of
installed packages and of the standard library by name (and the package's version).
"""

from __future__ import annotations

import functools
import os
import site
import sys
import sysconfig
from types import CodeType, FunctionType, MethodType, ModuleType
from typing import Any

from datasets.fingerprint import Hasher

__all__ = ["code_hash", "describe", "package_version"]

# Where installed packages and the standard library live: their code is described by name.
_LIBRARY_DIRS = tuple(
    os.path.realpath(p)
    for p in {
        *(sysconfig.get_paths().get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib")),
        *getattr(site, "getsitepackages", list)(),
        site.getusersitepackages(),
    }
    if p
)

# A class's own attributes that say nothing of what it does (annotations are taken apart).
_CLASS_SKIPPED = frozenset(
    {"__dict__", "__weakref__", "__doc__", "__module__", "__qualname__", "__annotations__"}
)
# Plain values kept of a class's own attributes (besides its functions).
_PLAIN = (str, bytes, int, float, bool, type(None), tuple, list, dict, frozenset)


def code_hash(obj: Any) -> str:
    """A hash of ``obj`` described by value; raises what dill raises for what it cannot hash."""
    return Hasher.hash(describe(obj))


def package_version(module: str) -> str | None:
    """The version of the package a module belongs to, when it says."""
    found = sys.modules.get(module.partition(".")[0])
    return getattr(found, "__version__", None)


def _library(obj: Any) -> tuple[str, Any, str | None]:
    """A function or class of an installed package: by name (dill), and the package's version."""
    return ("library", obj, package_version(getattr(obj, "__module__", None) or ""))


def describe(obj: Any) -> Any:
    """``obj`` as data for ``Hasher``: the user's functions, classes and modules by value."""
    return _Describer().value(obj)


class _Describer:
    def __init__(self) -> None:
        # id -> placeholder of what is being or has been described: a function that calls
        # itself, or a module reached twice, is described once.
        self._seen: dict[int, tuple[str, str]] = {}
        self._keep: list[Any] = []  # what the ids belong to, alive until the end

    def value(self, obj: Any, names: frozenset[str] = frozenset()) -> Any:
        """``names``: the attributes the code reads (what of a user module matters)."""
        if isinstance(obj, (str, bytes, int, float, bool, type(None))):
            return obj
        if isinstance(obj, (list, tuple)):
            return (type(obj).__name__, [self.value(v, names) for v in obj])
        if isinstance(obj, dict):
            return ("dict", {k: self.value(v, names) for k, v in obj.items()})
        if isinstance(obj, (set, frozenset)):
            return ("set", sorted(Hasher.hash(self.value(v, names)) for v in obj))
        if isinstance(obj, functools.partial):
            return ("partial", self.value(obj.func), self.value(obj.args), self.value(obj.keywords))
        if isinstance(obj, MethodType):
            return ("method", self.value(obj.__func__), self.value(obj.__self__))
        if isinstance(obj, (staticmethod, classmethod)):
            return (type(obj).__name__, self.value(obj.__func__))
        if isinstance(obj, property):
            return ("property", [self.value(f) for f in (obj.fget, obj.fset, obj.fdel)])
        if isinstance(obj, ModuleType):
            return self._module(obj, names)
        if isinstance(obj, FunctionType):
            return self._function(obj) if _is_users(obj.__module__) else _library(obj)
        if isinstance(obj, type):
            return self._class(obj) if _is_users(obj.__module__) else _library(obj)
        if _is_users(type(obj).__module__) and hasattr(obj, "__dict__"):
            return ("object", self.value(type(obj)), self.value(vars(obj)))
        return obj  # left to dill, as datasets hashes it

    def _once(self, obj: Any, kind: str) -> tuple[str, str] | None:
        placeholder = self._seen.get(id(obj))
        if placeholder is None:
            self._seen[id(obj)] = (kind, getattr(obj, "__qualname__", getattr(obj, "__name__", "")))
            self._keep.append(obj)
        return placeholder

    def _function(self, fn: FunctionType) -> Any:
        if (seen := self._once(fn, "function")) is not None:
            return seen
        names = _names(fn.__code__)
        closure = []
        for cell in fn.__closure__ or ():
            try:
                closure.append(self.value(cell.cell_contents, names))
            except ValueError:  # a cell not yet filled
                closure.append(("empty cell",))
        return (
            "function",
            fn.__module__,
            fn.__qualname__,
            fn.__code__,  # datasets pickles code without its file's path and line numbers
            {
                name: self.value(fn.__globals__[name], names)
                for name in sorted(names)
                if name in fn.__globals__
            },
            self.value(fn.__defaults__),
            self.value(fn.__kwdefaults__),
            closure,
            self.value(dict(vars(fn))),
        )

    def _class(self, cls: type) -> Any:
        if (seen := self._once(cls, "class")) is not None:
            return seen
        attributes = {}
        for name, value in sorted(vars(cls).items()):
            if name in _CLASS_SKIPPED:
                continue
            wrapped = getattr(value, "wrapped", None)  # a pydantic validator
            if wrapped is not None:
                value = wrapped
            if isinstance(value, (FunctionType, staticmethod, classmethod, property)) or (
                # Not the dunder values a framework keeps (pydantic's hold ids of classes).
                isinstance(value, (type, *_PLAIN)) and not name.startswith("__")
            ):
                attributes[name] = self.value(value)
        schema = None
        if callable(getattr(cls, "model_json_schema", None)):  # a pydantic model's fields
            try:
                schema = cls.model_json_schema()  # type: ignore[attr-defined]
            except Exception:  # a model pydantic cannot describe: its functions still are
                schema = None
        # From the class's own dict: reading ``cls.__annotations__`` would add an empty one.
        annotations = {k: repr(v) for k, v in vars(cls).get("__annotations__", {}).items()}
        bases = [self.value(base) for base in cls.__bases__]
        return ("class", cls.__module__, cls.__qualname__, bases, attributes, annotations, schema)

    def _module(self, module: ModuleType, names: frozenset[str]) -> Any:
        if not _is_users(module.__name__):
            return ("module", module.__name__, package_version(module.__name__))
        # A module of the user's: what the code reads of it (``templates.SUMMARY``).
        if (seen := self._once(module, "module")) is not None:
            return seen
        return (
            "module",
            module.__name__,
            {
                name: self.value(getattr(module, name), names)
                for name in sorted(names)
                if hasattr(module, name) and not isinstance(getattr(module, name), ModuleType)
            },
        )


def _names(code: CodeType) -> frozenset[str]:
    """Every global and attribute name the code (and the code nested in it) reads."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _names(const)
    return frozenset(names)


@functools.lru_cache(maxsize=1024)
def _is_users(module_name: str | None) -> bool:
    """Whether a module is the user's code (not the standard library nor an installed
    package): a module that cannot be found counts as the user's (described by value)."""
    if module_name in (None, "__main__", "builtins"):
        return module_name != "builtins"
    module = sys.modules.get(module_name)
    if module is None:
        return True
    path = getattr(module, "__file__", None)
    if path is None:  # built into the interpreter
        return False
    return not os.path.realpath(path).startswith(_LIBRARY_DIRS)
