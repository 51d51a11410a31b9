"""The keywords of ``dsbatch.map``, each declared once: a field of ``MapOptions`` with its check,
and whether a job keeps it (in its manifest, so that ``Job.load`` in another process goes on with
the options the job was started with).

Bad arguments are plain ``TypeError`` / ``ValueError`` naming the keyword and what it takes, raised
before anything is rendered or sent. ``response_format`` and ``parse`` are code: a job keeps where
to import them from (``module:qualname``), when they can be imported back.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import xxhash

from dsbatch import _structured
from dsbatch._clock import Clock
from dsbatch._cost import check_prices, prices_key
from dsbatch._describe import code_hash
from dsbatch._join import OutputSpec
from dsbatch._limits import DEFAULT_MAX_QUEUED, MAX_BATCH_BYTES, MAX_BATCH_REQUESTS
from dsbatch._poll import PollSchedule, poll_schedule
from dsbatch._render import RequestShape
from dsbatch._samples import SAMPLE_COLUMN, SAMPLES_AS

__all__ = ["CodeRef", "MapOptions"]

_ON_ERROR = ("keep", "drop", "raise")

Check = Callable[[str, Any], Any]


def _opt(check: Check, *, keep: bool = True, missing: Any = None) -> Any:
    """A keyword: ``check(name, value)`` returns the value to use or raises; ``keep``: the job
    keeps it in its manifest; ``missing``: its value for a job whose manifest was written before
    the keyword existed."""
    return field(metadata={"check": check, "keep": keep, "missing": missing})


# -- checks: each takes the keyword's name and value, returns the value to use -------------------


def _model(name: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"{name} must be a model name such as 'claude-haiku-4-5', not {value!r}")
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return value


def _num_proc(name: str, value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(
            f"{name} must be None or a positive number of processes to render the rows in, "
            f"not {value!r}"
        )
    return value


def _between(low: int, high: int) -> Check:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be between {low:,} and {high:,}")
        return value

    return check


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            shown = " or ".join(repr(c) for c in choices)
            raise ValueError(f"{name} must be {shown}, not {value!r}")
        return str(value)

    return check


def _prompt_caching(name: str, value: Any) -> str:
    # None: a job kept before the keyword existed (its requests carry no breakpoints of ours).
    return "auto" if value is None else _one_of(("auto", "off"))(name, value)


def _system(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, (str, list)):
        raise TypeError(
            f"{name} must be a str or a list of text blocks, not {type(value).__name__}"
        )
    return value


def _params(name: str, value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict of Messages params, not {type(value).__name__}")
    return None if value is None else dict(value)


def _column(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty column name, not {value!r}")
    return value


def _optional_column(name: str, value: Any) -> str | None:
    return None if value is None else _column(name, value)


def _response_format(name: str, value: Any) -> Any:
    if value is not None:
        _structured.check_response_format(value)
    return value


def _parse(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a function (row, message) -> dict, not {value!r}")
    return value


def _betas(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not all(isinstance(b, str) and b for b in value):
        raise TypeError(
            f"{name} must be a list of beta names such as ['output-300k-2026-03-24'], not {value!r}"
        )
    return tuple(sorted(set(value)))


def _flag(name: str, value: Any) -> bool:
    return bool(value)


def _any(name: str, value: Any) -> Any:
    return value


def _budget(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be None or a number of US dollars, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of US dollars >= 0, not {value!r}")
    return float(value)


def _poll_interval(name: str, value: Any) -> float | PollSchedule | None:
    poll_schedule(value)  # refuses what is not None, a schedule, or a finite number >= 0
    return value if value is None or isinstance(value, PollSchedule) else float(value)


# -- code a job keeps by where to import it from --------------------------------------------------


@dataclass(frozen=True)
class CodeRef:
    """Where a class or function can be imported from (``module:qualname``), and its name."""

    name: str
    ref: str | None  # None: it cannot be imported back (a lambda, a class made in a function)

    @classmethod
    def of(cls, obj: Any) -> CodeRef:
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
        name = getattr(obj, "__name__", type(obj).__name__)
        ref = f"{module}:{qualname}" if module and qualname else None
        if ref is not None and (module == "__main__" or "<" in qualname or _load(ref) is not obj):
            ref = None
        return cls(name, ref)

    def load(self) -> Any:
        """The object, imported again; None when it cannot be."""
        return None if self.ref is None else _load(self.ref)


def _load(ref: str) -> Any:
    module, _, qualname = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return obj


# -- the options --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapOptions:
    """Every keyword of one ``dsbatch.map`` call, checked (defaults live in ``map``'s signature)."""

    model: str | None = _opt(_model)
    max_tokens: int = _opt(_positive_int)
    system: str | list[dict[str, Any]] | None = _opt(_system)
    params: dict[str, Any] | None = _opt(_params)
    response_format: type | None = _opt(_response_format, keep=False)
    parse: Callable[..., Any] | None = _opt(_parse, keep=False)
    output_column: str = _opt(_column)
    status_column: str = _opt(_column)
    structured_output: str = _opt(_one_of(_structured.MODES))
    betas: tuple[str, ...] = _opt(_betas)
    with_indices: bool = _opt(_flag)
    cache_dir: str | os.PathLike[str] | None = _opt(_any, keep=False)
    max_attempts: int = _opt(_positive_int)
    on_error: str = _opt(_one_of(_ON_ERROR))
    # A PollSchedule (a clock and a sleep of this process) is not kept; a number is.
    poll_interval: float | PollSchedule | None = _opt(_poll_interval)
    resend_canceled: bool = _opt(_flag)
    progress: bool = _opt(_flag, keep=False)
    max_batch_requests: int = _opt(_between(1, MAX_BATCH_REQUESTS))
    max_batch_bytes: int = _opt(_between(1, MAX_BATCH_BYTES))
    check_determinism: bool = _opt(_flag)
    samples: int = _opt(_positive_int, missing=1)
    samples_as: str = _opt(_one_of(SAMPLES_AS), missing="lists")
    thinking_column: str | None = _opt(_optional_column, missing="thinking")
    conversation_column: str | None = _opt(_optional_column)
    # Cost (``_cost``, ``_estimate``): prices are kept (a job's status prices its answers
    # alike in any process); the budget and dry run concern one call.
    budget_usd: float | None = _opt(_budget, keep=False)
    dry_run: bool = _opt(_flag, keep=False)
    max_queued_requests: int = _opt(_positive_int, missing=DEFAULT_MAX_QUEUED)
    prices: dict[str, dict[str, float]] | None = _opt(check_prices)
    prompt_caching: str = _opt(_prompt_caching)
    # False: render every row even when a finished job answered the same call (``_rerun``).
    load_from_cache_file: bool = _opt(_flag, keep=False)
    # How many processes render the rows (``_parallel``): the requests are the same bytes.
    num_proc: int | None = _opt(_num_proc, keep=False)
    # The poll schedule of this call, made once from poll_interval (it keeps its own backoff).
    schedule: PollSchedule = field(init=False, repr=False, compare=False)
    # The time this call lives by (``_clock``): a PollSchedule's clock and sleep, else the system's.
    clock: Clock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        schedule = poll_schedule(self.poll_interval)
        object.__setattr__(self, "schedule", schedule)
        object.__setattr__(self, "clock", Clock(now=schedule.clock, sleep=schedule.sleep))

    @classmethod
    def build(cls, **given: Any) -> MapOptions:
        """Check every keyword (each names itself in its error), then how they go together."""
        values = {f.name: f.metadata["check"](f.name, given[f.name]) for f in fields(cls) if f.init}
        options = cls(**values)
        options._check_names(thinks=False)
        return options

    def _check_names(self, *, thinks: bool) -> None:
        """No two new columns share a name (the thinking column exists when the job thinks)."""
        keywords = ["output_column", "status_column", "conversation_column"]
        if thinks:
            keywords.append("thinking_column")
        named = [(k, getattr(self, k)) for k in keywords if getattr(self, k) is not None]
        if self.samples_as == "rows":
            named.append(("the sample column of samples_as='rows'", SAMPLE_COLUMN))
        for i, (keyword, name) in enumerate(named):
            for other, other_name in named[i + 1 :]:
                if name == other_name:
                    raise ValueError(
                        f"{keyword} and {other} are both {name!r}: give them different names"
                    )

    # -- what a job keeps ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The options a job keeps, as JSON (code as where to import it from)."""
        kept: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.init and f.metadata["keep"]
        }
        kept["betas"] = list(self.betas)
        if isinstance(self.poll_interval, PollSchedule):
            kept["poll_interval"] = None
        for name in ("response_format", "parse"):
            code = getattr(self, name)
            kept[name] = None if code is None else vars(CodeRef.of(code))
        return kept

    @classmethod
    def from_json(cls, kept: Mapping[str, Any], **given: Any) -> tuple[MapOptions, dict[str, str]]:
        """The options a job kept, with ``given`` ones instead; and, for code that could not
        be imported back, keyword -> what it was (``Label``, from ``my_module``)."""
        values: dict[str, Any] = {
            f.name: kept.get(f.name, f.metadata["missing"]) for f in fields(cls) if f.init
        }
        values["progress"], values["cache_dir"] = True, None
        missing: dict[str, str] = {}
        for name in ("response_format", "parse"):
            ref = kept.get(name)
            if ref is None:
                continue
            code = CodeRef(**ref)
            values[name] = code.load()
            if values[name] is None:
                missing[name] = code.name + (f" (from {code.ref})" if code.ref else "")
        values.update({k: v for k, v in given.items() if v is not None or k in missing})
        for name in missing.copy():
            if values.get(name) is not None:
                del missing[name]
        return cls.build(**values), missing

    # -- derived -------------------------------------------------------------------------------
    @property
    def defaults(self) -> dict[str, Any]:
        """What every request starts from: model, max_tokens, system, then ``params``."""
        defaults: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens}
        if self.system is not None:
            defaults["system"] = self.system
        defaults.update(self.params or {})
        if defaults.get("model") is None:
            del defaults["model"]
        return defaults

    @property
    def output(self) -> OutputSpec:
        """What the join stage needs to know of the new columns."""
        return OutputSpec(
            output_column=self.output_column,
            status_column=self.status_column,
            response_format=self.response_format,
            structured_output=self.structured_output,
            parse=self.parse,
            thinking_column=self.thinking_column,
            conversation_column=self.conversation_column,
            samples=self.samples,
            samples_as=self.samples_as,
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

    def check_columns(self, splits: Mapping[str, Sequence[str]], *, thinks: bool = False) -> None:
        """Refuse new columns that would overwrite input columns (or each other); ``thinks``:
        the job's requests think, so it has a thinking column."""
        spec = self.output
        fields = self.new_columns()[1:-1]
        self._check_training_columns(splits, fields, thinks=thinks)
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

    def output_key(self, inputs: Mapping[str, str] | None = None) -> str | None:
        """What the finished columns depend on besides the results. Columns made by the user's
        code depend on it: ``response_format`` and ``parse`` are described by value
        (``_describe``: an edit to their code, a global they read or a validator is seen), and
        ``parse``'s columns on the rows it reads too (``inputs``: split -> fingerprint of the
        job's input). None when that code cannot be hashed: its columns are then joined again
        on every call, from the cached results, at no API cost."""
        spec = self.output
        code: dict[str, Any] = {}
        for name, obj in (("response_format", spec.response_format), ("parse", spec.parse)):
            if obj is None:
                continue
            try:
                code[name] = code_hash(obj)
            except Exception:  # dill fails in many ways: the columns are joined again
                return None
        if spec.parse is not None:
            if inputs is None:
                return None
            code["inputs"] = sorted(inputs.items())
        described = [
            spec.output_column,
            spec.status_column,
            self.max_attempts,
            self.resend_canceled,
            {
                "samples": self.samples,
                "samples_as": self.samples_as,
                "thinking_column": self.thinking_column,
                "conversation_column": self.conversation_column,
            },
            prices_key(self.prices),  # the status column's cost_usd
        ]
        if code:
            described.append(code)
        return xxhash.xxh3_64_hexdigest(json.dumps(described).encode())

    def _check_training_columns(
        self, splits: Mapping[str, Sequence[str]], fields: Sequence[str], *, thinks: bool
    ) -> None:
        """The thinking, conversation and sample columns clash with no input column nor
        response_format field."""
        self._check_names(thinks=thinks)
        new: dict[str, tuple[str, str]] = {}  # column -> (what it holds, what to do instead)
        if thinks and self.thinking_column is not None:
            new[self.thinking_column] = (
                "the answers' reasoning",
                "pass thinking_column='...' with another name, or thinking_column=None",
            )
        if self.conversation_column is not None:
            new[self.conversation_column] = (
                "the conversations",
                "pass conversation_column='...' with another name",
            )
        if self.samples_as == "rows":
            new[SAMPLE_COLUMN] = ("the sample numbers", "use samples_as='lists', or rename it")
        for name, (what, fix) in new.items():
            if name in fields:
                raise ValueError(
                    f"the response_format field {name!r} has the name of the column of "
                    f"{what}: {fix}"
                )
            for split, columns in splits.items():
                if name in columns:
                    where = f" of split {split!r}" if split else ""
                    raise ValueError(
                        f"the dataset{where} already has a column {name!r}, which {what} "
                        f"would overwrite: {fix} (or remove the column first)"
                    )
