"""Look at a few answers in seconds (the Messages API), then run the batch, which does not buy
those rows again.

python examples/preview.py              # the real API when ANTHROPIC_API_KEY is set,
                                        # else the local emulator (no key, no network)
"""

from __future__ import annotations

import contextlib
import os

from datasets import Dataset

import dsbatch
from dsbatch.testing import Emulator

ds = Dataset.from_dict(
    {
        "review": [
            "Arrived broken, and support never answered.",
            "Does what it says; the battery lasts two days.",
            "Lovely colour, but the strap snapped within a week.",
            "Best kettle I have owned.",
            "Too loud for an open-plan office.",
            "Fine for the price.",
        ]
    }
)
KEYWORDS = dict(model="claude-haiku-4-5", max_tokens=60, system="Reply with one word: the mood.")


def prompt(row):
    return row["review"]


def main() -> None:
    real = bool(os.environ.get("ANTHROPIC_API_KEY"))
    print("the Anthropic API" if real else "no ANTHROPIC_API_KEY: the local emulator")
    with contextlib.ExitStack() as stack:
        client = None if real else stack.enter_context(Emulator()).client()
        run = dict(KEYWORDS, client=client, progress=False)

        # 1. Two rows through the Messages API: standard price, answers in seconds.
        shown = dsbatch.preview(ds, prompt, n=2, **run)
        for row in shown:
            print(f"preview: {row['review']!r} -> {row['response']!r}")

        # 2. What the batch would do now: the previewed answers are already in the cache.
        plan = dsbatch.map(ds, prompt, dry_run=True, **run)
        print(f"plan: {plan.requests} to send, {plan.cached} already answered")

        # 3. The batch: same prompt, same keywords, so the same requests.
        out = dsbatch.map(ds, prompt, poll_interval=None if real else 0, **run)
    print(f"batch: {out.num_rows} rows, {sum(a is not None for a in out['response'])} answered")


if __name__ == "__main__":
    main()
