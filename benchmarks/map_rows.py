"""How long dsbatch.map takes for N rows, stage by stage, beside the least work the same job needs.

    python benchmarks/map_rows.py --rows 100000

N rows (a synthetic dataset, 10% of rows repeated, saved to disk and memory-mapped as a user's
would be) go through the emulator running in its own process with zero delay
(``dsbatch emulator --port 0``), so the figures are the client's work plus the emulator's.

dsbatch: the first run's seconds per stage, total and peak RSS. dsbatch has no timing hook:
the stages are timed from outside, by wrapping some of its internal functions in this process
(``_stages.StageTimer``; the seams are ``SEAMS`` below: ``_map.prepare`` for render+hash, the job
loop's batch create for submit, the poll sleeps and polls for wait, the download and the write
of the results store for download+ingest, ``Job._collect``/``Job._attach`` for the join, the
job loop's survey of the cache). A seam the library no longer has prints "n/a"; what no seam
covers (origin check, ledger writes, manifests) is "other". Then: the same call again (served
by the finished job), again with ``load_from_cache_file=False`` (renders every row), iterating
the SDK's ``client.messages.batches.results()`` over the same batches, against dsbatch's own
download + ingest of them measured the same way (one batch after another against the idle
emulator: in a job, a wave's download runs beside the emulator's work on the next wave), and a
second job with a ``response_format`` model, run then rerun.

The floor (``_floor.run_floor``): the least-work script for the same job, against a fresh
emulator process, with its own seconds per stage. Both keep to one queue limit (``--max-queued``,
default 100,000, dsbatch's default and the API's lowest tier): no more requests in the
processing queue at once, as the API allows (a million rows go out in waves, in both).
``--repeat N`` takes N first runs of each, in turns, each against a fresh emulator, and shows the
medians per stage; the peak RSS stays the first run's (a fresh process).
Prints Markdown tables (figures, targets) with the machine's load and the command line;
``--profile`` adds a cProfile of one more first run of dsbatch (top functions by cumulative
time).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import multiprocessing
import os
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
from _floor import download_seconds, run_floor
from _stages import StageTimer
from datasets import Dataset, load_from_disk
from pydantic import BaseModel

import dsbatch
from dsbatch._backend import Backend
from dsbatch._clock import Clock
from dsbatch._ingest import fetch_results, retry_download
from dsbatch._poll import PollSchedule, call_retrying
from dsbatch._store import ResultsStore

# Imported before anything is timed, as the floor's modules are: a first run measures the work,
# not the import of ``dsbatch.map``'s modules (which ``import dsbatch`` defers).
MAP = dsbatch.map

WORDS = [
    "batch",
    "dataset",
    "model",
    "answer",
    "cache",
    "request",
    "result",
    "token",
    "label",
    "summary",
    "river",
    "bridge",
    "council",
    "library",
    "harbour",
    "orchestra",
    "student",
    "teacher",
    "energy",
    "data",
    "open",
    "vote",
    "spring",
]
MODEL = "claude-haiku-4-5"
MAX_TOKENS = 128
POLL = 0.05

# stage -> the library functions that make it up, first the one the job loop calls today; every
# one found is wrapped (see _stages). "wait" is the poll sleeps and the polls themselves.
SEAMS: dict[str, list[tuple[str, str]]] = {
    "render": [("dsbatch._map", "prepare"), ("dsbatch._render", "render_split")],
    "submit": [
        ("dsbatch._batch:BatchKeeper", "create"),
        ("dsbatch._batch", "submit"),
        ("dsbatch._backend:Backend", "create"),
    ],
    "wait": [
        ("dsbatch._poll:PollSchedule", "wait"),
        ("dsbatch._batch", "poll_batch"),
        ("dsbatch._backend:Backend", "retrieve"),
    ],
    "ingest": [
        ("dsbatch._batch", "fetch_results"),
        ("dsbatch._ingest", "fetch_results"),
        ("dsbatch._store:ResultsStore", "write"),
    ],
    "join": [
        ("dsbatch._job:Job", "_collect"),
        ("dsbatch._job:Job", "_attach"),
        ("dsbatch._job", "collect"),
        ("dsbatch._job", "attach"),
    ],
    "survey": [("dsbatch._run", "survey"), ("dsbatch._run:JobLoop", "survey")],
}
STAGE_NAMES = {
    "render": "render + hash",
    "submit": "submit",
    "wait": "wait (polls + sleeps)",
    "ingest": "download + ingest (floor: download + parse)",
    "join": "join",
    "survey": "survey of the cache (dsbatch only)",
}


class Summary(BaseModel):
    summary: str


def summarize(row: dict[str, Any]) -> str:
    return f"Summarize in one sentence:\n\n{row['text']}"


def make_dataset(rows: int, duplicate_share: float, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    texts: list[str] = []
    for i in range(rows):
        if texts and rng.random() < duplicate_share:
            texts.append(texts[rng.randrange(len(texts))])
        else:
            body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
            texts.append(f"Document {i}: {body}.")
    return Dataset.from_dict({"id": list(range(rows)), "text": texts})


def save_dataset(rows: int, duplicate_share: float, path: str) -> None:
    make_dataset(rows, duplicate_share).save_to_disk(path)


def rss_mb() -> float:
    """Resident memory now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """The highest resident memory of the block: the kernel's high-water mark (``VmHWM``), reset
    when the block starts (``/proc/self/clear_refs``), so nothing runs beside the measured code.
    A thread sampling RSS every 10 ms slowed dsbatch's render by 20-40% at a million rows (it
    takes the interpreter's lock from the main thread a hundred times a second), and missed peaks
    shorter than its period. Where the mark cannot be reset, it is the process's peak so far:
    still exact for a first run in a fresh process."""

    def __enter__(self) -> PeakRSS:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        self.peak = rss_mb()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(self.peak, _high_water_mb())


def _high_water_mb() -> float:
    """The process's peak resident memory since it started or since the mark was reset (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return rss_mb()


@contextmanager
def emulator() -> Iterator[str]:
    """A fresh emulator process (zero delay); yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsbatch", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip().rsplit(" ", 1)[-1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # its graceful shutdown waits on open connections
            proc.kill()
            proc.wait()


class Timed:
    """Seconds and peak RSS of one block."""

    seconds: float
    peak: float

    @contextmanager
    def __call__(self) -> Iterator[Timed]:
        with PeakRSS() as mem:
            start = time.perf_counter()
            yield self
            self.seconds = time.perf_counter() - start
        self.peak = mem.peak


def sdk_results(client: anthropic.Anthropic, batch_ids: list[str]) -> tuple[float, int]:
    """Seconds to iterate ``client.messages.batches.results()`` over the batches, and lines."""
    lines = 0
    start = time.perf_counter()
    for batch_id in batch_ids:
        for _ in client.messages.batches.results(batch_id):
            lines += 1
    return time.perf_counter() - start, lines


def dsbatch_ingest(client: anthropic.Anthropic, batch_ids: list[str], root: str) -> float:
    """Seconds of dsbatch's own download + ingest of the same batches, one after another
    against the idle emulator, as the SDK's iteration is measured: each download streamed to
    disk, parsed, and its results file (with its index) written and synced, as a step does. In
    the job, a wave's download runs beside the emulator's work on the next wave."""
    backend = Backend(client)
    store = ResultsStore(Path(root))
    retrying = call_retrying(PollSchedule(), Clock(), retry_download)
    start = time.perf_counter()
    for batch_id in batch_ids:
        info = backend.retrieve(batch_id)
        table = fetch_results(backend, store, info, retrying=retrying)
        assert table is not None
        store.write(info.id, table)
        store.discard_download(info.id)
    return time.perf_counter() - start


def _median(values: list[Any]) -> Any:
    """The median of the figures (None when a stage had no seam)."""
    return None if None in values else statistics.median(values)


def fmt(seconds: float | None, digits: int = 2) -> str:
    return "n/a" if seconds is None else f"{seconds:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--duplicates", type=float, default=0.1, help="share of repeated rows")
    parser.add_argument(
        "--max-queued",
        type=int,
        default=100_000,
        help="requests in the processing queue at once, for dsbatch and the floor alike "
        "(your organisation's limit: 100,000 at the lowest tier, 500,000 at the highest)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile one more first run of dsbatch"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="first runs of dsbatch and of the floor, each against a fresh emulator, taken in "
        "turns; the stage table shows the medians (the emulator's own speed varies by run)",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat needs at least 1")

    workdir = tempfile.mkdtemp(prefix="dsbatch-bench-")
    timer = StageTimer(SEAMS)
    try:
        # As a user's dataset would be: on disk, memory-mapped. Made in a child process, so
        # that this one's memory (the peak RSS measured) holds none of the making of it.
        maker = multiprocessing.get_context("fork").Process(
            target=save_dataset, args=(args.rows, args.duplicates, f"{workdir}/data")
        )
        maker.start()
        maker.join()
        if maker.exitcode != 0:
            raise SystemExit(f"making the dataset failed (exit code {maker.exitcode})")
        gc.collect()
        ds = load_from_disk(f"{workdir}/data")
        before = rss_mb()

        def run(client: anthropic.Anthropic, cache: str, **kwargs: Any) -> Any:
            return MAP(
                ds,
                summarize,
                model=MODEL,
                max_tokens=MAX_TOKENS,
                client=client,
                cache_dir=f"{workdir}/{cache}",
                poll_interval=POLL,
                progress=False,
                max_queued_requests=args.max_queued,
                **kwargs,
            )

        def first_run(client: anthropic.Anthropic, cache: str) -> tuple[Any, dict[str, Any]]:
            with timer.measure() as stages, Timed()() as timed:
                out = run(client, cache)
            stages = dict(stages)
            stages["total"] = timed.seconds
            stages["peak"] = timed.peak
            return out, stages

        def floor_run() -> tuple[Any, dict[str, float]]:
            with emulator() as url:
                return run_floor(
                    ds,
                    summarize,
                    {"model": MODEL, "max_tokens": MAX_TOKENS},
                    base_url=url,
                    api_key="benchmark",
                    version=version,
                    poll_interval=POLL,
                    max_queued=args.max_queued,
                )

        runs: list[dict[str, Any]] = []
        floors: list[dict[str, float]] = []
        with emulator() as url:
            client = anthropic.Anthropic(base_url=url, api_key="benchmark")
            out, stages = first_run(client, "cache")
            runs.append(stages)
            again, rendered = Timed(), Timed()
            with again():
                run(client, "cache")
            with rendered():
                run(client, "cache", load_from_cache_file=False)
            batch_ids = [b.id for b in client.messages.batches.list(limit=1000)]
            sdk_seconds, sdk_lines = sdk_results(client, batch_ids)
            ingest_alone = dsbatch_ingest(client, batch_ids, f"{workdir}/ingest-alone")
            version: str = client.default_headers["anthropic-version"]  # type: ignore[assignment]
            raw_seconds = download_seconds(url, "benchmark", version, batch_ids)
            rf_first, rf_again = Timed(), Timed()
            with rf_first():
                rf_out = run(client, "cache", response_format=Summary)
            with rf_again():
                run(client, "cache", response_format=Summary)
            profile = profiled(lambda: run(client, "cache-profiled")) if args.profile else None
            client.close()  # no keep-alive connection holds the emulator's shutdown
        statuses = out["dsbatch"]
        ok = sum(s["status"] == "succeeded" for s in statuses)
        distinct = len({s["custom_id"] for s in statuses})
        rf_ok = sum(s is not None for s in rf_out["summary"])
        del out, rf_out, statuses
        floor_out, floor = floor_run()
        floor_ok = sum(t is not None for t in floor_out["response"])
        del floor_out
        floors.append(floor)
        for i in range(1, args.repeat):  # in turns: a drift of the machine meets both alike
            with emulator() as url:
                client = anthropic.Anthropic(base_url=url, api_key="benchmark")
                runs.append(first_run(client, f"cache-repeat-{i}")[1])
                client.close()
            floors.append(floor_run()[1])
    finally:
        timer.restore()
        shutil.rmtree(workdir, ignore_errors=True)

    load = os.getloadavg()
    for one in runs:
        one["other"] = one["total"] - sum(one[stage] or 0.0 for stage in SEAMS)
    stages = {key: _median([one[key] for one in runs]) for key in [*SEAMS, "other", "total"]}
    floor = {key: _median([one[key] for one in floors]) for key in floors[0]}
    total = stages["total"]
    # The first run's peak: it ran in a fresh process (a repeat starts from
    # what the reruns left), and the SDK iterated its batches.
    peak = runs[0]["peak"]

    print(f"## dsbatch.map, {args.rows:,} rows\n")
    print(
        f"`python {' '.join(sys.argv)}` (dsbatch {dsbatch.__version__}, {os.cpu_count()} cores, "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} over 1 / 5 / 15 min at the "
        f"end): {args.rows:,} rows, {distinct:,} distinct requests, at most "
        f"{args.max_queued:,} in the queue at once; succeeded rows: dsbatch "
        f"{ok:,}, floor {floor_ok:,}, with response_format {rf_ok:,}.\n"
    )
    print("| stage | dsbatch (s) | floor (s) | dsbatch / floor |")
    print("|---|---:|---:|---:|")
    floor_of = {"render": "render", "submit": "submit", "wait": "wait", "ingest": "download"}
    floor_of["join"] = "join"
    for stage in [*SEAMS, "other"]:
        name = STAGE_NAMES.get(stage, "other (origin check, ledger writes, manifests)")
        mine = stages[stage]
        theirs = floor.get(floor_of.get(stage, ""))
        r = ratio(mine, theirs)
        print(
            f"| {name} | {fmt(mine)} | {fmt(theirs) if stage in floor_of else ''} | "
            f"{'' if r is None else f'{r:.2f}x'} |"
        )
    r_total = ratio(total, floor["total"])
    print(f"| **total** | **{total:.2f}** | **{floor['total']:.2f}** | **{r_total:.2f}x** |")
    if args.repeat > 1:
        turns = ", ".join(
            f"{one['total']:.2f} / {theirs['total']:.2f} s = {one['total'] / theirs['total']:.2f}x"
            for one, theirs in zip(runs, floors, strict=True)
        )
        print(
            f"\nMedians of {args.repeat} first runs of each, each against a fresh emulator, in "
            f"turns (dsbatch / floor, by turn: {turns})."
        )
    print()
    print("| run | time (s) | of the first run | peak RSS (MB) |")
    print("|---|---:|---:|---:|")
    first = runs[0]["total"]  # the reruns are served by this run's cache
    print(f"| first run | {first:.2f} | 100% | {peak:,.0f} (before: {before:,.0f}) |")
    print(
        f"| the same call again (served by the finished job) | {again.seconds:.3f} | "
        f"{again.seconds / first:.2%} | {again.peak:,.0f} |"
    )
    print(
        f"| again, `load_from_cache_file=False` (renders every row) | {rendered.seconds:.2f} | "
        f"{rendered.seconds / first:.2%} | {rendered.peak:,.0f} |"
    )
    print(
        f"| `response_format=Summary`, first run | {rf_first.seconds:.2f} | "
        f"{rf_first.seconds / first:.1%} | {rf_first.peak:,.0f} |"
    )
    print(
        f"| `response_format=Summary`, the same call again | {rf_again.seconds:.3f} | "
        f"{rf_again.seconds / rf_first.seconds:.2%} of its first run | {rf_again.peak:,.0f} |"
    )
    print(
        f"| iterating the SDK's `batches.results()` over the same {len(batch_ids)} "
        f"batch(es) ({sdk_lines:,} lines) | {sdk_seconds:.2f} | | |"
    )
    print(
        f"| dsbatch's download + ingest of the same batches, one after another (streamed to "
        f"disk, parsed, results files written and synced) | {ingest_alone:.2f} | | |"
    )
    print(
        f"| downloading the same results raw, unparsed (the emulator's part of any download) | "
        f"{raw_seconds:.2f} | | |"
    )
    print()
    targets: list[tuple[str, float | None, str, Callable[[float], bool], str]] = [
        ("total / floor total", r_total, "<= 1.15x", lambda x: x <= 1.15, "x"),
        (
            "render + hash / floor render",
            ratio(stages["render"], floor["render"]),
            "<= 1.5x",
            lambda x: x <= 1.5,
            "x",
        ),
        (
            "ingest: SDK `results()` / dsbatch download + ingest, of the same batches",
            ratio(sdk_seconds, ingest_alone),
            ">= 5x",
            lambda x: x >= 5,
            "x",
        ),
        (
            "the same, less the raw download: (SDK - raw) / (dsbatch - raw)",
            ratio(sdk_seconds - raw_seconds, ingest_alone - raw_seconds),
            ">= 5x (diagnostic: the client's work only)",
            lambda x: x >= 5,
            "x",
        ),
        ("cached rerun / first run", again.seconds / first, "<= 2%", lambda x: x <= 0.02, "%"),
        (
            "cached rerun / first run, `response_format`",
            rf_again.seconds / rf_first.seconds,
            "<= 2%",
            lambda x: x <= 0.02,
            "%",
        ),
        ("peak RSS (MB)", peak, "<= 1,536 at 1,000,000 rows", lambda x: x <= 1536, "MB"),
    ]
    print("| target | measured | goal | met |")
    print("|---|---:|---|---|")
    for name, value, goal, met, unit in targets:
        if value is None:
            shown, ok_ = "n/a", "n/a"
        else:
            shown = {"x": f"{value:.2f}x", "%": f"{value:.2%}", "MB": f"{value:,.0f}"}[unit]
            ok_ = "yes" if met(value) else "**no**"
        print(f"| {name} | {shown} | {goal} | {ok_} |")
    missing = sorted(timer.missing)
    if missing:
        print(f"\nStages with no seam found in this dsbatch (shown n/a): {', '.join(missing)}")
    if profile is not None:
        print(
            "\n### cProfile of one more dsbatch first run, fresh cache "
            "(dsbatch's functions by cumulative time, then all by own time)\n"
        )
        print(profile)


def profiled(call: Callable[[], object], top: int = 10) -> str:
    """dsbatch's own functions by cumulative time, then every function by its own time."""
    profile = cProfile.Profile()
    profile.runcall(call)
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("cumulative").print_stats(r"dsbatch/_", top)
    stats.sort_stats("tottime").print_stats(top)
    kept = [line for line in text.getvalue().splitlines() if line.strip()]
    return "```\n" + "\n".join(kept) + "\n```"


if __name__ == "__main__":
    main()
