"""The session's image gallery: the images one browser session generated, newest first.

Plain values only (no streamlit): the page keeps the list in
``st.session_state["gallery_images"]`` and replaces it with what ``add_image`` returns.
The list is bounded by count and by bytes, because it lives in the server's memory for
as long as the browser session does.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass

from ..gateway.requests import SEED_MAX
from ..results import ImageResult
from .compare_panels import Comparison

#: Session-state key of the gallery list (shared by the Playground and the Gallery).
GALLERY_KEY = "gallery_images"
#: At most this many images per session; the oldest drop off first.
GALLERY_MAX_IMAGES = 50
#: And at most this many bytes of image data per session (50 large PNGs can pass 100 MB).
GALLERY_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class GalleryItem:
    """One generated image and what made it.

    Attributes:
        image: The service's result (bytes, model, seed, size, latency, request id).
        prompt: The prompt as typed.
        added_at: When it joined the gallery, epoch seconds.
    """

    image: ImageResult
    prompt: str
    added_at: float

    @property
    def id(self) -> str:
        """Stable id for widget keys: the request id of the call that made it."""
        return self.image.request_id

    @property
    def size(self) -> str:
        """``"1024×768"``."""
        return f"{self.image.width}×{self.image.height}"

    @property
    def identity(self) -> tuple[str, str, int, int, int]:
        """What makes two items the same picture: model, prompt, seed and size."""
        i = self.image
        return (i.model, self.prompt.strip(), i.seed, i.width, i.height)

    @property
    def file_name(self) -> str:
        """``blossom-<model>-<seed>.<ext>`` for the download."""
        ext = self.image.content_type.split("/")[-1].replace("jpeg", "jpg")
        return f"blossom-{self.image.model}-{self.image.seed}.{ext}"


def add_image(items: list[GalleryItem], image: ImageResult, prompt: str, *, now: float | None = None,
              max_images: int = GALLERY_MAX_IMAGES, max_bytes: int = GALLERY_MAX_BYTES) -> list[GalleryItem]:
    """A new gallery list with ``image`` first.

    The same picture again (same model, prompt, seed and size, e.g. a cache hit) moves
    to the front instead of appearing twice. Then the oldest items are dropped until at
    most ``max_images`` remain and their bytes total at most ``max_bytes`` (the newest
    image always stays).

    Args:
        items: The current gallery, newest first (not modified).
        image: The image to add.
        prompt: The prompt that made it.
        now: Epoch seconds to stamp; defaults to ``time.time()``.
        max_images / max_bytes: The bounds.

    Returns:
        The new list, newest first.
    """
    item = GalleryItem(image, prompt, time.time() if now is None else now)
    kept = [item] + [i for i in items if i.identity != item.identity]
    out: list[GalleryItem] = []
    total = 0
    for i in kept:
        if len(out) >= max_images or (out and total + len(i.image.data) > max_bytes):
            break
        out.append(i)
        total += len(i.image.data)
    return out


def add_comparison(items: list[GalleryItem], comp: Comparison, *, now: float | None = None) -> list[GalleryItem]:
    """A new gallery list with every image of an image comparison first, in column order.

    A failed panel adds nothing; a text comparison adds nothing. Each image joins as
    ``add_image`` adds one (the same picture again moves to the front), with the
    comparison's prompt, its model, seed, size, latency and request id.
    """
    out = items
    for p in reversed(comp.panels if comp.kind == "image" else ()):
        if p.ok and p.image:
            image = ImageResult(p.image, p.content_type or "image/png", p.width or 0, p.height or 0, p.model,
                                comp.backend, p.seed if p.seed is not None else 0, p.latency_ms or 0.0, p.cached,
                                p.request_id, p.cost)
            out = add_image(out, image, comp.prompt, now=now)
    return out


def new_seed(item: GalleryItem, rng: random.Random | None = None) -> int:
    """A seed for "regenerate": random in the service's range, never the item's own."""
    rng = rng or random.Random()
    while (seed := rng.randint(0, SEED_MAX)) == item.image.seed:
        pass
    return seed


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$])")


def markdown_text(text: str, *, limit: int = 160) -> str:
    """``text`` clipped to ``limit`` characters and escaped, so that markdown shows it as typed.

    A prompt such as ``# title`` or ``[a](b)`` would otherwise render as a heading or a link.
    """
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1].rstrip() + "…"
    return _MARKDOWN_SPECIAL.sub(r"\\\1", flat)


def total_bytes(items: list[GalleryItem]) -> int:
    """Bytes of image data the gallery holds."""
    return sum(len(i.image.data) for i in items)


__all__ = ["GALLERY_KEY", "GALLERY_MAX_BYTES", "GALLERY_MAX_IMAGES", "GalleryItem", "add_comparison", "add_image",
           "markdown_text",
           "new_seed", "total_bytes"]
