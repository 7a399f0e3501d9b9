"""The cost of one answer, from its kind, its model's price and its usage."""

from __future__ import annotations

from decimal import Decimal

from ..pricing import Price, request_cost
from ..results import Usage


def cost_of(kind: str, price: Price | None, usage: Usage | None) -> Decimal | None:
    """The cost in pollen of one answer of ``kind`` (``pricing.request_cost``).

    Text and streams: prompt plus completion tokens. Image: one image (its prompt is
    not charged per token). Speech: the prompt's tokens, and the completion's as audio
    tokens when the model prices ``completionAudioTokens`` (OpenAI's audio models
    count the spoken answer as completion tokens), else as text tokens. Any
    ``perRequest`` price once. None when ``price`` is None.
    """
    if price is None:
        return None
    p = usage.prompt_tokens if usage else 0
    c = usage.completion_tokens if usage else 0
    if kind == "image":
        return request_cost(price, images=1)
    if kind == "audio" and price.has("completionAudioTokens"):
        return request_cost(price, prompt_tokens=p, audio_tokens=c)
    return request_cost(price, prompt_tokens=p, completion_tokens=c)


__all__ = ["cost_of"]
