"""Checking that an image answer is an image (the SDK returns any body as "image bytes")."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import UpstreamError


def verify_image(data: Any, where: str) -> tuple[str, int, int]:
    """Check that ``data`` is an image Pillow can read.

    BLOSSOM_SDK.md ("Endpoints"): the SDK hands back the raw body without checking its
    Content-Type, so a JSON error or a gateway page would otherwise be shown as an image.

    Args:
        data: The body the backend sent.
        where: The backend's label, for messages.

    Returns:
        ``(content_type, width, height)``, e.g. ``("image/png", 1024, 1024)``.

    Raises:
        UpstreamError: empty, or not an image (status 200: the body itself was unusable).
    """
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise UpstreamError(f"{where} answered the image request with an empty body.",
                            "Try again, or pick another image model.", status_code=200)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format or "PNG", img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        preview = bytes(data[:60]).decode("utf-8", errors="replace")
        looks_html = "<" in preview
        begins = "" if looks_html else f" (it begins “{' '.join(preview.split())[:40]}”)"
        raise UpstreamError(
            f"{where} answered the image request with {len(data):,} bytes that are not an image{begins}.",
            "The backend may be overloaded or rate-limiting: try again in a moment, or pick another model.",
            status_code=200,
        ) from exc
    return Image.MIME.get(fmt, f"image/{fmt.lower()}"), w, h


__all__ = ["verify_image"]
