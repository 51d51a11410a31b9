"""The ``dsbatch`` command line: each subcommand's help is its function's docstring."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]


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


def _add(
    sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    doc = inspect.cleandoc(func.__doc__ or "")
    parser = sub.add_parser(
        name,
        help=doc.splitlines()[0],
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
