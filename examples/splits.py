"""A DatasetDict with train and test splits is one job, and comes back as a DatasetDict.

python examples/splits.py               # the real API when ANTHROPIC_API_KEY is set,
                                        # else the local emulator (no key, no network)
"""

from __future__ import annotations

import contextlib
import os

from datasets import Dataset, DatasetDict

import dsbatch
from dsbatch.testing import Emulator

QUESTIONS = [
    "What is the capital of Peru?",
    "How many legs does a spider have?",
    "What gas do plants take in?",
    "Which planet is closest to the sun?",
    "What is the boiling point of water at sea level?",
]
# The same question in both splits is one request: sent once, its answer on both rows.
dd = DatasetDict(
    {
        "train": Dataset.from_dict({"question": QUESTIONS[:4]}),
        "test": Dataset.from_dict({"question": [QUESTIONS[4], QUESTIONS[0]]}),
    }
)


def prompt(row):
    return f"Answer in a few words: {row['question']}"


def main() -> None:
    real = bool(os.environ.get("ANTHROPIC_API_KEY"))
    print("the Anthropic API" if real else "no ANTHROPIC_API_KEY: the local emulator")
    with contextlib.ExitStack() as stack:
        client = None if real else stack.enter_context(Emulator()).client()
        out = dsbatch.map(
            dd,
            prompt,
            model="claude-haiku-4-5",
            max_tokens=50,
            client=client,
            poll_interval=None if real else 0,
            progress=False,
        )
    for split, ds in out.items():
        print(f"{split}: {ds.num_rows} rows, columns {ds.column_names}")
        print(f"  {ds[0]['question']!r} -> {ds[0]['response']!r}")
    ids = {s["custom_id"] for split in out.values() for s in split["dsbatch"]}
    rows = sum(ds.num_rows for ds in out.values())
    print(f"{rows} rows across {len(out)} splits, {len(ids)} distinct requests")


if __name__ == "__main__":
    main()
