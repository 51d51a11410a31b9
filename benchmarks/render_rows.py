"""How long rendering takes (prompt -> checked request -> canonical JSON -> custom_id), per shape
of prompt, for N rows of an in-memory dataset. Rendering runs before anything is sent, on every
call, so its cost is paid by every rerun:

    python benchmarks/render_rows.py --rows 100000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from datasets import Dataset

from dsbatch._render import Rendered, RequestShape, render_split

DEFAULTS = {"model": "claude-haiku-4-5", "max_tokens": 256}


def _text(row: dict[str, Any]) -> str:
    return f"Summarize in one sentence:\n\n{row['text']}"


def _messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "text", "text": "Summarize in one sentence:"}]},
        {"role": "assistant", "content": "Gladly. Send the text."},
        {"role": "user", "content": [{"type": "text", "text": row["text"]}]},
    ]


def _params(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "system": [
            {"type": "text", "text": "You summarize.", "cache_control": {"type": "ephemeral"}}
        ],
        "stop_sequences": ["END"],
        "messages": [{"role": "user", "content": row["text"]}],
    }


PROMPTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "str": _text,
    "messages": _messages,
    "params": _params,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per prompt; the best is shown")
    args = parser.parse_args()
    texts = [
        f"Document {i}: the river council voted on the library budget." for i in range(args.rows)
    ]
    ds = Dataset.from_dict({"text": texts})
    for name, prompt in PROMPTS.items():
        best = float("inf")
        for _ in range(args.repeat):
            rendered = Rendered()
            start = time.perf_counter()
            render_split(
                rendered,
                "data",
                ds,
                prompt,
                shape=RequestShape(DEFAULTS),
                with_indices=False,
                label=None,
            )
            best = min(best, time.perf_counter() - start)
        print(f"{name:9} {args.rows:,} rows: {best:.2f} s ({args.rows / best:,.0f} rows/s)")


if __name__ == "__main__":
    main()
