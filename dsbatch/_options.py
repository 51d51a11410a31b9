"""The keywords of ``dsbatch.map``, checked once, before anything is rendered or sent.

Bad arguments are plain ``TypeError`` / ``ValueError`` naming the keyword and what it takes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from dsbatch import _structured
from dsbatch._join import OutputSpec
from dsbatch._limits import MAX_BATCH_BYTES, MAX_BATCH_REQUESTS
from dsbatch._poll import PollSchedule, poll_schedule
from dsbatch._render import RequestShape

__all__ = ["MapOptions"]

_ON_ERROR = ("keep", "drop", "raise")
_MODES = ("native", "tool")


@dataclass(frozen=True)
class MapOptions:
    """Every keyword of one ``dsbatch.map`` call, checked."""

    defaults: dict[str, Any]
    output: OutputSpec
    betas: tuple[str, ...]
    with_indices: bool
    cache_dir: str | os.PathLike[str] | None
    max_attempts: int
    on_error: str
    schedule: PollSchedule
    resend_canceled: bool
    progress: bool
    max_batch_requests: int
    max_batch_bytes: int
    check_determinism: bool = True

    @classmethod
    def build(
        cls,
        *,
        model: Any,
        max_tokens: Any,
        system: Any,
        params: Any,
        response_format: Any,
        parse: Any,
        output_column: Any,
        status_column: Any,
        structured_output: Any,
        betas: Any,
        with_indices: bool,
        cache_dir: str | os.PathLike[str] | None,
        max_attempts: Any,
        on_error: Any,
        poll_interval: Any,
        resend_canceled: bool,
        progress: bool,
        max_batch_requests: Any,
        max_batch_bytes: Any,
        check_determinism: bool = True,
    ) -> MapOptions:
        if model is not None and (not isinstance(model, str) or not model):
            raise TypeError(f"model must be a model name such as 'claude-haiku-4-5', not {model!r}")
        _positive_int("max_tokens", max_tokens)
        if system is not None and not isinstance(system, (str, list)):
            raise TypeError(
                f"system must be a str or a list of text blocks, not {type(system).__name__}"
            )
        if params is not None and not isinstance(params, Mapping):
            raise TypeError(
                f"params must be a dict of Messages params, not {type(params).__name__}"
            )
        names = {"output_column": output_column, "status_column": status_column}
        for keyword, name in names.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"{keyword} must be a non-empty column name, not {name!r}")
        if output_column == status_column:
            raise ValueError(
                f"output_column and status_column are both {output_column!r}: give them "
                "different names"
            )
        if structured_output not in _MODES:
            raise ValueError(
                f"structured_output must be 'native' or 'tool', not {structured_output!r}"
            )
        if response_format is not None:
            _structured.check_response_format(response_format)
        if parse is not None and not callable(parse):
            raise TypeError(f"parse must be a function (row, message) -> dict, not {parse!r}")
        if on_error not in _ON_ERROR:
            raise ValueError(f"on_error must be one of {_ON_ERROR}, not {on_error!r}")
        _positive_int("max_attempts", max_attempts)
        if (
            not isinstance(max_batch_requests, int)
            or not 1 <= max_batch_requests <= MAX_BATCH_REQUESTS
        ):
            raise ValueError(f"max_batch_requests must be between 1 and {MAX_BATCH_REQUESTS:,}")
        if not isinstance(max_batch_bytes, int) or not 1 <= max_batch_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"max_batch_bytes must be between 1 and {MAX_BATCH_BYTES:,}")
        defaults: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
        if system is not None:
            defaults["system"] = system
        defaults.update(params or {})
        if defaults.get("model") is None:
            del defaults["model"]
        return cls(
            defaults=defaults,
            output=OutputSpec(
                output_column=output_column,
                status_column=status_column,
                response_format=response_format,
                structured_output=structured_output,
                parse=parse,
            ),
            betas=_betas(betas),
            with_indices=bool(with_indices),
            cache_dir=cache_dir,
            max_attempts=max_attempts,
            on_error=on_error,
            schedule=poll_schedule(poll_interval),
            resend_canceled=bool(resend_canceled),
            progress=bool(progress),
            max_batch_requests=max_batch_requests,
            max_batch_bytes=max_batch_bytes,
            check_determinism=bool(check_determinism),
        )

    def shape(self, api_version: str) -> RequestShape:
        """What every request is made of, for a client that sends ``api_version``."""
        spec = self.output
        additions = (
            _structured.request_params(spec.response_format, spec.structured_output)
            if spec.response_format is not None
            else {}
        )
        return RequestShape(self.defaults, additions, api_version, self.betas)

    def new_columns(self) -> list[str]:
        """The columns ``map`` adds, in order (parse's are only known once it has run)."""
        spec = self.output
        fields = (
            _structured.arrow_schema(spec.response_format).names
            if spec.response_format is not None
            else []
        )
        return [spec.output_column, *fields, spec.status_column]

    def check_columns(self, splits: Mapping[str, Sequence[str]]) -> None:
        """Refuse new columns that would overwrite input columns (or each other)."""
        spec = self.output
        fields = self.new_columns()[1:-1]
        for name in fields:
            if name in (spec.output_column, spec.status_column):
                raise ValueError(
                    f"the response_format field {name!r} has the name of the "
                    f"{'output' if name == spec.output_column else 'status'} column: pass "
                    f"{'output_column' if name == spec.output_column else 'status_column'}="
                    "... with another name"
                )
        for split, columns in splits.items():
            where = f" of split {split!r}" if split else ""
            for name in columns:
                if name == spec.output_column:
                    raise ValueError(
                        f"the dataset{where} already has a column {name!r}, which the answers "
                        "would overwrite: pass output_column='...' with another name (or "
                        "remove the column first)"
                    )
                if name == spec.status_column:
                    raise ValueError(
                        f"the dataset{where} already has a column {name!r} (the status column "
                        "of an earlier dsbatch step?), which this step's status would "
                        "overwrite: pass status_column='...' with another name, e.g. "
                        f"status_column='{name}_2'"
                    )
                if name in fields:
                    raise ValueError(
                        f"the response_format field {name!r} clashes with the dataset's "
                        f"column {name!r}{where}: rename the field, or the column "
                        "(dataset.rename_column)"
                    )

    def output_key(self) -> str | None:
        """What the finished columns depend on besides the results; None when they depend on
        the user's code (``parse``, a ``response_format``'s validators): no hash of code sees a
        helper it calls or a global it reads, so those columns are joined again on every call,
        from the cached results, at no API cost."""
        spec = self.output
        if spec.parse is not None or spec.response_format is not None:
            return None
        described = [
            spec.output_column,
            spec.status_column,
            self.max_attempts,
            self.resend_canceled,
        ]
        return xxhash.xxh3_64_hexdigest(json.dumps(described).encode())


def _positive_int(keyword: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{keyword} must be a positive integer, not {value!r}")


def _betas(betas: Any) -> tuple[str, ...]:
    if betas is None:
        return ()
    if isinstance(betas, str) or not all(isinstance(b, str) and b for b in betas):
        raise TypeError(
            f"betas must be a list of beta names such as ['output-300k-2026-03-24'], not {betas!r}"
        )
    return tuple(sorted(set(betas)))
