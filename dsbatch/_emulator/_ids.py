"""Identifiers, timestamps and the stable hashes every emulator decision is derived from."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import xxhash

__all__ = [
    "canonical_json",
    "prefixed_id",
    "rfc3339",
    "stable_hash",
    "unit_interval",
]

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of ``parts`` that is the same in every process and on every run."""
    return xxhash.xxh3_64_intdigest("\x1f".join(map(str, parts)).encode())


def unit_interval(*parts: object) -> float:
    """A number in [0, 1) derived from ``parts``: the emulator's only source of "randomness"."""
    return stable_hash(*parts) / 2.0**64


# Each byte of a digest picks one alphanumeric (a slight bias towards the first eight is harmless).
_TO_ALPHANUMERIC = bytes(ord(_ALPHABET[byte % 62]) for byte in range(256))
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def prefixed_id(prefix: str, *parts: object, width: int = 24) -> str:
    """An id like ``msgbatch_013Zva2CMHLNnXjNJJKqJ2EF``, derived from ``parts``."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=width).digest()
    return prefix + digest.translate(_TO_ALPHANUMERIC).decode("ascii")


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces: equal values always give equal text."""
    return _canonical(value)


def rfc3339(timestamp: float) -> str:
    """Epoch seconds as the API writes them: ``2024-08-20T18:37:24.100435Z``."""
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
