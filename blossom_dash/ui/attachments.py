"""Images attached to a chat message: what the chat input accepts, turning its files
into message-contract image dicts, and drawing a user turn's images as thumbnails.

The rules are ``gateway.vision``'s (types by the bytes, sizes, counts); the service
checks every request, so these helpers only convert and draw. Use::

    text, images = read_input(st.chat_input("Ask…", **CHAT_INPUT_ARGS))
    if text is not None:                  # images: [{"name", "mime", "data": bytes}]
        handle.stream_text(text, images=images, ...)
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

import streamlit as st

from ..gateway.vision import EXTENSIONS, MAX_IMAGE_BYTES, MAX_IMAGES

#: File types ``st.chat_input(file_type=...)`` offers (what ``gateway.vision`` accepts).
ACCEPT_TYPES: list[str] = list(EXTENSIONS)
#: Largest image a message may carry, MB (``vision.MAX_IMAGE_BYTES``).
MAX_IMAGE_MB = MAX_IMAGE_BYTES // (1024 * 1024)
#: Most images a message may carry.
MAX_ATTACHED = MAX_IMAGES
#: Width of a thumbnail in the chat history, px.
THUMB_PX = 160
#: ``st.chat_input(..., **CHAT_INPUT_ARGS)``: several files, of the accepted types, each
#: refused by the widget itself above the real limit (which it then states), not 200 MB.
CHAT_INPUT_ARGS: dict[str, Any] = {"accept_file": "multiple", "file_type": ACCEPT_TYPES,
                                   "max_upload_size": MAX_IMAGE_MB}


def limits_text(vision_models: Iterable[str] = ()) -> str:
    """The attachment rules in words, for a caption or the input's help:
    ``"Attach up to 4 images (PNG, JPEG, WebP or GIF, 5 MB each) for a model that sees
    images: demo-vision."``"""
    names = ", ".join(vision_models)
    who = f" for a model that sees images: {names}." if names else "; no model of this backend says it sees images."
    return f"Attach up to {MAX_ATTACHED} images (PNG, JPEG, WebP or GIF, {MAX_IMAGE_MB} MB each){who}"


def vision_warning(handle: Any, model: str | None, images: Iterable[Any] | None) -> str | None:
    """The words a page shows *before* sending when ``model`` cannot see the attached
    ``images`` (None when nothing is attached or it can): the gateway refuses such a
    request anyway, this only says so early.

    Args:
        handle: A ``SessionHandle`` (or the service): ``model_sees_images``, ``vision_models``.
        model: The chosen model (None: the default).
        images: What is attached (message-contract dicts or uploaded files).
    """
    if not list(images or ()) or handle.model_sees_images(model):
        return None
    able = handle.vision_models()
    pick = f"pick one of: {', '.join(able)}" if able else "this backend lists no model that does"
    return f"{model or 'The default model'} cannot see images; {pick}."


def read_input(value: Any) -> tuple[str | None, list[dict[str, Any]]]:
    """``(text, images)`` from what ``st.chat_input`` returned: None (nothing sent:
    ``(None, [])``), a ``str`` (an input that takes no files), or a ``ChatInputValue``
    (``.text`` and ``.files``; images only: ``(text or "", to_images(files))``)."""
    if value is None:
        return None, []
    if isinstance(value, str):
        return value, []
    get = value.get if isinstance(value, Mapping) else lambda k, d=None: getattr(value, k, d)
    return str(get("text", "") or ""), to_images(get("files", None))


def to_images(files: Iterable[Any] | None) -> list[dict[str, Any]]:
    """Uploaded files (``st.chat_input(accept_file=...)``'s ``files``: ``UploadedFile``)
    as message-contract image dicts ``{"name": str, "mime": str, "data": bytes}``.

    Nothing is checked here (the service checks the bytes, the sizes and the count, and
    refuses in words); ``mime`` is the browser's claim until then.
    """
    out: list[dict[str, Any]] = []
    for f in files or ():
        data = f.getvalue() if hasattr(f, "getvalue") else f.read()
        out.append({"name": str(getattr(f, "name", "") or ""), "mime": str(getattr(f, "type", "") or ""),
                    "data": bytes(data)})
    return out


def show_images(msg: Mapping[str, Any]) -> None:
    """Draw a user turn's ``images`` as thumbnails (``THUMB_PX`` wide) in one row,
    each with its file name; nothing when it has none. Bytes that are no image show a
    note instead of failing the page."""
    images = [im for im in msg.get("images") or () if isinstance(im, Mapping) and im.get("data")]
    if not images:
        return
    for col, image in zip(st.columns(len(images)), images, strict=True):
        with col:
            try:
                data = image["data"]  # base64 text when it comes from stored JSON
                st.image(base64.b64decode(data) if isinstance(data, str) else data,
                         caption=image.get("name") or None, width=THUMB_PX)
            except Exception:  # noqa: BLE001 - a damaged image must not take the chat down
                st.caption(f"🖼️ {image.get('name') or 'image'} (cannot be shown)")


__all__ = ["ACCEPT_TYPES", "CHAT_INPUT_ARGS", "MAX_ATTACHED", "MAX_IMAGE_MB", "THUMB_PX", "limits_text",
           "read_input", "show_images", "to_images", "vision_warning"]
