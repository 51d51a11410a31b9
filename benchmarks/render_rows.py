"""How long rendering takes (prompt -> checked request -> canonical JSON -> custom_id), per shape
of prompt, for N rows of an in-memory dataset, and what the prompt-caching pass adds (finding the
shared prefixes and placing their breakpoints, ``prompt_caching="auto"``). Rendering runs before
anything is sent, on every call, so its cost is paid by every rerun:

    python benchmarks/render_rows.py --rows 100000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from datasets import Dataset

from dsbatch._prefix import TemplateMarks, plan_prefix_caching
from dsbatch._render import Rendered, RequestShape, render_split

DEFAULTS = {"model": "claude-haiku-4-5", "max_tokens": 256}
# A ~6,000-token instruction every row shares: what prompt caching is for.
RUBRIC = ("You label customer messages. Follow the rubric exactly. " * 440)[:24_000]


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


def _few_shot(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": RUBRIC},
        {"role": "assistant", "content": "Understood."},
        {"role": "user", "content": row["text"]},
    ]


# name -> (prompt, defaults)
PROMPTS: dict[str, tuple[Callable[[dict[str, Any]], Any], dict[str, Any]]] = {
    "str": (_text, DEFAULTS),
    "messages": (_messages, DEFAULTS),
    "params": (_params, DEFAULTS),
    "str+system": (_text, {**DEFAULTS, "system": RUBRIC}),
    "few-shot": (_few_shot, DEFAULTS),
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
    print(f"{'prompt':10} {'off':>8} {'auto':>8}  breakpoints ({args.rows:,} rows)")
    for name, (prompt, defaults) in PROMPTS.items():
        best = {"off": float("inf"), "auto": float("inf")}
        placed = 0
        for _ in range(args.repeat):
            for mode in best:
                # What map does: with prompt_caching="auto", render marks the text template
                # and the pass places (or confirms) every breakpoint.
                marks = TemplateMarks() if mode == "auto" else None
                rendered = Rendered()
                start = time.perf_counter()
                render_split(
                    rendered,
                    "data",
                    ds,
                    prompt,
                    shape=RequestShape(defaults, mark=marks),
                    with_indices=False,
                    label=None,
                )
                if marks is not None:
                    plan = plan_prefix_caching(rendered, marks=marks)
                    placed = len(plan.apply(rendered)) if plan is not None else 0
                best[mode] = min(best[mode], time.perf_counter() - start)
        print(f"{name:10} {best['off']:7.2f}s {best['auto']:7.2f}s  {placed:,}")


if __name__ == "__main__":
    main()
