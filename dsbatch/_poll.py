"""Poll: when to look at in-flight batches again. The clock and the sleep are injectable, so a
test of a 24-hour batch runs in milliseconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["PollSchedule", "poll_schedule"]


@dataclass
class PollSchedule:
    """Wait ``initial`` seconds, then ``factor`` times longer each round, never over ``maximum``.

    Most batches end within an hour, so the default starts brisk and settles at a minute.
    ``sleep`` and ``clock`` are injectable (tests pass the emulator's virtual clock).
    """

    initial: float = 5.0
    factor: float = 1.5
    maximum: float = 60.0
    sleep: Callable[[float], object] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0 or self.factor < 1:
            raise ValueError(
                "PollSchedule needs initial >= 0, maximum >= 0 and factor >= 1, got "
                f"initial={self.initial}, maximum={self.maximum}, factor={self.factor}"
            )
        self._next = self.initial

    def wait(self) -> float:
        """Sleep until the next poll; returns how long it slept."""
        delay = min(self._next, self.maximum)
        self._next = min(self._next * self.factor, self.maximum)
        if delay > 0:
            self.sleep(delay)
        return delay

    def backoff(self, attempt: int) -> None:
        """Sleep before retry number ``attempt`` (0-based) of a failed call: doubling from
        ``initial``, capped at ``maximum``; a fixed ``poll_interval`` keeps it fixed."""
        delay = min(self.initial * (2.0**attempt if self.factor > 1 else 1.0), self.maximum)
        if delay > 0:
            self.sleep(delay)

    def reset(self) -> None:
        """Start brisk again (something changed: a new batch went out)."""
        self._next = self.initial


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
    if poll_interval < 0:
        raise ValueError(f"poll_interval must be >= 0, not {poll_interval}")
    return PollSchedule(initial=float(poll_interval), factor=1.0, maximum=float(poll_interval))
