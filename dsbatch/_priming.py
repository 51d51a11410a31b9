"""Priming the prompt cache: one request of each shared prefix goes first, in a batch of its own,
and the rest of its group once that batch has ended.

Within a batch, cache hits are best effort (requests run in parallel, so the first few may all
write); the documented advice for batches is a 1-hour cache written by a first request that has
completed before the rest is submitted. ``_prefix`` gives each request that carries a breakpoint
of dsbatch's a prefix group (kept in the job: ``prefix_groups.arrow``), and ``Primers.hold`` is
applied to what a step is about to send. Everything it decides is read from the cache, never
from this process's memory, so a job resumed elsewhere does the same:

- a group is *released* once any request of it has an ended batch attempt in the cache,
  whatever its outcome (succeeded, errored, expired, lost): a primer that failed has ended too,
  and retrying it first would hold the group back another whole batch (up to a day, for one
  that expired). The rest then goes out, the failed primer with it. An answer bought by
  ``dsbatch.preview`` does not release a group: a cache written through the Messages API was
  reported not to serve a later batch;
- while a request of an unreleased group is in flight (its primer, in any job's batch), the
  others wait;
- else the group's first request still to send is its primer. When a step has primers to send,
  it sends only them (one small batch that ends quickly); the rest of what it would have sent,
  requests of no group included, goes out at the next step, a poll interval later.

A job's groups are released for good once primed: later steps, reruns and retries send freely.
With ``wait=False`` the call returns after the first step: the primers are sent, and the rest is
sent by whichever call next waits on the job (``job.wait()``, ``job.result()``,
``dsbatch.Job.load(fp).wait()``, ``dsbatch wait FP``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import pyarrow.compute as pc

from dsbatch._store import PREVIEW_PREFIX

if TYPE_CHECKING:
    from dsbatch._plan import View

__all__ = ["Primers"]

log = logging.getLogger("dsbatch")


class Primers:
    """The prefix groups of one job's requests (custom_id -> group), and what they hold back."""

    def __init__(self, groups: Mapping[str, int]) -> None:
        self.groups = groups
        self.held = 0  # requests the last ``hold`` kept back
        self._said = False

    def _released(self, view: View) -> set[int]:
        """Groups with a request whose batch attempt has ended (see the module's docstring)."""
        results = view.results
        if results.num_rows == 0:
            return set()
        from_batches = pc.invert(
            pc.starts_with(results["batch_id"], PREVIEW_PREFIX).fill_null(False)
        )
        ended = pc.filter(results["custom_id"], from_batches).to_pylist()
        return {self.groups[c] for c in ended if c in self.groups}

    def hold(self, pending: list[str], view: View) -> list[str]:
        """What of ``pending`` (the requests a step is about to send) goes now."""
        self.held = 0
        if not self.groups or not any(c in self.groups for c in pending):
            return pending
        released = self._released(view)
        flying = {self.groups[c] for c in view.waiting_ids if c in self.groups}
        primers: dict[int, str] = {}
        free: list[str] = []
        held = 0
        for custom_id in pending:
            group = self.groups.get(custom_id)
            if group is None or group in released:
                free.append(custom_id)
            elif group in flying or group in primers:
                held += 1
            else:
                primers[group] = custom_id
        if primers:
            free = list(primers.values())
        self.held = len(pending) - len(free)
        if held and not self._said:
            self._said = True
            log.info(
                "dsbatch: prompt caching: %d requests wait until the first request of their "
                "shared prefix has ended, in a batch of its own (it writes the cache they "
                "read); prompt_caching='off' sends everything at once",
                held,
            )
        return free
