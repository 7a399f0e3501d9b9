"""Model facts beside every picker: the price, paid-only, the backend's health, and our own history.

One line per model under the Playground, Compare and Batch pickers, for example::

    `openai` · 0.15 / 0.6 pollen per 1k tokens (prompt / completion) · paid only ·
    backend health: ok · 98 % ok · p50 640 ms (212 requests, 24 h)

The price, paid-only and health come from the backend's model endpoints
(``BlossomService.model_info``: ``/text/models``, ``/image/models``, ``/audio/models``);
a model without a price reads "unpriced", never a 0. The history is ours
(``BlossomService.model_facts``: success rate and p50 latency over the last 24 h, with
the number of requests behind them; shared per process for 30 s), and for a text model
the team's 👍 share of its answers (``BlossomService.answer_votes``, all time, shared
for 30 s too).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import streamlit as st

from ..errors import DashError
from ..gateway.models import ModelInfo
from ..pricing import Price
from ..service import BlossomService
from ..telemetry.model_facts import DEFAULT_WINDOW_S, ModelFacts
from .safe import code_span, safe_markdown


def _pollen(value: Decimal) -> str:
    """``0.15`` (trailing zeros dropped, never exponent notation)."""
    return format(value.normalize(), "f") if value else "0"


def price_text(price: Price | None) -> str:
    """A price in words: per 1k tokens, per image, per request, per 1k audio tokens…, or ``unpriced``.

    Text tokens read as ``prompt / completion`` per 1k; an image as per image; any other
    priced unit (audio tokens, video seconds, a flat per-request price) follows, in words
    (at most two of them). Cached-prompt prices are left to the Monitor's table.

    Args:
        price: The model's ``pricing.Price``, or None when it publishes none.
    """
    if price is None:
        return "unpriced"
    cur = price.currency
    parts = []
    if (per_1k := price.per_1k_tokens) is not None:
        prompt, completion = per_1k
        parts.append(f"{_pollen(prompt)} / {_pollen(completion)} {cur} per 1k tokens (prompt / completion)")
    if (per_image := price.per_image) is not None:
        parts.append(f"{_pollen(per_image)} {cur} per image")
    shown = {"promptTextTokens", "completionTextTokens", "completionImageTokens", "promptCachedTokens"}
    others = [(u, v) for u, v in price.units if u not in shown and v]
    for unit, value in others[:2]:
        if unit == "perRequest":
            parts.append(f"{_pollen(value)} {cur} per request")
        elif unit.endswith("Tokens"):
            parts.append(f"{_pollen(value * 1000)} {cur} per 1k {_unit_words(unit)}")
        else:
            parts.append(f"{_pollen(value)} {cur} per {_unit_words(unit)}")
    return " + ".join(parts) if parts else "free"


def _unit_words(unit: str) -> str:
    """``completionAudioTokens`` -> ``audio tokens (completion)``; ``completionVideoSeconds`` ->
    ``video second (completion)``."""
    words = re.findall(r"[A-Z]?[a-z]+", unit)
    if len(words) < 2:
        return unit
    side, rest = words[0].lower(), " ".join(w.lower() for w in words[1:])
    return f"{rest.removesuffix('s') if rest.endswith('seconds') else rest} ({side})"


def facts_line(model: str, facts: ModelFacts | None, info: ModelInfo | Any = None,
               votes: tuple[int, int] | None = None) -> str:
    """One model's facts as one markdown line (the model name as inert code).

    Args:
        model: The model's name.
        facts: Our history of it (``ModelFacts``), or None without requests.
        info: The backend's ``ModelInfo`` (``price``, ``input_modalities``: "sees images"
            when they include images, ``paid_only``, ``health``), or None when the
            backend says nothing about the model.
        votes: The team's 👍 and 👎 on its answers (``BlossomService.answer_votes``),
            shown as "👍 80 % of 5 votes on answers"; None or no votes: nothing.
    """
    parts = [code_span(model)]
    price = getattr(info, "price", None)
    parts.append(price_text(price) + (" (demo prices)" if getattr(price, "source", "") == "demo" else ""))
    if "image" in (getattr(info, "input_modalities", None) or ()):  # gateway.vision: who may get images
        parts.append("👁️ sees images" if getattr(info, "kind", "text") == "text" else "takes an input image")
    if getattr(info, "paid_only", False):
        parts.append("paid only")
    if health := getattr(info, "health", None):
        parts.append(f"backend health: {safe_markdown(str(health), limit=40)}")
    summary = facts.summary() if facts is not None else ""
    window = facts.window_s if facts is not None else DEFAULT_WINDOW_S
    parts.append(summary or f"no requests here in {int(window // 3600)} h")
    if votes and (n := votes[0] + votes[1]):
        parts.append(f"👍 {round(100 * votes[0] / n)} % of {n:,} vote{'s' * (n != 1)} on answers")
    return " · ".join(parts)


def _info(service: BlossomService, kind: str, model: str) -> ModelInfo | None:
    """The backend's facts about ``model`` (``BlossomService.model_info``), None when it gives none."""
    try:
        return service.model_info(kind, model)
    except DashError:
        return None


def render_model_facts(service: BlossomService, kind: str, models: Iterable[str | None], *, where: Any = None) -> None:
    """A caption under a picker: one ``facts_line`` per chosen model (nothing when none is chosen).

    Args:
        service: The facade.
        kind: ``"text"``, ``"image"`` or ``"audio"``.
        models: The chosen names (None and duplicates skipped).
        where: The container to draw in (default: the page).
    """
    chosen = list(dict.fromkeys(m for m in models if m))
    if not chosen:
        return
    try:
        history = service.model_facts(kind)
    except DashError:
        history = {}
    votes = service.answer_votes() if kind == "text" else {}  # answer feedback: text answers only
    lines = [facts_line(m, history.get(m), _info(service, kind, m), votes.get(m)) for m in chosen]
    (where or st).caption("  \n".join(lines), help=facts_help([history[m] for m in chosen if m in history]))


def facts_help(facts: Iterable[ModelFacts]) -> str:
    """The tooltip: how the history figures are counted, and each model's counts behind them."""
    rows = [f"{f.model}: {f.ok:,} answered of {f.attempts:,} ({f.errors:,} failed); p50 over the "
            f"{f.ok:,} answered." for f in facts]
    return " ".join([*rows, "Our own requests on this backend in the last 24 h (refreshed every 30 s): "
                     "ok = answered ÷ (answered + failed); cache hits, rate-limited and rejected requests "
                     "never reached the model and count for neither."])


__all__ = ["facts_help", "facts_line", "price_text", "render_model_facts"]
