"""Summarize a dataset with the Message Batches API, then look at what it cost in tokens.

python examples/summarize.py            # the real API when ANTHROPIC_API_KEY is set,
                                        # else the local emulator (no key, no network)
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter

from datasets import Dataset

import dsbatch
from dsbatch.testing import Emulator

ds = Dataset.from_dict(
    {
        "text": [
            "The council voted to rebuild the old bridge; work starts next spring.",
            "A small bakery decided to open on Sundays after a petition from residents.",
            "The research team published its data openly, a first for the institute.",
        ]
    }
)


def prompt(row):
    return f"Summarize in one short sentence:\n\n{row['text']}"


def main() -> None:
    real = bool(os.environ.get("ANTHROPIC_API_KEY"))
    print("the Anthropic API" if real else "no ANTHROPIC_API_KEY: the local emulator")
    with contextlib.ExitStack() as stack:
        client = None if real else stack.enter_context(Emulator()).client()
        out = dsbatch.map(
            ds,
            prompt,
            model="claude-haiku-4-5",
            max_tokens=100,
            system="You write plain, neutral summaries.",
            client=client,
            poll_interval=None if real else 0,
        )
    for row in out:
        print(f"- {row['response']}")
    status = Counter(s["status"] for s in out["dsbatch"])
    tokens_in = sum(s["input_tokens"] or 0 for s in out["dsbatch"])
    tokens_out = sum(s["output_tokens"] or 0 for s in out["dsbatch"])
    print(f"{dict(status)}; {tokens_in} input and {tokens_out} output tokens")


if __name__ == "__main__":
    main()
