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
from collections.abc import Sequence
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
        "taken = claimed_batch_ids(job.ledger) | set(record.rejected)",
        "taken = set(record.rejected)",
        "reconcile adopts a batch another job of the cache claims"),
    Bug("non-atomic-write", "dsbatch/_files.py",
        'fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")',
        "fd, tmp = (os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), str(target))"
        ' if target else tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")',
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
        "errors.append(error)\n",
        "errors.append(error)\n"
        '                self.__dict__["_n"] = attempt = self.__dict__.get("_n", 0) + 1\n',
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
        "            -whole(when).to_numpy(zero_copy_only=False),\n",
        "            whole(when).to_numpy(zero_copy_only=False),\n",
        "the oldest failure, not the latest, says what became of a request"),
    Bug("canceled-counted-as-attempts", "dsbatch/_policy.py",
        "    if resend_canceled:  # canceled sends are not counted\n",
        "    if False:  # canceled sends are not counted\n",
        "resend_canceled counts canceled sends as attempts"),
    # -- the in-flight view ----------------------------------------------------------------------
    Bug("survey-own-job-only", "dsbatch/_plan.py",
        "for record in scan.records:", "for record in (r for r in scan.records if r.job == own):",
        "other jobs' batches in flight are ignored: their requests are bought again"),
    Bug("in-flight-not-excluded", "dsbatch/_plan.py",
        "in_flight=view.waiting_array,", "in_flight=(),",
        "requests in flight in another batch are sent again"),
    Bug("unknown-ids-ignored", "dsbatch/_plan.py",
        "            ids = _bound(ledger, record.job, needed)\n",
        "            continue  # nothing known to wait for\n",
        "a batch in flight whose ids file is lost is ignored: its requests are bought again"),
    Bug("stale-foreign-record", "dsbatch/_ledger_job.py",
        "fresh = self.stored_record(record.seq)",
        "fresh = BatchRecord.from_json(record.to_json())",
        "a batch is moved from a stale copy of its record, not the one stored"),
    Bug("own-batch-given-back", "dsbatch/_batch.py",
        "if not record.adopted or record.state is not BatchState.SUBMITTED:",
        "if record.state is not BatchState.SUBMITTED:",
        "our own create's batch with odd results is given back and bought again"),
    Bug("given-back-stays-claimed", "dsbatch/_recovery.py",
        "claimed = {r.batch_id for r in scan.records if r.batch_id}",
        "claimed = {b for r in scan.records for b in [r.batch_id, *r.rejected] if b}",
        "a batch given back stays claimed: its real owner never finds it"),
    Bug("no-cache-lock", "dsbatch/_ledger.py",
        'with hold_lock(self.root / "lock", f"the cache {self.root}", '
        '"waiting for the cache lock"):',
        "with suppress():",
        "the cache-wide lock is a no-op: two processes decide and send at once"),
    # -- the loop, submit and poll ---------------------------------------------------------------
    Bug("missing-seconds-zero", "dsbatch/_poll.py",
        "MISSING_SECONDS = 600.0", "MISSING_SECONDS = 0.0",
        "a batch missing once is gone at once (bought again)"),
    Bug("lost-create-recreated", "dsbatch/_submit.py",
        "            maybe_created = True\n", "            maybe_created = False\n",
        "a create whose answer was lost is created again without looking"),
    Bug("intent-dated-locally", "dsbatch/_batch.py",
        "server_at = self._server_now()",
        "server_at = self.clock.now()",
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
    Bug("rejected-not-recorded", "dsbatch/_ledger_job.py",
        "            fresh.rejected.append(given_back)\n", "",
        "mark_rejected forgets the batch it gave back"),
    Bug("ids-digest-unchecked", "dsbatch/_ledger_job.py",
        "len(ids) != record.request_count or ids_digest(ids) != record.ids_digest",
        "len(ids) != record.request_count",
        "an ids file is not cross-checked with its record's digest"),
    Bug("sweep-fresh-tmp", "dsbatch/_ledger.py",
        "cutoff = time.time() - _STALE_TMP_SECONDS", "cutoff = time.time()",
        "opening the cache deletes a live writer's temporary files"),
    Bug("intent-not-saved", "dsbatch/_ledger_job.py",
        "            lease_until=lease_until,\n        )\n        self.save(record)\n",
        "            lease_until=lease_until,\n        )\n",
        "the intent is saved only at the create, outside the cache lock (seqs collide)"),
    Bug("journal-not-appended", "dsbatch/_ledger_job.py",
        '        self.change(record, apply, expect=("state", "holder"))\n'
        "        self.ledger.journal_append(record)\n",
        '        self.change(record, apply, expect=("state", "holder"))\n',

        "created batch ids are not appended to the journal"),
    Bug("record-not-rebuilt", "dsbatch/_recovery.py",
        "rebuilt = record_from_journal(job.fingerprint, seq, entry)", "rebuilt = None",
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
        "custom_id_for(body, shape.betas) if shape.betas", "custom_id_for(body) if shape.betas",
        "the same request with and without betas shares a custom_id (and an answer)"),
    Bug("api-version-check-skipped", "dsbatch/_requests.py",
        "r.since is None or api_version >= r.since", "r.since is None or api_version > r.since",
        "API version 2026 params are not checked before sending"),
    Bug("column-clash-not-refused", "dsbatch/_options.py",
        "            for name in columns:\n", "            for name in columns[1:]:\n",
        "a dataset's first column clashing with a new column is overwritten"),
    Bug("batch-limit-off-by-one", "dsbatch/_plan.py",
        "        stop = min(fits - 1, start + max_requests, n)\n",
        "        stop = min(fits - 1, start + max_requests + 1, n)\n",
        "a batch holds one request more than max_batch_requests"),
    # -- issue 12 (main): origins, no owner, stable prompts --------------------------------------
    Bug("foreign-batch-skipped", "dsbatch/_batch.py",
        "job = self.job if record.job == self.job.fingerprint else self.ledger.job(record.job)",
        "job = self.job\n        if record.job != self.job.fingerprint:\n            return",
        "a batch of another job is left to its process, stopped or not"),
    Bug("origin-not-filtered", "dsbatch/_plan.py",
        "others = {b for b, o in batch_origins(ledger, scan).items() if o not in (\"\", origin)}",
        "others: set[str] = set()",
        "answers from another origin (an emulator's) serve this run"),
    Bug("origin-not-in-fingerprint", "dsbatch/_plan.py",
        'h = xxhash.xxh3_128(b"dsbatch-job-3\\x00" + origin.encode())',
        'h = xxhash.xxh3_128(b"dsbatch-job-3\\x00")',
        "a job run against the emulator and against the API share a job (and its output)"),
    Bug("origin-never-remembered", "dsbatch/_origin.py",
        "        ledger.remember_origin(url, origin)\n", "        pass\n",
        "a server's origin is asked again on every run (a call on a cached rerun)"),
    Bug("migration-tags-all-as-api", "dsbatch/_origin.py",
        'return message["id"] == prefixed_id("msg_", batch_id, custom_id)', "return False",
        "the emulator's answers in an older cache are taken for the API's"),
    Bug("lease-ignored", "dsbatch/_batch.py",
        "        return (\n            not record.holder\n",
        "        return True or (\n            not record.holder\n",
        "an intent another live call is creating is taken over at once"),
    Bug("dead-holder-waited-for", "dsbatch/_lease.py",
        "    except ProcessLookupError:\n        return True",
        "    except ProcessLookupError:\n        return False",
        "the intent of a killed process is waited for until its lease runs out"),
    Bug("move-not-checked", "dsbatch/_ledger_job.py",
        "if fresh is None or any(getattr(fresh, f) != getattr(record, f) for f in expect):",
        "if fresh is None:",
        "a move made on a stale copy of a record overwrites another call's move"),
    Bug("missing-clock-not-restarted", "dsbatch/_batch.py",
        "            job.note_missing(record, None)  # found again; its results are not due yet\n",
        "            pass\n",
        "a batch found again after a passing 404 keeps its first 'missing' moment"),
    Bug("lenient-drops-stop-reason", "dsbatch/_ingest.py",
        'row["stop_reason"] = stop if isinstance(stop, str) else None',
        'row["stop_reason"] = None',
        "one odd line costs every other row of the file its stop_reason"),
    Bug("determinism-not-checked", "dsbatch/_map.py",
        "if options.check_determinism and rendered.bodies and manifest is None:",
        "if False:",
        "a prompt that renders other requests on every call is never warned about"),
    # -- emulator branch -------------------------------------------------------------------------
    Bug("emu-pattern-hint-ignored", "dsbatch/_emulator/_schema.py",
        '_TEXT_HINTS = frozenset({"pattern", "format"})', '_TEXT_HINTS = frozenset({"format"})',
        "a pattern transform_schema moved into the description is ignored by the emulator"),
    Bug("emu-regex-negated-class", "dsbatch/_emulator/_regex.py",
        'return _Chars(_outside("".join(members)))', 'return _Chars("".join(sorted(members)))',
        "[^...] in a pattern picks the excluded characters, so no matching string is found"),
    Bug("emu-adaptive-forced-tool-answered", "dsbatch/_emulator/_rules.py",
        "if forces_tool(params) and thinking_type(params) is not None:",
        'if forces_tool(params) and thinking_type(params) == "enabled":',
        "adaptive or always-on thinking with a forced tool is answered, not refused"),
    Bug("emu-budget-equal-max-tokens", "dsbatch/_emulator/_rules.py",
        'if not endpoint.counting and params["max_tokens"] <= budget:',
        'if not endpoint.counting and params["max_tokens"] < budget:',
        "thinking.budget_tokens equal to max_tokens is answered"),
    Bug("emu-300k-beta-live", "dsbatch/_emulator/_rules.py",
        'limit = facts.output_limit(endpoint.betas if endpoint.name == "batch" else ())',
        "limit = facts.output_limit(endpoint.betas)",
        "the batches-only output-300k beta raises the limit of the Messages API too"),
    Bug("emu-prefill-newline-accepted", "dsbatch/_emulator/_rules.py",
        "return content != content.rstrip()", 'return content.endswith(" ")',
        "a final assistant turn ending in a newline is answered"),
    Bug("emu-stream-false-refused", "dsbatch/_emulator/_validate.py",
        'if params.get("stream") is True:', 'if "stream" in params:',
        '"stream": false fails the whole create'),
    Bug("emu-missing-max-tokens-fails-create", "dsbatch/_emulator/_validate.py",
        'if params.get("stream") is True:',
        'if params.get("stream") is True or "max_tokens" not in params:',
        "a request without max_tokens fails the whole create instead of ending errored"),
    Bug("emu-errored-line-without-details", "dsbatch/_emulator/_responder.py",
        '"error": {"type": error_type, "message": message, "details": None},',
        '"error": {"type": error_type, "message": message},',
        "errored lines lose the details field real errored lines carry"),
    Bug("emu-request-id-per-connection", "dsbatch/_emulator/_server.py",
        'self.request_id = prefixed_id("req_", store.seed, next(self.server.request_numbers))',
        'self.request_id = prefixed_id("req_", store.seed, id(self))',
        "the request-id header repeats across calls on one connection"),
    Bug("emu-beta-form-incomplete", "dsbatch/_emulator/_responder.py",
        'usage = {**message["usage"], "iterations": None, "speed": None}',
        'usage = dict(message["usage"])',
        "results through the beta endpoint lack the usage fields the beta schema requires"),
    Bug("emu-cache-minimum-ignored", "dsbatch/_emulator/_caching.py",
        "if index <= read_at or prefix[index] < minimum:", "if index <= read_at:",
        "a prefix shorter than the model's minimum cacheable length is cached"),
    Bug("emu-cache-read-as-creation", "dsbatch/_emulator/_responder.py",
        '"cache_read_input_tokens": cache.read,', '"cache_read_input_tokens": cache.creation,',
        "cache reads are reported as the cache writes' count"),
    Bug("emu-cache-ttl-not-refreshed", "dsbatch/_emulator/_caching.py",
        "entry.expires = max(entry.expires, now + entry.ttl)", "pass",
        "reading a cached prefix does not start its TTL again"),
    Bug("emu-live-messages-batch-tier", "dsbatch/_emulator/_live.py",
        'params, answer, message_id=message_id, cache=used, service_tier="standard"',
        "params, answer, message_id=message_id, cache=used",
        "a Messages API answer reports the batch service tier"),
    Bug("emu-count-tokens-needs-max-tokens", "dsbatch/_emulator/_rules.py",
        'names = ("model", "messages") if endpoint.counting else',
        'names = ("model", "max_tokens", "messages") if endpoint.counting else',
        "count_tokens refuses a body without max_tokens (which it must not have)"),
    Bug("emu-count-tokens-fault-name", "dsbatch/_emulator/_faults.py",
        '*("messages", "count_tokens"),', '*("messages",),',
        "HTTP faults cannot target count_tokens"),
    Bug("emu-thinking-not-billed", "dsbatch/_emulator/_responder.py",
        '"output_tokens": thought + output_tokens,', '"output_tokens": output_tokens,',
        "thinking tokens are not counted in output_tokens"),
    Bug("emu-thinking-never-omitted", "dsbatch/_emulator/_thinking.py",
        'display != "summarized" and facts is not None and facts.thinking_omitted_by_default',
        "False",
        "models that omit thinking by default show its text"),
    Bug("emu-always-thinking-ignored", "dsbatch/_emulator/_params.py",
        'return "adaptive" if facts is not None and facts.always_thinking else None',
        "return None",
        "always-thinking models answer without thinking unless asked"),
    Bug("emu-redacted-fraction-inverted", "dsbatch/_emulator/_faults.py",
        "return bool(self.redacted_thinking) and draw < self.redacted_thinking",
        "return bool(self.redacted_thinking) and draw > self.redacted_thinking",
        "redacted_thinking=F redacts 1 - F of the thinking blocks"),
    Bug("emu-origin-header-missing", "dsbatch/_emulator/_server.py",
        'self.send_header(ORIGIN_HEADER, "1")', "pass",
        "the emulator's answers do not say they come from an emulator"),
    # -- issue 13 (main): long jobs, the CLI, housekeeping ---------------------------------------
    Bug("wait-false-sends-nothing", "dsbatch/_map.py",
        "        job._submit()\n", "",
        "map(wait=False) returns before creating its batches"),
    Bug("load-needs-the-whole-fingerprint", "dsbatch/_job.py",
        "candidates = [fp for fp in ledger.job_fingerprints() if fp.startswith(prefix)]",
        "candidates = [fp for fp in ledger.job_fingerprints() if fp == prefix]",
        "Job.load takes only a whole fingerprint, never a prefix"),
    Bug("status-in-flight-uncounted", "dsbatch/_status.py",
        'counts["in_flight"] = len(waiting & set(needed.to_pylist()))',
        'counts["in_flight"] = 0',
        "a job's status shows no request in flight"),
    Bug("wait-timeout-ignored", "dsbatch/_run.py",
        "if deadline is not None and clock.now() + schedule.next_delay > deadline:",
        "if False:",
        "wait(timeout=...) waits until the job is done"),
    Bug("splits-in-stored-order", "dsbatch/_job.py",
        "self._splits = {split: loaded[split] for split in self._manifest.split_names}",
        "self._splits = dict(loaded)",
        "a collected DatasetDict's splits come in another order than map's"),
    Bug("options-not-kept", "dsbatch/_options.py",
        'kept["betas"] = list(self.betas)',
        'kept["betas"] = list(self.betas)\n        kept["on_error"] = "keep"',
        "a job loaded elsewhere forgets its on_error"),
    Bug("cancel-not-recorded", "dsbatch/_job.py",
        'manifest.state, manifest.canceled_at = "canceled", dt.datetime.now().timestamp()',
        "manifest.canceled_at = dt.datetime.now().timestamp()",
        "a canceled job goes on sending what it had not sent"),
    Bug("canceled-job-creates-its-intents", "dsbatch/_batch.py",
        "if job is self.job and not _canceled(job) and self._ids(job, record) is not None:",
        "if job is self.job and self._ids(job, record) is not None:",
        "a canceled job's intents left by an earlier call are created on resume"),
    Bug("ctrl-c-says-nothing", "dsbatch/_map.py",
        '"to stop paying for what is left: `dsbatch cancel %s`.",',
        '"",',
        "Ctrl-C does not say how to go on or how to cancel"),
    Bug("prune-removes-running-jobs", "dsbatch/_housekeeping.py",
        'if job.in_flight or job.state not in ("finished", "canceled"):',
        "if False:",
        "prune removes a job that is still running"),
    Bug("prune-cost-inverted", "dsbatch/_housekeeping.py",
        "downloadable=now - made < RESULTS_RETENTION_SECONDS,",
        "downloadable=now - made > RESULTS_RETENTION_SECONDS,",
        "prune says results past 29 days are downloaded, not bought, again"),
    Bug("status-exit-always-0", "dsbatch/_cli.py",
        "return DONE if status.done else RUNNING\n\n\ndef cmd_wait",
        "return DONE\n\n\ndef cmd_wait",
        "dsbatch status exits 0 while requests are left"),
    Bug("changed-input-file-unnoticed", "dsbatch/_inputs.py",
        "if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):",
        "if False:",
        "a job collected after its input file changed joins the answers to other rows"),
    Bug("loaded-job-origin-unchecked", "dsbatch/_job.py",
        "if here != self._manifest.origin:",
        "if False:",
        "a job loaded with a client of another server polls it for batches it never made"),
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
        "return tuple(sorted(set(value)))", "return tuple(dict.fromkeys(value))",
        "the same betas in another order make other custom_ids (paid again)"),
    # -- samples branch (issue 17): samples, thinking, conversations ------------------------------
    Bug("samples-share-one-id", "dsbatch/_render.py",
        "return custom_id + sample_suffix(sample) if sample else custom_id", "return custom_id",
        "every sample of a request shares its custom_id: k samples buy one answer"),
    Bug("fingerprint-ignores-samples", "dsbatch/_plan.py",
        "if samples != 1:  # one sample", "if False:  # one sample",
        "3 and 5 samples are one job: its stored requests and options go stale"),
    Bug("samples-interleaved", "dsbatch/_samples.py",
        "order = (np.arange(rows)[:, None] + np.arange(samples)[None, :] * rows).ravel()",
        "order = (np.arange(rows)[:, None] * samples + np.arange(samples)[None, :]).ravel()",
        "a row's list of samples holds other rows' answers"),
    Bug("rows-not-repeated", "dsbatch/_job.py",
        'repeat=options.samples if options.samples_as == "rows" else 1', "repeat=1",
        "samples_as='rows' does not repeat the input rows beside their samples"),
    Bug("shape-not-in-output-key", "dsbatch/_options.py",
        '"samples_as": self.samples_as,', "",
        "switching lists and rows serves the other shape's stored columns"),
    Bug("failed-sample-not-failed", "dsbatch/_samples.py",
        "return pa.array(hit)", "return pa.array(np.zeros(len(status), dtype=bool))",
        "on_error='drop' keeps rows of lists with a failed sample"),
    Bug("old-options-lack-samples", "dsbatch/_options.py",
        "samples: int = _opt(_positive_int, missing=1)",
        "samples: int = _opt(_positive_int, missing=None)",
        "a job kept before samples existed cannot be loaded"),
    Bug("redacted-thinking-dropped", "dsbatch/_reasoning.py",
        '_KINDS = ("thinking", "redacted_thinking")', '_KINDS = ("thinking",)',
        "redacted thinking becomes null instead of being marked"),
    Bug("always-thinking-missed", "dsbatch/_reasoning.py",
        "return isinstance(model, str) and _always_thinks(model.encode())", "return False",
        "a model that always thinks (Opus 5.5, Fable 5.1) gets no thinking column"),
    Bug("thinking-column-everywhere", "dsbatch/_collect.py",
        "thinks = spec.thinking_column is not None and _thinks(job, bodies)",
        "thinks = spec.thinking_column is not None",
        "a job that does not think gets a thinking column of nulls"),
    Bug("conversation-of-failed-row", "dsbatch/_join.py",
        'kept = pc.equal(row_status, "succeeded").fill_null(False)',
        "kept = pc.is_valid(row_status)",
        "a row whose answer did not parse has a conversation"),
    Bug("conversation-without-system", "dsbatch/_conversation.py",
        "    if system:\n", "    if False:\n",
        "the system prompt is left out of the conversation"),
    Bug("prefill-second-assistant-turn", "dsbatch/_conversation.py",
        'if turns and turns[-1]["role"] == "assistant":', "if False:",
        "a prefilled request's conversation ends with two assistant turns"),
    Bug("conversation-drops-images", "dsbatch/_conversation.py",
        "elif kind not in _LEFT_OUT:", "elif False:",
        "an image in the prompt is silently left out of the conversation (and paid for)"),
    Bug("memo-by-keys-only", "dsbatch/_store.py",
        "        token = _digest(value_set)\n",
        "        token = xxhash.xxh3_64_intdigest(wanted.tobytes())\n",
        "a job of 3 samples is served the results another job of 5 samples read (same keys)"),
    Bug("prune-takes-negative-days", "dsbatch/_cli.py",
        "if not math.isfinite(days) or days < 0:", "if not math.isfinite(days):",
        "prune --results-older-than -1 removes every stored result"),
    # -- cost branch -----------------------------------------------------------------------------
    Bug("cost-no-batch-discount", "dsbatch/_cost.py",
        "    discount: float = BATCH_DISCOUNT,", "    discount: float = 1.0,",
        "answers are priced at standard prices, without the batch discount"),
    Bug("preview-priced-at-batch-price", "dsbatch/_cost.py",
        "np.where(preview, 1.0, BATCH_DISCOUNT)",
        "np.where(preview, BATCH_DISCOUNT, BATCH_DISCOUNT)",
        "a preview's answers (Messages API, standard price) are priced at half"),
    Bug("preview-buys-samples", "dsbatch/_preview.py",
        "if options.samples != 1 or options.dry_run:", "if False:",
        "preview(samples=3) or preview(dry_run=True) buys answers it cannot show"),
    Bug("cost-1h-writes-as-5m", "dsbatch/_cost.py",
        "return written - one_hour, one_hour", "return written, 0",
        "1-hour cache writes are priced as 5-minute ones"),
    Bug("cost-price-day-ignored", "dsbatch/_cost.py",
        "self.book.prices(only[0], _day(when))", "self.book.prices(only[0])",
        "answers are priced at today's prices, not those of the day their batch was made"),
    Bug("cost-failed-requests-unknown", "dsbatch/_cost.py",
        "        valid |= _flags(not_billed)  # their cost stays 0\n", "",
        "errored, expired and canceled requests show an unknown cost instead of 0"),
    Bug("cost-unpriced-warned-every-time", "dsbatch/_cost.py",
        "if key in _WARNED:", "if key in ():",
        "a model without a price is warned about every time it is priced"),
    Bug("cost-status-column-null", "dsbatch/_join.py",
        'whole(mine["cost_usd"]) if cost is not None else pa.nulls(count, pa.float64()),',
        "pa.nulls(count, pa.float64()),",
        "the status column's cost_usd is always null"),
    Bug("cost-output-key-ignores-prices", "dsbatch/_options.py",
        "            prices_key(self.prices),  # the status column's cost_usd\n", "",
        "new prices leave the cached columns with the old costs"),
    Bug("cost-progress-bar-without-cost", "dsbatch/_run.py",
        "            if self.options.progress\n", "            if False\n",
        "the progress bar never shows the cost so far"),
    Bug("plan-dry-run-ignored", "dsbatch/_map.py",
        "if options.dry_run or options.budget_usd is not None:",
        "if options.budget_usd is not None:",
        "dry_run=True runs the job for real"),
    Bug("plan-in-flight-counted-as-cached", "dsbatch/_estimate.py",
        "in_flight = len(view.waiting_ids & set(bodies))", "in_flight = 0",
        "a plan counts requests in flight as final in the cache"),
    Bug("plan-extrapolates-by-count", "dsbatch/_estimate.py",
        "tokens = [float(counted.get(i, size * per_byte)) for i, size in enumerate(sizes)]",
        "tokens = [float(counted.get(i, sum(counted.values()) / len(counted))) for i in "
        "range(len(sizes))]",
        "unsampled requests get the sample's mean tokens whatever their size"),
    Bug("plan-sample-in-row-order", "dsbatch/_estimate.py",
        "order = sorted(range(len(to_send)), key=lambda i: to_send[i])[:SAMPLE]",
        "order = list(range(len(to_send)))[:SAMPLE]",
        "the token sample is the first rows, not a hash-ordered sample"),
    Bug("plan-max-ignores-cache-writes", "dsbatch/_estimate.py",
        "write_5m=whole if cached and not one_hour else 0,", "write_5m=0,",
        "the maximum cost prices a 5-minute cache breakpoint's input at nothing"),
    Bug("plan-expected-never-reads-the-cache", "dsbatch/_estimate.py",
        "    if key in written:\n", "    if False:\n",
        "the expected cost has every request write its cached prefix, none read it"),
    Bug("count-tokens-sends-max-tokens", "dsbatch/_backend.py",
        '"cache_control",\n    "messages",', '"cache_control",\n    "max_tokens",\n    "messages",',
        "count_tokens gets max_tokens, which the endpoint refuses: every plan is offline"),
    Bug("budget-twice-too-lenient", "dsbatch/_estimate.py",
        "if plan.cost_usd_max > budget_usd:", "if plan.cost_usd_max > budget_usd * 2:",
        "a budget lets through a call that may cost up to twice as much"),
    Bug("waves-limit-ignored", "dsbatch/_run.py",
        "room = max(0, self.options.max_queued_requests - in_queue)", "room = 10**12",
        "max_queued_requests is ignored: everything is sent at once"),
    Bug("waves-count-own-job-only", "dsbatch/_run.py",
        "in_queue = sum(r.request_count for r in queued(view.records, self.origin))",
        "in_queue = sum(r.request_count for r in queued(view.records, self.origin) "
        "if r.job == self.job.fingerprint)",
        "the queue limit counts only the job's own batches, not the cache's"),
    Bug("waves-held-counts-as-done", "dsbatch/_run.py",
        "return self.batches == 0 and self.sent == 0 and self.held == 0",
        "return self.batches == 0 and self.sent == 0",
        "a job whose requests are all held back for queue room counts as done"),
    Bug("waves-never-poll-queue-holders", "dsbatch/_run.py",
        "        if self._held:\n", "        if False:\n",
        "a held-back job waits forever on another job's batch that no one polls"),
    Bug("create-429-spends-attempts", "dsbatch/_poll.py",
        "stop=stop_after_attempt(_CALL_ATTEMPTS, counting=_not_rate_limited)",
        "stop=stop_after_attempt(_CALL_ATTEMPTS)",
        "a full queue's 429s on create spend the attempts real failures get"),
    Bug("create-uses-the-poll-policy", "dsbatch/_batch.py",
        "retrying=self.creating,", "retrying=self.retrying,",
        "creates retry with the polls' policy: 429s spend their attempts"),
    Bug("retry-counting-counts-everything", "dsbatch/_retry.py",
        "return sum(1 for error in errors if self.counting(error)) >= self.max_attempt",
        "return len(errors) >= self.max_attempt",
        "stop_after_attempt(counting=...) counts every failure"),
    # -- caching branch (issue 16: prompt caching of shared prefixes, priming, preview) -------
    Bug("two-sharers-cached", "dsbatch/_prefix.py",
        "MIN_SHARING = 3", "MIN_SHARING = 2",
        "a prefix two requests share gets a breakpoint: 2.1x its price instead of 2x"),
    Bug("cache-minimum-ignored", "dsbatch/_prefix.py",
        "if n >= MIN_SHARING and after.get(node, 0) < n and tokens[node] >= minimum[node]",
        "if n >= MIN_SHARING and after.get(node, 0) < n",
        "prefixes shorter than the model's minimum get a breakpoint (never cached)"),
    Bug("shallowest-breakpoints-kept", "dsbatch/_prefix.py",
        "return {p.where for p in points[-MAX_BREAKPOINTS:]}",
        "return {p.where for p in points[:MAX_BREAKPOINTS]}",
        "of more than 4 breakpoints the shallowest are kept, not the deepest"),
    Bug("own-cache-control-overridden", "dsbatch/_prefix.py",
        """_OWN = b'"cache_control":'""", """_OWN = b'"cache-control":'""",
        "a request that sets cache_control itself gets dsbatch's breakpoints too"),
    Bug("marks-kept-for-two-requests", "dsbatch/_prefix.py",
        "if not chosen and all(t.target in (None, (t.head, t.tail)) for t in templates):",
        "if not chosen:",
        "a text template rendered with its breakpoint keeps it when the plan does not confirm it"),
    Bug("primer-shares-its-batch", "dsbatch/_priming.py",
        "            free = list(primers.values())",
        "            free = free + list(primers.values())",
        "the first request of a prefix goes in a batch with every request of no prefix"),
    Bug("group-sent-while-primer-flies", "dsbatch/_priming.py",
        "elif group in flying or group in primers:", "elif group in primers:",
        "the rest of a prefix is sent while its first request is still in flight"),
    Bug("group-never-released", "dsbatch/_priming.py",
        "return {self.groups[c] for c in ended if c in self.groups}", "return set()",
        "a prefix is never released: its requests go one batch at a time"),
    Bug("preview-answers-prime", "dsbatch/_priming.py",
        'pc.starts_with(results["batch_id"], PREVIEW_PREFIX).fill_null(False)',
        'pc.starts_with(results["batch_id"], "no batch id").fill_null(False)',
        "a preview's answers count as a primed prefix: the batch sends everything at once"),
    Bug("preview-origin-forgotten", "dsbatch/_recovery.py",
        'origins.update((e["batch_id"], e.get("origin") or "") for e in ledger.store.previews())',
        'origins.update((e["batch_id"], "") for e in ledger.store.previews())',
        "a preview's answers serve runs against every origin"),
    Bug("preview-buys-cached", "dsbatch/_preview.py",
        "backend, ledger, origin, _waves(to_buy, prepared.groups), rendered.bodies, options",
        "backend, ledger, origin, _waves(ids, prepared.groups), rendered.bodies, options",
        "a preview buys again what the cache already answers"),
    Bug("preview-takes-in-flight", "dsbatch/_preview.py",
        "if custom_id is not None and custom_id not in flying",
        "if custom_id is not None",
        "a preview buys a request a batch has in flight"),
    Bug("preview-no-retry", "dsbatch/_preview.py",
        "stop=stop_after_attempt(_ATTEMPTS),", "stop=stop_after_attempt(1),",
        "a preview call that met an overload is not tried again"),
    Bug("held-shown-as-ended", "dsbatch/_run.py",
        "return self.needed - self.waiting - self.sent - self.held",
        "return self.needed - self.waiting - self.sent",
        "the progress bar counts requests waiting for their primer as ended (not answered)"),
    Bug("cache-fields-swapped", "dsbatch/_join.py",
        """                _zero_if_succeeded(mine["cache_read_input_tokens"], succeeded),
                _zero_if_succeeded(mine["cache_creation_input_tokens"], succeeded),""",
        """                _zero_if_succeeded(mine["cache_creation_input_tokens"], succeeded),
                _zero_if_succeeded(mine["cache_read_input_tokens"], succeeded),""",
        "cache reads and writes land in each other's status fields"),
    # -- card branch (issue 18: dsbatch.card, the provenance of each step) ------------------------
    Bug("card-provenance-not-stamped", "dsbatch/_compat.py",
        "        info.features.update(features)",
        "        info.features.update(Features.from_arrow_schema(new.schema))",
        "the status column's features lose the step's provenance: no card"),
    Bug("card-second-step-lost", "dsbatch/_provenance.py",
        "                found.append((column, step))",
        "                found[:] = [(column, step)]",
        "a two-step chain's card shows only its last step"),
    Bug("card-skipped-rows-counted-as-requests", "dsbatch/_card.py",
        'asked = status.filter(pc.is_valid(status["custom_id"]))', "asked = status",
        "skipped rows (no request) count as a request in the card"),
    Bug("card-tokens-per-row", "dsbatch/_card.py",
        '[(name, "max") for name in names] + [("cost_usd", "count")]',
        '[(name, "sum") for name in names] + [("cost_usd", "count")]',
        "tokens and cost of a request asked by two rows are counted twice"),
    Bug("card-splits-paid-twice", "dsbatch/_card.py",
        "if requests is not None and len(tallies) > 1:",
        "if requests is not None and len(tallies) > 2:",
        "a request shared by two splits counts twice in the card's total"),
    Bug("card-batches-not-stored", "dsbatch/_collect.py",
        "digest = job.write_output(split, *_with_schema(tables, batches))",
        "digest = job.write_output(split, *_with_schema(tables, {}))",
        "the batch ids are not stored with the finished columns: a cached rerun's card lacks them"),
    Bug("card-provenance-not-kept-on-edit", "dsbatch/_map.py",
        "        or manifest.provenance != facts\n", "",
        "a prompt edit that renders the same requests leaves the old prompt hash in the card"),
    Bug("card-system-hash-of-params", "dsbatch/_provenance.py",
        '"system_sha256": _json_digest(system),', '"system_sha256": _json_digest(params),',
        "the card's system prompt hash is the params'"),
    # -- review3 branch (review round 2: jobs without their code, inputs, versions, the CLI) ----
    Bug("cancel-marks-a-done-job", "dsbatch/_job.py",
        'if self.status(refresh=False).state == "done":', "if False:",
        "canceling a finished job marks it canceled"),
    Bug("collect-checks-output-late", "dsbatch/_cli.py",
        "        _check_writable(output)  # before waiting: not after hours of it\n",
        "        pass\n",
        "collect to a path that cannot be written fails with a traceback, after waiting"),
    Bug("output-fingerprint-ignores-input", "dsbatch/_collect.py",
        'f"{fingerprint_of(ds)}|{outputs.digests[split]}|{output_key}|{on_error}".encode()',
        'f"|{outputs.digests[split]}|{output_key}|{on_error}".encode()',
        "two outputs of the same answers on inputs that differ elsewhere share a fingerprint"),
    Bug("rerun-keeps-first-inputs", "dsbatch/_map.py",
        "    elif manifest.fingerprints != fingerprints:\n", "    elif False:\n",
        "a rerun on other rows keeps the first call's: result() elsewhere returns stale rows"),
    Bug("unpicklable-input-fails-map", "dsbatch/_inputs.py",
        "except (pickle.PicklingError, TypeError, AttributeError) as e:",
        "except (ZeroDivisionError,) as e:",
        "a dataset with a lambda transform makes map fail while keeping its inputs"),
    Bug("loaded-job-forgets-api-version", "dsbatch/_job.py",
        "self._backend = Backend(client, api_version=manifest.api_version, clock=now)",
        "self._backend = Backend(client, clock=now)",
        "a loaded job resends its requests under the client's API version, not theirs"),
    Bug("status-needs-the-jobs-code", "dsbatch/_job.py",
        "            if missing and not code:\n", "            if False:\n",
        "a job whose response_format cannot be imported cannot be listed, watched or canceled"),
    Bug("status-reads-every-body", "dsbatch/_job.py",
        "            self._bodies = _Requests(self._job)\n",
        "            self._bodies = self._job.read_requests()\n",
        "listing jobs and their status read every request's params"),
    Bug("cancel-marks-after-canceling", "dsbatch/_job.py",
        '        self._manifest = self._job.update_manifest(self._manifest, mark)\n'
        '        retrying = call_retrying(options.schedule, options.clock, is_transient)\n'
        '        canceled = 0\n'
        '        for record in job_records(self._job):\n'
        '            if record.state is BatchState.SUBMITTED and record.batch_id:\n'
        '                info = retrying.call(self._backend.cancel, record.batch_id)\n'
        '                canceled += 1\n'
        '                log.info("dsbatch: canceling batch %s (%s)", '
        'info.id, info.processing_status)\n',
        '        retrying = call_retrying(options.schedule, options.clock, is_transient)\n'
        '        canceled = 0\n'
        '        for record in job_records(self._job):\n'
        '            if record.state is BatchState.SUBMITTED and record.batch_id:\n'
        '                info = retrying.call(self._backend.cancel, record.batch_id)\n'
        '                canceled += 1\n'
        '                log.info("dsbatch: canceling batch %s (%s)", '
        'info.id, info.processing_status)\n'
        '        self._manifest = self._job.update_manifest(self._manifest, mark)\n',
        "a cancel cancels the batches before marking the job: another call creates more meanwhile"),
    # -- rerun branch (issue 15: reruns without rendering) -----------------------------------
    Bug("rerun-keyword-left-out", "dsbatch/_rerun.py",
        'NOT_IN_KEY | {"response_format", "parse"}',
        'NOT_IN_KEY | {"response_format", "parse", "output_column"}',
        "a call with another output_column is served the old job's columns"),
    Bug("rerun-globals-not-hashed", "dsbatch/_describe.py",
        "name: self.value(fn.__globals__[name], names)", "name: name",
        "a prompt whose global template changed is served the old answers"),
    Bug("rerun-functions-by-name", "dsbatch/_describe.py",
        "return self._function(obj) if _is_users(obj.__module__) else _library(obj)",
        'return self._function(obj) if obj.__module__ == "__main__" else _library(obj)',
        "a function of an importable module is hashed by name (as dill does): edits unseen"),
    Bug("rerun-defaults-not-hashed", "dsbatch/_describe.py",
        "self.value(fn.__defaults__),", "None,",
        "a prompt whose default argument changed is served the old answers"),
    Bug("rerun-server-not-in-key", "dsbatch/_rerun.py",
        '"server": (backend.base_url, backend.api_version),',
        '"server": (backend.base_url,),',
        "a call with another API version is served a job rendered for the first"),
    Bug("rerun-hit-unfinished", "dsbatch/_job.py",
        'if manifest is None or manifest.state != "finished":', "if manifest is None:",
        "a job that is not finished is served as it stands"),
    Bug("rerun-hit-in-flight", "dsbatch/_job.py",
        "if any(record.state in IN_FLIGHT for record in job_records(self._job, strict=False)):",
        "if False:",
        "a job with a batch in flight is served as it stands"),
    Bug("rerun-load-from-cache-ignored", "dsbatch/_map.py",
        "if wait and options.load_from_cache_file and not options.dry_run:",
        "if wait and not options.dry_run:",
        "load_from_cache_file=False is served from the cache all the same"),
    # -- main (issue 15): parse/response_format columns stored by a hash of their code ---------
    Bug("output-key-code-by-name", "dsbatch/_options.py",
        "code[name] = code_hash(obj)", 'code[name] = getattr(obj, "__qualname__", name)',
        "an edited parse (a global it reads) is served the old stored columns"),
    Bug("output-key-ignores-parse-rows", "dsbatch/_options.py",
        'code["inputs"] = sorted(inputs.items())', 'code["inputs"] = []',
        "parse's columns of other rows (same requests) are served the first rows' columns"),
    Bug("output-key-unhashable-stored", "dsbatch/_options.py",
        "except Exception:  # dill fails in many ways: the columns are joined again\n"
        "                return None",
        "except Exception:  # dill fails in many ways: the columns are joined again\n"
        "                code[name] = name",
        "columns of code that cannot be hashed are stored and served after an edit"),
    # -- main (issue 15): the new columns map the job's output file --------------------------
    Bug("output-not-mapped", "dsbatch/_collect.py",
        "mapped_from=outputs.files.get(split),", "mapped_from=None,",
        "the new columns are an in-memory copy: a pickle or num_proc map copies them"),
    Bug("output-file-not-by-digest", "dsbatch/_ledger_data.py",
        'return self.dir / "output" / _file_name(split) / f"{digest}.arrow"',
        'return self.dir / "output" / _file_name(split) / "current.arrow"',
        "a later call's columns replace the file an earlier output's pickle names"),
    Bug("requests-group-kept-stale", "dsbatch/_job.py",
        "        if self._group[:2] != (group, column):\n", "        if self._group[0] < 0:\n",
        "a step sends the params of the first row group read for every later request"),
    Bug("requests-group-off-by-one", "dsbatch/_job.py",
        'groups = np.searchsorted(starts, at[order], side="right") - 1\n',
        'groups = np.maximum(np.searchsorted(starts, at[order], side="left") - 1, 0)\n',
        "the first request of each row group is looked up in the group before it"),
    Bug("bodies-spill-loses-order", "dsbatch/_bodies.py",
        "            if not (start <= offset and offset + length <= start + len(window)):",
        "            if not window:",
        "a pass over spilled bodies slices every body out of the first window read"),
    Bug("bodies-rebuilt-in-memory", "dsbatch/_prefix.py",
        "old, rendered.bodies = rendered.bodies, rendered.bodies.empty_like()",
        "old, rendered.bodies = rendered.bodies, {}  # type: ignore[assignment]",
        "placing breakpoints rebuilds every body in memory (a spilled job's whole size)"),

    # numproc (issue 15: num_proc=N renders in N processes) ----------------------------------
    Bug("numproc-shards-out-of-order", "dsbatch/_parallel.py",
        "tasks = list(_tasks(payload, splits, labels, processes))",
        "tasks = list(_tasks(payload, splits, labels, processes))[::-1]",
        "the shards of a split are merged last first: rows get other rows' requests"),
    Bug("numproc-rows-named-in-shard", "dsbatch/_parallel.py",
        "        start=start,\n", "        start=0,\n",
        "a worker names rows by their index in its shard: errors, indices, first rows"),
    Bug("numproc-first-row-labels-lost", "dsbatch/_parallel.py",
        "    rendered.labels.update(labels)\n", "",
        "rendered in processes, a request's first row is named without its split"),
    Bug("numproc-marks-dropped", "dsbatch/_parallel.py",
        "                marks.made.update(made)", "                pass",
        "the prompt-cache marks made in the workers are lost: other requests, no primer"),
    Bug("numproc-ignored", "dsbatch/_map.py",
        "num_proc=options.num_proc,", "num_proc=None,",
        "num_proc is accepted and ignored"),
    Bug("numproc-whole-table-per-shard", "dsbatch/_parallel.py",
        "if shard.cache_files or shard._indices is not None:", "if True:",
        "each worker is sent the whole in-memory dataset, not its shard's rows"),
    Bug("finished-at-moved-by-a-rejoin", "dsbatch/_job.py",
        "                or manifest.outputs != outputs.digests\n",
        "                or True\n",
        "columns joined again as they were get a new finish time: the output's features change"),
    Bug("render-text-escaped-ascii", "dsbatch/_render.py",
        "encode_basestring(text).encode()", "json.dumps(text).encode()",
        "a str prompt's non-ASCII text is escaped: other bytes, other custom_ids than documented"),
    Bug("cost-prices-kept-across-models", "dsbatch/_cost.py",
        "key = (self.model(custom_id), when)", "key = (self.default_model, when)",
        "answers of a model the prompt chose are priced at the default model's prices"),
    Bug("cost-one-model-assumed", "dsbatch/_cost.py",
        "return (models.pop(),) if len(models) == 1 else None", "return (models.pop(),)",
        "a job whose prompt chooses models per row prices every answer at one of them"),
    # -- ledger branch (issue 15: one survey per step) ------------------------------------------
    Bug("step-surveys-outside-lock", "dsbatch/_run.py",
        "        with self.job.ledger.locked() as turn:\n            view = self.survey()\n",
        "        view = self.survey()\n        with self.job.ledger.locked() as turn:\n",
        "a step decides from a view taken before the cache lock: another call's intent unseen"),
    Bug("step-keeps-view-after-ingest", "dsbatch/_run.py",
        "if changed or turn is None or again != turn + 1:", "if turn is None or again != turn + 1:",
        "a step that ingested a batch decides from its look before: retries wait a poll"),
    Bug("step-ignores-other-deciders", "dsbatch/_run.py",
        "if changed or turn is None or again != turn + 1:", "if changed or turn is None:",
        "a step decides from its first look after another call decided: bought twice"),
    Bug("quiet-step-surveys-again", "dsbatch/_run.py",
        "            self._quiet = (self._to_advance(view), final_turn, standing)\n",
        "            pass\n",
        "every poll of a large job surveys the cache and decides again, though nothing changed"),
    Bug("expired-not-retried", "dsbatch/_policy.py",
        '        pc.equal(kind, "expired"),\n', '        pc.equal(kind, "never"),\n',
        "expired requests are final: a batch that ran out of time loses its rows"),
    # -- main (issue 15): a step's cost follows what changed, not the job's size -----------------
    Bug("latest-prefers-failure", "dsbatch/_policy.py",
        "            whole(rank).to_numpy(zero_copy_only=False),\n",
        "            -whole(rank).to_numpy(zero_copy_only=False),\n",
        "a request answered once and failed later counts as failed: its answer is bought again"),
    Bug("latest-keeps-every-attempt", "dsbatch/_policy.py",
        "    if len(encoded.dictionary) == len(encoded):\n", "    if True:\n",
        "every attempt of a retried request reaches the join as if it were the latest"),
    Bug("attempts-one-too-many", "dsbatch/_policy.py",
        'pc.greater_equal(counts.field("counts"), max_attempts)',
        'pc.greater(counts.field("counts"), max_attempts)',
        "a request is sent once more than max_attempts allows"),
    Bug("others-batches-all-waited-for", "dsbatch/_plan.py",
        "        mine = ids if record.job == own else pc.filter(",
        "        mine = ids if True else pc.filter(",
        "a job waits for every batch of other jobs in flight, even those holding none of its rows"),
    Bug("wanted-keys-of-another-job", "dsbatch/_store.py",
        "        if self._wanted is None or self._wanted[0] != token:\n",
        "        if self._wanted is None:\n",
        "a second job in one process looks for the first job's ids: it buys what is stored"),
    Bug("requests-first-of-shared-key", "dsbatch/_job.py",
        "            if ids[row].as_py() == custom_id:\n", "            if True:\n",
        "a sample's request is read as the first request sharing its key: wrong params sent"),
    Bug("custom-id-key-differs", "dsbatch/_store.py",
        "        return int(head, 16)\n", "        return int(head[:15], 16)\n",
        "a job's requests are looked up under another key than the index's: none is found"),
    Bug("costs-band-ignored", "dsbatch/_cost.py",
        "        above = (band >= 0) & (prompt > band)\n", "        above = band < -1\n",
        "a prompt past its model's band is priced at the lower band"),
    Bug("requests-take-trusts-first-of-key", "dsbatch/_job.py",
        "        for i in np.flatnonzero(~same).tolist():\n", "        for i in []:\n",
        "a step's bodies taken at once give a sample the first body sharing its key"),
    # -- structure branch (issue 15: the ledger split, a clock of its own) ---------------------
    Bug("keeper-on-system-clock", "dsbatch/_batch.py",
        "        self.clock = clock\n", "        self.clock = Clock()\n",
        "leases and missing-since moments are dated by the system's clock, not the call's"),
    Bug("intents-on-system-clock", "dsbatch/_run.py",
        "        now = self.options.clock.now()\n",
        "        now = __import__(\"time\").time()\n",
        "intents are dated by the system's clock, not the call's"),
    Bug("timeout-on-system-clock", "dsbatch/_run.py",
        "deadline = None if timeout is None else clock.now() + timeout",
        "deadline = None if timeout is None else __import__(\"time\").time() + timeout",
        "wait(timeout=...) counts on the system's clock: a virtual-clock wait never times out"),
    Bug("retries-sleep-for-real", "dsbatch/_poll.py",
        "        sleep=clock.sleep,\n        clock=clock.now,\n",
        "        sleep=time.sleep,\n        clock=clock.now,\n",
        "a call's retries sleep in real time, whatever clock the call was given"),
    # -- render2 (issue 15: dsbatch's own work in render, submit, join) -------------------------
    Bug("render2-template-count-all", "dsbatch/_render.py",
        "        if bodies.add(custom_id, body):\n            rendered.from_template += made",
        "        if bodies.add(custom_id, body):\n            rendered.from_template += 1",
        "a job of text and other rows is planned as if every body came from its template"),
    Bug("render2-apply-fast-ignores-targets", "dsbatch/_prefix.py",
        "            and all(id(t) in kept for t in self.templates)\n", "",
        "a breakpoint render placed that the plan removes stays in the bytes sent"),
    Bug("render2-models-nested-default", "dsbatch/_map.py",
        "if at >= 0 and body.find(b'\"model\":', 0, at) < 0", "if at >= 0 and True",
        "a request naming another model, with the default's name nested in a tool, is priced "
        "and recorded as the default"),
    Bug("render2-bodies-add-overwrites", "dsbatch/_bodies.py",
        "            if custom_id in memory:\n                return False\n", "",
        "a request's body is replaced by a later row's (the first row it names is wrong)"),
    Bug("render2-parallel-all-templated", "dsbatch/_parallel.py",
        "every_templated = every_templated and part.from_template == len(part.bodies)",
        "every_templated = True",
        "num_proc: a job of text and other rows is planned as if all were made from a template"),
    Bug("render2-thinks-ignores-models", "dsbatch/_collect.py",
        'if any(request_thinks({"model": m}) for m in pc.unique(models.drop_null()).to_pylist()):',
        "if False:",
        "a job of a model that always thinks gets no thinking column"),
    Bug("render2-thinks-first-group-only", "dsbatch/_collect.py",
        "for group in range(len(job.request_groups())):", "for group in range(1):",
        "a request asking for thinking past the requests file's first row group is missed"),
    Bug("render2-thinks-template-only", "dsbatch/_map.py",
        "if rendered.templates and rendered.from_template == len(rendered.bodies):",
        "if rendered.templates:",
        "a row whose own params ask for thinking, among text rows, gets no thinking column"),
    Bug("render2-models-template-default", "dsbatch/_map.py",
        'model = model_of(head + b"[]" + tail, default)', "model = default",
        "requests of a template whose params name another model are priced as the default's"),
    Bug("join-in-order-assumed", "dsbatch/_join.py",
        "    in_order = _is_identity(index, latest.num_rows)\n", "    in_order = True\n",
        "answers are joined in the order results came back, not to their rows"),
    Bug("join-failed-keeps-text", "dsbatch/_join.py",
        "    if pc.all(answered).as_py() is not True:\n", "    if False:\n",
        "a request that did not succeed shows the text of its result line as its answer"),
    Bug("join-tool-input-skipped", "dsbatch/_join.py",
        "    if tool_input.null_count == len(tool_input):\n", "    if True:\n",
        "an answer that is a tool call (no text) is an empty row"),
    # -- ingest (issue 15: the emulator serves stored results; a faster download + ingest) ------
    Bug("emu-beta-served-standard-file", "dsbatch/_emulator/_state.py",
        "stored = batch.files.get(beta)", "stored = batch.files.get(False)",
        "the beta endpoint serves the standard results file it stored first"),
    Bug("emu-results-built-every-download", "dsbatch/_emulator/_state.py",
        "stored = batch.files.get(beta)", "stored = None",
        "every download encodes the results again: the emulator's cost hides the client's"),
    Bug("emu-cut-on-line-boundary", "dsbatch/_emulator/_server.py",
        "if cut and stop < stored.lines:", "if cut and stop > stored.lines:",
        "a cut download ends on a line boundary: it looks whole to a line reader"),
    Bug("emu-short-serves-all", "dsbatch/_emulator/_server.py",
        "stored.lines // 2 if short else stored.lines", "stored.lines",
        "the short_results fault serves the whole file"),
    Bug("fast-parse-error-message-is-type", "dsbatch/_ingest.py",
        '"error_message": pc.struct_field(error, "message"),',
        '"error_message": pc.struct_field(error, "type"),',
        "the fast parse stores an errored line's type as its message"),
    Bug("json-block-smaller-than-line", "dsbatch/_ingest.py",
        "max(_BLOCK_BYTES, longest + 2)", "_BLOCK_BYTES",
        "a line longer than a block sends the whole file to the line-by-line parse"),
    Bug("blank-lines-kept", "dsbatch/_ingest.py",
        "return raw.filter(pc.invert(blank)) if pc.any(blank).as_py() else raw", "return raw",
        "a line of spaces in a download makes it read line by line, and fail"),
    Bug("cut-download-left-behind", "dsbatch/_files.py",
        "            Path(tmp).unlink(missing_ok=True)\n            raise",
        "            raise",
        "a download cut midway leaves its partial file behind"),
    Bug("one-attempt-never-spent", "dsbatch/_policy.py",
        "    if latest.num_rows == results.num_rows and max_attempts > 1:\n",
        "    if latest.num_rows == results.num_rows:\n",
        "with max_attempts=1, an expired request is sent a second time"),
    Bug("fast-parse-unknown-type-unquoted", "dsbatch/_ingest.py",
        """                        "unknown result type '", kind.cast(pa.string()), "'", ""\n""",
        """                        "unknown result type ", kind.cast(pa.string()), "", ""\n""",
        "an unknown result type is named one way or another depending on its neighbours"),
    Bug("create-body-items-unseparated", "dsbatch/_plan.py",
        '_ITEM_CLOSE = pa.scalar(b"},", pa.binary())', '_ITEM_CLOSE = pa.scalar(b"}", pa.binary())',
        "a create body read from the requests file runs its items together: no batch is made"),
    Bug("create-sizes-from-nothing", "dsbatch/_job.py",
        '            lengths = self._column(custom_ids, "size")\n',
        '            lengths = pc.multiply(self._column(custom_ids, "size"), 0)\n',
        "batches are cut as if every request were empty: a create body over the byte limit"),
    Bug("attempts-once-assumed", "dsbatch/_collect.py",
        "    sent = None if latest.num_rows == results.num_rows else attempts(results)\n",
        "    sent = None\n",
        "the status column says every request was sent once, retried ones included"),
    Bug("cut-one-too-many", "dsbatch/_plan.py",
        "        stop = min(fits - 1, start + max_requests, n)\n",
        "        stop = min(fits, start + max_requests, n)\n",
        "a batch is cut one request past the byte limit: the create is refused"),
    Bug("sizes-bound-trusted-blindly", "dsbatch/_plan.py",
        "        if _OVERHEAD + longest_id + largest + _ITEM_FRAME <= max_bytes:\n",
        "        if True:\n",
        "a request too large for any batch is not refused before paying"),
    Bug("models-distinct-of-first-only", "dsbatch/_ledger_data.py",
        "        return set(pc.unique(self._models).to_pylist())\n",
        "        return set(pc.unique(self._models).to_pylist()[:1])\n",
        "a job of two models is priced as if every request were of the first"),
    Bug("slice-status-of-first-rows", "dsbatch/_join.py",
        "                whole(row_status.slice(start, count)),\n",
        "                whole(row_status.slice(0, count)),\n",
        "every slice of a split's output after the first has the first rows' statuses"),
    Bug("slice-in-order-from-start", "dsbatch/_join.py",
        "return whole(values.slice(start, count) if in_order else values.take(at))",
        "return whole(values.slice(0, count) if in_order else values.take(at))",
        "requests answered in order: every slice of the output repeats the first rows' answers"),
    Bug("slice-last-dropped", "dsbatch/_join.py",
        "for start in range(0, len(ids), step))",
        "for start in range(0, len(ids) - step, step))",
        "the last slice of a split's rows is never written"),
    Bug("output-first-slice-only", "dsbatch/_ledger_data.py",
        "for table in [tables] if isinstance(tables, pa.Table) else tables:",
        "for table in [tables] if isinstance(tables, pa.Table) else list(tables)[:1]:",
        "only the first slice of a split's columns is stored: the output loses rows"),
    Bug("output-named-by-nothing", "dsbatch/_ledger_data.py",
        "            return f\"{hashed.hash.hexdigest()}.arrow\"",
        "            return \"output.arrow\"",
        "every output file has one name: a dataset mapping an earlier output reads the new one"),
    Bug("spans-first-of-each", "dsbatch/_store.py",
        "np.repeat(starts - (ends - lengths), lengths)",
        "np.repeat(starts - ends + 1, lengths)",
        "ids sharing a 64-bit key: the results store reads the first one's row for each"),
    Bug("ids-digest-in-given-order", "dsbatch/_ledger_job.py",
        'lines = pc.binary_join_element_wise(ids.take(pc.sort_indices(ids)), "", "\\n")',
        'lines = pc.binary_join_element_wise(ids, "", "\\n")',
        "a batch's ids digest depends on their order: ids rebuilt from results do not match"),
    Bug("ours-in-given-order", "dsbatch/_batch.py",
        "if known is not None and _sorted(known).equals(_sorted(ids)):",
        "if known is not None and known.equals(ids):",
        "results that come in another order than the batch's ids are taken for another's"),
    Bug("request-size-plus-one", "dsbatch/_ledger_data.py",
        "                        pc.binary_length(params),\n",
        "                        pc.add(pc.binary_length(params), 1),\n",
        "the requests file keeps each size one byte over: batches are cut smaller than they fit"),
    Bug("group-cache-ignores-column", "dsbatch/_job.py",
        "if self._group[:2] != (group, column):",
        "if self._group[0] != group:",
        "a row group's params read last are taken for its sizes (or the other way round)"),
    Bug("first-row-ignores-samples", "dsbatch/_render.py",
        "if sample is not None and 0 < int(sample[2]) < rendered.samples:",
        "if sample is not None and 0 < int(sample[2]) < 0:",
        "a too-large sample's request names no row"),
    Bug("first-row-label-of-first-split", "dsbatch/_render.py",
        "                return rendered.labels.get(split), ids.index(base)\n",
        "                return next(iter(rendered.labels.values())), ids.index(base)\n",
        "a too-large request of a DatasetDict's second split is said to be the first split's"),
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


def run_bug(root: Path, bug: Bug, first: Sequence[str] = ()) -> Outcome:
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
            # The tests named by --first, then (if they pass) the whole suite: a bug is caught
            # when any test fails, and the likely ones first take minutes off each run.
            for tests in ([*first], []) if first else ([],):
                proc = subprocess.run(
                    [sys.executable, *PYTEST, *tests], cwd=copy, env=env, capture_output=True,
                    text=True, timeout=_SUITE_TIMEOUT,
                )  # fmt: skip
                if proc.returncode != 0:
                    break
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
    parser.add_argument(
        "--first", action="append", default=[], metavar="TESTS",
        help="run these tests first (repeat); the whole suite only if they pass",
    )  # fmt: skip
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
        outcome = run_bug(root, bug, args.first)
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
