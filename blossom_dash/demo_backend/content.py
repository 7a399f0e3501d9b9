"""Synthetic models and deterministic answer text for the demo backend.

Everything here is pure and cheap: the HTTP layer (``app.py``) only parses requests,
asks for an ``Answer`` and decides how fast to send it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# The one token rule, used for prompts and completions alike: a token is a run of word
# characters or a single punctuation character. Whitespace is never a token. It is not
# a real tokenizer, but it makes `usage` checkable against the text.
TOKEN_RE = re.compile(r"\w+|[^\w\s]")

DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_CAP = 4096
TOKENS_PER_DELTA = 3
ECHO_CHARS = 80


@dataclass(frozen=True)
class TextModel:
    """A synthetic text model and its simulated latency profile.

    Attributes:
        name: Model id, always starting with ``demo-``.
        ttft_ms: Simulated time to first token, in milliseconds.
        tokens_per_s: Simulated generation speed after the first token.
        sections: How many filler sections a natural answer has (its length).
        description: Human-readable description, says it is synthetic.
        output_modalities: What it can answer with; ``"audio"`` marks a voice model
            (like Pollinations' ``openai-audio``) that also speaks text as a WAV.
        input_modalities: What it reads; ``"image"`` marks a vision model, which
            describes the images it receives (``vision.describe_all``).
    """

    name: str
    ttft_ms: int
    tokens_per_s: float
    sections: int
    description: str
    output_modalities: tuple[str, ...] = ("text",)
    input_modalities: tuple[str, ...] = ("text",)


@dataclass(frozen=True)
class ImageModel:
    """A synthetic image model.

    Attributes:
        name: Model id, always starting with ``demo-``.
        latency_ms: Simulated time to render one image, in milliseconds.
        description: Human-readable description, says it is synthetic.
    """

    name: str
    latency_ms: int
    description: str


_SYNTHETIC = "Synthetic offline demo model served by the blossom-dash demo backend"
TEXT_MODELS: dict[str, TextModel] = {m.name: m for m in (
    TextModel("demo-swift", 150, 120.0, 2, f"{_SYNTHETIC}: fast and brief."),
    TextModel("demo-balanced", 400, 60.0, 3, f"{_SYNTHETIC}: middle of the road."),
    TextModel("demo-deep", 900, 30.0, 5, f"{_SYNTHETIC}: slow and long-winded."),
    TextModel("demo-coder", 300, 80.0, 3, f"{_SYNTHETIC}: answers with a code block."),
    TextModel("demo-vision", 350, 70.0, 2, f"{_SYNTHETIC}: sees images: states each attached image's format, "
              "size and main colours (measured with Pillow, not understood).", input_modalities=("text", "image")),
    # Last, so that it is never the default text model.
    TextModel("demo-voice", 250, 90.0, 2, f"{_SYNTHETIC}: speaks text as synthetic tones in a WAV "
              "(no words; like openai-audio with modalities text+audio).", ("text", "audio")),
)}
IMAGE_MODELS: dict[str, ImageModel] = {m.name: m for m in (
    ImageModel("demo-sketch", 300, f"{_SYNTHETIC}: line drawing on paper."),
    ImageModel("demo-mosaic", 700, f"{_SYNTHETIC}: tiles in a seeded palette."),
    ImageModel("demo-gradient", 1200, f"{_SYNTHETIC}: gradient with circles."),
)}

_SUBJECTS = (
    "The request path", "A moving window", "Each cached answer", "The circuit breaker",
    "Time to first token", "A patient retry policy", "The p95 latency", "This pipeline",
    "A warm connection pool", "The rate limiter", "Every streamed delta", "The dashboard",
)
_VERBS = (
    "keeps", "shapes", "reveals", "smooths", "bounds", "explains", "protects", "tracks",
    "balances", "exposes", "simplifies", "measures",
)
_OBJECTS = (
    "tail behaviour under load", "the cost of a cold start", "how often retries help",
    "the gap between median and worst case", "requests per minute", "the hit rate",
    "the shape of a slow response", "what the user waits for", "the error budget",
    "throughput at the edge", "the order of events", "a steady stream of tokens",
)
_ENDINGS = (
    "without touching the network.", "when the window slides forward.",
    "even on a quiet afternoon.", "as long as the inputs stay the same.",
    "which is what a demo should show.", "before anyone notices a spike.",
    "at a predictable price.", "in a way that is easy to compare.",
)
_TERMS = (
    "Latency", "Throughput", "Caching", "Retries", "Backoff", "Streaming", "Fallbacks",
    "Observability", "Determinism", "Quotas",
)
_CODE_LINES = (
    "latency_ms = [120, 180, 95, 410]",
    "p95_ms = sorted(latency_ms)[int(0.95 * (len(latency_ms) - 1))]",
    "hit_rate = hits / max(1, hits + misses)",
    "window_s = 60",
    "rpm = len(recent) * 60 / window_s",
    "retry_after_s = int(response.headers.get('Retry-After', '1'))",
)


@dataclass(frozen=True)
class Answer:
    """A finished answer, already cut to ``max_tokens``.

    Attributes:
        text: The completion text.
        finish_reason: ``"stop"`` or ``"length"``.
        prompt_tokens: Token count of all text parts of all messages.
        completion_tokens: Token count of ``text`` (same rule).
        deltas: ``text`` split into stream deltas of a few tokens; joined they equal it.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    deltas: tuple[str, ...]


def count_tokens(text: str) -> int:
    """Count tokens with the demo backend's one rule (``TOKEN_RE``).

    Args:
        text: Any text.

    Returns:
        The number of ``\\w+`` runs plus single punctuation characters.
    """
    return len(TOKEN_RE.findall(text))


def _message_text(content: Any) -> str:
    """Text of a message ``content``: a string, ``None``, or a list of parts.

    Only ``{"type": "text"}`` parts count; ``image_url`` parts carry no text.
    Raises ValueError for any other type.
    """
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content
                         if isinstance(p, dict) and p.get("type") == "text")
    raise ValueError("message content must be a string or a list of parts")


def _clip(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _sentence(rng: random.Random) -> str:
    return (
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
        f"{rng.choice(_ENDINGS)}"
    )


def _compose(model: TextModel, system: str, prompt: str, rng: random.Random, preface: str = "") -> str:
    parts = [f"**Demo backend: synthetic answer from `{model.name}`**"]
    if preface:
        parts.append(preface)
    if system:
        parts.append(f"_Following the system prompt: “{_clip(system, ECHO_CHARS)}”._")
    parts.append(
        f"You asked: “{_clip(prompt, ECHO_CHARS)}”. No real model was called; the text"
        " below is seeded filler so that lengths, timings and caching can be compared."
    )
    for i in range(model.sections):
        if i % 2 == 0:
            parts.append(" ".join(_sentence(rng) for _ in range(rng.randint(2, 4))))
        else:
            terms = rng.sample(_TERMS, rng.randint(3, 5))
            parts.append("\n".join(f"- **{t}**: {_sentence(rng)}" for t in terms))
    if model.name == "demo-coder":
        code = "\n".join(rng.sample(_CODE_LINES, 3))
        parts.append(f"```python\n{code}\n```")
    if model.sections > 3:
        parts.insert(-1, "### In short")
    return "\n\n".join(parts)


def _split_deltas(text: str, tokens_per_delta: int) -> tuple[str, ...]:
    starts = [m.start() for m in TOKEN_RE.finditer(text)][::tokens_per_delta]
    if not starts:
        return ()
    starts[0] = 0  # leading whitespace, if any, rides with the first delta
    ends = starts[1:] + [len(text)]
    return tuple(text[a:b] for a, b in zip(starts, ends, strict=True))


@lru_cache(maxsize=512)
def _answer(model_name: str, key: str, max_tokens: int, preface: str = "") -> Answer:
    # Keyed on the canonical request JSON so repeated requests (benchmarks) are free.
    # max_tokens stays out of the seed: a shorter answer is a prefix of a longer one.
    messages, _seed = json.loads(key)  # the seed only matters through the digest
    digest = hashlib.sha256(f"{model_name}\x00{key}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    texts = [(m.get("role"), _message_text(m.get("content"))) for m in messages]
    system = next((t for r, t in texts if r in ("system", "developer") and t), "")
    prompt = next((t for r, t in reversed(texts) if r == "user"), "") or "(no user message)"
    text = _compose(TEXT_MODELS[model_name], system, prompt, rng, preface)
    finish_reason = "stop"
    tokens = list(TOKEN_RE.finditer(text))
    if len(tokens) > max_tokens:
        # Cutting at a token's end keeps re-tokenising the prefix exact.
        text = text[: tokens[max_tokens - 1].end()] if max_tokens > 0 else ""
        finish_reason = "length"
    return Answer(
        text=text,
        finish_reason=finish_reason,
        prompt_tokens=sum(count_tokens(t) for _, t in texts),
        completion_tokens=count_tokens(text),
        deltas=_split_deltas(text, TOKENS_PER_DELTA),
    )


def make_answer(
    model: str, messages: list[dict[str, Any]], seed: int | None, max_tokens: int, preface: str = ""
) -> Answer:
    """Build the deterministic answer for one chat request.

    Args:
        model: A name from ``TEXT_MODELS``.
        messages: OpenAI-style messages (already validated as a non-empty list of dicts).
        seed: The request's seed, or ``None``; different seeds give different text.
        max_tokens: Token budget (``1..MAX_TOKENS_CAP``); a longer natural answer is cut
            and reported with ``finish_reason="length"``.
        preface: A paragraph put right after the heading (the vision model's
            description of the images it received).

    Returns:
        The ``Answer``, identical for identical arguments.

    Raises:
        ValueError: If a message's content is neither a string nor a list of parts.
        KeyError: If ``model`` is not a demo text model.
    """
    key = json.dumps([messages, seed], sort_keys=True, ensure_ascii=False)
    # Huge requests (inline images) bypass the cache so it cannot hoard memory.
    answer = _answer.__wrapped__ if len(key) > 65536 else _answer
    return answer(model, key, max_tokens, preface)
