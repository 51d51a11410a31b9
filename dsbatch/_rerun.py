"""Reruns without rendering: as ``Dataset.map`` does, a call whose dataset, prompt function and
arguments match a finished job's returns that job's output without calling the prompt function.

The call's key hashes everything the requests and the new columns are made from: each split's
fingerprint (and the size and modification time of the files it reads), the prompt function,
``response_format`` and ``parse``, every keyword of ``MapOptions`` but the few that cannot change
what ``map`` returns, the prices file, the server (base URL, origin, API version) and the
versions of dsbatch and the SDK. ``datasets.fingerprint.Hasher`` hashes it all, as it hashes
map functions, with one difference: dill pickles a function it can import back (one defined
in a module rather than in a notebook or script) by its name alone, so an edit to its code or
to a global it reads would go unseen. Here every function of the user's code is described by
value, recursively: its code (without line numbers), the globals and module attributes it
reads, its defaults and closure; functions, classes and modules of installed packages and of
the standard library by name (and the package's version).

A wrong hit is worse than a slow rerun: whatever cannot be hashed renders (one log line says
why), and so does a call whose server is not yet known without a call. The ledger keeps each
finished call's key -> its job (``reruns/``); the job itself says whether it can be served
(``Job._cached_result``: finished, nothing in flight, its columns or answers all stored).
"""

from __future__ import annotations

import functools
import logging
import os
import site
import sys
import sysconfig
from collections.abc import Callable, Mapping
from dataclasses import fields
from types import CodeType, FunctionType, MethodType, ModuleType
from typing import Any

import anthropic
from datasets import Dataset, DatasetDict
from datasets.fingerprint import Hasher

from dsbatch._backend import Backend
from dsbatch._compat import fingerprint_of
from dsbatch._cost import prices_key
from dsbatch._errors import LedgerError
from dsbatch._inputs import files_of
from dsbatch._job import Job
from dsbatch._ledger import Ledger
from dsbatch._options import MapOptions
from dsbatch._origin import known_origin

__all__ = ["NOT_IN_KEY", "call_digest", "describe", "remember", "rerun_key", "served"]

log = logging.getLogger("dsbatch")

# Bumped when what the key covers changes, so that no older entry is matched.
_KEY_VERSION = 1

# The keywords that cannot change what a call returns: how it waits and shows progress, which
# cache it uses (the index lives in that cache), and whether it may be served from the index.
NOT_IN_KEY = frozenset({"poll_interval", "progress", "cache_dir", "load_from_cache_file"})

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


def call_digest(
    splits: Mapping[str, Dataset],
    prompt: Callable[..., Any],
    options: MapOptions,
    backend: Backend,
    *,
    labelled: bool,
) -> str | None:
    """A hash of the call but for the server's origin (``rerun_key`` adds it), taken before
    the prompt function runs; None when something cannot be hashed (logged)."""
    code: dict[str, Any] = {}
    for name, obj in (
        ("the prompt function", prompt),
        ("response_format", options.response_format),
        ("parse", options.parse),
    ):
        try:
            code[name] = Hasher.hash(describe(obj))
        except Exception as e:  # dill fails in many ways; all mean the same here
            log.warning(
                "dsbatch: rendering every row: %s %s cannot be hashed (%s: %s), so this call "
                "cannot be recognised as a rerun without running it",
                name,
                getattr(obj, "__qualname__", type(obj).__name__),
                type(e).__name__,
                str(e)[:200],
            )
            return None
    keywords = {
        f.name: getattr(options, f.name)
        for f in fields(options)
        if f.init and f.name not in NOT_IN_KEY | {"response_format", "parse"}
    }
    inputs = [(split, fingerprint_of(ds), files_of(ds)) for split, ds in splits.items()]
    described = {
        "version": _KEY_VERSION,
        "dsbatch": _own_code(),
        "anthropic": anthropic.__version__,
        "server": (backend.base_url, backend.api_version),
        "prices": prices_key(options.prices),  # and the DSBATCH_PRICES file
        "inputs": inputs,
        "labelled": labelled,
        "code": code,
        "keywords": keywords,
    }
    try:
        return Hasher.hash(described)
    except Exception as e:
        log.warning(
            "dsbatch: rendering every row: the keywords of this call cannot be hashed (%s: %s)",
            type(e).__name__,
            str(e)[:200],
        )
        return None


def rerun_key(digest: str, backend: Backend, ledger: Ledger) -> str | None:
    """The key of the call: its digest and where the server's answers come from; None while
    that is not known without a call (a server this cache has never heard from holds no job
    of it: the call that runs asks it, and its key is known after)."""
    origin = known_origin(backend, ledger)
    return None if origin is None else Hasher.hash((_KEY_VERSION, digest, origin))


@functools.lru_cache(maxsize=1)
def _own_code() -> tuple[str | None, list[tuple[str, int, int]]]:
    """dsbatch's version, and the size and modification time of each of its modules: a
    development checkout renders otherwise under the same version number."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = []
    for root, _, names in os.walk(here):
        for name in sorted(names):
            if name.endswith(".py"):
                stat = os.stat(os.path.join(root, name))
                found.append(
                    (
                        os.path.relpath(os.path.join(root, name), here),
                        stat.st_size,
                        stat.st_mtime_ns,
                    )
                )
    return _version("dsbatch"), sorted(found)


def _version(module: str) -> str | None:
    """The version of the package a module belongs to, when it says."""
    found = sys.modules.get(module.partition(".")[0])
    return getattr(found, "__version__", None)


def _library(obj: Any) -> tuple[str, Any, str | None]:
    """A function or class of an installed package: by name (dill), and the package's version."""
    return ("library", obj, _version(getattr(obj, "__module__", None) or ""))


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
            return ("module", module.__name__, _version(module.__name__))
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


def served(
    ledger: Ledger,
    key: str,
    splits: Mapping[str, Dataset],
    options: MapOptions,
    client: anthropic.Anthropic | None,
    *,
    labelled: bool,
) -> Dataset | DatasetDict | None:
    """The output of the finished job a call with this key made, from the cache alone (nothing
    rendered, sent or downloaded); None when there is none to serve."""
    fingerprint = ledger.rerun_job(key)
    if fingerprint is None:
        return None
    job = ledger.job(fingerprint)
    try:
        manifest = job.read_manifest()
        # Whether it is finished, with nothing in flight, is the job's to say (``_cached_result``).
        if (
            manifest is None
            or manifest.labelled != labelled
            or manifest.split_names != list(splits)
        ):
            return None
        found = Job(
            job,
            manifest,
            client=client,
            options=options,
            splits=splits,
            cache_dir=options.cache_dir,  # type: ignore[arg-type]
        )
        out = found._cached_result()
    except LedgerError as e:  # a damaged file: the call renders, and mends what it can
        log.info("dsbatch: not served from job %s without rendering: %s", fingerprint, e)
        return None
    if out is not None:
        log.info("dsbatch: the same call as job %s: its output, nothing rendered", fingerprint)
    return out


def remember(ledger: Ledger, key: str | None, fingerprint: str) -> None:
    """Remember that the call with this key was answered by this job, once it is finished."""
    if key is None:
        return
    manifest = ledger.job(fingerprint).read_manifest()
    if manifest is None or manifest.state != "finished":
        return
    try:
        ledger.remember_rerun(key, fingerprint)
    except LedgerError as e:  # a read-only cache: the next call renders
        log.info("dsbatch: could not remember the key of this call: %s", e)
