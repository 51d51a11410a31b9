"""``dsbatch.map``: a Dataset through the Message Batches API, the way ``Dataset.map`` runs a
function: prepare (render every row, find the job), start the job (``dsbatch.Job``), then wait for
it and collect its result, or return it at once (``wait=False``)."""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anthropic
from datasets import Dataset, DatasetDict

from dsbatch._arrow import give_back
from dsbatch._backend import Backend, Unreachable, is_transient
from dsbatch._compat import fingerprint_of
from dsbatch._cost import PriceBook, model_of
from dsbatch._errors import BatchAPIError, LedgerError
from dsbatch._estimate import Plan, check_budget, make_plan
from dsbatch._inputs import keep_inputs
from dsbatch._job import Job
from dsbatch._ledger import Ledger
from dsbatch._limits import DEFAULT_MAX_QUEUED, MAX_BATCH_BYTES, MAX_BATCH_REQUESTS
from dsbatch._options import MapOptions
from dsbatch._origin import resolve_origin
from dsbatch._parallel import render_splits
from dsbatch._plan import check_sizes, job_fingerprint
from dsbatch._poll import PollSchedule, first_contact_retrying
from dsbatch._prefix import TemplateMarks, plan_prefix_caching
from dsbatch._provenance import call_facts
from dsbatch._reasoning import any_thinks, request_thinks
from dsbatch._records import Manifest
from dsbatch._render import Rendered, RequestShape
from dsbatch._rerun import call_digest, remember, rerun_key, served
from dsbatch._stable import warn_if_replacing, warn_if_unstable

__all__ = ["Prepared", "find_origin", "map", "prepare"]

log = logging.getLogger("dsbatch")

_SINGLE = "data"  # the split key of a plain Dataset
# map's keywords that are options of the job (MapOptions declares and checks each one)
_KEYWORDS = frozenset(f.name for f in dataclasses.fields(MapOptions) if f.init)


def map(  # noqa: A001 - the name mirrors Dataset.map on purpose
    dataset: Dataset | DatasetDict,
    prompt: Callable[..., Any],
    *,
    model: str | None,
    max_tokens: int = 1024,
    system: str | list[dict[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
    response_format: type | None = None,
    parse: Callable[[dict[str, Any], dict[str, Any]], Mapping[str, Any]] | None = None,
    output_column: str = "response",
    with_indices: bool = False,
    structured_output: Literal["native", "tool"] = "native",
    betas: list[str] | None = None,
    prompt_caching: Literal["auto", "off"] = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    client: anthropic.Anthropic | None = None,
    max_attempts: int = 3,
    on_error: Literal["keep", "drop", "raise"] = "keep",
    poll_interval: float | PollSchedule | None = None,
    resend_canceled: bool = False,
    status_column: str = "dsbatch",
    progress: bool = True,
    max_batch_requests: int = MAX_BATCH_REQUESTS,
    max_batch_bytes: int = MAX_BATCH_BYTES,
    check_determinism: bool = True,
    samples: int = 1,
    samples_as: Literal["lists", "rows"] = "lists",
    thinking_column: str | None = "thinking",
    conversation_column: str | None = None,
    budget_usd: float | None = None,
    dry_run: bool = False,
    max_queued_requests: int = DEFAULT_MAX_QUEUED,
    prices: Mapping[str, Mapping[str, float]] | None = None,
    load_from_cache_file: bool = True,
    num_proc: int | None = None,
    wait: bool = True,
) -> Dataset | DatasetDict | Job | Plan:
    """Run every row of ``dataset`` through ``prompt`` and the Message Batches API.

    ``prompt(row)`` (or ``prompt(row, idx)`` with ``with_indices``) returns a str (one user
    message), a list of messages, a dict of Messages params (merged over ``model``,
    ``max_tokens``, ``system`` and ``params``; the prompt wins), or None to skip the row.

    Returns the dataset with new columns: ``output_column`` (the answer's text), one column per
    field of ``response_format`` (a pydantic model; ``structured_output`` "native" asks for
    JSON output, "tool" forces a tool call), the columns ``parse(row, message)`` returns
    (``message`` is the answer as the API sent it, a dict), and ``status_column`` (status,
    error, custom_id, stop_reason, token counts, attempts). A ``DatasetDict`` is one job across
    all splits and comes back as a ``DatasetDict``. ``betas`` go out as the ``anthropic-beta``
    header of every batch.

    ``prompt_caching="auto"`` (the default) finds the long prompt prefixes the requests share
    (tools, system prompt, first turns), puts a 1-hour ``cache_control`` breakpoint at the end
    of each, and sends one request per prefix first, in a batch of its own, to write the cache
    the others then read (details: docs/prompt-caching.md); ``"off"`` sends the requests as the
    prompt made them, all at once. A request that sets ``cache_control`` itself is left alone.

    Identical requests are sent once. Results are cached under ``cache_dir`` (else
    ``DSBATCH_CACHE``, else ``$HF_HOME/dsbatch``): the same call again makes no API call, and a
    call that changed some rows sends only those. Errored (other than
    ``invalid_request_error``) and expired requests are sent again, up to ``max_attempts`` in
    all; canceled ones only with ``resend_canceled=True``. What still failed follows
    ``on_error``: ``"keep"`` the row with a null answer, ``"drop"`` it, or ``"raise"``
    ``dsbatch.RowFailedError``.

    ``wait=False`` returns a ``dsbatch.Job`` as soon as every batch that fits the processing
    queue is created (the rest go out while someone waits on the job, in any process): its
    ``wait()``, ``status()``, ``cancel()`` and ``result()`` work from any process
    (``dsbatch.Job.load(fingerprint)``), without the dataset or the prompt function.

    Cost (details: docs/cost.md): ``dry_run=True`` returns a ``dsbatch.Plan`` (what would be
    sent, its input tokens, the cost at most and expected) and sends nothing. ``budget_usd``
    refuses, before anything is sent, a call whose requests still to send may cost more
    (``dsbatch.BudgetExceededError``). Prices are dsbatch's table at batch prices; ``prices``
    (model -> standard USD per million tokens: ``input``, ``output``, ``cache_write_5m``,
    ``cache_write_1h``, ``cache_read``) or a JSON file named by ``DSBATCH_PRICES`` override it.
    The status column's ``cost_usd`` is each answer's cost. A job keeps at most
    ``max_queued_requests`` requests in the processing queue, counting every batch of the
    cache in flight: the rest go out in waves as earlier batches end.

    Answers serve only runs against the server that gave them: an emulator's never serve a run
    against the Anthropic API. A prompt function that renders other requests when called again
    (it reads ``random``, the time, a counter) is warned about, since every rerun would pay
    again; ``check_determinism=False`` silences that for prompts that vary on purpose.

    Training data: ``samples=k`` asks k answers of each row (the new columns become lists of k,
    or with ``samples_as="rows"`` each row comes back k times with a ``sample`` column); a job
    whose requests think has a ``thinking_column`` with the reasoning text;
    ``conversation_column="messages"`` adds each row's conversation (system, turns, answer) as
    ``{"role", "content"}`` dicts. See docs/training-data.md.

    Reruns (docs/reliability.md): as ``Dataset.map`` does, a call whose dataset fingerprint,
    prompt function (its code, the globals it reads, its defaults) and keywords match a finished
    job's returns that job's output without calling the prompt function;
    ``load_from_cache_file=False`` renders every row all the same (still paying nothing twice).

    ``num_proc=N`` renders the rows in N processes, as ``Dataset.map(num_proc=)`` runs its
    function: for a heavy prompt function (a tokenizer, a template engine). Each split is cut
    into N contiguous shards; the requests, their custom_ids and the job are the same as with
    one process, and a failing row is named by its index in the split. The prompt function is
    sent to the workers pickled with ``dill`` (lambdas and closures work); one that cannot be
    pickled renders in this process, with a warning saying why.
    """
    if not isinstance(dataset, (Dataset, DatasetDict)):
        raise TypeError(
            f"dsbatch.map takes a datasets.Dataset or DatasetDict, not {type(dataset).__name__}"
        )
    if not callable(prompt):
        raise TypeError(f"prompt must be a function of the row, not {type(prompt).__name__}")
    options = MapOptions.build(
        **{name: value for name, value in locals().items() if name in _KEYWORDS}
    )
    splits = dict(dataset) if isinstance(dataset, DatasetDict) else {_SINGLE: dataset}
    labelled = isinstance(dataset, DatasetDict)
    backend = Backend(client, clock=options.clock.now)
    PriceBook(options.prices)  # a bad DSBATCH_PRICES file is refused before anything is written
    ledger = Ledger(options.cache_dir)
    digest = key = None
    if wait and options.load_from_cache_file and not options.dry_run:
        digest = call_digest(splits, prompt, options, backend, labelled=labelled)
        key = rerun_key(digest, backend, ledger) if digest else None
        out = served(ledger, key, splits, options, client, labelled=labelled) if key else None
        if out is not None:
            return out
    job = _start(splits, prompt, options, client, backend, ledger, labelled=labelled)
    if isinstance(job, Plan):
        return job
    if not wait:
        job._submit()
        return job
    try:
        out = job.result()
    except KeyboardInterrupt:
        log.warning(
            "dsbatch: stopped waiting; the batches of job %s keep running on the API's side and "
            "are paid for: nothing was canceled. To go on: run the same call again, or "
            "dsbatch.Job.load(%r).wait() (then .result()), or from a shell `dsbatch wait %s`; "
            "to stop paying for what is left: `dsbatch cancel %s`.",
            job.fingerprint,
            job.fingerprint[:12],
            job.fingerprint[:12],
            job.fingerprint[:12],
        )
        raise
    if digest is not None:  # the server's origin is known by now, if the job asked it
        remember(ledger, key or rerun_key(digest, backend, ledger), job.fingerprint)
    return out


def _start(
    splits: dict[str, Dataset],
    prompt: Callable[..., Any],
    options: MapOptions,
    client: anthropic.Anthropic | None,
    backend: Backend,
    ledger: Ledger,
    *,
    labelled: bool,
) -> Job | Plan:
    """Render every row, find the job (its fingerprint) and record it, with what a process that
    never saw the dataset or the prompt needs to go on with it. A dry run returns its plan
    instead, and a budget is checked, before anything about the job is written."""
    labels = {split: split if labelled else None for split in splits}
    prepared = prepare(splits, prompt, options, backend, labels)
    rendered, shape = prepared.rendered, prepared.shape
    # Where answers come from decides which serve this job (``_origin``); a job with nothing
    # to ask has no need to know.
    origin = find_origin(backend, ledger, options) if rendered.bodies else ""
    job = ledger.job(job_fingerprint(rendered.row_custom_ids, origin, options.samples))
    manifest = job.read_manifest()
    fingerprints = {split: fingerprint_of(ds) for split, ds in splits.items()}
    if options.check_determinism and rendered.bodies and manifest is None:
        # A new job: the moment to see a prompt that would make every rerun pay again.
        stable = not warn_if_unstable(
            splits,
            rendered,
            prompt,
            shape=shape,
            with_indices=options.with_indices,
            labels=labels,
            transform=prepared.transform,
        )
        if stable:
            warn_if_replacing(ledger, job.fingerprint, fingerprints, list(rendered.bodies))
    if options.dry_run or options.budget_usd is not None:
        plan = make_plan(
            backend,
            ledger,
            job.fingerprint,
            rendered.bodies,
            rows=sum(len(ids) for ids in rendered.row_custom_ids.values()),
            origin=origin,
            options=options,
            canceled=manifest is not None
            and manifest.state == "canceled"
            and not options.resend_canceled,
        )
        if options.dry_run:
            return plan
        check_budget(plan, options.budget_usd)  # type: ignore[arg-type]
    # (custom_id, body, its model) of every request, as the requests file keeps them; the
    # models seen are the call's facts.
    models: set[str | None] = set()
    model = _template_model(rendered, options.model)
    requests: Iterator[tuple[str, bytes, str | None]] = iter(())
    if model is None:
        requests = _with_models(rendered, options.model, models)
    else:
        models.add(model[0])
    if manifest is None or not manifest.options or not job.has_requests():
        if prepared.groups:  # before the requests: a job with its requests has its groups
            job.write_prefix_groups(prepared.groups)
        if model is not None:
            (only,) = model
            groups = rendered.bodies.column_groups(job.group_rows)
            job.write_request_columns(
                ((ids, params, only) for ids, params in groups), thinks=prepared.thinks
            )
        else:
            job.write_requests(requests, thinks=prepared.thinks)
        for split, ids in rendered.row_custom_ids.items():
            job.write_rows(split, ids)
        give_back()  # the requests' columns, written
        inputs = keep_inputs(job, splits)
    elif manifest.fingerprints != fingerprints:
        # The same requests from other rows (a column outside the prompt changed): the job keeps
        # the latest call's, so that a result in another process returns what map returned.
        inputs = keep_inputs(job, splits)
    else:
        inputs = manifest.inputs
    started = Manifest(
        fingerprint=job.fingerprint,
        created_at=time.time(),
        splits={s: len(ids) for s, ids in rendered.row_custom_ids.items()},
        requests=len(rendered.bodies),
        model=options.model,
        betas=list(options.betas),
        origin=origin,
        api_version=backend.api_version,
        labelled=labelled,
        split_order=list(splits),
    )

    kept = options.to_json()
    collections.deque(requests, maxlen=0)  # the models of the requests not written above
    facts = call_facts(
        prompt,
        model=options.model,
        system=options.system,
        params=options.params,
        max_tokens=options.max_tokens,
        samples=options.samples,
        betas=list(options.betas),
        response_format=options.response_format,
        api_version=backend.api_version,
        models=models,
    )
    resume = manifest is not None and manifest.state == "canceled" and options.resend_canceled
    version = backend.api_version
    if (
        manifest is None
        or (manifest.options, manifest.inputs, manifest.api_version) != (kept, inputs, version)
        or manifest.provenance != facts
        or resume
    ):

        def begin(m: Manifest) -> None:
            # The options of the latest call: a job goes on with what it was last asked (its
            # requests were checked for this call's API version).
            m.options, m.inputs, m.api_version = kept, inputs, version
            m.provenance = facts
            if m.state == "canceled" and options.resend_canceled:
                m.state, m.canceled_at = "running", None

        try:
            manifest = job.update_manifest(started, begin)
        except LedgerError:
            if manifest is None:
                raise
            # A cache that cannot be written (read-only) still serves what it holds.
            log.info("dsbatch: could not record this call's options in job %s", job.fingerprint)
    # The job reads its requests back from its file as its steps send them: the rendered
    # bodies are let go here, so a job's memory follows its batches, not its rows (row sizes
    # were checked by ``prepare``, naming the row; a later step has nothing of a row to name).
    return Job(
        job,
        manifest,
        client=client,
        options=options,
        splits=splits,
        cache_dir=options.cache_dir,  # type: ignore[arg-type]
    )


@dataclass
class Prepared:
    """A job's requests, rendered and checked, as ``map`` and ``preview`` both send them."""

    rendered: Rendered
    shape: RequestShape
    # Whether any request asks for thinking (kept with the requests: the join reads it).
    thinks: bool = False
    # custom_id -> prompt-cache prefix group (``_priming``) of the requests given a breakpoint
    groups: dict[str, int] = field(default_factory=dict)
    # What turns a rendering of some of the rows into the bytes the job sends (the breakpoints).
    transform: Callable[[Rendered], object] | None = None


def prepare(
    splits: dict[str, Dataset],
    prompt: Callable[..., Any],
    options: MapOptions,
    backend: Backend,
    labels: Mapping[str, str | None],
) -> Prepared:
    """Render every row of every split, place the prompt-cache breakpoints, and refuse, before
    any call, what no batch could carry."""
    options.check_columns({labels[s] or "": ds.column_names for s, ds in splits.items()})
    shape = options.shape(backend.api_version)
    marks = TemplateMarks() if options.prompt_caching == "auto" else None
    if marks is not None:
        shape = dataclasses.replace(shape, mark=marks)
    rendered = Rendered()
    render_splits(
        rendered,
        splits,
        prompt,
        shape=shape,
        with_indices=options.with_indices,
        labels=labels,
        samples=options.samples,
        text_only=options.conversation_column is not None,
        num_proc=options.num_proc,
    )
    thinks = _thinks(rendered)
    if options.thinking_column is not None and thinks:
        options.check_columns(
            {labels[s] or "": ds.column_names for s, ds in splits.items()}, thinks=True
        )
    prepared = Prepared(rendered, shape, thinks)
    caching = plan_prefix_caching(rendered, options.betas, marks) if marks is not None else None
    if caching is not None:
        prepared.groups = caching.apply(rendered)
        prepared.transform = caching.apply
        if prepared.groups:
            log.info("dsbatch: %s", caching.describe(prepared.groups))
    check_sizes(rendered.bodies, max_bytes=options.max_batch_bytes, first_row=rendered.first_row)
    return prepared


def _thinks(rendered: Rendered) -> bool:
    """Whether any request thinks (``any_thinks``). When every body was made from a text
    template, its params but the messages are the template's: the templates are read instead."""
    if rendered.templates and rendered.from_template == len(rendered.bodies):
        return any(
            request_thinks(json.loads(head + b"null" + tail))
            for head, tail in set(rendered.templates)
        )
    return any_thinks(rendered.bodies.values())


def _template_model(rendered: Rendered, default: str | None) -> tuple[str | None] | None:
    """(the model,) of bodies all made from one text template; None when they are not. Only
    the messages differ, and a text there is a JSON string (``"model":`` cannot occur in it,
    its quotes escaped): the model of one is the model of all, and the requests are written
    as columns (``Bodies.column_groups``), without a Python object per request."""
    templates = set(rendered.templates)
    if len(templates) != 1 or rendered.from_template != len(rendered.bodies):
        return None
    ((head, tail),) = templates
    return (model_of(head + b"[]" + tail, default),)


def _with_models(
    rendered: Rendered, default: str | None, seen: set[str | None]
) -> Iterator[tuple[str, bytes, str | None]]:
    """(custom_id, body, ``model_of(body, default)``) of every body, adding each model to
    ``seen``. A body naming ``model`` once, as the default, is known without parsing (the key
    made once, not per body)."""
    bodies = rendered.bodies
    named = None if default is None else b'"model":' + json.dumps(default).encode()
    for custom_id, body in bodies.items():
        at = -1 if named is None else body.find(named)
        # The default's, and the only "model" key when no other is before or after it.
        if at >= 0 and body.find(b'"model":', 0, at) < 0 and body.find(b'"model":', at + 1) < 0:
            seen.add(default)
            yield custom_id, body, default
            continue
        model = model_of(body, default)
        seen.add(model)
        yield custom_id, body, model


def find_origin(backend: Backend, ledger: Ledger, options: MapOptions) -> str:
    """Where answers come from (``_origin``). It may be this cache's first contact with a server
    it does not know: a wrong base URL fails within seconds, naming it."""
    try:
        return resolve_origin(
            backend, ledger, first_contact_retrying(options.schedule, options.clock, is_transient)
        )
    except Unreachable as e:
        raise BatchAPIError(
            f"{e}. Nothing was bought: fix the cause and run the same call again."
        ) from e
