"""Generate, then judge: two dsbatch steps, the second reading the first one's answers.

python examples/chain.py                # the real API when ANTHROPIC_API_KEY is set,
                                        # else the local emulator (no key, no network)
"""

from __future__ import annotations

import contextlib
import os

from datasets import Dataset
from pydantic import BaseModel, Field

import dsbatch
from dsbatch.testing import Emulator

ds = Dataset.from_dict({"product": ["a folding bicycle", "a cast-iron pan", "a solar lamp"]})


class Verdict(BaseModel):
    score: int = Field(ge=1, le=5)  # 5: clear, accurate and persuasive
    reason: str


def write(row):
    return f"Write a two-sentence shop description of {row['product']}."


def judge(row):
    # The first step's answer is a column like any other.
    return (
        f"Score this shop description of {row['product']} from 1 to 5 and say why.\n\n"
        f"{row['response']}"
    )


def main() -> None:
    real = bool(os.environ.get("ANTHROPIC_API_KEY"))
    print("the Anthropic API" if real else "no ANTHROPIC_API_KEY: the local emulator")
    with contextlib.ExitStack() as stack:
        client = None if real else stack.enter_context(Emulator()).client()
        run = dict(client=client, poll_interval=None if real else 0, progress=False)
        drafts = dsbatch.map(ds, write, model="claude-haiku-4-5", max_tokens=150, **run)
        # New columns never overwrite old ones: the second step names its own.
        judged = dsbatch.map(
            drafts,
            judge,
            model="claude-sonnet-4-6",
            max_tokens=300,
            response_format=Verdict,
            output_column="verdict",
            status_column="judge",
            **run,
        )
    print(f"columns: {judged.column_names}")
    for row in judged:
        print(f"{row['product']}: score {row['score']} ({row['judge']['status']})")
        print(f"  draft: {row['response'][:60]!r}...")
    mean = sum(judged["score"]) / judged.num_rows
    print(f"{judged.num_rows} drafts written and judged, mean score {mean:.1f}")


if __name__ == "__main__":
    main()
