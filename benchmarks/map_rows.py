"""How long dsbatch.map takes, and how much memory it holds, for N rows against the emulator.

The emulator runs in its own process (``dsbatch emulator --port 0``), so the figures are the
client's alone. Prints one line per phase:

    python benchmarks/map_rows.py --rows 100000
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import anthropic
from datasets import Dataset, load_from_disk

import dsbatch

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


def rss_mb() -> float:
    """Resident memory now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """The highest resident memory seen while the block runs (sampled every 10 ms)."""

    def __enter__(self) -> PeakRSS:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def start_emulator() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsbatch", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line.strip().rsplit(" ", 1)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--duplicates", type=float, default=0.1, help="share of repeated rows")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="dsbatch-bench-")
    # As a user's dataset would be: on disk, memory-mapped.
    make_dataset(args.rows, args.duplicates).save_to_disk(f"{workdir}/data")
    gc.collect()
    ds = load_from_disk(f"{workdir}/data")
    before = rss_mb()
    proc, url = start_emulator()
    try:
        client = anthropic.Anthropic(base_url=url, api_key="benchmark")
        cache = f"{workdir}/cache"

        def run(load_from_cache_file: bool = True) -> Dataset:
            return dsbatch.map(
                ds,
                lambda row: f"Summarize in one sentence:\n\n{row['text']}",
                model="claude-haiku-4-5",
                max_tokens=128,
                client=client,
                cache_dir=cache,
                poll_interval=0.05,
                progress=False,
                load_from_cache_file=load_from_cache_file,
            )

        with PeakRSS() as first_mem:
            start = time.perf_counter()
            out = run()
            first = time.perf_counter() - start
        # The same call again: served by the finished job, the prompt function not called.
        with PeakRSS() as again_mem:
            start = time.perf_counter()
            run()
            again = time.perf_counter() - start
        # The same call, rendering every row (load_from_cache_file=False): no request is sent.
        with PeakRSS() as rendered_mem:
            start = time.perf_counter()
            run(load_from_cache_file=False)
            rendered = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)

    statuses = [s["status"] for s in out["dsbatch"]]
    ok = sum(s == "succeeded" for s in statuses)
    distinct = len({s["custom_id"] for s in out["dsbatch"]})
    print(f"rows: {args.rows:,}  distinct requests: {distinct:,}  succeeded rows: {ok:,}")
    print(
        f"first run: {first:.2f} s ({args.rows / first:,.0f} rows/s), "
        f"peak RSS {first_mem.peak:.0f} MB (before the call: {before:.0f} MB)"
    )
    print(
        f"cached rerun: {again:.3f} s ({again / first:.2%} of the first run), "
        f"peak RSS {again_mem.peak:.0f} MB"
    )
    print(
        f"cached rerun, load_from_cache_file=False (renders every row): {rendered:.2f} s "
        f"({rendered / first:.2%} of the first run), peak RSS {rendered_mem.peak:.0f} MB"
    )
    print(f"load while measuring (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
