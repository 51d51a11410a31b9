"""Leases: who may create the batch of an intent, when no process owns a job.

A job belongs to no process. Any call that needs a batch of any job may poll it and read its
results; every move of a record is checked against the record as stored, under a lock held for
milliseconds (``JobLedger.change``), so two calls never both move it, and a call stopped for an
hour (Ctrl-Z) holds up no one.

Only an intent is held: its batch may be being created at this moment, and creating it twice
would pay twice. The call that wrote the intent holds it by a lease, renewed before each create
attempt and given up when the call ends. Another call takes the intent over only when the lease
has run out, was given up, or its holder's process is gone (a process of this host that no longer
exists); it then looks for the batch (``list``) before anything is created again. A holder whose
lease ran out finds, before its next attempt, that the intent is no longer its own, and stops.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

__all__ = ["LEASE_SECONDS", "Holder", "holder_gone"]

# Longer than one create attempt can take (the SDK's default timeout is ten minutes, and a
# 256 MB body takes a while to upload); renewed before every attempt.
LEASE_SECONDS = 1800.0


@dataclass(frozen=True)
class Holder:
    """One call of dsbatch (a ``map``, a ``Job.wait``): host, process and a token of its own."""

    host: str
    pid: int
    token: str

    @classmethod
    def new(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(6))

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        host, _, rest = text.rpartition(":")
        host, _, pid = host.rpartition(":")
        if not host or not pid.isdigit() or not rest:
            return None
        return cls(host, int(pid), rest)


def holder_gone(holder: str) -> bool:
    """Whether the process of ``holder`` is known to be gone: only a process of this host can
    be checked; a stopped process is not gone (its lease runs out instead)."""
    parsed = Holder.parse(holder)
    if parsed is None or parsed.host != socket.gethostname() or parsed.pid == os.getpid():
        return False
    try:
        os.kill(parsed.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, under another user
        return False
    return False
