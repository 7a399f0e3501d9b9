"""Model entries with their facts: Pollinations' ``/text/models``, ``/image/models``, ``/audio/models``.

Each is a bare JSON array of entries with ``name``, ``aliases``, ``description``,
``input_modalities``, ``output_modalities``, ``paid_only``, ``health``, ``voices``,
``context_length`` and ``pricing`` (``shared/registry/model-info.ts`` in
pollinations/pollinations). ``GET /v1/models`` may carry only ``id``, ``object`` and
``created``, so modalities are never read from it. blossom-ai 0.8.0 fetches none of
these (BLOSSOM_SDK.md, "Endpoints"); they are read here through the backend's own HTTP
client (its base URL and key).

A backend without ``/audio/models`` (older Pollinations, the OpenAI-compatible
servers) gets its audio entries from ``/text/models``: those whose
``output_modalities`` include ``audio``.
"""

from __future__ import annotations

from typing import Any

import httpx
from blossom_ai.core.config import ENDPOINTS

PATHS = {"text": "/text/models", "image": "/image/models", "audio": "/audio/models"}


def _entries(payload: Any) -> list[dict[str, Any]]:
    """The dict entries of a model list: a bare array, or OpenAI's ``{"data": [...]}``."""
    items = payload.get("data", []) if isinstance(payload, dict) else payload
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and str(item.get("name") or item.get("id") or ""):
            out.append(item)
    return out


def entry_name(entry: dict[str, Any]) -> str:
    """An entry's model name (``name``, else OpenAI's ``id``)."""
    return str(entry.get("name") or entry.get("id") or "")


def speaks(entry: dict[str, Any]) -> bool:
    """Whether an entry's ``output_modalities`` include audio."""
    modalities = entry.get("output_modalities")
    return isinstance(modalities, list) and "audio" in modalities


async def _get(http: Any, path: str, timeout_s: float) -> httpx.Response:
    resp = await http.get(ENDPOINTS.BASE + path, timeout=timeout_s)
    resp.raise_for_status()  # the observing client raises already; a plain httpx client does not
    return resp


async def model_entries(http: Any, kind: str, *, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The model entries of ``kind`` (``"text"``, ``"image"`` or ``"audio"``).

    Audio: ``/audio/models`` when the backend has it (a 404 or 405 falls back to the
    speaking entries of ``/text/models``).

    Raises:
        httpx.HTTPError: the endpoint failed (``raise_for_status``).
        ValueError: the answer is not a list of model entries.
    """
    try:
        resp = await _get(http, PATHS[kind], timeout_s)
    except httpx.HTTPStatusError as exc:
        if kind != "audio" or exc.response.status_code not in (404, 405):
            raise
        entries = [e for e in _entries((await _get(http, PATHS["text"], timeout_s)).json()) if speaks(e)]
    else:
        entries = _entries(resp.json())
    if not entries:
        raise ValueError(f"no model entries at {PATHS[kind]}")
    return entries


__all__ = ["PATHS", "entry_name", "model_entries", "speaks"]
