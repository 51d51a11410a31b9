"""``dsbatch.Job``: a job lives in the cache, not in a process.

``dsbatch.map(..., wait=False)`` returns one as soon as every batch it needs is created; any
process can then find it again (``Job.load`` with the fingerprint, or a unique prefix of it, or
``dsbatch.jobs()``), see where it stands, wait for it, cancel it and collect its result, without
the original dataset or prompt function: the job keeps its requests, its options, the row ->
request mapping of each split and its input rows (``_inputs``).
"""

from __future__ import annotations

import bisect
import datetime as dt
import html
import itertools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence, ValuesView
from typing import Any

import anthropic
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from dsbatch._backend import Backend, is_transient
from dsbatch._collect import Outputs, attach, cached_outputs, collect
from dsbatch._errors import BatchAPIError, LedgerError
from dsbatch._inputs import InputsUnavailable, check_given, load_inputs
from dsbatch._ledger import JobLedger, Ledger
from dsbatch._options import MapOptions
from dsbatch._origin import describe, resolve_origin
from dsbatch._plan import View
from dsbatch._poll import PollSchedule, call_retrying, poll_batch, poll_schedule
from dsbatch._provenance import step_facts
from dsbatch._records import IN_FLIGHT, BatchState, Manifest
from dsbatch._recovery import job_records
from dsbatch._run import JobLoop
from dsbatch._status import JobStatus, job_status
from dsbatch._store import custom_id_key, custom_id_keys

__all__ = ["Job", "jobs"]

log = logging.getLogger("dsbatch")

_SINGLE = "data"  # the split key of a plain Dataset
_LISTED = 10  # candidates a wrong fingerprint prefix lists


class Job:
    """One dsbatch job: its requests, the batches that carry them, and how to collect them.

    Made by ``dsbatch.map(..., wait=False)``, ``Job.load(fingerprint)`` or ``dsbatch.jobs()``.
    Nothing here depends on the process that started the job: its batches run on the API's side,
    and any process may wait for them.
    """

    def __init__(
        self,
        job: JobLedger,
        manifest: Manifest,
        *,
        client: anthropic.Anthropic | None = None,
        options: MapOptions | None = None,
        splits: Mapping[str, Dataset] | None = None,
        cache_dir: str | None = None,
        poll_interval: float | PollSchedule | None = None,
    ) -> None:
        self._job = job
        self._cache_dir = cache_dir
        self._poll_interval = poll_interval
        self._manifest = manifest
        # The server's clock skew is measured by the call's clock (a PollSchedule's, else the
        # system's), the one its intents are dated by.
        now = options.clock.now if options is not None else poll_schedule(poll_interval).clock
        self._backend = Backend(client, api_version=manifest.api_version, clock=now)
        self._options = options
        # The job's requests, read from its file as steps need them (``_Requests``).
        self._bodies: _Requests | None = None
        self._splits = dict(splits) if splits is not None else None
        self._origin_checked = options is not None  # started here: the origin is its own
        self._done: JobLoop | None = None  # the loop of a wait that found the job done

    # -- finding jobs ----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self._job.fingerprint

    @classmethod
    def load(
        cls,
        fingerprint: str,
        cache_dir: str | None = None,
        *,
        client: anthropic.Anthropic | None = None,
        poll_interval: float | PollSchedule | None = None,
    ) -> Job:
        """The job with this fingerprint (or a unique prefix of it) in the cache (``cache_dir``,
        else ``DSBATCH_CACHE``, else the default). ``client`` is used to reach the API (else
        ``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL``); ``poll_interval`` as for ``map``
        (else the job's own, else the built-in backoff)."""
        ledger = Ledger(cache_dir)
        job = ledger.job(_find(ledger, fingerprint))
        manifest = job.read_manifest()
        if manifest is None or not manifest.options:
            raise LedgerError(
                f"job {job.fingerprint} in {ledger.root} has no readable manifest (it was made "
                "by an older dsbatch, or the file is damaged): run the same dsbatch.map call "
                "again to go on with it",
                path=str(job.manifest_path),
            )
        return cls(job, manifest, client=client, cache_dir=cache_dir, poll_interval=poll_interval)

    # -- the options the job was started with ----------------------------------------------------
    def _opts(self, *, code: bool = True, **given: Any) -> MapOptions:
        """The job's options, ``given`` ones instead. ``code=False``: without its
        ``response_format`` and ``parse`` when they cannot be imported here (a class of a
        notebook): only the result runs them, not waiting, status or cancel."""
        if self._options is None or given:
            if self._poll_interval is not None:
                given = {**given, "poll_interval": self._poll_interval}
            options, missing = MapOptions.from_json(
                self._manifest.options, cache_dir=self._cache_dir, **given
            )
            if missing and not code:
                return options
            if missing:
                what = ", ".join(f"{name}={code}" for name, code in missing.items())
                raise ValueError(
                    f"job {self.fingerprint} was started with {what}, which cannot be imported "
                    f"here: pass it, e.g. job.result({next(iter(missing))}=...)"
                )
            if set(given) - {"poll_interval"}:
                return options
            self._options = options
        return self._options

    def _loop(self, options: MapOptions | None = None) -> JobLoop:
        options = options or self._opts(code=False)
        self._check_origin(options)
        return self._local_loop(options)

    def _requests(self) -> _Requests:
        """The job's requests, read from its file only as far as they are needed."""
        if self._bodies is None:
            self._bodies = _Requests(self._job)
        return self._bodies

    def _local_loop(self, options: MapOptions) -> JobLoop:
        """A loop for this job (no origin check: ``_loop`` makes it before any call). The
        request bodies are read only when a step needs them: a status needs their ids."""
        requests = self._requests()
        return JobLoop(
            self._backend,
            self._job,
            requests,
            options,
            origin=self._manifest.origin,
            models=self._job.request_models(),
            needed=requests.custom_ids(),
        )

    def _check_origin(self, options: MapOptions) -> None:
        """A job goes on only against the server that made its batches (``_origin``)."""
        if self._origin_checked or not self._manifest.origin:
            return
        retrying = call_retrying(options.schedule, options.clock, is_transient)
        here = resolve_origin(self._backend, self._job.ledger, retrying)
        if here != self._manifest.origin:
            raise BatchAPIError(
                f"job {self.fingerprint} was run against {describe(self._manifest.origin)}; "
                f"this client points at {describe(here)} ({self._backend.base_url}): pass "
                "client= (or set ANTHROPIC_BASE_URL) for the server the job was run against"
            )
        self._origin_checked = True

    # -- standing, waiting, canceling ------------------------------------------------------------
    def status(self, refresh: bool = True) -> JobStatus:
        """Where the job stands: requests per state, each batch (id, state, counts, when it was
        made), tokens and cost so far, and what is left. ``refresh=False`` reads the cache only;
        else the batches in flight are asked of the API (nothing is downloaded or sent)."""
        self._manifest = self._job.read_manifest() or self._manifest
        options = self._opts(code=False)
        loop = self._loop(options) if refresh else self._local_loop(options)
        view = loop.survey()
        to_send = loop.to_send(view)
        retrying = call_retrying(options.schedule, options.clock, is_transient)

        def poll(batch_id: str) -> Any:
            try:
                return poll_batch(self._backend, batch_id, retrying)
            except BatchAPIError as e:
                log.warning("dsbatch: could not ask about batch %s: %s", batch_id, e)
                return None

        return job_status(
            self._manifest,
            view,
            [] if self._manifest.state == "canceled" else to_send,
            loop.needed,
            job_records(self._job, strict=False),
            poll=poll if refresh else None,
            cost=loop.pricer.total,
        )

    def _submit(self) -> None:
        """One step, without a progress bar: every batch that can be made now is made."""
        self._loop().run(timeout=0, progress=False)

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Poll, download and retry until every request is final (as ``map`` does, with its
        progress bar), or until ``timeout`` seconds have passed: nothing is lost then, and
        waiting again goes on. Returns where the job stands."""
        loop = self._loop()
        done = loop.run(timeout)
        self._done = loop if done else None
        status = self.status(refresh=False)
        if not done:
            log.info(
                "dsbatch: job %s still running: %d requests left", self.fingerprint, status.left
            )
        return status

    def cancel(self) -> JobStatus:
        """Cancel the job's batches in flight. Answers already in are kept; what the batches had
        not answered ends ``canceled`` (not billed), and is sent again only by a call with
        ``resend_canceled=True``; the job sends nothing more."""
        options = self._opts(code=False)
        self._check_origin(options)
        if self.status(refresh=False).state == "done":
            log.warning("dsbatch: job %s is done: nothing to cancel", self.fingerprint)
            return self.status()

        def mark(manifest: Manifest) -> None:
            manifest.state, manifest.canceled_at = "canceled", dt.datetime.now().timestamp()

        # Marked first: a step of another call that reads the manifest meanwhile creates no
        # batch after this one looked at what is in flight.
        self._manifest = self._job.update_manifest(self._manifest, mark)
        retrying = call_retrying(options.schedule, options.clock, is_transient)
        canceled = 0
        for record in job_records(self._job):
            if record.state is BatchState.SUBMITTED and record.batch_id:
                info = retrying.call(self._backend.cancel, record.batch_id)
                canceled += 1
                log.info("dsbatch: canceling batch %s (%s)", info.id, info.processing_status)
        log.warning(
            "dsbatch: job %s canceled (%d batches in flight); what was answered is kept",
            self.fingerprint,
            canceled,
        )
        return self.status()

    # -- the result ------------------------------------------------------------------------------
    def result(
        self,
        timeout: float | None = None,
        *,
        dataset: Dataset | DatasetDict | None = None,
        response_format: type | None = None,
        parse: Any = None,
    ) -> Dataset | DatasetDict:
        """The dataset with the new columns, exactly as ``dsbatch.map`` returns it, once every
        request is final (waiting up to ``timeout`` seconds; ``TimeoutError`` after). The input
        rows are the ones the job kept; pass ``dataset=`` when they cannot be rebuilt (the
        error says so), and ``response_format=``/``parse=`` when the job's could not be
        imported here."""
        given: dict[str, Any] = {
            k: v for k, v in (("response_format", response_format), ("parse", parse)) if v
        }
        options = self._opts(**given)
        manifest = self._job.read_manifest() or self._manifest
        outputs = cached_outputs(
            self._job, manifest, manifest.split_names, options.output_key(manifest.fingerprints)
        )
        if outputs is None:
            loop = self._done if self._done is not None and not given else self._loop(options)
            if loop is not self._done and not loop.run(timeout):
                raise TimeoutError(
                    f"job {self.fingerprint} is still running after {timeout} s; nothing is "
                    "lost: call result() or wait() again"
                )
            outputs = self._collect(options, loop.final_view(), dataset, loop.pricer.per_request)
            manifest = self._manifest
            # The results are in the stored columns now: let the loop's copy go before they
            # are attached (at a million rows, a third of the call's memory).
            self._done = None
            del loop
        return self._attach(options, outputs, dataset, manifest)

    def _cached_result(self) -> Dataset | DatasetDict | None:
        """The result as ``result()`` gives it, from what the cache holds now, for a finished job
        with nothing in flight and every request final; None when anything is missing (the
        caller goes the long way). Nothing is sent, polled or downloaded."""
        options = self._opts()
        manifest = self._job.read_manifest()
        if manifest is None or manifest.state != "finished":
            return None
        if any(record.state in IN_FLIGHT for record in job_records(self._job, strict=False)):
            return None
        self._manifest = manifest
        outputs = cached_outputs(
            self._job, manifest, manifest.split_names, options.output_key(manifest.fingerprints)
        )
        if outputs is None:  # not stored, or made by other code (parse, response_format)
            loop = self._loop(options)
            view = loop.survey()
            pending = loop.to_send(view)
            if pending or view.waiting:
                return None
            outputs = self._collect(options, view, None, loop.pricer.per_request)
        return self._attach(options, outputs, None, self._manifest)

    def _attach(
        self,
        options: MapOptions,
        outputs: Outputs,
        dataset: Dataset | DatasetDict | None,
        manifest: Manifest,
    ) -> Dataset | DatasetDict:
        splits = self._inputs(dataset)
        out = attach(
            splits,
            outputs,
            status_column=options.status_column,
            on_error=options.on_error,
            output_key=options.output_key(manifest.fingerprints),
            labels=self._labels(),
            repeat=options.samples if options.samples_as == "rows" else 1,
            provenance=step_facts(
                manifest.provenance,
                job=self.fingerprint,
                model=manifest.model,
                created_at=manifest.created_at,
                finished_at=manifest.finished_at,
            ),
        )
        return DatasetDict(out) if self._manifest.labelled else out[_SINGLE]

    def _collect(
        self,
        options: MapOptions,
        view: View,
        dataset: Dataset | DatasetDict | None,
        cost: Callable[[pa.Table], pa.Array] | None = None,
    ) -> Outputs:
        ids = {split: self._job.read_rows(split) for split in self._manifest.split_names}
        missing = [split for split, rows in ids.items() if rows is None]
        if missing:
            raise LedgerError(
                f"job {self.fingerprint}: the row -> request files of {missing} are missing "
                f"from {self._job.rows_dir}: run the same dsbatch.map call again (it "
                "writes them back; nothing is bought again)",
                path=str(self._job.rows_dir),
            )
        splits = self._inputs(dataset) if options.parse is not None else None
        outputs = collect(
            self._job,
            view.results,
            ids,
            options.output,
            splits,
            self._requests(),
            cost,
            latest=view.latest(),
        )

        def finished(manifest: Manifest) -> None:
            # Columns joined again as they were (a lost output file) keep the time they were
            # finished at: the output is the same, features (its provenance) included.
            if (
                manifest.state == "running"
                or manifest.finished_at is None
                or manifest.outputs != outputs.digests
            ):
                manifest.finished_at = dt.datetime.now().timestamp()
            if manifest.state == "running":
                manifest.state = "finished"
            manifest.output_key = options.output_key(manifest.fingerprints)
            manifest.outputs = outputs.digests

        self._manifest = self._job.update_manifest(self._manifest, finished)
        return outputs

    def _labels(self) -> dict[str, str | None]:
        return {s: (s if self._manifest.labelled else None) for s in self._manifest.split_names}

    def _inputs(self, dataset: Dataset | DatasetDict | None) -> dict[str, Dataset]:
        if dataset is not None:
            given = dict(dataset) if isinstance(dataset, DatasetDict) else {_SINGLE: dataset}
            check_given(given, self._manifest.inputs, self.fingerprint)
            return {split: given[split] for split in self._manifest.split_names}
        if self._splits is None:
            try:
                loaded = load_inputs(self._job, self._manifest.inputs, self._labels())
                self._splits = {split: loaded[split] for split in self._manifest.split_names}
            except InputsUnavailable as e:
                kind = "DatasetDict" if self._manifest.labelled else "Dataset"
                raise ValueError(
                    f"job {self.fingerprint}: {e}. Pass the {kind} the job was run on: "
                    f"Job.load({self.fingerprint[:12]!r}).result(dataset=...) (the same rows; "
                    "its fingerprint is checked)"
                ) from e
        return self._splits

    # -- showing ---------------------------------------------------------------------------------
    def __repr__(self) -> str:
        try:
            status = self.status(refresh=False)
        except Exception as e:  # a repr must not raise: say what is known
            return f"<dsbatch.Job {self.fingerprint} ({type(e).__name__}: {e})>"
        answered = status.counts.get("succeeded", 0)
        return (
            f"<dsbatch.Job {self.fingerprint[:12]} {status.state}: {answered:,} of "
            f"{status.requests:,} requests answered, {status.left:,} left; "
            f"{status.model}, {status.rows:,} rows, started {status.created_at:%Y-%m-%d %H:%M}>"
        )

    def _repr_html_(self) -> str:
        try:
            return self.status(refresh=False)._repr_html_()
        except Exception as e:
            return (
                f"<code>dsbatch.Job {html.escape(self.fingerprint)}</code>: {html.escape(str(e))}"
            )


class _Requests(Mapping[str, bytes]):
    """A job's requests, read from its file as they are needed: listing, status and cancel read
    their custom_ids alone (one column), and a step reads the row groups of the requests it
    sends, one at a time (the file is in the order batches are cut), so a job of a million
    requests never holds every body in memory. The custom_ids stay one Arrow array, found by
    the sorted 64-bit keys the results index uses (``custom_id_keys``): a dict of a million
    ids would cost more than the bodies a step holds."""

    def __init__(self, job: JobLedger) -> None:
        self._job = job
        self._ids: pa.Array | None = None
        self._keys: np.ndarray | None = None  # the ids' keys, sorted
        self._rows: np.ndarray | None = None  # the file's row of each key
        self._starts: list[int] = []  # the first row of each row group
        # (group, column, values) of the last row group's column read
        self._group: tuple[int, str, pa.Array] = (-1, "", pa.array([], pa.binary()))
        self._sized: bool | None = None  # whether the file keeps each request's size

    def custom_ids(self) -> pa.Array:
        """Every custom_id, in the file's order."""
        if self._ids is None:
            ids = self._job.request_ids()
            if ids is None:  # unreadable: reading the bodies says why, naming the file
                ids = pa.array(list(self._job.read_requests()), pa.string())
            self._ids = ids
        return self._ids

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._keys is None or self._rows is None:
            keys = custom_id_keys(self.custom_ids())
            self._rows = np.argsort(keys, kind="stable")
            self._keys = keys[self._rows]
            self._starts = list(itertools.accumulate(self._job.request_groups(), initial=0))
        return self._keys, self._rows

    def _row(self, custom_id: str) -> int:
        keys, rows = self._index()
        key = np.uint64(custom_id_key(custom_id))  # a Python int would be compared as a float
        first = int(np.searchsorted(keys, key, side="left"))
        ids = self.custom_ids()
        # Ids sharing a key (a request and its samples) are told apart by the ids themselves.
        for at in range(first, len(keys)):
            if keys[at] != key:
                break
            row = int(rows[at])
            if ids[row].as_py() == custom_id:
                return row
        raise KeyError(custom_id)

    def params(self, custom_ids: Sequence[str]) -> pa.Array:
        """The params of these requests as one Arrow binary array, in their order: found all
        at once (a step sends a hundred thousand), each row group read once."""
        return self._column(custom_ids, "params")

    def sizes(self, custom_ids: Sequence[str]) -> np.ndarray:
        """The bytes of each of these requests' params, in their order, read from the file's
        sizes (without the params) when it keeps them."""
        if self._sized is None:
            self._sized = self._job.requests_have_sizes()
        if not self._sized:
            lengths = pc.binary_length(self.params(custom_ids))
        else:
            lengths = self._column(custom_ids, "size")
        return np.asarray(lengths.to_numpy(zero_copy_only=False), np.int64)

    def _column(self, custom_ids: Sequence[str], column: str) -> pa.Array:
        """One column of the file for these requests, in their order."""
        if not custom_ids:
            return pa.array([], pa.binary() if column == "params" else pa.int32())
        keys, rows = self._index()
        wanted = pa.array(custom_ids, pa.string())
        starts = np.asarray(self._starts, dtype=np.int64)
        # The usual batch is cut in the file's order: the rows from its first id's on.
        first = self._row(custom_ids[0])
        if self.custom_ids().slice(first, len(wanted)).equals(wanted):
            return self._rows_between(first, first + len(wanted), starts, column)
        found = np.minimum(np.searchsorted(keys, custom_id_keys(wanted)), len(keys) - 1)
        at = rows[found]
        # The first id of each key is the usual match; others (samples) are looked up alone.
        same = pc.equal(self.custom_ids().take(pa.array(at)), wanted).to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(~same).tolist():
            at[i] = self._row(custom_ids[i])
        order = np.argsort(at, kind="stable")
        groups = np.searchsorted(starts, at[order], side="right") - 1
        parts = []
        for group in np.unique(groups).tolist():
            start, values = self._group_column(group, column)
            parts.append(values.take(pa.array(at[order][groups == group] - start)))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return pa.concat_arrays(parts).take(pa.array(inverse))

    def _rows_between(self, first: int, end: int, starts: np.ndarray, column: str) -> pa.Array:
        """One column of the file's rows ``first`` to ``end`` (a batch cut in the file's order,
        the usual one): slices of its row groups, without sorting or taking."""
        parts = []
        group = int(np.searchsorted(starts, first, side="right")) - 1
        while group < len(starts) - 1 and starts[group] < end:
            start, values = self._group_column(group, column)
            low, high = max(first - start, 0), min(end - start, len(values))
            parts.append(values.slice(low, high - low))
            group += 1
        return pa.concat_arrays(parts)

    def _group_column(self, group: int, column: str) -> tuple[int, pa.Array]:
        """(first row, values) of one column of one row group: the last one read is kept."""
        if self._group[:2] != (group, column):
            self._group = (group, column, self._job.read_request_column(group, column))
        return self._starts[group], self._group[2]

    def _body(self, at: int) -> bytes:
        start, params = self._group_column(bisect.bisect_right(self._starts, at) - 1, "params")
        value: bytes = params[at - start].as_py()
        return value

    def __getitem__(self, custom_id: str) -> bytes:
        return self._body(self._row(custom_id))

    def __iter__(self) -> Iterator[str]:
        ids = self.custom_ids()
        for offset in range(0, len(ids), _ID_CHUNK):
            yield from ids.slice(offset, _ID_CHUNK).to_pylist()

    def __len__(self) -> int:
        return len(self.custom_ids())

    def values(self) -> ValuesView[bytes]:
        return _RequestValues(self)

    def bodies_in_order(self) -> Iterator[bytes]:
        """Every body in the file's order, a row group at a time."""
        for group in range(len(self._job.request_groups())):
            yield from self._job.read_request_group(group)


# Ids made Python strings at a time when iterating a job's requests.
_ID_CHUNK = 65_536


class _RequestValues(ValuesView[bytes]):
    _mapping: _Requests

    def __iter__(self) -> Iterator[bytes]:
        return self._mapping.bodies_in_order()


def jobs(
    cache_dir: str | None = None,
    *,
    client: anthropic.Anthropic | None = None,
    poll_interval: float | PollSchedule | None = None,
) -> list[Job]:
    """The jobs of a cache, newest first (jobs made by an older dsbatch are left out);
    ``client`` and ``poll_interval`` as for ``Job.load``."""
    ledger = Ledger(cache_dir)
    found = []
    for fingerprint in ledger.job_fingerprints():
        job = ledger.job(fingerprint)
        manifest = job.read_manifest()
        if manifest is not None and manifest.options:
            found.append(
                Job(job, manifest, client=client, cache_dir=cache_dir, poll_interval=poll_interval)
            )
    return sorted(found, key=lambda j: j._manifest.created_at, reverse=True)


def _find(ledger: Ledger, prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(
            f"a job fingerprint (or a prefix of one) is a non-empty str, not {prefix!r}"
        )
    candidates = [fp for fp in ledger.job_fingerprints() if fp.startswith(prefix)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        known = ledger.job_fingerprints()
        shown = ", ".join(known[:_LISTED]) + (" ..." if len(known) > _LISTED else "")
        raise ValueError(
            f"no job {prefix!r} in the cache {ledger.root}"
            + (f"; its jobs: {shown}" if known else " (it holds no job)")
        )
    shown = ", ".join(candidates[:_LISTED]) + (" ..." if len(candidates) > _LISTED else "")
    raise ValueError(f"{prefix!r} is the start of {len(candidates)} jobs: {shown}; give more of it")
