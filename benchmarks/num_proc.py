"""What ``num_proc`` saves on a CPU-heavy prompt function: rendering (prompt, checks, canonical
JSON, custom_id, the prompt-cache plan: ``dsbatch._map.prepare``, what ``map`` runs before
anything is sent) of N rows in one process and in ``num_proc`` processes, best of ``--repeat``
runs each. The heavy prompt counts the tokens of its row with a pure-Python BPE-like loop (about
1 ms a row, deterministic), as a prompt that trims a document to a token budget would; a light
f-string prompt shows what a pool costs when rendering is already cheap:

    python benchmarks/num_proc.py --rows 4000 --num-proc 2
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import time
from collections.abc import Callable
from typing import Any

from datasets import Dataset

import dsbatch
from dsbatch._backend import Backend
from dsbatch._map import prepare
from dsbatch._options import MapOptions

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dogs",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
    "jolly",
    "zebras",
]
# Merges of a toy BPE vocabulary: every pair of letters whose codes sum to a multiple of 3.
MERGES = {
    (a, b): i
    for i, (a, b) in enumerate(
        (chr(x), chr(y)) for x in range(97, 123) for y in range(97, 123) if (x + y) % 3 == 0
    )
}


def count_tokens(text: str) -> int:
    """Tokens of ``text`` under the toy BPE: each word's letters merged pair by pair, the
    lowest-ranked pair first, until no pair merges (the loop real BPE tokenizers run)."""
    total = 0
    for word in text.split():
        parts = list(word)
        while len(parts) > 1:
            ranked = [
                (MERGES.get((a[-1], b[0]), 1 << 30), i)
                for i, (a, b) in enumerate(zip(parts, parts[1:]))
            ]
            rank, i = min(ranked)
            if rank == 1 << 30:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        total += len(parts)
    return total


def heavy(row: dict[str, Any]) -> str:
    text = row["text"]
    return f"Summarize this ({count_tokens(text)} tokens):\n\n{text}"


def light(row: dict[str, Any]) -> str:
    return f"Summarize this:\n\n{row['text']}"


def dataset(rows: int) -> Dataset:
    texts = [
        " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(270)) + f" #{i}"
        for i in range(rows)
    ]
    return Dataset.from_dict({"text": texts})


def options(**keywords: Any) -> MapOptions:
    given = {
        name: p.default
        for name, p in inspect.signature(dsbatch.map).parameters.items()
        if name in {f.name for f in dataclasses.fields(MapOptions) if f.init}
    }
    return MapOptions.build(**{**given, "model": "claude-haiku-4-5", "max_tokens": 256, **keywords})


def render(
    ds: Dataset, prompt: Callable[..., Any], num_proc: int | None
) -> tuple[float, float, Any]:
    """Seconds taken, CPU seconds spent (this process and its workers), and the rendering."""
    started, cpu = time.perf_counter(), _cpu()
    out = prepare({"data": ds}, prompt, options(num_proc=num_proc), Backend(None), {"data": None})
    return time.perf_counter() - started, _cpu() - cpu, out.rendered


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    ds = dataset(args.rows)
    per_row = time.process_time()
    for row in ds.select(range(100)):
        heavy(row)
    per_row = (time.process_time() - per_row) / 100
    print(
        f"{args.rows:,} rows, {os.cpu_count()} CPUs, heavy prompt {per_row * 1000:.2f} CPU ms "
        f"a row, best of {args.repeat}"
    )
    print(
        "seconds (CPU seconds, with the workers'; on a loaded machine the CPU time shows the work"
        " was split)"
    )
    print(f"{'prompt':<8}{'num_proc=None':>18}{f'num_proc={args.num_proc}':>18}{'speedup':>10}")
    for name, prompt in (("heavy", heavy), ("light", light)):
        one = many = (float("inf"), 0.0)
        for _ in range(args.repeat):
            seconds, cpu, single = render(ds, prompt, None)
            one = min(one, (seconds, cpu))
            seconds, cpu, parallel = render(ds, prompt, args.num_proc)
            many = min(many, (seconds, cpu))
            # Not a speed-up unless the requests are the same bytes, in the same order.
            assert parallel.row_custom_ids == single.row_custom_ids
            assert list(parallel.bodies.items()) == list(single.bodies.items())
            assert parallel.first_row == single.first_row
        shown = [f"{s:.2f}s ({c:.2f})" for s, c in (one, many)]
        print(f"{name:<8}{shown[0]:>18}{shown[1]:>18}{one[0] / many[0]:>9.2f}x")


if __name__ == "__main__":
    main()
