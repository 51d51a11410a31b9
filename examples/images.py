"""Describe pictures from an Image() column: dsbatch sends each PIL image as a base64 image block.

python examples/images.py               # the real API when ANTHROPIC_API_KEY is set,
                                        # else the local emulator (no key, no network)
"""

from __future__ import annotations

import contextlib
import os

from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from PIL import ImageDraw

import dsbatch
from dsbatch.testing import Emulator


def picture(color: str, shape: str) -> PILImage.Image:
    """A small drawing: a shape of one color on white."""
    image = PILImage.new("RGB", (96, 96), "white")
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((16, 16, 80, 80), fill=color)
    else:
        draw.rectangle((16, 16, 80, 80), fill=color)
    return image


DRAWINGS = [("red", "circle"), ("blue", "square"), ("green", "circle")]
ds = Dataset.from_dict(
    {
        "image": [picture(color, shape) for color, shape in DRAWINGS],
        "drawn": [f"a {color} {shape}" for color, shape in DRAWINGS],
    },
    features=Features({"image": Image(), "drawn": Value("string")}),
)


def prompt(row):
    # row["image"] is a PIL image: put it in a message's content list, as an image block's source.
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": row["image"]},
                {"type": "text", "text": "Name the shape and its color in five words or fewer."},
            ],
        }
    ]


def main() -> None:
    real = bool(os.environ.get("ANTHROPIC_API_KEY"))
    print("the Anthropic API" if real else "no ANTHROPIC_API_KEY: the local emulator")
    with contextlib.ExitStack() as stack:
        client = None if real else stack.enter_context(Emulator()).client()
        out = dsbatch.map(
            ds,
            prompt,
            model="claude-haiku-4-5",
            max_tokens=50,
            client=client,
            poll_interval=None if real else 0,
            progress=False,
        )
    for row in out:
        print(f"{row['drawn']}: {row['response']!r} ({row['dsbatch']['status']})")
    kept = type(out.features["image"]).__name__
    print(f"{out.num_rows} images described; the image column is still an {kept}() column")


if __name__ == "__main__":
    main()
