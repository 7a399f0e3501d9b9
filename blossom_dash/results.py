"""Value types every layer passes upward: token usage and the three kinds of result.

Plain frozen dataclasses with no behaviour beyond formatting, so that the SDK layer,
the gateway, features and pages can all hold them without importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

#: Token rule for estimates (a stream stopped before the backend sent usage): words
#: and single punctuation marks. The demo backend counts with the same rule.
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(text: str) -> int:
    """Approximate token count of ``text`` (words plus punctuation marks)."""
    return len(_TOKEN_RE.findall(text))


def _text(content: Any) -> str:
    """A message's text: a string, or a content array's text parts (images count no tokens here)."""
    if isinstance(content, list):
        return " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


@dataclass(frozen=True)
class Usage:
    """Token usage of one answer, as the backend reported it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def estimate(cls, messages: list[dict[str, Any]], text: str) -> Usage:
        """Estimated usage (``estimate_tokens``) when the backend reported none."""
        p = estimate_tokens(" ".join(_text(m["content"]) for m in messages))
        c = estimate_tokens(text)
        return cls(p, c, p + c)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Usage:
        """Build from an OpenAI ``usage`` object; missing or null fields count 0."""
        raw = raw or {}
        p = int(raw.get("prompt_tokens") or 0)
        c = int(raw.get("completion_tokens") or 0)
        return cls(p, c, int(raw.get("total_tokens") or p + c))


@dataclass(frozen=True)
class TextResult:
    """One text answer.

    Attributes:
        latency_ms: Wall time of this call (a cache hit's is the lookup's).
        ttft_ms: Time to first token (TTFT) of a stream, ms; None for a non-streamed
            answer (its only figure is ``latency_ms``).
        cached: Served from the response cache (no backend call, no rate-limit slot).
        stopped_early: The consumer of a stream stopped reading before the end.
        cost: Pollen this answer cost from the backend (usage x the model's price,
            exact); for a cached answer (``cached``), what it cost when it was fetched:
            the cost the cache saved. None when the model is unpriced.
    """

    text: str
    model: str
    backend: str
    latency_ms: float
    ttft_ms: float | None
    usage: Usage
    cached: bool
    request_id: str
    finish_reason: str | None = None
    stopped_early: bool = False
    cost: Decimal | None = None


@dataclass(frozen=True)
class ImageResult:
    """One generated image (``data`` verified as an image with Pillow).

    Attributes:
        cost: Pollen (the model's per-image price); for a cached image, what the
            cache saved; None when the model is unpriced.
    """

    data: bytes
    content_type: str
    width: int
    height: int
    model: str
    backend: str
    seed: int
    latency_ms: float
    cached: bool
    request_id: str
    cost: Decimal | None = None


@dataclass(frozen=True)
class AudioResult:
    """One synthesised clip.

    Attributes:
        data: The audio bytes, verified as WAV or MP3.
        content_type: ``audio/wav`` or ``audio/mpeg``.
        voice: The voice asked for.
        format: The container the backend really sent (``wav`` or ``mp3``).
        duration_s: Length of the clip in seconds; None when the header does not say.
        latency_ms: Wall time of this call (a cache hit's is the lookup's).
        cached: Served from the response cache (no backend call, no rate-limit slot).
        request_id: The id on this call's event and log line.
        model: The model that spoke.
        backend: ``demo``, ``pollinations`` or ``custom``.
        requested_format: The format asked for; differs from ``format`` when the backend
            sent another one (the demo backend synthesises WAV only).
        transcript: What the backend says it spoke, when it says.
        cost: Pollen (usage x the model's price); for a cached clip, what the cache
            saved; None when the model is unpriced.
    """

    data: bytes
    content_type: str
    voice: str
    format: str
    duration_s: float | None
    latency_ms: float
    cached: bool
    request_id: str
    model: str
    backend: str
    requested_format: str = "wav"
    transcript: str = ""
    cost: Decimal | None = None

    @property
    def note(self) -> str:
        """A sentence for the page when the format differs from the one asked for, else ""."""
        if self.format == self.requested_format:
            return ""
        if self.backend == "demo":
            return (f"You asked for {self.requested_format.upper()}; the demo backend synthesises WAV only, "
                    "so this clip (and its download) is WAV.")
        return (f"You asked for {self.requested_format.upper()}; the backend sent "
                f"{self.format.upper()}, so this clip is {self.format.upper()}.")

    @property
    def summary(self) -> str:
        """One line for under the player: ``voice **onyx** · WAV · 2.6 s`` (and, on the
        demo backend, that its voice plays tones rather than words)."""
        length = f"{self.duration_s:.1f} s" if self.duration_s is not None else "length unknown"
        demo = " · the demo voice plays tones that follow the text, not words" if self.backend == "demo" else ""
        return f"voice **{self.voice}** · {self.format.upper()} · {length}{demo}"

    @property
    def file_name(self) -> str:
        """A download name such as ``speech-alloy-3f2a9c1b.wav``."""
        return f"speech-{self.voice}-{self.request_id[-8:]}.{self.format}"


__all__ = ["AudioResult", "ImageResult", "TextResult", "Usage", "estimate_tokens"]
