"""The job loop: one ``step`` looks at the cache under the cache-wide lock, polls the batches in
flight and ingests what ended, decides what to send and submits it, then says where the job
stands; ``run`` is steps and waits. The decision is made under the lock, from the step's one
look when nothing changed since (the common step: every batch still running), else from a
second look.

Every change is written to the ledger before the next begins, so a process that dies anywhere
is replaced by a new one running the same call: it finds the batches in flight and picks up.
The batches a job waits for may be another job's (one view of the whole cache, for the job's
origin): whichever call needs a batch advances it, whatever the process that made it is doing
(``_batch``, ``_lease``).

Waves: a step sends no more than fits under ``max_queued_requests`` beside every batch of the
cache in the processing queue at the job's origin (this job's and other jobs', in any process:
the count and the intents are made under the cache-wide lock). What does not fit is held back,
not recorded anywhere, and sent by a later step once earlier batches end; meanwhile the job
polls the batches that fill the queue, whoever made them, so a dead process's batches free it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from dsbatch._arrow import give_back
from dsbatch._backend import Backend
from dsbatch._batch import BatchKeeper
from dsbatch._cost import PRICED_COLUMNS, PriceBook, Pricer
from dsbatch._lease import Holder
from dsbatch._ledger import JobLedger
from dsbatch._plan import View, chunk_requests, queued, stand_in_results, survey
from dsbatch._priming import Primers
from dsbatch._progress import ProgressBar
from dsbatch._records import BatchRecord, BatchState

if TYPE_CHECKING:
    from dsbatch._options import MapOptions

__all__ = ["JobLoop", "Standing"]

log = logging.getLogger("dsbatch")


@dataclass(frozen=True)
class Standing:
    """Where a job stands after a step, in distinct requests."""

    needed: int
    succeeded: int
    waiting: int  # in batches in flight (this job's or another's), or being downloaded again
    sent: int  # just sent in new batches
    batches: int  # batches waited for
    # (batch id or "#seq", job fingerprint) of the batches of other jobs waited for
    others: tuple[tuple[str, str], ...] = ()
    held: int = 0  # to send, held back: until the processing queue has room (waves), or for
    # the first request of their shared prefix (``_priming``)
    cost_usd: float | None = None  # of the answers so far (None: unknown, or not asked)

    @property
    def ended(self) -> int:
        return self.needed - self.waiting - self.sent - self.held

    @property
    def done(self) -> bool:
        return self.batches == 0 and self.sent == 0 and self.held == 0


@dataclass
class _Decision:
    """What one step decided, under the cache lock."""

    pending: list[str]  # to send now, in the new batches ``intents``
    held: int  # requests held back for room in the processing queue
    in_queue: int  # requests in the processing queue before these
    intents: list[BatchRecord]


class JobLoop:
    """Runs one job: ``step()`` once, or ``run()`` to the end."""

    def __init__(
        self,
        backend: Backend,
        job: JobLedger,
        bodies: Mapping[str, bytes],
        options: MapOptions,
        origin: str,
        models: Mapping[str, str | None] | None = None,
        needed: pa.Array | None = None,
    ) -> None:
        self.backend = backend
        self.job = job
        self.bodies = bodies
        self.options = options
        self.origin = origin
        # The job's distinct custom_ids (``needed``: the keys of ``bodies``, as Arrow).
        self.needed = pa.array(list(bodies), pa.string()) if needed is None else needed
        self._view: View | None = None  # the last step's, taken under the cache lock
        self.last_view: View | None = None  # what the last step saw (for status)
        self.holder = Holder.new()  # this call: it holds the intents it writes (``_lease``)
        self.batches = BatchKeeper(
            backend,
            job,
            bodies,
            betas=options.betas,
            schedule=options.schedule,
            clock=options.clock,
            holder=self.holder,
            origin=origin,
        )
        self._said: set[str] = set()  # the other jobs' batches already named in the log
        self._held = 0  # requests the last step held back for the queue limit
        # After a step that sent and changed nothing: the batches it polled, the lock's turn
        # when it decided, and its standing (``step``).
        self._quiet: tuple[list[BatchRecord], int, Standing] | None = None
        self.pricer = Pricer(
            job.ledger.store,
            bodies,
            PriceBook(options.prices),
            default_model=options.model,
            models=models,
        )
        # Requests that wait for the first request of their shared prefix (``_priming``).
        self.primers = Primers(job.read_prefix_groups())

    def run(self, timeout: float | None = None, *, progress: bool | None = None) -> bool:
        """Step and wait until the job is done (True), or until ``timeout`` seconds of the
        call's clock would pass before the next look (False: nothing is lost, and running
        again goes on). ``timeout=0`` is one step. ``progress`` overrides the option."""
        schedule, clock = self.options.schedule, self.options.clock
        deadline = None if timeout is None else clock.now() + timeout
        shown = self.options.progress if progress is None else progress
        bar = ProgressBar(shown, total=len(self.needed))
        try:
            while True:
                standing = self.step()
                bar.show(standing)
                if standing.done:
                    return True
                if standing.sent:
                    schedule.reset()
                if deadline is not None and clock.now() + schedule.next_delay > deadline:
                    return False
                delay = schedule.advance()
                if delay > 0:
                    clock.sleep(delay)
        finally:
            bar.close()
            self.release()

    def release(self) -> None:
        """Give up the intents this call still holds (it stops; see ``_lease``)."""
        self.batches.release()

    def _canceled(self) -> bool:
        manifest = self.job.read_manifest()
        return (
            manifest is not None
            and manifest.state == "canceled"
            and not self.options.resend_canceled
        )

    def survey(self) -> View:
        """What the cache knows of the job's requests now."""
        return survey(
            self.job.ledger, self.job.fingerprint, self.needed, self.origin, self.batches.unseen
        )

    def to_send(self, view: View) -> list[str]:
        """What of the job's requests the step would send, given what ``view`` saw."""
        return self._open(view).to_pylist()

    def _open(self, view: View) -> pa.Array:
        return view.open_ids(
            max_attempts=self.options.max_attempts,
            resend_canceled=self.options.resend_canceled,
        )

    def step(self) -> Standing:
        """Look at the cache under the cache-wide lock. With nothing to advance, decide from
        that look before letting the lock go; else advance the batches it found waiting (not
        under the lock: that polls and downloads), and decide under the lock again, from the
        same look when no one changed the cache meanwhile (advancing changed nothing, and no
        other call held the lock), else from a new one. A step that finds its batches still
        running reads the cache once.

        While requests wait for room in the processing queue (waves), a batch of this job
        found ended is downloaded after the step has created the batches its room lets out
        (``BatchKeeper.advance(later=True)``, ``take_ended``): the API works on the next wave
        while this call downloads and stores the last. Its requests count as in flight until
        its results are stored, never as open."""
        later = self._held > 0
        if self._quiet is not None:
            # The last step sent nothing and changed nothing: poll the same batches, and while
            # they change nothing and no other call held the lock, the cache holds what that
            # step saw (moves others make without the lock only make a step send less), so
            # its decision (nothing to send) and standing stand. A large job's polls stay cheap.
            advance, last_turn, standing = self._quiet
            self._quiet = None
            changed = False
            for record in advance:
                changed |= self.batches.advance(record, later=later)
            if not changed and not self.batches.ended:
                with self.job.ledger.locked() as turn:
                    if turn is not None and turn == last_turn + 1:
                        self._quiet = (advance, turn, standing)
                        return standing
        with self.job.ledger.locked() as turn:
            view = self.survey()
            ended = self.batches.ended  # polled already: downloaded after this step's creates
            advance = [r for r in self._to_advance(view) if (r.job, r.seq) not in ended]
            if not advance:
                decision = self._decide(view)
        final_turn = turn
        if advance:
            changed = False
            for record in advance:
                changed |= self.batches.advance(record, later=later)
            with self.job.ledger.locked() as again:
                if changed or turn is None or again != turn + 1:
                    view = self.survey()
                decision = self._decide(view)
            final_turn = again
        for record in decision.intents:
            self.batches.create(record, resumed=False)
        if self.batches.take_ended() and not decision.intents:
            return self.step()  # nothing went out meanwhile: decide on what was stored
        pending, held = decision.pending, decision.held
        self._view = view if not pending else None  # nothing sent: still what the cache holds
        self.last_view = view
        if held and not self._held:  # said once per stretch of waiting
            log.info(
                "dsbatch: %d requests wait for room in the processing queue "
                "(max_queued_requests=%d; the cache's batches hold %d): sent as earlier "
                "batches end",
                held,
                self.options.max_queued_requests,
                decision.in_queue + len(pending),
            )
        self._held = held
        standing = self._standing(view, len(pending), held + self.primers.held)
        give_back()  # what the step's downloads, parses and create bodies held
        if not pending and advance and final_turn is not None and not standing.done:
            self._quiet = (self._to_advance(view), final_turn, standing)
        return standing

    def _decide(self, view: View) -> _Decision:
        """What to send, from ``view``; the intents written. Called under the cache lock."""
        open_ids = self._open(view)
        if len(open_ids) and self._canceled():
            # A canceled job sends nothing more: what it never sent ends canceled.
            view.add(
                stand_in_results(open_ids, kind="canceled"),
                self.job.ledger.store.locate(open_ids, self.needed),
            )
            open_ids = open_ids.slice(0, 0)
        ended = self.batches.ended  # out of the queue, not yet stored: still in flight here
        in_queue = sum(
            r.request_count
            for r in queued(view.records, self.origin)
            if (r.job, r.seq) not in ended
        )
        room = max(0, self.options.max_queued_requests - in_queue)
        if self.primers.groups:
            pending = self.primers.hold(open_ids.to_pylist(), view)
        else:  # only what fits becomes Python strings: a wave of a million rows is long
            pending = open_ids.slice(0, room).to_pylist()
            self.primers.held = 0
        held = max(0, len(pending if self.primers.groups else open_ids) - room)
        pending = pending[:room]
        # The whole plan first: a request too large fails before any batch is paid.
        plans = list(
            chunk_requests(
                pending,
                self.bodies,
                max_requests=self.options.max_batch_requests,
                max_bytes=self.options.max_batch_bytes,
            )
        )
        now = self.options.clock.now()
        intents = [
            self.batches.held(
                self.job.new_record(
                    plan.custom_ids,
                    intent_at=now,
                    origin=self.origin,
                    holder=str(self.holder),
                    lease_until=self.batches.lease_until(),
                )
            )
            for plan in plans
        ]
        return _Decision(pending, held, in_queue, intents)

    def _to_advance(self, view: View) -> list[BatchRecord]:
        """The batches to poll before deciding: those holding the job's requests, and, while
        requests are held back, every batch filling the queue (whoever made it: a process that
        died must not keep the queue full)."""
        records = [record for record, _ in view.waiting]
        if self._held:
            seen = {(r.job, r.seq) for r in records}
            records += [r for r in queued(view.records, self.origin) if (r.job, r.seq) not in seen]
        return records

    def results(self) -> pa.Table:
        """Every result of every attempt of the job's requests (no raw lines): after a step that
        found the job done, the survey that step made (nothing has changed since)."""
        return self.final_view().results

    def final_view(self) -> View:
        """The survey ``results`` reads (its latest results already found by the step)."""
        return self._view if self._view is not None else self.survey()

    def _standing(self, view: View, sent: int, held: int) -> Standing:
        latest = view.latest()
        answered = pc.equal(latest["type"], "succeeded").fill_null(False)
        succeeded = pc.sum(answered).as_py() or 0
        # Priced only for the progress bar: every poll of a large job should stay cheap.
        cost = (
            self.pricer.total(latest.select(PRICED_COLUMNS).filter(answered))
            if self.options.progress
            else None
        )
        others = [(r, ids) for r, ids in view.waiting if r.job != self.job.fingerprint]
        for record, ids in others:
            if record.name not in self._said:
                self._said.add(record.name)
                log.warning(
                    "dsbatch: %d of this job's requests are in batch %s of job %s%s: waiting "
                    "for it, and reading its results here once it ends",
                    len(ids),
                    record.batch_id or f"#{record.seq}",
                    record.job,
                    " (another call is creating it)" if record.state is BatchState.INTENT else "",
                )
        return Standing(
            len(self.needed),
            succeeded,
            len(view.waiting_at),
            sent,
            len(view.waiting),
            tuple((r.batch_id or f"#{r.seq}", r.job) for r, _ in others),
            held,
            cost,
        )
