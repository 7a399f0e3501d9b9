"""What the demo backend says about images it receives: measured, never understood.

A chat message may carry OpenAI ``image_url`` content parts with ``data:`` URLs. The
demo's vision model answers with what Pillow measures of each image (format, width x
height, size, main colours by quantising to a few colours, each named roughly with its
hex), labelled as synthetic. It never fetches a URL (it is offline): an ``http(s)``
image URL, a ``data:`` URL that is not base64, or bytes that are not an image are a
client error (``ValueError`` with the words the 400 carries).
"""

from __future__ import annotations

import base64
import binascii
import colorsys
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

#: How many colours an image is quantised to before its main ones are named.
PALETTE_COLOURS = 4
#: Colours named in a description (those covering at least ``MIN_SHARE`` of the image).
NAMED_COLOURS = 3
MIN_SHARE = 0.05
_THUMB_PX = 96


@dataclass(frozen=True)
class Received:
    """One image as the demo backend received it.

    Attributes:
        index: Its place in the message's parts, from 1 (for messages).
        data: The decoded bytes.
        declared_mime: The ``data:`` URL's type (not trusted: Pillow reads the bytes).
    """

    index: int
    data: bytes
    declared_mime: str


def carries_images(messages: list[dict[str, Any]]) -> bool:
    """Whether any message holds an ``image_url`` part (before any is decoded)."""
    return any(isinstance(part, dict) and part.get("type") == "image_url"
               for msg in messages if isinstance(msg.get("content"), list) for part in msg["content"])


def image_parts(messages: list[dict[str, Any]]) -> tuple[list[Received], int]:
    """``(the last user message's images, how many images earlier messages carry)``.

    Raises:
        ValueError: an ``image_url`` part that is not a base64 ``data:`` URL.
    """
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    own: list[Received] = []
    earlier = 0
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            where = f"messages[{i}].content[{j}].image_url"
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str) or not url.startswith("data:"):
                raise ValueError(f"{where}: the demo backend is offline and reads only base64 data: URLs")
            header, _, payload = url.partition(",")
            if not header.endswith(";base64"):
                raise ValueError(f"{where}: the data: URL is not base64")
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{where}: the data: URL's base64 does not decode") from None
            if i == last_user:
                own.append(Received(len(own) + 1, data, header[5:-7]))
            else:
                earlier += 1
    return own, earlier


def colour_name(rgb: tuple[int, int, int]) -> str:
    """A rough English name of an sRGB colour (by lightness, saturation and hue)."""
    h, lightness, s = colorsys.rgb_to_hls(*(c / 255 for c in rgb))
    if lightness < 0.12:
        return "black"
    if lightness > 0.92:
        return "white"
    if s < 0.18:
        return "light grey" if lightness > 0.6 else "dark grey" if lightness < 0.35 else "grey"
    hue = h * 360
    for bound, name in ((15, "red"), (40, "orange"), (65, "yellow"), (160, "green"), (195, "cyan"),
                        (255, "blue"), (290, "purple"), (335, "pink"), (361, "red")):
        if hue < bound:
            if name == "orange" and lightness < 0.4:
                return "brown"
            return name
    return "red"  # pragma: no cover - hue is below 361


def describe(image: Received) -> str:
    """``"PNG 640×480, 12 KB, mostly blue #3366cc (62 %), then white #ffffff (30 %)"``.

    Raises:
        ValueError: the bytes are not an image Pillow can read.
    """
    try:
        with Image.open(io.BytesIO(image.data)) as img:
            fmt, (width, height) = img.format or "image", img.size
            img.draft("RGB", (_THUMB_PX * 2, _THUMB_PX * 2))  # JPEG: decode at a fraction of its size
            small = img.convert("RGB")
            small.thumbnail((_THUMB_PX, _THUMB_PX))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise ValueError(f"image {image.index} (declared {image.declared_mime or 'no type'}) is not an image "
                         "the demo backend can read") from None
    quantised = small.quantize(colors=PALETTE_COLOURS)
    palette = quantised.getpalette() or []
    counts = sorted(quantised.getcolors() or [], reverse=True)
    total = sum(n for n, _ in counts) or 1
    named: list[str] = []
    for n, index in counts[:NAMED_COLOURS]:
        if n / total < MIN_SHARE and named:
            break
        rgb = tuple(palette[index * 3:index * 3 + 3])
        named.append(f"{colour_name(rgb)} #{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x} ({round(100 * n / total)} %)")
    colours = "mostly " + ", then ".join(named) if named else "no colours measured"
    return f"{fmt} {width}×{height}, {max(1, round(len(image.data) / 1024))} KB, {colours}"


def describe_all(images: list[Received], earlier: int) -> str:
    """The preface of the demo vision model's answer: each image of the message described.

    Raises:
        ValueError: an image the demo backend cannot read.
    """
    parts = [describe(image) for image in images]
    count = f"{len(parts)} image" + ("s" if len(parts) != 1 else "")
    listed = parts[0] if len(parts) == 1 else "; ".join(f"{i}. {p}" for i, p in enumerate(parts, 1))
    text = f"Demo backend (synthetic): I received {count}: {listed}."
    if earlier:
        text += f" Earlier messages carried {earlier} more."
    return text + " These are measured figures; no real model looked at the picture."


__all__ = ["NAMED_COLOURS", "PALETTE_COLOURS", "Received", "carries_images", "colour_name", "describe", "describe_all",
           "image_parts"]
