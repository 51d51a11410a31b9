"""Does a job's cost grow with the cache? A new 1,000-row job, timed in an empty cache and beside
the results of earlier jobs (1M, then 2M stored results by default), against the emulator in its
own process with zero delay:

    python benchmarks/cache_growth.py                      # 10 jobs of 100,000 rows, then 10 more
    python benchmarks/cache_growth.py --jobs 2 --rows 20000  # a quick look

Each figure is the best of ``--repeat`` runs of a new job (new rows each time: nothing of it is in
the cache), so it is the job's own work, render to join, plus what it reads of the cache.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import anthropic
from datasets import Dataset
from map_rows import emulator

import dsbatch


def rows(n: int, tag: str) -> Dataset:
    return Dataset.from_dict(
        {"text": [f"{tag} document {i}: the river and the bridge." for i in range(n)]}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10, help="earlier jobs per round")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of each earlier job")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of earlier jobs")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="dsbatch-growth-")
    with emulator() as url:
        client = anthropic.Anthropic(base_url=url, api_key="benchmark")
        made = 0

        def run(ds: Dataset) -> Dataset:
            return dsbatch.map(
                ds,
                lambda row: row["text"],
                model="claude-haiku-4-5",
                max_tokens=64,
                client=client,
                cache_dir=f"{workdir}/cache",
                poll_interval=0.02,
                progress=False,
            )

        def new_job() -> float:
            nonlocal made
            best = float("inf")
            for _ in range(args.repeat):
                made += 1
                ds = rows(1_000, f"new{made}")
                start = time.perf_counter()
                out = run(ds)
                best = min(best, time.perf_counter() - start)
                assert {s["status"] for s in out["dsbatch"]} == {"succeeded"}
            return best

        try:
            new_job()  # warm up: imports, the server's first contact (a few thousand results)
            figures = [(0, new_job())]
            stored = 0
            for round_ in range(args.rounds):
                for j in range(args.jobs):
                    run(rows(args.rows, f"earlier{round_}-{j}"))
                    stored += args.rows
                figures.append((stored, new_job()))
        finally:
            client.close()  # no keep-alive connection holds the emulator's shutdown
            shutil.rmtree(workdir, ignore_errors=True)
    empty = figures[0][1]
    print("stored results  new 1,000-row job  over the empty cache")
    for stored, took in figures:
        print(f"{stored:>14,}  {took:>15.3f} s  {took - empty:>+18.3f} s")


if __name__ == "__main__":
    main()
