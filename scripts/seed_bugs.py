#!/usr/bin/env python
"""Seeded bugs: does the test suite catch realistic one-line mistakes in the core?

Each bug below is one text replacement in one file. For each, the repository is copied (without
``.git``, ``.venv`` and caches) to a temporary directory, the bug is seeded there, and the suite
runs against that copy with ``-x``: the bug is caught when the suite fails, and the first failing
test is the one that caught it. The original repository is never touched.

An ``old`` text that no longer occurs exactly once in its file stops the script before anything
runs: edit the list when the code moves, so it keeps describing real mistakes.

    python scripts/seed_bugs.py              # every bug, one at a time (about 40 minutes)
    python scripts/seed_bugs.py -j 2         # two at a time (about 20 minutes on 2 cores)
    python scripts/seed_bugs.py --only create-429-maybe-created
    python scripts/seed_bugs.py --list

The exit code is non-zero when a bug survives (the suite passed with it).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "*.egg-info"
)
PYTEST = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--timeout", "120"]
# The whole suite takes about two minutes; a run this long has hung despite the per-test timeout.
_SUITE_TIMEOUT = 3600
_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+).*$", re.MULTILINE)


class Bug(NamedTuple):
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    breaks: str


BUGS = [
    # -- the survivors of issue 6, in the new code -----------------------------------------------
    Bug("drop-drops-skipped", "dsbatch/_policy.py",
        'FAILED_STATUSES = ("errored", "expired", "canceled", "parse_error")',
        'FAILED_STATUSES = ("errored", "expired", "canceled", "parse_error", "skipped")',
        'on_error="drop" also drops skipped rows'),
    Bug("short-download-accepted", "dsbatch/_ingest.py",
        "if table.num_rows < info.size:", "if table.num_rows > info.size:",
        "a download cut on a line boundary is accepted as complete"),
    Bug("reconcile-ignores-claimed", "dsbatch/_submit.py",
        "taken = job.ledger.claimed_batch_ids() | set(record.rejected)",
        "taken = set(record.rejected)",
        "reconcile adopts a batch another job of the cache claims"),
    Bug("non-atomic-write", "dsbatch/_files.py",
        'fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")',
        "fd, tmp = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), str(path)",
        "ledger files are written in place: a crash mid-write leaves a torn file"),
    Bug("reset-does-nothing", "dsbatch/_poll.py",
        '"""Start brisk again (something changed: a new batch went out)."""\n'
        "        self._next = self.initial",
        '"""Start brisk again (something changed: a new batch went out)."""',
        "PollSchedule.reset() does nothing: polling stays slow after a new batch"),
    Bug("429-not-transient", "dsbatch/_backend.py",
        "_TRANSIENT = frozenset({408, 409, 429})", "_TRANSIENT = frozenset({408, 409})",
        "a 429 on retrieve/list/results (or create) is fatal"),
    Bug("results-404-never-gone", "dsbatch/_ingest.py",
        "        if e.status_code == 404:\n            return None",
        "        if e.status_code == 410:\n            return None",
        "results answering 404 never count as gone (the job fails instead)"),
    Bug("retry-clock-never-reset", "dsbatch/_retry.py",
        "start = self.clock()", 'start = self.__dict__.setdefault("_start", self.clock())',
        "stop_after_delay is measured from the first call ever, not from this call"),
    Bug("retry-failures-never-reset", "dsbatch/_retry.py",
        "state = RetryState(attempt=attempt, elapsed=self.clock() - start, error=error)",
        'self.__dict__["_n"] = attempt = self.__dict__.get("_n", 0) + 1\n'
        "                state = RetryState(attempt=attempt, elapsed=self.clock() - start, "
        "error=error)",
        "failed attempts are counted over all calls: 8 failures in a job stop it"),
    Bug("fingerprint-ignores-splits", "dsbatch/_plan.py",
        "    for split, ids in row_custom_ids.items():\n"
        '        h.update(b"\\x00split\\x00" + split.encode() + b"\\x00")\n',
        "    for ids in row_custom_ids.values():\n",
        "the job fingerprint ignores split boundaries"),
    Bug("create-429-maybe-created", "dsbatch/_backend.py",
        "if e.status_code >= 500 or e.status_code in (408, 409):",
        "if e.status_code >= 500 or e.status_code in (408, 409, 429):",
        'a create refused with 429 is treated as "maybe created" (a list before each retry)'),
    Bug("retry-after-ignored", "dsbatch/_retry.py",
        'retry_after = getattr(state.error, "retry_after", None)', "retry_after = None",
        "the server's retry-after is ignored"),
    # -- policy ----------------------------------------------------------------------------------
    Bug("canceled-retried", "dsbatch/_policy.py",
        "    if resend_canceled:\n        retry = pc.or_(retry, pc.equal(kind, \"canceled\"))",
        '    retry = pc.or_(retry, pc.equal(kind, "canceled"))',
        "canceled requests are sent again without resend_canceled"),
    Bug("invalid-retried", "dsbatch/_policy.py",
        '_INVALID = "invalid_request_error"', '_INVALID = "invalid_request"',
        "invalid requests are retried (a typo in the error type)"),
    Bug("lost-not-an-attempt", "dsbatch/_plan.py",
        "view.results = pa.concat_tables([results, *stand_ins])", "view.results = results",
        "a lost batch does not count as an attempt: losses are bought again without cap"),
    Bug("success-not-final", "dsbatch/_policy.py",
        'rank = pc.if_else(pc.equal(results["type"], "succeeded"), 0, 1).fill_null(1)',
        'rank = pc.if_else(pc.equal(results["type"], "succeeded"), 1, 1).fill_null(1)',
        "a later failure hides a success elsewhere (the latest attempt always wins)"),
    Bug("oldest-failure-wins", "dsbatch/_policy.py",
        'order = pc.negate(results["batch_created_at"].fill_null(0.0))',
        'order = results["batch_created_at"].fill_null(0.0)',
        "the oldest failure, not the latest, says what became of a request"),
    Bug("canceled-counted-as-attempts", "dsbatch/_policy.py",
        "used = attempts(results, count_canceled=not resend_canceled)",
        "used = attempts(results)",
        "resend_canceled counts canceled sends as attempts"),
    # -- the in-flight view ----------------------------------------------------------------------
    Bug("survey-own-job-only", "dsbatch/_plan.py",
        "for record in scan.records:", "for record in (r for r in scan.records if r.job == own):",
        "other jobs' batches in flight are ignored: their requests are bought again"),
    Bug("in-flight-not-excluded", "dsbatch/_plan.py",
        "in_flight=view.waiting_ids,", "in_flight=(),",
        "requests in flight in another batch are sent again"),
    Bug("unknown-ids-ignored", "dsbatch/_plan.py",
        "            ids = _bound(ledger, record.job, needed)\n",
        "            continue  # nothing known to wait for\n",
        "a batch in flight whose ids file is lost is ignored: its requests are bought again"),
    Bug("stale-foreign-record", "dsbatch/_batch.py",
        "fresh = {r.seq: r for r in owner.records(strict=False)}.get(record.seq)",
        "fresh = record",
        "a dead job's batch is advanced from a stale copy of its record"),
    Bug("own-batch-given-back", "dsbatch/_batch.py",
        "if not record.adopted or record.state is not BatchState.SUBMITTED:",
        "if record.state is not BatchState.SUBMITTED:",
        "our own create's batch with odd results is given back and bought again"),
    Bug("given-back-stays-claimed", "dsbatch/_ledger.py",
        "claimed = {r.batch_id for r in scan.records if r.batch_id}",
        "claimed = {b for r in scan.records for b in [r.batch_id, *r.rejected] if b}",
        "a batch given back stays claimed: its real owner never finds it"),
    Bug("no-cache-lock", "dsbatch/_ledger.py",
        'return _lock(self.root / "lock", f"the cache {self.root}", "waiting for the cache lock")',
        "return suppress()",
        "the cache-wide lock is a no-op: two processes decide and send at once"),
    # -- the loop, submit and poll ---------------------------------------------------------------
    Bug("missing-seconds-zero", "dsbatch/_poll.py",
        "MISSING_SECONDS = 600.0", "MISSING_SECONDS = 0.0",
        "a batch missing once is gone at once (bought again)"),
    Bug("lost-create-recreated", "dsbatch/_submit.py",
        "            maybe_created = True\n", "            maybe_created = False\n",
        "a create whose answer was lost is created again without looking"),
    Bug("intent-dated-locally", "dsbatch/_batch.py",
        "record.intent_server_at = self._server_now()",
        "record.intent_server_at = self.clock()",
        "intents dated by the local clock, not the server's: a skewed clock misses our batch"),
    Bug("connection-error-fatal", "dsbatch/_backend.py",
        "return status is None or status in _TRANSIENT or status >= 500",
        "return status is not None and (status in _TRANSIENT or status >= 500)",
        "a dropped connection (no status) is fatal instead of retried"),
    Bug("retry-after-uncapped", "dsbatch/_retry.py",
        "return max(0.0, min(float(retry_after), self.max_retry_after))",
        "return max(0.0, float(retry_after))",
        "a huge retry-after freezes the job (no cap)"),
    Bug("done-while-sending", "dsbatch/_run.py",
        "return self.batches == 0 and self.sent == 0", "return self.batches == 0",
        "run() stops right after sending the first batches"),
    # -- the ledger ------------------------------------------------------------------------------
    Bug("rejected-not-recorded", "dsbatch/_ledger.py",
        "        record.rejected.append(given_back)\n", "",
        "mark_rejected forgets the batch it gave back"),
    Bug("ids-digest-unchecked", "dsbatch/_ledger.py",
        "len(ids) != record.request_count or ids_digest(ids) != record.ids_digest",
        "len(ids) != record.request_count",
        "an ids file is not cross-checked with its record's digest"),
    Bug("sweep-fresh-tmp", "dsbatch/_ledger.py",
        "cutoff = time.time() - _STALE_TMP_SECONDS", "cutoff = time.time()",
        "opening the cache deletes a live writer's temporary files"),
    Bug("intent-not-saved", "dsbatch/_ledger.py",
        "            key_hash=key_hash,\n        )\n        self.save(record)\n",
        "            key_hash=key_hash,\n        )\n",
        "the intent is saved only at the create, outside the cache lock (seqs collide)"),
    Bug("journal-not-appended", "dsbatch/_ledger.py",
        "        self.save(record)\n        self.ledger.journal_append(record)\n",
        "        self.save(record)\n",
        "created batch ids are not appended to the journal"),
    Bug("record-not-rebuilt", "dsbatch/_ledger.py",
        "rebuilt = _record_from_journal(self.fingerprint, seq, entry)", "rebuilt = None",
        "a missing batch record is not rebuilt from the journal"),
    # -- ingest, join, render, options -----------------------------------------------------------
    Bug("lenient-ingest-raises", "dsbatch/_ingest.py",
        'problems.append(f"message.content is a {type(content).__name__}, not a list of blocks")',
        'raise UnreadableResults(f"message.content is a {type(content).__name__}, not a list")',
        "one odd result line makes the whole batch unreadable"),
    Bug("tool-only-null", "dsbatch/_join.py",
        "else pc.coalesce(text, tool_input)", "else text",
        "an answer that is only a tool call gives a null response"),
    Bug("output-key-ignores-attempts", "dsbatch/_options.py",
        "            self.max_attempts,\n", "",
        "the finished output is served after max_attempts grew"),
    Bug("betas-not-in-custom-id", "dsbatch/_render.py",
        "custom_id = custom_id_for(body, shape.betas)", "custom_id = custom_id_for(body)",
        "the same request with and without betas shares a custom_id (and an answer)"),
    Bug("api-version-check-skipped", "dsbatch/_requests.py",
        "r.since is None or api_version >= r.since", "r.since is None or api_version > r.since",
        "API version 2026 params are not checked before sending"),
    Bug("column-clash-not-refused", "dsbatch/_options.py",
        "            for name in columns:\n", "            for name in columns[1:]:\n",
        "a dataset's first column clashing with a new column is overwritten"),
    Bug("batch-limit-off-by-one", "dsbatch/_plan.py",
        "len(current) >= max_requests", "len(current) > max_requests",
        "a batch holds one request more than max_batch_requests"),
    # -- render (issue 11): what the API would refuse never leaves the machine -------------------
    Bug("unknown-param-sent", "dsbatch/_requests.py",
        "        if name not in fields:\n            types =",
        "        if name not in fields and name.startswith(\"_\"):\n            types =",
        "a misspelled param (max_token) is sent; every row comes back errored"),
    Bug("no-name-suggested", "dsbatch/_sdk_schema.py",
        "match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)",
        "match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.95)",
        "an unknown name is refused without the nearest valid one"),
    Bug("blocks-unchecked", "dsbatch/_requests.py",
        "    if block_check is not None:\n        try:",
        "    if block_check is None:\n        try:",
        "content blocks are not checked against the SDK's types (a text block without text)"),
    Bug("thinking-forced-tool-sent", "dsbatch/_requests.py",
        'if thinking in (None, "disabled") and not always:',
        'if thinking in (None, "disabled", "enabled") and not always:',
        "manual thinking with a forced tool is sent (the API refuses every row)"),
    Bug("budget-equal-max-tokens", "dsbatch/_requests.py",
        "if budget >= max_tokens:", "if budget > max_tokens:",
        "a thinking budget equal to max_tokens is sent"),
    Bug("output-limit-ignores-betas", "dsbatch/_requests.py",
        "limit = None if facts is None else facts.output_limit(ctx.betas)",
        "limit = None if facts is None else facts.output_limit((OUTPUT_300K_BETA,))",
        "max_tokens up to 300,000 is sent without the output-300k beta"),
    Bug("prefill-lstrip", "dsbatch/_requests.py",
        "if content != content.rstrip():", "if content != content.lstrip():",
        "a prefill ending in whitespace is sent"),
    Bug("tool-choice-name-unchecked", "dsbatch/_requests.py",
        'if choice["type"] == "tool" and choice["name"] not in names:',
        'if choice["type"] == "tools" and choice["name"] not in names:',
        "a tool_choice naming a tool that is not in tools is sent"),
    Bug("dict-field-accepted", "dsbatch/_structured.py",
        "if origin in _DICT_ORIGINS or tp in _DICT_ORIGINS or _is_mapping_type(tp, origin):",
        "if origin in _DICT_ORIGINS and tp in _DICT_ORIGINS:",
        "a dict[str, X] field is not refused as a free-form dict"),
    Bug("first-contact-waits-minutes", "dsbatch/_batch.py",
        "retrying = self.first_contact if first else self.retrying",
        "retrying = self.retrying",
        "a wrong base URL before the first batch is waited on for minutes"),
    Bug("sdk-full-stop-kept", "dsbatch/_backend.py",
        'return text.strip().rstrip(".").rstrip() or text.strip()', "return text.strip()",
        'API error messages keep the SDK\'s full stop ("Connection error.. Nothing")'),
    Bug("jpeg-sent-as-png", "dsbatch/_images.py",
        'jpeg = getattr(image, "format", None) == "JPEG"',
        'jpeg = getattr(image, "format", None) == "JPG"',
        "an image read from a JPEG file is sent as PNG"),
    Bug("betas-order-kept", "dsbatch/_options.py",
        "return tuple(sorted(set(betas)))", "return tuple(dict.fromkeys(betas))",
        "the same betas in another order make other custom_ids (paid again)"),
]  # fmt: skip


@dataclass
class Outcome:
    bug: Bug
    caught: bool
    first_failure: str
    seconds: float
    detail: str = ""  # pytest's summary line of the first failure


def check(root: Path, bugs: list[Bug]) -> None:
    """Every bug's old text occurs exactly once, and the seeded file still compiles."""
    names = [b.name for b in bugs]
    twice = sorted({n for n in names if names.count(n) > 1})
    problems = [f"{n}: the name is used twice" for n in twice]
    for bug in bugs:
        path = root / bug.file
        text = path.read_text() if path.exists() else ""
        count = text.count(bug.old)
        if count != 1:
            problems.append(f"{bug.name}: the old text occurs {count} times in {bug.file}")
            continue
        try:
            compile(text.replace(bug.old, bug.new), bug.file, "exec")
        except SyntaxError as e:
            problems.append(f"{bug.name}: the seeded {bug.file} does not compile ({e})")
    if problems:
        sys.exit("seed_bugs: the list of bugs is out of date:\n  " + "\n  ".join(problems))


def run_bug(root: Path, bug: Bug) -> Outcome:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"seed-{bug.name}-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(root, copy, ignore=_IGNORE)
        if bug.old:
            target = copy / bug.file
            target.write_text(target.read_text().replace(bug.old, bug.new, 1))
        env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
        where = subprocess.run(
            [sys.executable, "-c", "import dsbatch; print(dsbatch.__file__)"],
            cwd=copy, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if not Path(where).is_relative_to(copy):
            sys.exit(f"seed_bugs: the copy imports dsbatch from {where}, not from {copy}")
        try:
            proc = subprocess.run(
                [sys.executable, *PYTEST], cwd=copy, env=env, capture_output=True, text=True,
                timeout=_SUITE_TIMEOUT,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return Outcome(bug, False, "(the suite hung)", time.monotonic() - start)
    seconds = time.monotonic() - start
    found = _FAILED.search(proc.stdout)
    if proc.returncode == 0:
        return Outcome(bug, False, "", seconds)
    if found is None:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["?"]
        return Outcome(bug, False, f"(pytest exit {proc.returncode}: {tail[0][:80]})", seconds)
    return Outcome(bug, True, found.group(1), seconds, found.group(0))


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| bug | file | what it breaks | caught? | first failing test | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        caught = "yes" if o.caught else "**NO**"
        test = f"`{o.first_failure}`" if o.first_failure else "-"
        lines.append(
            f"| {o.bug.name} | {o.bug.file} | {o.bug.breaks} | {caught} | {test} | "
            f"{o.seconds:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run this bug (repeat)")
    parser.add_argument("--list", action="store_true", help="list the bugs and exit")
    parser.add_argument("-j", type=int, default=1, metavar="N", help="bugs run in parallel")
    parser.add_argument("--root", type=Path, default=REPO, help="the repository to seed")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unseeded run")
    args = parser.parse_args()
    root = args.root.resolve()
    check(root, BUGS)
    bugs = BUGS
    if args.only:
        unknown = sorted(set(args.only) - {b.name for b in BUGS})
        if unknown:
            parser.error(f"unknown bugs: {', '.join(unknown)} (see --list)")
        bugs = [b for b in BUGS if b.name in args.only]
    if args.list:
        for bug in bugs:
            print(f"{bug.name:30} {bug.file:22} {bug.breaks}")
        return 0
    start = time.monotonic()
    if not args.no_baseline:
        # Unseeded, the suite must pass, or every bug would look caught.
        base = run_bug(root, Bug("baseline", "-", "", "", "nothing"))
        if base.first_failure:
            sys.exit(
                f"seed_bugs: the suite fails without any bug: {base.detail or base.first_failure}"
            )
        print(f"baseline: the suite passes ({base.seconds:.0f} s)", file=sys.stderr, flush=True)

    def one(bug: Bug) -> Outcome:
        outcome = run_bug(root, bug)
        verdict = outcome.detail if outcome.caught else f"SURVIVED {outcome.first_failure}"
        print(f"{bug.name}: {verdict} ({outcome.seconds:.0f} s)", file=sys.stderr, flush=True)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, args.j)) as pool:
        outcomes = list(pool.map(one, bugs))
    print(table(outcomes))
    survivors = [o.bug.name for o in outcomes if not o.caught]
    total = time.monotonic() - start
    print(f"\n{len(outcomes) - len(survivors)} of {len(outcomes)} caught in {total:.0f} s")
    if survivors:
        print(f"survivors: {', '.join(survivors)}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
