"""How long dsbatch.map takes, and how much memory it holds, for N rows against the emulator.

The emulator runs in its own process (``dsbatch emulator --port 0``), so the figures are the
client's alone. Prints one line per phase:

    python benchmarks/map_rows.py --rows 100000
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time

import anthropic
from datasets import Dataset

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


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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

    ds = make_dataset(args.rows, args.duplicates)
    before = peak_rss_mb()
    proc, url = start_emulator()
    try:
        client = anthropic.Anthropic(base_url=url, api_key="benchmark")
        with tempfile.TemporaryDirectory() as cache:

            def prompt(row):
                return f"Summarize in one sentence:\n\n{row['text']}"

            start = time.perf_counter()
            out = dsbatch.map(
                ds,
                prompt,
                model="claude-haiku-4-5",
                max_tokens=128,
                client=client,
                cache_dir=cache,
                poll_interval=0.05,
                progress=False,
            )
            first = time.perf_counter() - start
            peak_first = peak_rss_mb()
            ok = sum(s == "succeeded" for s in out["dsbatch"]["status"])
            distinct = len(set(out["dsbatch"]["custom_id"]))

            start = time.perf_counter()
            dsbatch.map(
                ds,
                prompt,
                model="claude-haiku-4-5",
                max_tokens=128,
                client=client,
                cache_dir=cache,
                poll_interval=0.05,
                progress=False,
            )
            again = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    print(f"rows: {args.rows:,}  distinct requests: {distinct:,}  succeeded rows: {ok:,}")
    print(f"first run: {first:.2f} s  ({args.rows / first:,.0f} rows/s)")
    print(f"cached rerun: {again:.2f} s")
    print(f"peak RSS: {peak_first:.0f} MB (dataset built: {before:.0f} MB)")


if __name__ == "__main__":
    main()
