"""A ``datasets.Image()`` column: the PIL images it hands the prompt function go out as base64
image blocks (PNG, or JPEG for an image read from a JPEG), the same bytes on every run."""

from __future__ import annotations

import base64
import io
import json

from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image
from support import answers, run

from dsbatch._render import Rendered, RequestShape, render_split

DEFAULTS = {"model": "claude-haiku-4-5", "max_tokens": 64}


def picture(color: tuple[int, int, int], fmt: str | None = None) -> Image.Image:
    image = Image.new("RGB", (8, 6), color)
    image.putpixel((1, 2), (255 - color[0], 0, 0))
    if fmt is None:
        return image
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return Image.open(io.BytesIO(buffer.getvalue()))


def image_dataset() -> Dataset:
    images = [picture((10, 20, 30)), picture((200, 100, 0), "JPEG"), picture((0, 0, 255), "PNG")]
    features = Features({"image": ImageFeature(), "caption": Value("string")})
    return Dataset.from_dict(
        {"image": images, "caption": ["first", "second", "third"]}, features=features
    )


def as_source(row):
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": row["image"]},
                {"type": "text", "text": row["caption"]},
            ],
        }
    ]


def as_block(row):
    return [{"role": "user", "content": [row["image"], {"type": "text", "text": row["caption"]}]}]


def render(ds, prompt) -> Rendered:
    rendered = Rendered()
    render_split(
        rendered, "data", ds, prompt, shape=RequestShape(DEFAULTS), with_indices=False, label=None
    )
    return rendered


def test_an_image_column_goes_out_as_base64_image_blocks(emu):
    ds = image_dataset()
    assert isinstance(ds[0]["image"], Image.Image) and ds[1]["image"].format == "JPEG"

    out = run(ds, emu, fn=as_source)

    assert [s["status"] for s in out["dsbatch"]] == ["succeeded"] * 3
    assert list(out["response"]) == answers(["first", "second", "third"])
    body = emu.last_create_body
    sources = {}
    for request in body["requests"]:
        image_block, text_block = request["params"]["messages"][0]["content"]
        assert image_block["type"] == "image" and set(image_block["source"]) == {
            "type",
            "media_type",
            "data",
        }
        sources[text_block["text"]] = image_block["source"]
    assert {k: s["media_type"] for k, s in sources.items()} == {
        "first": "image/png",
        "second": "image/jpeg",
        "third": "image/png",
    }
    for caption, color in (("first", (10, 20, 30)), ("third", (0, 0, 255))):
        sent = Image.open(io.BytesIO(base64.b64decode(sources[caption]["data"])))
        assert sent.format == "PNG" and sent.size == (8, 6) and sent.mode == "RGB"
        assert sent.tobytes() == picture(color).tobytes()  # PNG: every pixel kept
    jpeg = Image.open(io.BytesIO(base64.b64decode(sources["second"]["data"])))
    assert jpeg.format == "JPEG" and jpeg.size == (8, 6)


def test_both_spellings_give_the_same_requests_on_every_run():
    ds = image_dataset()

    first = render(ds, as_source)
    again = render(ds, as_source)
    bare = render(ds, as_block)

    assert first.row_custom_ids == again.row_custom_ids == bare.row_custom_ids
    assert first.bodies == bare.bodies
    assert len(set(first.row_custom_ids["data"])) == 3


def test_the_users_own_objects_are_not_changed():
    image = picture((1, 2, 3))
    block = {"type": "image", "source": image}
    messages = [{"role": "user", "content": [block, {"type": "text", "text": "look"}]}]
    ds = Dataset.from_dict({"i": [0, 1]})

    rendered = render(ds, lambda row: messages)

    assert block["source"] is image and messages[0]["content"][0] is block
    (body,) = rendered.bodies.values()
    sent = json.loads(body)["messages"][0]["content"][0]
    assert sent["source"]["media_type"] == "image/png"
