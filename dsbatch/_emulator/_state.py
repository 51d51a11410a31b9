"""Batches, the emulator's clock, and how a batch moves from created to ended.

Nothing runs in the background: a batch's state is a function of the clock, brought up to date
("settled") whenever it is looked at or the clock is advanced. Request i of n finishes at
``created + delay * (i + 1) / n``; the batch ends when the last one does, when it is canceled,
or at ``expires_at`` (created + 24 h), whichever comes first. Results are decided once, when
the batch ends: its requests are processed in order, each checked by ``_rules`` (a bad one
ends ``errored``) and answered at the moment it finishes, and batches are processed in the
order they end, which is the order the prompt cache sees them in. The results file is written
then too, as the API writes it (``_results``): every download streams those bytes.

Every batch belongs to the workspace of the key that created it. The API's operations take the
caller's workspace and see only that workspace's batches: another workspace's batch is as
absent as a deleted one. ``workspace=None`` sees every batch (the emulator's own introspection).
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dsbatch._emulator._caching import CacheUse, PromptCache
from dsbatch._emulator._errors import ApiError, default_message
from dsbatch._emulator._faults import Faults
from dsbatch._emulator._ids import prefixed_id, rfc3339, stable_hash
from dsbatch._emulator._params import structured_kind, thinking_type
from dsbatch._emulator._responder import Responder, beta_message, build_message, errored_result
from dsbatch._emulator._results import ResultsFile
from dsbatch._emulator._rules import Endpoint, request_problem
from dsbatch._limits import API_VERSION_LEGACY, EXPIRY_SECONDS

__all__ = ["DEFAULT_WORKSPACE", "Batch", "Clock", "Store"]

_RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")

DEFAULT_WORKSPACE = "default"  # the workspace of every key not mapped to another


class Clock:
    """Emulator time: the wall time at start plus ``advance``d seconds (plus real elapsed
    time when ``realtime``)."""

    def __init__(self, *, realtime: bool = False) -> None:
        self.realtime = realtime
        self._t0 = time.time()
        self._m0 = time.monotonic()
        self._offset = 0.0

    def now(self) -> float:
        elapsed = time.monotonic() - self._m0 if self.realtime else 0.0
        return self._t0 + self._offset + elapsed

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"the emulator clock only moves forward, not by {seconds}")
        self._offset += seconds


@dataclass
class Batch:
    id: str
    seq: int
    created_at: float
    delay: float
    custom_ids: list[str]
    params: list[dict[str, Any]]
    attempts: list[int]
    version: str = API_VERSION_LEGACY  # the create's anthropic-version
    betas: list[str] = field(default_factory=list)  # the create's anthropic-beta
    workspace: str = DEFAULT_WORKSPACE  # the workspace of the key that created it
    status: str = "in_progress"
    cancel_initiated_at: float | None = None
    ended_at: float | None = None
    done_at_cancel: int = 0
    # Once ended: per request, its answer text (a succeeded Message is built from it when the
    # results are served, so a 100k batch does not hold 100k Messages) or its result object.
    outcomes: list[str | dict[str, Any]] | None = None
    order: list[int] | None = None  # the results file's (shuffled) order
    shapes: dict[int, str] = field(default_factory=dict)  # index -> how a fault spoils its answer
    cache_uses: dict[int, CacheUse] = field(default_factory=dict)  # index -> its cache reads/writes
    redacted: set[int] = field(default_factory=set)  # indexes whose thinking comes redacted
    counts: dict[str, int] = field(default_factory=dict)
    # Once ended: its results file, encoded once per form (False: standard, True: beta), the
    # standard one when the batch ends (as the API writes it), the beta one when first asked.
    files: dict[bool, ResultsFile] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.custom_ids)

    @property
    def expires_at(self) -> float:
        return self.created_at + EXPIRY_SECONDS

    def finished_by(self, moment: float) -> int:
        """How many of the batch's requests are done at ``moment``."""
        if self.delay <= 0:
            return self.size
        done = math.floor((moment - self.created_at) * self.size / self.delay + 1e-9)
        return min(self.size, max(0, done))


class Store:
    """Every batch of one emulator, and what it has received. Guarded by ``lock``."""

    def __init__(
        self, *, clock: Clock, delay: float, responder: Responder, faults: Faults, seed: int
    ) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.delay = delay
        self.responder = responder
        self.faults = faults
        self.seed = seed
        self.base_url = ""
        self.batches: dict[str, Batch] = {}
        self.calls: Counter[str] = Counter()
        # Guards ``calls`` and the taking of HTTP faults, which every call does first.
        self.wire_lock = threading.Lock()
        self.received: list[tuple[str, str]] = []
        self.duplicate_custom_ids: set[str] = set()
        self.last_create_body: Any = None
        self.last_create_headers: dict[str, str] = {}
        self.prompt_cache = PromptCache()
        self.messages_received: list[dict[str, Any]] = []  # bodies of POST /v1/messages
        self._times_seen: Counter[str] = Counter()
        self._timers: set[threading.Timer] = set()  # batches finished when due (realtime)
        self._seq = 0

    # --- the API's operations -------------------------------------------------------------

    def create(
        self,
        requests: list[dict[str, Any]],
        *,
        version: str = API_VERSION_LEGACY,
        betas: list[str] | None = None,
        workspace: str = DEFAULT_WORKSPACE,
    ) -> Batch:
        with self.lock:
            self._seq += 1
            batch_id = prefixed_id("msgbatch_", self.seed, self._seq)
            custom_ids = [item["custom_id"] for item in requests]
            attempts = []
            seen = self._times_seen
            for custom_id in custom_ids:
                before = seen[custom_id]
                attempts.append(before)
                seen[custom_id] = before + 1
                if before:
                    self.duplicate_custom_ids.add(custom_id)
            self.received.extend((batch_id, custom_id) for custom_id in custom_ids)
            batch = Batch(
                id=batch_id,
                seq=self._seq,
                created_at=self.clock.now(),
                delay=self.delay,
                custom_ids=custom_ids,
                params=[item["params"] for item in requests],
                attempts=attempts,
                version=version,
                betas=list(betas or ()),
                workspace=workspace,
            )
            self.batches[batch_id] = batch
            return batch

    def finish_when_due(self, batch: Batch) -> None:
        """On a realtime clock, as the API does, work on a new batch in the background: it is
        finished (answered, its results file written) when it is due, not when first looked
        at; a look before then still brings it up to the clock itself. Called once the
        create is answered (the work holds the lock). A virtual clock only moves when told:
        its batches are finished when looked at."""
        if not self.clock.realtime:
            return
        timer = threading.Timer(max(0.0, batch.delay), self._finish_if_due, args=(batch,))
        timer.daemon = True
        with self.lock:
            self._timers = {t for t in self._timers if t.is_alive()} | {timer}
        timer.start()

    def _finish_if_due(self, batch: Batch) -> None:
        with self.lock:
            if self.batches.get(batch.id) is batch:  # not deleted meanwhile
                # Errors are the next look's to report (it tries again).
                with contextlib.suppress(Exception):
                    self.settle(batch, observe_cancel=False)

    def close(self) -> None:
        """Stop the background work of ``_finish_when_due``."""
        with self.lock:
            timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()

    def get(self, batch_id: str, workspace: str | None = None) -> Batch:
        with self.lock:
            batch = self.batches.get(batch_id)
            if batch is None or workspace not in (None, batch.workspace):
                raise ApiError(404, f"Message Batch {batch_id!r} not found")
            self.settle(batch)
            return batch

    def page(
        self,
        limit: int,
        before_id: str | None,
        after_id: str | None,
        workspace: str | None = None,
    ) -> tuple[list[Batch], bool]:
        """One page of the workspace's batches, newest first, and whether more lie in that
        direction."""
        with self.lock:
            newest_first = [
                batch
                for batch in reversed(self.batches.values())
                if workspace in (None, batch.workspace)
            ]
            for batch in newest_first:
                self.settle(batch)
            ids = [batch.id for batch in newest_first]
            if before_id is not None:
                end = self._cursor(ids, before_id, "before_id")
                start = max(0, end - limit)
                return newest_first[start:end], start > 0
            start = 0 if after_id is None else self._cursor(ids, after_id, "after_id") + 1
            return newest_first[start : start + limit], start + limit < len(newest_first)

    @staticmethod
    def _cursor(ids: list[str], cursor: str, name: str) -> int:
        try:
            return ids.index(cursor)
        except ValueError:
            raise ApiError(400, f"{name}: no Message Batch with id {cursor!r}") from None

    def cancel(self, batch_id: str, workspace: str | None = None) -> Batch:
        with self.lock:
            batch = self.get(batch_id, workspace)
            if batch.status == "in_progress":
                now = self.clock.now()
                batch.status = "canceling"
                batch.cancel_initiated_at = now
                batch.done_at_cancel = batch.finished_by(now)
            return batch

    def delete(self, batch_id: str, workspace: str | None = None) -> None:
        with self.lock:
            batch = self.get(batch_id, workspace)
            if batch.status != "ended":
                raise ApiError(
                    400,
                    f"Message Batch {batch_id} cannot be deleted while it is {batch.status}; "
                    "cancel it and wait for it to end first",
                )
            del self.batches[batch_id]

    def results(
        self, batch_id: str, workspace: str | None = None, *, beta: bool = False
    ) -> ResultsFile:
        """The results file of an ended batch, encoded when the batch ended (the beta form:
        when first asked) and the same bytes on every download; ``beta``: the beta
        endpoint's form of each Message."""
        with self.lock:
            batch = self.get(batch_id, workspace)
            if batch.outcomes is None or batch.order is None:
                raise ApiError(
                    400,
                    f"Message Batch {batch_id} has not finished processing "
                    f"(processing_status: {batch.status}); results are available once it ends",
                )
            return _results_file(batch, beta)

    def ended(self, batch_id: str, workspace: str | None = None) -> Batch | None:
        """The batch if it has ended (it no longer changes), read without the lock; None
        otherwise (ask ``get``, under the lock). Retrieves and downloads of ended batches go
        on while a realtime emulator works on another batch, as the API's do."""
        batch = self.batches.get(batch_id)
        if batch is None or workspace not in (None, batch.workspace) or batch.status != "ended":
            return None
        return batch

    def ready_results(
        self, batch_id: str, workspace: str | None = None, *, beta: bool = False
    ) -> ResultsFile | None:
        """``results`` of an ended batch whose file in this form is written, read without
        the lock (``ended``); None otherwise (ask ``results``, under the lock)."""
        batch = self.ended(batch_id, workspace)
        return None if batch is None else batch.files.get(beta)  # set once the file is whole

    # --- time -----------------------------------------------------------------------------

    def settle_all(self, *, observe_cancel: bool = True) -> None:
        with self.lock:
            self._finish_due(math.inf, observe_cancel)

    def settle(self, batch: Batch, *, observe_cancel: bool = True) -> None:
        """Bring ``batch`` up to the clock; a cancel takes effect when next looked at."""
        due = self._due(batch, observe_cancel)
        if due is not None:
            # Batches are processed whole, in the order they end, so the prompt cache sees
            # an earlier batch's writes before a later batch reads: finish those first.
            self._finish_due(due[0], observe_cancel)

    def _due(self, batch: Batch, observe_cancel: bool) -> tuple[float, int, str] | None:
        """(moment it ended, requests done by then, the fate of the rest) once ``batch`` has
        ended by the clock; None while it has not."""
        now = self.clock.now()
        if batch.status == "in_progress":
            end = batch.created_at + batch.delay
            if end <= batch.expires_at and now >= end:
                return end, batch.size, "expired"
            if end > batch.expires_at and now >= batch.expires_at:
                moment = batch.expires_at
                return moment, batch.finished_by(moment), "expired"
        elif batch.status == "canceling" and observe_cancel:
            assert batch.cancel_initiated_at is not None
            return max(now, batch.cancel_initiated_at), batch.done_at_cancel, "canceled"
        return None

    def _finish_due(self, until: float, observe_cancel: bool) -> None:
        due = []
        for batch in self.batches.values():
            found = self._due(batch, observe_cancel)
            if found is not None and found[0] <= until:
                due.append((found[0], batch.seq, found, batch))
        for _, _, (moment, done, rest), batch in sorted(due, key=lambda item: item[:2]):
            self._finish(batch, moment, done, rest)

    def _finish(self, batch: Batch, ended_at: float, done: int, rest: str) -> None:
        counts = dict.fromkeys(_RESULT_TYPES, 0)
        outcomes: list[str | dict[str, Any]] = []
        endpoint = Endpoint("batch", batch.version, tuple(batch.betas))
        for index in range(batch.size):
            if index < done:
                # Requests are processed in order, each at the moment it finishes.
                moment = min(ended_at, batch.created_at + batch.delay * (index + 1) / batch.size)
                outcome = self._outcome(batch, index, endpoint, moment)
            else:
                outcome = {"type": rest}
            kind: Any
            if isinstance(outcome, str):
                kind = "succeeded"
            else:
                kind = outcome.get("type")
                if kind not in counts:
                    outcome = errored_result(
                        "api_error",
                        f"emulator responder returned an invalid result object: {outcome!r:.200}",
                    )
                    kind = "errored"
            counts[kind] += 1
            outcomes.append(outcome)
        order = list(range(batch.size))
        seed = stable_hash("order", batch.seq, batch.size, batch.custom_ids[0])
        random.Random(seed).shuffle(order)
        batch.outcomes, batch.order = outcomes, order
        batch.counts = {"processing": 0, **counts}
        batch.ended_at = ended_at
        _results_file(batch, beta=False)
        # Last: a look without the lock (``ended``) finds it ended with its results written.
        batch.status = "ended"

    def _outcome(
        self, batch: Batch, index: int, endpoint: Endpoint, moment: float
    ) -> str | dict[str, Any]:
        """The request's answer text, or its whole result object when it did not succeed."""
        custom_id = batch.custom_ids[index]
        params = batch.params[index]
        attempt = batch.attempts[index]
        problem = request_problem(params, endpoint)
        fate = "invalid_request_error" if problem else self.faults.request_fate(custom_id, attempt)
        if fate == "expired":
            return {"type": "expired"}
        if fate is not None:
            if problem is None:
                problem = default_message(fate) + " (emulated fault)"
            return errored_result(fate, problem)
        answer = self.responder(custom_id, params)
        if isinstance(answer, dict):
            return answer
        if not isinstance(answer, str):
            raise TypeError(f"a responder returns str or dict, not {type(answer).__name__}")
        used = self.prompt_cache.use(params, batch.workspace, moment)
        if used != CacheUse():
            batch.cache_uses[index] = used
        if structured_kind(params) is not None:
            shape = self.faults.answer_shape(custom_id, attempt)
            if shape is not None:
                batch.shapes[index] = shape
        if thinking_type(params) is not None and self.faults.redacts(custom_id, attempt):
            batch.redacted.add(index)
        return answer

    # --- the wire form --------------------------------------------------------------------

    def to_dict(self, batch: Batch, base_url: str | None = None) -> dict[str, Any]:
        """The batch as a MessageBatch object; ``results_url`` starts with ``base_url``."""
        ended = batch.status == "ended"
        if ended:
            counts = dict(batch.counts)
        else:
            counts = {"processing": batch.size, **dict.fromkeys(_RESULT_TYPES, 0)}
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": counts,
            "ended_at": None if batch.ended_at is None else rfc3339(batch.ended_at),
            "created_at": rfc3339(batch.created_at),
            "expires_at": rfc3339(batch.expires_at),
            "archived_at": None,
            "cancel_initiated_at": (
                None if batch.cancel_initiated_at is None else rfc3339(batch.cancel_initiated_at)
            ),
            "results_url": (
                f"{base_url or self.base_url}/v1/messages/batches/{batch.id}/results"
                if ended
                else None
            ),
        }


def _results_file(batch: Batch, beta: bool) -> ResultsFile:
    """The batch's results file in one form, encoded on first need and kept."""
    stored = batch.files.get(beta)
    if stored is None:
        assert batch.outcomes is not None and batch.order is not None
        stored = batch.files[beta] = ResultsFile(_lines(batch, batch.outcomes, batch.order, beta))
    return stored


def _lines(
    batch: Batch, outcomes: list[str | dict[str, Any]], order: list[int], beta: bool
) -> Iterator[tuple[str, dict[str, Any]]]:
    for index in order:
        custom_id = batch.custom_ids[index]
        outcome = outcomes[index]
        if isinstance(outcome, str):
            message = build_message(
                batch.params[index],
                outcome,
                message_id=prefixed_id("msg_", batch.id, custom_id),
                shape=batch.shapes.get(index),
                cache=batch.cache_uses.get(index),
                redacted=index in batch.redacted,
            )
            yield custom_id, {"type": "succeeded", "message": _form(message, beta)}
        elif beta and isinstance(outcome.get("message"), dict):  # a responder's own result
            yield custom_id, {**outcome, "message": beta_message(outcome["message"])}
        else:
            yield custom_id, outcome


def _form(message: dict[str, Any], beta: bool) -> dict[str, Any]:
    return beta_message(message) if beta else message
