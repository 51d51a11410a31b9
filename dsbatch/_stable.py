"""Is the prompt function stable? A prompt that reads ``random``, the time or a counter renders
other requests on every call: every rerun and every resume then pays for every row again, and
only dsbatch can see it happen. Two checks, each a warning (once per call):

- a few rows are rendered a second time at the start of a job: other bytes mean the prompt is not
  a function of the row (the warning names the row and the first field that differs);
- a job that starts beside an unfinished job of the same dataset whose requests it shares none of
  was most likely started by a prompt that changed (on purpose, or not).

``check_determinism=False`` silences both, for prompts that vary on purpose.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

from dsbatch._errors import PromptError
from dsbatch._ledger import Ledger
from dsbatch._render import Rendered, RequestShape, render_split

__all__ = ["first_difference", "warn_if_unstable", "warn_if_replacing"]

log = logging.getLogger("dsbatch")

# Rows rendered twice per split: the first, the middle and the last (no more: a heavy prompt
# function must not cost noticeably more).
_PROBES = 3
_NOT_STABLE = (
    "every rerun and resume of this job will send new requests, and pay for them again. Make "
    "the prompt depend on the row alone (no random, time or counters), or pass "
    "check_determinism=False if it varies on purpose."
)


def warn_if_unstable(
    splits: Mapping[str, Dataset],
    rendered: Rendered,
    prompt: Callable[..., Any],
    *,
    shape: RequestShape,
    with_indices: bool,
    labels: Mapping[str, str | None],
    transform: Callable[[Rendered], object] | None = None,
) -> bool:
    """Render a few rows again; warn (and return True) when one renders to other bytes.
    ``transform`` makes the job's bytes of a rendering (its prompt-cache breakpoints)."""
    for split, ds in splits.items():
        ids = rendered.row_custom_ids[split]
        if not ids:
            continue
        rows = sorted({0, len(ids) // 2, len(ids) - 1})[:_PROBES]
        rows = [r for r in rows if ids[r] is not None]
        if not rows:
            continue
        again = Rendered()

        def fn(row: dict[str, Any], i: int | None = None, rows: list[int] = rows) -> Any:
            return prompt(row, rows[i]) if with_indices and i is not None else prompt(row)

        try:
            render_split(
                again,
                split,
                ds.select(rows),
                fn,
                shape=shape,
                with_indices=with_indices,
                label=None,
            )
        except PromptError as e:
            row = rows[e.row] if e.row is not None else rows[0]
            _warn(split, labels[split], row, f"the second call failed ({e})")
            return True
        if transform is not None:
            transform(again)
        for row, custom_id in zip(rows, again.row_custom_ids[split], strict=True):
            first = ids[row]
            if custom_id != first:
                where = (
                    "it skipped the row the second time"
                    if custom_id is None or first is None
                    else "first difference at "
                    + first_difference(rendered.bodies[first], again.bodies[custom_id])
                )
                _warn(split, labels[split], row, where)
                return True
    return False


def _warn(split: str, label: str | None, row: int, where: str) -> None:
    of = f" of split {label!r}" if label else ""
    log.warning(
        "dsbatch: the prompt function made another request for row %d%s when called again (%s): %s",
        row,
        of,
        where,
        _NOT_STABLE,
    )


def first_difference(first: bytes, second: bytes) -> str:
    """The path of the first field at which two requests differ, e.g. ``messages[0].content``."""
    return _walk(json.loads(first), json.loads(second), "") or "(the whole request)"


def _walk(a: Any, b: Any, path: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            where = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                return where
            found = _walk(a[key], b[key], where)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _walk(x, y, f"{path}[{i}]")
            if found is not None:
                return found
        return None if len(a) == len(b) else f"{path}[{min(len(a), len(b))}]"
    return None if a == b else path


def warn_if_replacing(
    ledger: Ledger, own: str, datasets: Mapping[str, str], needed: Sequence[str]
) -> None:
    """Warn when an unfinished job of the same dataset shares none of this job's requests."""
    if not datasets or not needed:
        return
    value_set = pa.array(list(needed), pa.string())
    for fingerprint in ledger.job_fingerprints():
        if fingerprint == own:
            continue
        other = ledger.job(fingerprint)
        manifest = other.read_manifest()
        if manifest is None or manifest.state != "running" or manifest.fingerprints != datasets:
            continue
        asked = other.request_ids()
        if asked is None or len(asked) == 0 or pc.any(pc.is_in(asked, value_set=value_set)).as_py():
            continue
        started = dt.datetime.fromtimestamp(manifest.created_at).strftime("%Y-%m-%d %H:%M")
        log.warning(
            "dsbatch: job %s, started %s on the same rows and not finished, shares none of its "
            "%d requests with this one: its answers cannot serve this job, and what it has in "
            "flight is paid for anyway. If the prompt or params changed on purpose, carry on; "
            "if not, the prompt function is not deterministic, and %s",
            fingerprint,
            started,
            len(asked),
            _NOT_STABLE,
        )
        return
