"""Images in a chat message: what may be attached, checked by their bytes, and how
they travel (OpenAI-style ``image_url`` content parts with a ``data:`` URL).

The rules (each refusal is an ``InvalidRequest`` in words):

- types: PNG, JPEG, WebP and GIF only, recognised by Pillow from the bytes (a file's
  name or its declared type is never trusted; the ``data:`` URL carries the type
  Pillow found). These are the four types OpenAI's vision guide accepts ("Image input
  requirements": PNG, JPEG, WEBP, non-animated GIF).
- size: at most ``MAX_IMAGE_BYTES`` (5 MB) an image and ``MAX_IMAGES`` (4) a message;
  a request re-sends earlier turns' images only while the request holds at most
  ``MAX_REQUEST_IMAGES`` images and ``MAX_REQUEST_IMAGE_BYTES`` in all (the oldest are
  left out first, and the text says so).
- dimensions: at most ``MAX_IMAGE_SIDE_PX`` a side and ``MAX_IMAGE_PIXELS`` in all,
  read from the header before anything is decoded (Pillow's decompression-bomb guard
  raises too, whichever comes first).

The request cap of ``Settings.max_prompt_chars`` counts text only: an image is bytes,
not characters. The SDK's own ``chat`` would count a ``data:`` URL's base64 as
characters (``ChatParamsV2.to_body`` sums ``len(str(content))``), so messages with
image parts go out through the SDK's HTTP client directly (``sdk.backend.Backend.chat``).
Cache keys hold an image's sha256, never its bytes (``key_messages``), and events
keep the prompt's text only.
"""

from __future__ import annotations

import base64
import hashlib
import io
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import InvalidRequest

#: Largest image accepted, bytes (5 MB: Batch's upload cap, stated on the page).
MAX_IMAGE_BYTES = 5 * 1024 * 1024
#: Most images one message may carry.
MAX_IMAGES = 4
#: Most images one request may carry, the newest message's and earlier turns' together.
MAX_REQUEST_IMAGES = 8
#: Most image bytes one request may carry (before base64, which adds a third).
MAX_REQUEST_IMAGE_BYTES = 20 * 1024 * 1024
#: Longest side accepted, pixels.
MAX_IMAGE_SIDE_PX = 8192
#: Most pixels accepted (width x height): ~ 40 megapixels, under Pillow's own guard
#: (``Image.MAX_IMAGE_PIXELS``, 89,478,485) so a bomb is refused in our words first.
MAX_IMAGE_PIXELS = 40_000_000
#: Pillow format -> MIME type: the types accepted.
FORMATS: dict[str, str] = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
#: File name endings of the accepted types (what an upload widget may offer).
EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp", "gif")
_NAMES = "PNG, JPEG, WebP or GIF"


@dataclass(frozen=True)
class ImageInput:
    """One image attached to a chat message.

    Attributes:
        data: The file's bytes, as uploaded.
        mime: Its MIME type (``image/png`` ...): after ``check_image``, the type Pillow
            found in the bytes, whatever was declared.
        name: The file name, for messages only ("" when unknown).
        width / height: Pixels, after ``check_image`` (0 before).
    """

    data: bytes = field(repr=False)
    mime: str = ""
    name: str = ""
    width: int = 0
    height: int = 0

    @property
    def sha256(self) -> str:
        """The bytes' sha256 hex digest: what a cache key holds of the image."""
        return hashlib.sha256(self.data).hexdigest()

    @property
    def data_url(self) -> str:
        """``data:<mime>;base64,...``: how the image travels in an ``image_url`` part."""
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"

    def __repr__(self) -> str:  # never the bytes
        return f"ImageInput(name={self.name!r}, mime={self.mime!r}, {len(self.data):,} bytes)"


def _label(image: ImageInput, index: int) -> str:
    return f"“{image.name}”" if image.name else f"image {index}"


def as_image(value: Any) -> ImageInput:
    """An ``ImageInput`` from one itself or a message-contract dict
    ``{"name": str, "mime": str, "data": bytes}`` (``data`` may be base64 text, as a
    saved chat stores it).

    Raises:
        InvalidRequest: neither, or its data is not bytes (nor base64 text).
    """
    if isinstance(value, ImageInput):
        return value
    if isinstance(value, Mapping):
        data = value.get("data")
        if isinstance(data, str):
            try:
                data = base64.b64decode(data, validate=True)
            except ValueError:
                data = None
        if isinstance(data, bytes | bytearray | memoryview):
            return ImageInput(bytes(data), str(value.get("mime") or ""), str(value.get("name") or ""))
    raise InvalidRequest("An attached image is not a file's bytes.",
                         "Attach the image again as a PNG, JPEG, WebP or GIF file.")


def check_image(image: ImageInput, index: int = 1) -> ImageInput:
    """``image`` checked by its bytes, with the MIME type and size Pillow found.

    Raises:
        InvalidRequest: empty, over ``MAX_IMAGE_BYTES``, not an image Pillow reads,
            not one of ``FORMATS``, larger than ``MAX_IMAGE_SIDE_PX`` a side or
            ``MAX_IMAGE_PIXELS`` in all, or damaged (Pillow's ``verify``).
    """
    label, size = _label(image, index), len(image.data)
    fmt = ""
    if not size:
        raise InvalidRequest(f"The attached {label} is empty (0 bytes).", "Attach the image file again.")
    if size > MAX_IMAGE_BYTES:
        raise InvalidRequest(f"The attached {label} is {size / 1024 / 1024:.1f} MB; the limit is "
                             f"{MAX_IMAGE_BYTES // 1024 // 1024} MB an image.",
                             "Attach a smaller image (scale it down, or save it as JPEG or WebP).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(image.data)) as img:  # reads the header only
                fmt, (width, height) = img.format or "", img.size
                if fmt in FORMATS and (max(width, height) > MAX_IMAGE_SIDE_PX or width * height > MAX_IMAGE_PIXELS):
                    raise InvalidRequest(
                        f"The attached {label} is {width:,}×{height:,} pixels; the limit is "
                        f"{MAX_IMAGE_SIDE_PX:,} a side and {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels.",
                        "Scale the image down before attaching it.")
                if fmt in FORMATS:
                    img.verify()  # structure and checksums, without decoding every pixel
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest(f"The attached {label} claims too many pixels to open safely.",
                             "Scale the image down before attaching it.") from None
    except UnidentifiedImageError:
        raise InvalidRequest(f"The attached {label} is not an image (its bytes are no {_NAMES} file).",
                             f"Attach a {_NAMES} file.") from None
    except (OSError, ValueError, SyntaxError):  # Pillow's words for a damaged file
        raise InvalidRequest(f"The attached {label} is damaged: it could not be read as {fmt or 'an image'}.",
                             "Save the image again, or attach another one.") from None
    if fmt not in FORMATS:
        raise InvalidRequest(f"The attached {label} is a {fmt} image; only {_NAMES} images can be sent.",
                             "Convert it to PNG or JPEG first.")
    return ImageInput(image.data, FORMATS[fmt], image.name, width, height)


def check_images(values: Iterable[Any] | None) -> tuple[ImageInput, ...]:
    """One message's images, each checked (``check_image``), at most ``MAX_IMAGES``.

    Raises:
        InvalidRequest: more than ``MAX_IMAGES``, or the first image that breaks a rule.
    """
    items = list(values or ())
    if len(items) > MAX_IMAGES:
        raise InvalidRequest(f"{len(items)} images are attached; a message may carry at most {MAX_IMAGES}.",
                             f"Remove {len(items) - MAX_IMAGES}, or send them over several messages.")
    return tuple(check_image(as_image(v), i) for i, v in enumerate(items, 1))


def content_parts(text: str, images: Iterable[ImageInput]) -> list[dict[str, Any]]:
    """An OpenAI content array: the text part (none when ``text`` is empty), then one
    ``image_url`` part an image."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": image.data_url}} for image in images]
    return parts


def text_of(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a content
    array joined (image parts carry no characters)."""
    if isinstance(content, list):
        return "\n".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content or "")


def key_messages(messages: list[dict[str, Any]], images: Mapping[int, tuple[ImageInput, ...]]) -> list[dict[str, Any]]:
    """``messages`` as a cache key holds them: each image part replaced by its bytes'
    sha256 (two different images never share a key; no key holds an image's bytes).

    Args:
        messages: The messages sent.
        images: Message index -> the images its ``image_url`` parts carry, in order.
    """
    if not images:
        return messages
    out = []
    for i, msg in enumerate(messages):
        if i in images:
            msg = {**msg, "content": [{"type": "text", "text": text_of(msg["content"])},
                                      *({"type": "image", "sha256": im.sha256} for im in images[i])]}
        out.append(msg)
    return out


def sees_images(info: Any) -> bool:
    """Whether a ``models.ModelInfo`` (or None: unknown) lists images among its inputs."""
    return info is not None and "image" in getattr(info, "input_modalities", ())


def vision_models(gateway: Any) -> list[str]:
    """The live backend's text models that see images, in the backend's order.

    Args:
        gateway: The ``pipeline.Gateway`` (its ``list_models`` and ``model_info``; typed
            loosely: the pipeline imports this module).
    """
    return [name for name in gateway.list_models("text").names if sees_images(gateway.model_info("text", name))]


def require_sight(gateway: Any, request: Any, model: str) -> None:
    """Refuse ``request`` before anything is sent (no rate-limit slot, no budget) when it
    carries images and ``model`` does not see them, by the backend's model facts
    (``input_modalities``; ``models.ModelCatalog.info``).

    Raises:
        InvalidRequest: ``"<model> cannot see images; pick one of: a, b"`` (or: the
            backend names no model that does, or does not say what ``model`` sees).
    """
    if not getattr(request, "has_images", False):
        return
    info = gateway.model_info("text", model)
    if sees_images(info):
        return
    able = [name for name in vision_models(gateway) if name != model]
    pick = f"pick one of: {', '.join(able)}" if able else "the backend lists no model that does"
    if info is None:
        raise InvalidRequest(f"The backend does not say whether {model} can see images, so none were sent; {pick}.",
                             "Pick a model whose facts list image input, or send the message without images.")
    raise InvalidRequest(f"{model} cannot see images; {pick}.",
                         "Pick a model that sees images, or send the message without them.")


__all__ = [
    "EXTENSIONS", "FORMATS", "MAX_IMAGES", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "MAX_IMAGE_SIDE_PX",
    "MAX_REQUEST_IMAGES", "MAX_REQUEST_IMAGE_BYTES", "ImageInput", "as_image", "check_image", "check_images",
    "content_parts", "key_messages", "require_sight", "sees_images", "text_of", "vision_models",
]
