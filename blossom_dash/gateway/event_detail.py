"""What an event records beyond its figures: the request's parameters, its context, its answer.

Monitor's request detail shows them (schema 6). Three rules:

- ``params`` is built from what was *sent* (``Prepared.wire``: the seed an image drew,
  the max_tokens a text request defaulted to), as JSON text with sorted keys, and holds
  parameters only: never the prompt or system prompt (those follow ``store_prompts``),
  never a key (the Caller's ``api_key`` is not an input here).
- ``context`` says what the request belongs to: ``"chat:<id>"``, ``"comparison:<id>"``,
  ``"batch:<job_id>"``; a request's own ``context`` field, "" when none; cut to the
  column's 128 characters by the store.
- A stream stopped before its end says so in its ``params`` (``"stopped": true``,
  ``stopped_params``): its answer and usage are the partial ones.
- ``answer`` is kept exactly when the prompt is (``settings.store_prompts``), cut to the
  same ``settings.prompt_chars``: a deployment that does not keep what users ask does not
  keep what they were told either.
"""
from __future__ import annotations

from typing import Any

import orjson

from ..settings import Settings
from .requests import Prepared

__all__ = ["CONTEXT_KINDS", "event_context", "event_params", "parse_context", "stopped_params", "stored_text"]

#: The kinds of context a request may carry, ``"<kind>:<id>"``.
CONTEXT_KINDS = ("chat", "comparison", "batch")


def event_params(request: Any, prepared: Prepared) -> str:
    """The parameters of one request as sent, as compact JSON text.

    Args:
        request: The ``TextRequest``/``ImageRequest``/``SpeechRequest`` (for what the
            wire does not carry: how many history turns, whether a system prompt or
            images came with it).
        prepared: Its ``Prepared`` form (the model and the parameters sent).

    Returns:
        e.g. ``{"max_tokens":512,"model":"demo-swift","seed":7,"temperature":0.7}`` for
        text (+ ``history_turns``, ``system_prompt: true``, ``images`` when present);
        ``{"height":..,"model":..,"seed":..,"width":..}`` for an image;
        ``{"format":"wav","model":..,"voice":"alloy"}`` for speech.
    """
    wire = prepared.wire
    out: dict[str, Any] = {"model": prepared.model}
    if prepared.kind == "text":
        out["max_tokens"] = wire.get("max_tokens")
        out.update({k: v for k, v in (wire.get("extra") or {}).items() if k in ("temperature", "seed")})
        turns = sum(1 for m in wire.get("messages") or () if m.get("role") in ("user", "assistant")) - 1
        if turns > 0:
            out["history_turns"] = turns
        if getattr(request, "system", None):
            out["system_prompt"] = True
        images = getattr(request, "images", None)
        if images:
            out["images"] = len(images)
    elif prepared.kind == "image":
        out.update({k: wire.get(k) for k in ("width", "height", "seed")})
    elif prepared.kind == "audio":
        out.update({"voice": wire.get("voice"), "format": wire.get("audio_format")})
    return orjson.dumps(out, option=orjson.OPT_SORT_KEYS).decode()


def stored_text(text: str | None, settings: Settings) -> str | None:
    """What the usage store keeps of a prompt or answer: its first ``prompt_chars``
    characters when ``store_prompts`` is on, else None (nothing kept)."""
    if not text or not settings.store_prompts:
        return None
    return text[:settings.prompt_chars]


def parse_context(context: str | None) -> tuple[str, str] | None:
    """``"chat:abc"`` -> ``("chat", "abc")``; None when empty or of an unknown kind."""
    if not context or ":" not in context:
        return None
    kind, _, ident = context.partition(":")
    return (kind, ident) if kind in CONTEXT_KINDS and ident else None


def event_context(request: Any) -> str:
    """A request's ``context`` as recorded: its text, or "" when absent or not text."""
    context = getattr(request, "context", "")
    return context.strip() if isinstance(context, str) else ""


def stopped_params(params: str | None, done: bool) -> str | None:
    """``params`` of a stream, with ``"stopped": true`` when its reader stopped before the
    end (Stop, or a page left mid-answer): its answer and usage are partial. Unchanged
    for a stream read to the end."""
    if done:
        return params
    value = orjson.loads(params) if params else {}
    return orjson.dumps({**value, "stopped": True}, option=orjson.OPT_SORT_KEYS).decode()
