"""The ``dsbatch`` command line: each subcommand's help is its function's docstring.

Job commands work on the same cache as ``dsbatch.map`` (``--cache-dir``, else ``DSBATCH_CACHE``,
else the default) and reach the API as the SDK does (``ANTHROPIC_API_KEY``,
``ANTHROPIC_BASE_URL``). Exit codes: 0 done, 1 failed (an error, said on stderr), 2 bad usage,
3 still running (``status``, and ``wait``/``collect`` with ``--timeout``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import errno
import inspect
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsbatch._status import JobStatus

__all__ = ["main"]

DONE, FAILED, USAGE, RUNNING = 0, 1, 2, 3


def cmd_emulator(args: argparse.Namespace) -> int:
    """Serve a local emulator of the Anthropic API until interrupted.

    Point the SDK at it with ANTHROPIC_BASE_URL=http://127.0.0.1:PORT and any API key.
    It serves the Message Batches API, POST /v1/messages (answers at once, from the same
    responder as batches) and POST /v1/messages/count_tokens. Every answer carries the
    header x-dsbatch-emulator: 1. Batches end --delay seconds after they are created (real
    time).

    Batches are scoped to the workspace of the key that created them: --workspace KEY=NAME
    (repeatable) puts API key KEY in workspace NAME; every other key is in workspace
    "default". A key sees, and gets results of, its own workspace's batches only (404 else).

    --faults takes a comma-separated list of:
      ENDPOINT=STATUSxN[@S]  the next N calls of ENDPOINT (create, retrieve, list, cancel,
                             delete, results, messages, count_tokens, or * for any) answer
                             STATUS (429, 500, 529, ...), with retry-after S seconds
      lose_create=N          the next N creates make the batch but the answer is lost
      cut_results=N          the next N results downloads stop midway
      short_results=N        the next N results downloads end cleanly after half their lines
      errored=F              a fraction F of batch requests end errored (overloaded_error,
                             api_error)
      invalid=F              ... errored with invalid_request_error (stays so on retry)
      expired=F              ... expired
      preamble=F             structured answers start with prose (forced tool: a text block,
                             then the tool call)
      no_json=F              structured answers come back as prose only (forced tool: no
                             tool call)
      redacted_thinking=F    answers that think carry a redacted_thinking block instead of
                             their thinking block
    e.g. --faults "create=429x2,lose_create=1,errored=0.1,expired=0.02"
    Requests are checked as the API checks them: a bad request in a batch ends errored
    (invalid_request_error) and the Messages API answers it 400. Each batch follows its
    create's anthropic-version: under 2026-10-21 (the SDK's default), requests with
    temperature, top_p or top_k end errored.
    """
    from dsbatch._emulator import Faults, serve_forever

    try:
        faults = Faults.parse(args.faults) if args.faults else None
    except ValueError as e:
        print(f"dsbatch emulator: --faults: {e}", file=sys.stderr)
        return 2
    workspaces: dict[str, str] = {}
    for item in args.workspace:
        key, _, name = item.partition("=")
        if not key or not name:
            print(f"dsbatch emulator: --workspace {item!r}: expected KEY=NAME", file=sys.stderr)
            return 2
        if workspaces.get(key, name) != name:
            print(
                f"dsbatch emulator: --workspace: key {key!r} is in two workspaces", file=sys.stderr
            )
            return 2
        workspaces[key] = name
    serve_forever(
        host=args.host, port=args.port, delay=args.delay, faults=faults, workspaces=workspaces
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run a generated dataset of 1,200 short texts through the embedded local emulator.

    Shows the new columns, the status counts, retries of transient failures and the cached
    second run. Needs no API key and no network.
    """
    from dsbatch._demo import run_demo

    return run_demo(rows=args.rows)


def cmd_jobs(args: argparse.Namespace) -> int:
    """List the jobs of the cache, newest first.

    One line each: fingerprint (its first 12 characters are enough anywhere a job is named),
    when it started, model, rows, distinct requests per state, and the job's state. Read from
    the cache alone: no API call. --json prints the same as a list of objects.
    """
    import dsbatch

    found = dsbatch.jobs(args.cache_dir)
    statuses = [job.status(refresh=False) for job in found]
    if args.json:
        print(json.dumps([_json(s) for s in statuses], indent=1))
        return DONE
    if not statuses:
        print("no jobs in this cache")
        return DONE
    header = ("FINGERPRINT", "STARTED", "MODEL", "ROWS", "ANSWERED", "FAILED", "LEFT", "STATE")
    rows = [
        (
            s.fingerprint[:12],
            f"{s.created_at.astimezone():%Y-%m-%d %H:%M}",
            str(s.model),
            f"{s.rows:,}",
            f"{s.counts['succeeded']:,}",
            f"{s.failed:,}",
            f"{s.left:,}",
            s.state,
        )
        for s in statuses
    ]
    _table(header, rows)
    return DONE


def cmd_status(args: argparse.Namespace) -> int:
    """Show where a job stands: requests per state, each batch with its id, state and counts,
    tokens and cost so far, and what is left.

    Batches in flight are asked of the API (--offline reads the cache alone). Exits 0 when every
    request is final, 3 while some are left. --json for scripts.
    """
    status = _job(args).status(refresh=not args.offline)
    print(json.dumps(_json(status), indent=1) if args.json else status)
    return DONE if status.done else RUNNING


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait for a job: poll, download and retry (as dsbatch.map does) until every request is
    final, or --timeout seconds. Exits 0 when done, 3 when the timeout came first (nothing is
    lost: wait again)."""
    status = _job(args).wait(timeout=args.timeout)
    print(status)
    return DONE if status.done else RUNNING


def cmd_collect(args: argparse.Namespace) -> int:
    """Wait for a job, then write its result (the dataset with its new columns, exactly as
    dsbatch.map returns it) to --output.

    --format disk (the default) uses Dataset.save_to_disk (load it with datasets.load_from_disk);
    parquet and jsonl write one file per split (data.parquet for a Dataset, <split>.parquet for
    a DatasetDict). Exits 3 when --timeout came first.
    """
    from datasets import DatasetDict

    job = _job(args)
    output = Path(args.output)
    try:
        _check_writable(output)  # before waiting: not after hours of it
    except OSError as e:
        print(f"dsbatch collect: cannot write to {output}: {e.strerror or e}", file=sys.stderr)
        return FAILED
    try:
        result = job.result(timeout=args.timeout)
    except TimeoutError as e:
        print(f"dsbatch collect: {e}", file=sys.stderr)
        return RUNNING
    try:
        if args.format == "disk":
            result.save_to_disk(str(output))
        else:
            output.mkdir(parents=True, exist_ok=True)
            splits = dict(result) if isinstance(result, DatasetDict) else {"data": result}
            for split, ds in splits.items():
                path = output / f"{split}.{args.format}"
                ds.to_parquet(str(path)) if args.format == "parquet" else ds.to_json(str(path))
    except OSError as e:
        print(f"dsbatch collect: cannot write to {output}: {e.strerror or e}", file=sys.stderr)
        return FAILED
    rows = sum(len(ds) for ds in (result.values() if isinstance(result, DatasetDict) else [result]))
    print(f"job {job.fingerprint}: {rows:,} rows written to {output} ({args.format})")
    return DONE


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a job's batches in flight. Answers already in are kept; what was not answered ends
    canceled (not billed) and is sent again only by a call with resend_canceled=True."""
    print(_job(args).cancel())
    return DONE


def cmd_du(args: argparse.Namespace) -> int:
    """Show the bytes on disk of each job of the cache and of the shared results, with rows and
    requests."""
    from dsbatch._housekeeping import _size, disk_usage
    from dsbatch._ledger import Ledger

    usage = disk_usage(Ledger(args.cache_dir))
    if args.json:
        print(json.dumps(dataclasses.asdict(usage) | {"total": usage.total}, indent=1))
        return DONE
    header = ("FINGERPRINT", "STARTED", "STATE", "ROWS", "REQUESTS", "SIZE")
    rows = [
        (
            j.fingerprint[:12],
            ""
            if j.created_at is None
            else f"{dt.datetime.fromtimestamp(j.created_at):%Y-%m-%d %H:%M}",
            j.state + (" (in flight)" if j.in_flight and j.state != "running" else ""),
            f"{j.rows:,}",
            f"{j.requests:,}",
            _size(j.bytes),
        )
        for j in usage.jobs
    ]
    _table(header, rows)
    print(
        f"shared results: {usage.results_batches:,} batches, {_size(usage.results_bytes)}; "
        f"journal and the rest: {_size(usage.other_bytes)}; total {_size(usage.total)} in "
        f"{usage.root}"
    )
    return DONE


def cmd_prune(args: argparse.Namespace) -> int:
    """Remove finished jobs (--jobs, or --job FP), or the stored results of batches made more
    than --results-older-than DAYS ago, after saying what a rerun would then cost.

    A finished job's folder costs a rerun nothing (its answers stay in the shared results). A
    batch's stored results cost a download while the API keeps them (29 days), a purchase
    after that. Nothing in flight is removed. --dry-run says it and removes nothing.
    """
    from dsbatch._housekeeping import _size, plan_prune, prune
    from dsbatch._job import _find
    from dsbatch._ledger import Ledger

    if not (args.jobs or args.job or args.results_older_than is not None):
        print(
            "dsbatch prune: say what to remove: --jobs, --job FP or --results-older-than DAYS",
            file=sys.stderr,
        )
        return USAGE
    ledger = Ledger(args.cache_dir)
    named = [_find(ledger, prefix) for prefix in args.job]
    plan = plan_prune(
        ledger,
        finished_jobs=args.jobs,
        jobs=named,
        results_older_than_days=args.results_older_than,
    )
    print(plan.describe())
    if args.dry_run or not (plan.jobs or plan.results):
        print("(dry run: nothing removed)" if args.dry_run else "nothing removed")
        return DONE
    prune(ledger, plan)
    print(f"removed {_size(plan.bytes)}")
    return DONE


def _job(args: argparse.Namespace) -> Any:
    import dsbatch

    every = getattr(args, "poll_interval", None)
    return dsbatch.Job.load(args.fingerprint, args.cache_dir, poll_interval=every)


def _check_writable(output: Path) -> None:
    """Raise OSError when ``output`` cannot be made or written: an existing file in its way, or
    its first existing folder not writable."""
    if output.exists() and not output.is_dir():
        raise FileExistsError(errno.EEXIST, "it is a file, not a folder")
    existing = output
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{existing} is not writable")


def _json(status: JobStatus) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(status), default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    for line in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())


def _add(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    *parents: argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    doc = inspect.cleandoc(func.__doc__ or "")
    parser = sub.add_parser(
        name,
        help=doc.splitlines()[0],
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=list(parents),
    )
    parser.set_defaults(func=func)
    return parser


def _days(value: str) -> float:
    """A number of days, 0 or more (a negative one would reach into the future: every result)."""
    try:
        days = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {value!r}") from None
    if not math.isfinite(days) or days < 0:
        raise argparse.ArgumentTypeError(f"DAYS must be 0 or more, not {value}")
    return days


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsbatch", description="Run datasets through the Anthropic Message Batches API."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    emulator = _add(sub, "emulator", cmd_emulator)
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    emulator.add_argument(
        "--delay", type=float, default=0.0, help="seconds before a batch ends (default 0)"
    )
    emulator.add_argument("--faults", default="", help="faults to inject, e.g. create=429x2")
    emulator.add_argument(
        "--workspace",
        action="append",
        default=[],
        metavar="KEY=NAME",
        help="put API key KEY in workspace NAME (repeatable; other keys: 'default')",
    )

    demo = _add(sub, "demo", cmd_demo)
    demo.add_argument("--rows", type=int, default=1200, help="rows in the generated dataset")

    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument(
        "--cache-dir", default=None, help="the cache (default: $DSBATCH_CACHE, else ~/.cache/...)"
    )
    jobs = _add(sub, "jobs", cmd_jobs, cache)
    jobs.add_argument("--json", action="store_true", help="print JSON")
    status = _add(sub, "status", cmd_status, cache)
    status.add_argument("fingerprint", help="a job's fingerprint, or a unique prefix of it")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--offline", action="store_true", help="read the cache only")
    wait = _add(sub, "wait", cmd_wait, cache)
    wait.add_argument("fingerprint", help="a job's fingerprint, or a unique prefix of it")
    wait.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    wait.add_argument("--poll-interval", type=float, default=None, help="poll every N seconds")
    collect = _add(sub, "collect", cmd_collect, cache)
    collect.add_argument("fingerprint", help="a job's fingerprint, or a unique prefix of it")
    collect.add_argument("--output", required=True, help="where to write the result")
    collect.add_argument("--format", choices=("disk", "parquet", "jsonl"), default="disk")
    collect.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    collect.add_argument("--poll-interval", type=float, default=None, help="poll every N seconds")
    cancel = _add(sub, "cancel", cmd_cancel, cache)
    cancel.add_argument("fingerprint", help="a job's fingerprint, or a unique prefix of it")
    du = _add(sub, "du", cmd_du, cache)
    du.add_argument("--json", action="store_true", help="print JSON")
    prune = _add(sub, "prune", cmd_prune, cache)
    prune.add_argument("--jobs", action="store_true", help="remove every finished job")
    prune.add_argument(
        "--job", action="append", default=[], metavar="FP", help="remove this job, if finished"
    )
    prune.add_argument(
        "--results-older-than",
        type=_days,
        default=None,
        metavar="DAYS",
        help="remove the stored results of batches made more than DAYS ago",
    )
    prune.add_argument("--dry-run", action="store_true", help="say what, remove nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        # What dsbatch raises on purpose, and bad arguments (an unknown job), said in one line;
        # a bug keeps its traceback.
        from dsbatch._errors import DsbatchError

        if not isinstance(e, (DsbatchError, ValueError, TypeError, TimeoutError)):
            raise
        print(f"dsbatch {args.command}: {e}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
