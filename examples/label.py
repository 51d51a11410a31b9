"""Label 1,000 texts into typed columns with a pydantic model, and lose no paid answer.

python examples/label.py                 # the real API when ANTHROPIC_API_KEY is set (it costs
                                         # money), else the local emulator
python examples/label.py --mode tool     # a forced tool call instead of output_config.format
python examples/label.py --emulator      # the local emulator even with a key

On the emulator, 20% of the answers open with a sentence of prose and 5% hold no JSON at all,
as a model answering outside structured outputs might. Every row comes back either parsed into
the typed columns (prose before the JSON is recovered) or marked ``parse_error`` with the raw
answer kept; the script exits 1 if any row is neither.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import os
import random
import sys
import tempfile
from collections import Counter
from typing import Any, Literal

from datasets import Dataset
from pydantic import BaseModel, Field, field_validator

import dsbatch
from dsbatch.testing import Emulator, Faults

MODEL = "claude-haiku-4-5"


class Sentiment(enum.Enum):
    POSITIVE = "positive"
    NEUTRAL = "neutral"
    NEGATIVE = "negative"


class Entity(BaseModel):
    name: str
    kind: Literal["person", "organization", "place", "other"]


class Label(BaseModel):
    """The topic, tone and main entity of a short news text."""

    topic: Literal["sport", "politics", "science", "business", "culture"]
    sentiment: Sentiment
    confidence: float = Field(ge=0, le=1)
    keywords: list[str]
    main_entity: Entity
    headline: str | None

    @field_validator("keywords")
    @classmethod
    def lower_case(cls, keywords: list[str]) -> list[str]:
        # Runs when results are joined: editing it re-reads the stored answers for free.
        return [k.lower() for k in keywords]


SUBJECTS = {
    "sport": ["The city's football club", "A young sprinter", "The national rowing team"],
    "politics": ["The regional council", "The opposition party", "A new trade minister"],
    "science": ["A team of marine biologists", "The observatory", "A battery research lab"],
    "business": ["A family-run bakery chain", "The port authority", "A software start-up"],
    "culture": ["The old opera house", "A debut novelist", "The film festival"],
}
EVENTS = [
    "announced a plan that surprised most observers",
    "reported results far below what was expected",
    "drew record crowds after months of preparation",
    "faced sharp criticism over its latest decision",
    "signed an agreement that had been years in the making",
]
DETAILS = ["on Monday", "this spring", "after a long delay", "despite heavy rain", "at last"]


def texts(n: int) -> list[str]:
    """n distinct short news texts (the same every run)."""
    rng = random.Random(0)
    out = []
    for i in range(n):
        topic = rng.choice(list(SUBJECTS))
        subject = rng.choice(SUBJECTS[topic])
        out.append(f"{subject} {rng.choice(EVENTS)} {rng.choice(DETAILS)} (report {i + 1}).")
    return out


def prompt(row: dict[str, Any]) -> str:
    return f"Label this news text.\n\n{row['text']}"


def prose_first(row: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    """A column computed from the whole Message: did the answer open with prose?"""
    blocks = message["content"]
    if not blocks or blocks[0]["type"] != "text":
        return {"prose_first": False}
    return {"prose_first": not blocks[0]["text"].lstrip().startswith("{")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["native", "tool"], default="native")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--emulator", action="store_true", help="the emulator even with a key")
    args = parser.parse_args()
    real = bool(os.environ.get("ANTHROPIC_API_KEY")) and not args.emulator

    ds = Dataset.from_dict({"text": texts(args.rows)})
    why = "--emulator" if args.emulator else "no ANTHROPIC_API_KEY"
    print("the Anthropic API" if real else f"{why}: the local emulator")
    with contextlib.ExitStack() as stack:
        client, cache_dir = None, None
        if not real:
            faults = Faults(preamble=0.2, no_json=0.05)
            client = stack.enter_context(Emulator(faults=faults)).client()
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory())
        out = dsbatch.map(
            ds,
            prompt,
            model=MODEL,
            max_tokens=300,
            system="You label news texts.",
            response_format=Label,
            structured_output=args.mode,
            parse=prose_first,
            client=client,
            cache_dir=cache_dir,
            poll_interval=None if real else 0,
            progress=False,
        )

    statuses = Counter(s["status"] for s in out["dsbatch"])
    recovered = sum(
        s["status"] == "succeeded" and prose
        for s, prose in zip(out["dsbatch"], out["prose_first"], strict=True)
    )
    print(f"{out.num_rows} rows, structured_output={args.mode!r}")
    print(f"statuses: {dict(statuses)}; recovered from a prose preamble: {recovered}")
    print("\nfeatures:")
    for name, feature in out.features.items():
        print(f"  {name}: {feature}")

    print("\na parsed row:")
    parsed = next(row for row in out if row["dsbatch"]["status"] == "succeeded")
    for name in ["text", *Label.model_fields]:
        print(f"  {name}: {parsed[name]!r}")
    failed = [row for row in out if row["dsbatch"]["status"] == "parse_error"]
    if failed:
        print("\na parse_error row (fields null, the raw answer kept):")
        row = failed[0]
        print(f"  error: {row['dsbatch']['error']}")
        print(f"  topic: {row['topic']!r}")
        print(f"  response: {row['response'][:90]!r}...")

    neither = out.num_rows - statuses["succeeded"] - statuses["parse_error"]
    if neither:
        print(f"\n{neither} rows are neither parsed nor parse_error", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
