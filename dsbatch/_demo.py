"""``dsbatch demo``: a generated dataset through the embedded emulator. No API key, no network."""

from __future__ import annotations

import random
import tempfile
import time
from collections import Counter
from typing import Any

from datasets import Dataset

__all__ = ["demo_dataset", "run_demo"]

_SUBJECTS = [
    "The city council",
    "A small bakery",
    "The research team",
    "Our neighbour's cat",
    "The football club",
    "A local library",
    "The river authority",
    "A start-up in Lyon",
    "The hospital board",
    "A retired teacher",
    "The orchestra",
    "A group of students",
]
_ACTIONS = [
    "announced a plan to",
    "was criticised for failing to",
    "quietly decided to",
    "raised money to",
    "voted against a proposal to",
    "surprised everyone when it chose to",
]
_OBJECTS = [
    "rebuild the old bridge",
    "open on Sundays",
    "publish its data openly",
    "plant two thousand trees",
    "cut its energy use by half",
    "hire twenty apprentices",
    "move to a four-day week",
    "restore the harbour lighthouse",
    "ban cars from the centre",
]
_CODAS = [
    "Residents were divided.",
    "Work starts next spring.",
    "Critics called it a stunt.",
    "The decision is final.",
    "A vote is expected in May.",
    "Nobody saw it coming.",
]


def demo_dataset(n: int = 1200, seed: int = 0) -> Dataset:
    """``n`` short news-like texts; about a fifth repeat an earlier one (as real data does)."""
    rng = random.Random(seed)
    texts: list[str] = []
    for _ in range(n):
        if texts and rng.random() < 0.2:
            texts.append(rng.choice(texts))
            continue
        texts.append(
            f"{rng.choice(_SUBJECTS)} {rng.choice(_ACTIONS)} {rng.choice(_OBJECTS)}. "
            f"{rng.choice(_CODAS)}"
        )
    return Dataset.from_dict({"id": list(range(n)), "text": texts})


def _prompt(row: dict[str, Any]) -> str:
    return f"Summarize in one sentence:\n\n{row['text']}"


def run_demo(rows: int = 1200) -> int:
    """Run the demo end to end and print what a user would look at; returns an exit code."""
    import dsbatch
    from dsbatch.testing import Emulator, Faults

    ds = demo_dataset(rows)
    # A few transient failures, as real batches have: dsbatch sends those requests again.
    faults = Faults(errored=0.03, expired=0.01)
    with Emulator(delay=0, faults=faults) as emu, tempfile.TemporaryDirectory() as cache:
        client = emu.client()

        def run() -> Dataset:
            return dsbatch.map(
                ds,
                _prompt,
                model="claude-haiku-4-5",
                max_tokens=64,
                client=client,
                cache_dir=cache,
                poll_interval=0,
                progress=False,
            )

        print(f"dsbatch demo: {len(ds)} rows through a local emulator at {emu.base_url}")
        start = time.perf_counter()
        out = run()
        first = time.perf_counter() - start
        sent = len(emu.received)
        distinct = len({s["custom_id"] for s in out["dsbatch"] if s["custom_id"]})
        batches = emu.calls["create"]

        calls_before = sum(emu.calls.values())
        start = time.perf_counter()
        again = run()
        second = time.perf_counter() - start
        calls_again = sum(emu.calls.values()) - calls_before

    statuses = Counter(s["status"] for s in out["dsbatch"])
    attempts = Counter(s["attempts"] for s in out["dsbatch"])
    print(
        f"\n{distinct} distinct requests for {len(ds)} rows; {sent} sent in {batches} batches "
        f"(retries included) in {first:.2f}s"
    )
    print("status counts:", dict(sorted(statuses.items())))
    print("attempts per row:", dict(sorted(attempts.items())))
    print("\npreview:")
    for row in out.select(range(5)):
        status = row["dsbatch"]
        print(f"  [{row['id']}] {row['text'][:60]}")
        print(f"      -> {row['response']!r}")
        print(
            f"         {status['status']}, {status['input_tokens']} in / "
            f"{status['output_tokens']} out tokens, custom_id {status['custom_id'][:16]}..."
        )
    same = again["response"] == out["response"]
    print(
        f"\nthe same call again: {second:.2f}s, {calls_again} API calls, identical output: {same}"
    )
    return 0 if same and not calls_again and statuses.get("succeeded", 0) > 0 else 1
