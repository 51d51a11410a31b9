"""Seconds per stage of a ``dsbatch.map`` call, timed from outside: dsbatch has no timing hook,
so the benchmark wraps some of the library's internal functions (its seams) with a timer.

Each stage names candidate seams as ``("module:Class", "attribute")`` or ``("module", "name")``;
every candidate found is wrapped, and a stage with none found is reported as missing ("n/a"),
so a refactor of the library degrades the table instead of breaking the benchmark. Time is
exclusive: a stage's seam called inside another stage's counts for the inner stage only, and a
seam called inside its own stage counts once.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["StageTimer"]

Seam = tuple[str, str]


def _owner(target: str) -> Any:
    module, _, cls = target.partition(":")
    owner: Any = importlib.import_module(module)
    for part in filter(None, cls.split(".")):
        owner = getattr(owner, part)
    return owner


class StageTimer:
    """Wraps the seams of each stage; ``measure()`` collects the seconds of one block."""

    def __init__(self, stages: Mapping[str, Sequence[Seam]]) -> None:
        self.stages = list(stages)
        self.seconds: dict[str, float] = defaultdict(float)
        self.missing: set[str] = set()
        self.found: dict[str, list[str]] = {}
        self._stack: list[list[Any]] = []  # [stage, start, seconds spent in inner stages]
        self._undo: list[tuple[Any, str, Any]] = []
        for stage, seams in stages.items():
            self.found[stage] = [f"{t}.{a}" for t, a in seams if self._wrap(stage, t, a)]
            if not self.found[stage]:
                self.missing.add(stage)

    def _wrap(self, stage: str, target: str, attr: str) -> bool:
        try:
            owner = _owner(target)
        except (ImportError, AttributeError):
            return False
        # A class's own attribute, so a method stays a method (no staticmethod seams here).
        original = (
            owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
        )
        if not callable(original) or isinstance(original, (staticmethod, classmethod, type)):
            return False
        setattr(owner, attr, self._timed(stage, original))
        self._undo.append((owner, attr, original))
        return True

    def _timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._stack and self._stack[-1][0] == stage:
                return fn(*args, **kwargs)
            frame: list[Any] = [stage, time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                elapsed = time.perf_counter() - frame[1]
                self.seconds[stage] += elapsed - frame[2]
                if self._stack:
                    self._stack[-1][2] += elapsed

        return timed

    @contextmanager
    def measure(self) -> Iterator[dict[str, float | None]]:
        """Seconds per stage spent in the block (None for a stage with no seam found), filled in
        when the block ends."""
        self.seconds.clear()
        out: dict[str, float | None] = {}
        try:
            yield out
        finally:
            for stage in self.stages:
                out[stage] = None if stage in self.missing else self.seconds.get(stage, 0.0)

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()
