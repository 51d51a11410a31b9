"""PIL images in a prompt's messages, sent as base64 image blocks.

A ``datasets.Image()`` column hands the prompt function ``PIL.Image.Image`` objects. Two
spellings put one in a message, in its content list:

    {"type": "image", "source": row["image"]}     # an image block whose source is the image
    row["image"]                                   # the image itself, as a block

Both become ``{"type": "image", "source": {"type": "base64", "media_type": ..., "data": ...}}``:
JPEG (quality 95) when the image was read from a JPEG file (``image.format == "JPEG"``), PNG
otherwise (GIF, WebP, BMP, TIFF and images made in memory alike; an animation keeps its first
frame). The bytes depend only on the pixels, the mode and the Pillow version, so the same image
gives the same request and the same custom_id on every run. A PIL image anywhere else is refused
with the line to write instead. dsbatch never imports Pillow: it calls the image's own methods.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any

__all__ = ["IMAGE_BLOCK_HINT", "encode_images", "is_image"]

IMAGE_BLOCK_HINT = (
    "put the image in a message's content list as {'type': 'image', 'source': row['image']} "
    "(or as the image itself): dsbatch sends it as a base64 image block"
)
_JPEG_QUALITY = 95
# Modes the format stores as they are; any other is converted first.
_JPEG_MODES = ("RGB", "L", "CMYK")
_PNG_MODES = ("RGB", "RGBA", "L", "LA", "P", "1", "I;16")


def is_image(value: Any) -> bool:
    """Whether ``value`` is a PIL image (told without importing Pillow)."""
    module = type(value).__module__
    return module.startswith("PIL.") and hasattr(value, "getbands") and hasattr(value, "save")


def encode_images(messages: list[Any]) -> list[Any]:
    """``messages`` with every PIL image in a content list made a base64 image block; the same
    list when there is none (the user's objects are never changed)."""
    out: list[Any] | None = None
    for i, message in enumerate(messages):
        if message.__class__ is not dict and not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if content.__class__ is not list:
            continue
        blocks = _encode_blocks(content)
        if blocks is not content:
            out = out if out is not None else list(messages)
            out[i] = {**message, "content": blocks}
    return messages if out is None else out


def _encode_blocks(content: list[Any]) -> list[Any]:
    out: list[Any] | None = None
    for j, block in enumerate(content):
        new = block
        if block.__class__ is dict or isinstance(block, Mapping):
            kind = block.get("type")
            if kind == "image" and is_image(block.get("source")):
                new = {**block, "source": image_source(block["source"])}
            elif kind == "tool_result" and isinstance(block.get("content"), list):
                inner = _encode_blocks(block["content"])
                if inner is not block["content"]:
                    new = {**block, "content": inner}
        elif is_image(block):
            new = image_block(block)
        if new is not block:
            out = out if out is not None else list(content)
            out[j] = new
    return content if out is None else out


def image_block(image: Any) -> dict[str, Any]:
    return {"type": "image", "source": image_source(image)}


def image_source(image: Any) -> dict[str, str]:
    """The base64 source of a PIL image: JPEG if it came from a JPEG file, else PNG."""
    jpeg = getattr(image, "format", None) == "JPEG"
    if jpeg and image.mode not in _JPEG_MODES:
        image = image.convert("RGB")
    elif not jpeg and image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    if jpeg:
        image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG")
    return {
        "type": "base64",
        "media_type": "image/jpeg" if jpeg else "image/png",
        "data": base64.b64encode(buffer.getvalue()).decode("ascii"),
    }
