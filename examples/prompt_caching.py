"""A long shared system prompt plus few-shot turns, cached once and read by every other row.

python examples/prompt_caching.py       # the real API when ANTHROPIC_API_KEY is set,
                                        # else the local emulator (no key, no network)

With prompt_caching="auto" (the default), dsbatch puts a 1-hour cache_control breakpoint at the
end of the prefix the requests share and sends one request first, in a batch of its own, to
write the cache; the others go once it has ended, and read it at a tenth of the input price.
"""

from __future__ import annotations

import contextlib
import os

from datasets import Dataset

import dsbatch
from dsbatch.testing import Emulator

# A style guide long enough to be cached: Haiku 4.5 caches prefixes of 4,096 tokens or more.
STYLE_GUIDE = "You rewrite customer messages as polite, short replies.\n" + "\n".join(
    f"Rule {i}: keep the customer's facts, drop filler word number {i}, never promise a date."
    for i in range(1, 301)
)
# Few-shot turns shared by every request: part of the cached prefix.
EXAMPLES = [
    {"role": "user", "content": "my parcel is late AGAIN"},
    {"role": "assistant", "content": "Sorry your parcel is late; we are looking into it now."},
]
ds = Dataset.from_dict(
    {
        "message": [
            "the app logs me out every hour",
            "you charged me twice for one order",
            "where do I change my address",
            "the discount code does not work",
        ]
    }
)


def prompt(row):
    return [*EXAMPLES, {"role": "user", "content": row["message"]}]


def main() -> None:
    real = bool(os.environ.get("ANTHROPIC_API_KEY"))
    print("the Anthropic API" if real else "no ANTHROPIC_API_KEY: the local emulator")
    with contextlib.ExitStack() as stack:
        client = None if real else stack.enter_context(Emulator()).client()
        out = dsbatch.map(
            ds,
            prompt,
            model="claude-haiku-4-5",
            max_tokens=200,
            system=STYLE_GUIDE,
            prompt_caching="auto",  # the default, spelled out
            client=client,
            poll_interval=None if real else 0,
            progress=False,
        )
    for row in out:
        s = row["dsbatch"]
        print(
            f"{row['message']!r}: cache write {s['cache_creation_input_tokens']}, "
            f"cache read {s['cache_read_input_tokens']}, uncached input {s['input_tokens']}"
        )
    written = sum(s["cache_creation_input_tokens"] > 0 for s in out["dsbatch"])
    read = sum(s["cache_read_input_tokens"] > 0 for s in out["dsbatch"])
    print(f"{out.num_rows} rows: {written} wrote the cache, {read} read it")


if __name__ == "__main__":
    main()
