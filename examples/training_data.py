"""Training data from one batch run: several answers per question, the model's reasoning, and the
conversations in the chat format TRL's SFTTrainer reads; saved and loaded back.

python examples/training_data.py        # the real API when ANTHROPIC_API_KEY is set,
                                        # else the local emulator (no key, no network)
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from datasets import Dataset, load_from_disk

import dsbatch
from dsbatch.testing import Emulator

ds = Dataset.from_dict(
    {
        "question": [
            "Why does ice float on water?",
            "What makes the sky look blue?",
            "Why do onions make people cry?",
        ]
    }
)


def prompt(row):
    return row["question"]


def main() -> None:
    real = bool(os.environ.get("ANTHROPIC_API_KEY"))
    print("the Anthropic API" if real else "no ANTHROPIC_API_KEY: the local emulator")
    with contextlib.ExitStack() as stack:
        client = None if real else stack.enter_context(Emulator()).client()
        out = dsbatch.map(
            ds,
            prompt,
            model="claude-haiku-4-5",
            max_tokens=2000,
            system="Answer in two sentences.",
            # Manual extended thinking (Haiku 4.5's form): the reasoning gets its own column.
            params={"thinking": {"type": "enabled", "budget_tokens": 1024}},
            samples=3,  # three answers per question, each its own request
            samples_as="rows",  # one row per answer, numbered by the `sample` column
            conversation_column="messages",
            client=client,
            poll_interval=None if real else 0,
        )
    print(out.features)
    row = out[0]
    print(f"\nquestion {row['question']!r}, sample {row['sample']}:")
    print(f"  thinking: {row['thinking']!r}")
    print(f"  response: {row['response']!r}")
    print(f"  custom_ids of its samples: {[s['custom_id'] for s in out['dsbatch'][:3]]}")

    with tempfile.TemporaryDirectory() as tmp:
        out.save_to_disk(tmp)
        loaded = load_from_disk(tmp)
        messages = loaded[0]["messages"]
        # What TRL's is_conversational checks: a list of {"role", "content"} dicts.
        assert isinstance(messages, list) and all(set(m) == {"role", "content"} for m in messages)
        print(f"\nloaded back, {len(loaded)} rows; row 0's conversation:")
        for turn in messages:
            print(f"  {turn['role']:>9}: {turn['content']!r}")


if __name__ == "__main__":
    main()
