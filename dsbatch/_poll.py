"""Poll: when to look at batches in flight again, and what looking at one finds.

The schedule says how long to wait; the job's ``Clock`` (``_clock``) tells the time and waits.
The clock times polls and retries, dates intents, and says how long a batch has been missing (a
batch is gone only after ``MISSING_SECONDS`` of not being found, never after a few quick polls).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dsbatch._backend import Backend, BatchInfo, Unreachable
from dsbatch._clock import Clock
from dsbatch._errors import BatchAPIError
from dsbatch._retry import (
    Retrying,
    RetryState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
)

__all__ = [
    "MISSING_SECONDS",
    "PollSchedule",
    "call_retrying",
    "first_contact_retrying",
    "create_retrying",
    "poll_batch",
    "poll_schedule",
]

log = logging.getLogger("dsbatch")

# How long a batch (or its results) must stay missing before it counts as gone for good.
MISSING_SECONDS = 600.0
# A failing call is tried this often, over at most this long, before the job stops (it resumes).
_CALL_ATTEMPTS = 8
_CALL_PATIENCE = 1800.0
# Before a job has ever created a batch, a base URL nothing answers at is more likely a typo
# than an outage: that many tries, over at most that long (1, 2, 4 s apart), then it fails.
_FIRST_CONTACT_ATTEMPTS = 4
_FIRST_CONTACT_PATIENCE = 15.0
# A create refused for a rate limit (the processing queue is full, or too many requests a
# minute) waits this long at most: every batch in the queue ends within 24 hours.
_QUEUE_PATIENCE = 86_400.0
_RATE_LIMITED = 429


@dataclass
class PollSchedule:
    """Wait ``initial`` seconds, then ``factor`` times longer each round, never over ``maximum``.

    Most batches end within an hour, so the default starts brisk and settles at a minute.
    ``sleep`` and ``clock`` (epoch seconds) are the time the call lives by, for its polls, its
    retries and its leases: tests pass the emulator's virtual clock,
    ``PollSchedule(sleep=emu.advance, clock=emu.now)``.
    """

    initial: float = 5.0
    factor: float = 1.5
    maximum: float = 60.0
    sleep: Callable[[float], object] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.time, repr=False)

    def __post_init__(self) -> None:
        numbers = (self.initial, self.factor, self.maximum)
        if not all(math.isfinite(n) for n in numbers) or (
            self.initial < 0 or self.maximum < 0 or self.factor < 1
        ):
            raise ValueError(
                "PollSchedule needs finite initial >= 0, maximum >= 0 and factor >= 1, got "
                f"initial={self.initial}, maximum={self.maximum}, factor={self.factor}"
            )
        self._next = self.initial

    @property
    def next_delay(self) -> float:
        """How long the next ``wait`` will sleep."""
        return min(self._next, self.maximum)

    def advance(self) -> float:
        """How long to wait before the next poll; the wait after it is longer."""
        delay = min(self._next, self.maximum)
        self._next = min(self._next * self.factor, self.maximum)
        return delay

    def wait(self) -> float:
        """Sleep (``sleep``) until the next poll; returns how long it slept."""
        delay = self.advance()
        if delay > 0:
            self.sleep(delay)
        return delay

    def reset(self) -> None:
        """Start brisk again (something changed: a new batch went out)."""
        self._next = self.initial


def call_retrying(
    schedule: PollSchedule, clock: Clock, retry: Callable[[BaseException], bool]
) -> Retrying:
    """The retry policy of one kind of API call, waiting by ``clock``: a fixed
    ``poll_interval`` retries that often, the default backs off from 2 s to 2 min."""
    fixed = schedule.factor == 1.0
    return Retrying(
        stop=stop_after_attempt(_CALL_ATTEMPTS) | stop_after_delay(_CALL_PATIENCE),
        wait=wait_fixed(schedule.initial) if fixed else wait_exponential(2.0, 120.0),
        retry=retry_if_exception(retry),
        sleep=clock.sleep,
        clock=clock.now,
        before_sleep=_log_retry,
    )


def first_contact_retrying(
    schedule: PollSchedule, clock: Clock, retry: Callable[[BaseException], bool]
) -> Retrying:
    """``call_retrying`` for the first call of a job that never created a batch: a connection
    that cannot be made at all (refused, unknown host) fails within seconds
    (``_FIRST_CONTACT_ATTEMPTS`` tries, ``_FIRST_CONTACT_PATIENCE`` s); any other failure is
    waited out as usual."""
    usual = call_retrying(schedule, clock, retry)
    short_stop = stop_after_attempt(_FIRST_CONTACT_ATTEMPTS) | stop_after_delay(
        _FIRST_CONTACT_PATIENCE
    )
    fixed = schedule.factor == 1.0
    short_wait = wait_fixed(schedule.initial) if fixed else wait_exponential(1.0, 4.0)

    def stop(state: RetryState) -> bool:
        return (short_stop if isinstance(state.error, Unreachable) else usual.stop)(state)

    def wait(state: RetryState) -> float:
        return (short_wait if isinstance(state.error, Unreachable) else usual.wait)(state)

    return dataclasses.replace(usual, stop=stop, wait=wait)


def create_retrying(
    schedule: PollSchedule, clock: Clock, retry: Callable[[BaseException], bool]
) -> Retrying:
    """The retry policy of a create: as ``call_retrying``, except that a rate limit (429: the
    organisation's processing queue is full, or too many requests a minute) is waited out
    without spending the attempts kept for real failures, for up to a day. A 429 made nothing,
    so waiting on it never risks a second batch."""
    policy = call_retrying(schedule, clock, retry)
    return dataclasses.replace(
        policy,
        stop=stop_after_attempt(_CALL_ATTEMPTS, counting=_not_rate_limited)
        | stop_after_delay(_QUEUE_PATIENCE),
    )


def _not_rate_limited(error: BaseException) -> bool:
    return getattr(error, "status_code", None) != _RATE_LIMITED


def _log_retry(state: RetryState, seconds: float) -> None:
    # Our messages carry no closing full stop; the SDK's own ones may.
    log.warning("dsbatch: %s; trying again in %.0f s", str(state.error).rstrip("."), seconds)


def poll_schedule(poll_interval: float | PollSchedule | None) -> PollSchedule:
    """``None`` -> the built-in backoff; a number -> poll that often; a schedule -> itself."""
    if poll_interval is None:
        return PollSchedule()
    if isinstance(poll_interval, PollSchedule):
        return poll_interval
    if isinstance(poll_interval, bool) or not isinstance(poll_interval, (int, float)):
        raise TypeError(
            f"poll_interval must be None, a number of seconds or a dsbatch.PollSchedule, "
            f"not {type(poll_interval).__name__}"
        )
    if not math.isfinite(poll_interval) or poll_interval < 0:
        raise ValueError(f"poll_interval must be a finite number >= 0, not {poll_interval}")
    return PollSchedule(initial=float(poll_interval), factor=1.0, maximum=float(poll_interval))


def poll_batch(backend: Backend, batch_id: str, retrying: Retrying) -> BatchInfo | None:
    """The batch as the API has it now; None when the API says it does not exist (404).
    Outages and rate limits are waited out by ``retrying``; what outlasts it is raised."""
    try:
        return retrying.call(backend.retrieve, batch_id)
    except BatchAPIError as e:
        if e.status_code == 404:
            return None
        raise
