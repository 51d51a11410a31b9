"""The clock a job lives by: what time it is, and how to wait.

One value, injected into everything that reads the time or waits: the job loop (intents, leases,
timeouts), the batch keeper (leases, how long a batch has been missing), the backend (the
server's clock skew), the retry policies and the preview. Tests pass the emulator's virtual
clock, so a 24-hour batch runs in milliseconds and nothing reads ``time`` behind its back. It
reaches a call through ``PollSchedule(sleep=..., clock=...)`` (``MapOptions.clock``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Clock"]


@dataclass(frozen=True)
class Clock:
    """``now()``: epoch seconds; ``sleep(seconds)``: wait that long (by this clock)."""

    now: Callable[[], float] = field(default=time.time)
    sleep: Callable[[float], object] = field(default=time.sleep)
