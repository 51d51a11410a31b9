"""The one retry helper behind every API call dsbatch makes (create, poll, list, results): tenacity
in miniature. Sleep and clock are injected, so tests record the waits instead of sleeping them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

__all__ = [
    "RetryState",
    "Retrying",
    "retry_any",
    "retry_if_exception",
    "retry_if_exception_type",
    "stop_after_attempt",
    "stop_after_delay",
    "stop_any",
    "stop_never",
    "wait_exponential",
    "wait_fixed",
]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryState:
    """What the strategies see after a failed attempt."""

    attempt: int  # 1-based number of the attempt that just failed
    elapsed: float  # seconds since the first attempt began, by the injected clock
    error: BaseException
    # Every failure so far, oldest first (the last is ``error``): for strategies that count
    # only some kinds of failure.
    errors: tuple[BaseException, ...] = ()


class _StopBase:
    """A stop strategy: ``True`` means give up; ``a | b`` gives up when either does."""

    def __call__(self, state: RetryState) -> bool:
        raise NotImplementedError

    def __or__(self, other: Callable[[RetryState], bool]) -> stop_any:
        return stop_any(self, other)


class stop_any(_StopBase):
    """Give up when any of ``stops`` does."""

    def __init__(self, *stops: Callable[[RetryState], bool]) -> None:
        self.stops = stops

    def __call__(self, state: RetryState) -> bool:
        return any(stop(state) for stop in self.stops)


@dataclass(frozen=True)
class stop_after_attempt(_StopBase):
    """Give up once ``max_attempt`` attempts have failed; with ``counting``, once that many
    failures it accepts have (a rate limit saying "wait" need not spend the attempts kept for
    real failures)."""

    max_attempt: int
    counting: Callable[[BaseException], bool] | None = None

    def __call__(self, state: RetryState) -> bool:
        if self.counting is None:
            return state.attempt >= self.max_attempt
        errors = state.errors or (state.error,)
        return sum(1 for error in errors if self.counting(error)) >= self.max_attempt


@dataclass(frozen=True)
class stop_after_delay(_StopBase):
    """Give up once ``max_delay`` seconds have passed since the first attempt."""

    max_delay: float

    def __call__(self, state: RetryState) -> bool:
        return state.elapsed >= self.max_delay


stop_never = stop_after_delay(float("inf"))


@dataclass(frozen=True)
class wait_fixed:
    """Wait the same ``seconds`` before every retry."""

    seconds: float

    def __call__(self, state: RetryState) -> float:
        return self.seconds


@dataclass(frozen=True)
class wait_exponential:
    """Wait ``initial * factor ** (attempt - 1)`` seconds, never more than ``maximum``."""

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0

    def __call__(self, state: RetryState) -> float:
        try:
            return min(self.initial * self.factor ** (state.attempt - 1), self.maximum)
        except OverflowError:
            # A long outage under stop_never gets here; the wait has long been at the cap.
            return self.maximum


class _RetryBase:
    """A retry predicate: ``True`` means the error may go away; ``a | b`` retries if either does."""

    def __call__(self, error: BaseException) -> bool:
        raise NotImplementedError

    def __or__(self, other: Callable[[BaseException], bool]) -> retry_any:
        return retry_any(self, other)


class retry_any(_RetryBase):
    """Retry when any of ``predicates`` says so."""

    def __init__(self, *predicates: Callable[[BaseException], bool]) -> None:
        self.predicates = predicates

    def __call__(self, error: BaseException) -> bool:
        return any(predicate(error) for predicate in self.predicates)


class retry_if_exception(_RetryBase):
    """Retry when ``predicate(error)`` is true."""

    def __init__(self, predicate: Callable[[BaseException], bool]) -> None:
        self.predicate = predicate

    def __call__(self, error: BaseException) -> bool:
        return self.predicate(error)


class retry_if_exception_type(retry_if_exception):
    """Retry when the error is an instance of one of ``types``."""

    def __init__(self, *types: type[BaseException]) -> None:
        if not types:  # isinstance(e, ()) is always False: nothing would ever be retried
            raise TypeError("retry_if_exception_type needs at least one exception type")
        super().__init__(lambda error: isinstance(error, types))
        self.types = types


@dataclass(frozen=True, kw_only=True)
class Retrying:
    """Run a call, retrying the errors ``retry`` accepts until ``stop`` gives up; an error's
    ``retry_after`` (seconds) wins over ``wait``. ``before_sleep(state, seconds)`` logs a retry."""

    stop: Callable[[RetryState], bool]
    wait: Callable[[RetryState], float]
    retry: Callable[[BaseException], bool]
    sleep: Callable[[float], object] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    max_retry_after: float = 300.0
    before_sleep: Callable[[RetryState, float], object] | None = None

    def __post_init__(self) -> None:
        if self.max_retry_after < 0:
            raise ValueError(f"Retrying needs max_retry_after >= 0, not {self.max_retry_after}")

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Return ``fn(*args, **kwargs)``; on giving up, re-raise its last error unchanged."""
        start = self.clock()
        attempt = 0
        errors: list[BaseException] = []
        while True:
            attempt += 1
            try:
                return fn(*args, **kwargs)
            # Not BaseException: a Ctrl-C or SystemExit ends the job whatever the predicate says.
            except Exception as error:
                errors.append(error)
                state = RetryState(
                    attempt=attempt,
                    elapsed=self.clock() - start,
                    error=error,
                    errors=tuple(errors),
                )
                if not self.retry(error) or self.stop(state):
                    raise
                seconds = self.delay(state)
                if self.before_sleep is not None:
                    self.before_sleep(state, seconds)
                if seconds > 0:
                    self.sleep(seconds)

    def delay(self, state: RetryState) -> float:
        """Seconds to wait before the next attempt: the error's ``retry_after``, else ``wait``."""
        retry_after = getattr(state.error, "retry_after", None)
        if retry_after is not None:
            # Capped: a server asking for an hour must not freeze a job; the next failure retries.
            return max(0.0, min(float(retry_after), self.max_retry_after))
        return max(0.0, self.wait(state))
