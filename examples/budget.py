"""Know what a run may cost before anything is sent: a dry run, then a budget that refuses.

python examples/budget.py               # the real API when ANTHROPIC_API_KEY is set,
                                        # else the local emulator (no key, no network)

With a key, the dry run counts input tokens with the free count_tokens endpoint, and the last
step buys 20 short answers (well under a cent with Haiku 4.5).
"""

from __future__ import annotations

import contextlib
import os

from datasets import Dataset

import dsbatch
from dsbatch.testing import Emulator

ds = Dataset.from_dict({"word": [f"word number {i}" for i in range(20)]})


def prompt(row):
    return f"Use '{row['word']}' in a short sentence."


def main() -> None:
    real = bool(os.environ.get("ANTHROPIC_API_KEY"))
    print("the Anthropic API" if real else "no ANTHROPIC_API_KEY: the local emulator")
    with contextlib.ExitStack() as stack:
        client = None if real else stack.enter_context(Emulator()).client()
        run = dict(model="claude-haiku-4-5", max_tokens=100, client=client, progress=False)

        # 1. A dry run: a dsbatch.Plan, and nothing sent.
        plan = dsbatch.map(ds, prompt, dry_run=True, **run)
        print(plan)

        # 2. A budget below what the run may cost: refused before anything is sent.
        try:
            dsbatch.map(ds, prompt, budget_usd=0.001, **run)
        except dsbatch.BudgetExceededError as e:
            print(f"refused: up to ${e.cost_usd_max:.4f} is over budget_usd=${e.budget_usd}")

        # 3. A budget the plan fits in: the run goes ahead.
        out = dsbatch.map(ds, prompt, budget_usd=0.05, poll_interval=None if real else 0, **run)
    paid = sum(s["cost_usd"] or 0 for s in out["dsbatch"])
    print(f"ran {out.num_rows} rows for ${paid:.4f} (planned at most ${plan.cost_usd_max:.4f})")


if __name__ == "__main__":
    main()
