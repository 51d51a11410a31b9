"""Reruns without rendering: as ``Dataset.map`` does, a call whose dataset, prompt function and
arguments match a finished job's returns that job's output without calling the prompt function.

The call's key hashes everything the requests and the new columns are made from: each split's
fingerprint (and the size and modification time of the files it reads), the prompt function,
``response_format`` and ``parse`` (each described by value, ``_describe``: an edit to a
function's code, to a global it reads or to a default is seen), every keyword of ``MapOptions``
but the few that cannot change what ``map`` returns, the prices file, the server (base URL,
origin, API version) and the versions of dsbatch and the SDK, all hashed by
``datasets.fingerprint.Hasher`` as it hashes map functions.

A wrong hit is worse than a slow rerun: whatever cannot be hashed renders (one log line says
why), and so does a call whose server is not yet known without a call. The ledger keeps each
finished call's key -> its job (``reruns/``); the job itself says whether it can be served
(``Job._cached_result``: finished, nothing in flight, its columns or answers all stored).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

import anthropic
from datasets import Dataset, DatasetDict
from datasets.fingerprint import Hasher

from dsbatch._backend import Backend
from dsbatch._compat import fingerprint_of
from dsbatch._cost import prices_key
from dsbatch._describe import code_hash, package_version
from dsbatch._errors import LedgerError
from dsbatch._inputs import files_of
from dsbatch._job import Job
from dsbatch._ledger import Ledger
from dsbatch._options import MapOptions
from dsbatch._origin import known_origin

__all__ = ["NOT_IN_KEY", "call_digest", "remember", "rerun_key", "served"]

log = logging.getLogger("dsbatch")

# Bumped when what the key covers changes, so that no older entry is matched.
_KEY_VERSION = 1

# The keywords that cannot change what a call returns: how it waits and shows progress, which
# cache it uses (the index lives in that cache), whether it may be served from the index, and
# how many processes render (the same bytes, however many).
NOT_IN_KEY = frozenset(
    {"poll_interval", "progress", "cache_dir", "load_from_cache_file", "num_proc"}
)


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
            code[name] = code_hash(obj)
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
    return package_version("dsbatch"), sorted(found)


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
