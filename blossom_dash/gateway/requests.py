"""Who asks (``Caller``) and what they ask for: one typed request per kind.

Each request holds every validation rule of its kind and every part of its cache
key, so the pipeline, Batch's preview and Compare all check a request the same way.
``validate`` checks what can be checked without the backend; ``prepare`` also takes
the resolved model name and returns a ``Prepared`` request: the wire parameters and
the cache-key parts (the backend's identity is added once, by the pipeline).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from ..errors import InvalidRequest
from ..pricing import Price, estimate_cost
from ..sdk.speech import MAX_SPEECH_CHARS, speech_body, validate_speech
from .vision import (
    MAX_REQUEST_IMAGE_BYTES,
    MAX_REQUEST_IMAGES,
    ImageInput,
    check_images,
    content_parts,
    key_messages,
    text_of,
)

MAX_TOKENS_LIMIT = 8192
DEFAULT_MAX_TOKENS = 1024
IMAGE_MIN_PX, IMAGE_MAX_PX = 64, 2048  # the SDK's own bounds (_Validators.dimensions)
SEED_MAX = 2**31 - 1
#: Longest URL-encoded image prompt the SDK sends (MAX_SAFE_URL_LENGTH - 200 in
#: blossom_ai.generators.image_generator).
IMAGE_PROMPT_URL_CHARS = 1848
MODEL_NAME_CHARS = 128
#: Identities of kiosk visitors (anonymous, signed random ids) start with this; they
#: are members with their own lower rate limit (``Settings.kiosk_rpm``).
KIOSK_PREFIX = "kiosk-"
#: Characters per prompt token in a budget's estimate before the call: OpenAI's rule of
#: thumb, as ``features.batch_cost``; the real cost settles from the answer's usage.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Caller:
    """Who is asking: the identity every request, limit and event is charged to.

    Attributes:
        user: The user identity (rate limits, Monitor, ownership of jobs).
        session: The browser session (Monitor).
        api_key: A key for this caller's requests only; never logged, stored or shown
            (excluded from ``repr``), never part of a cache key.
        role: ``"admin"`` (team-wide controls, everyone's requests), ``"member"``
            (prompts, compare, batch; their own requests) or ``"viewer"`` (reads the
            team's aggregates only). A Caller made in code without a role is the
            process's own owner, an admin; the pages make theirs from the signed-in
            identity (``BlossomService.role_for``).
        purpose: ``"interactive"`` (a person waiting on the answer) or ``"batch"`` (a
            row of their batch job: it also takes a slot of the user's batch share,
            ``policies.ratelimit``).
    """

    user: str = "anonymous"
    session: str = ""
    api_key: str | None = field(default=None, repr=False)
    role: str = "admin"
    purpose: str = "interactive"

    @property
    def is_admin(self) -> bool:
        """Whether this caller may change team-wide settings and read everyone's requests."""
        return self.role == "admin" and not self.is_kiosk

    @property
    def is_kiosk(self) -> bool:
        """Whether this is an anonymous kiosk visitor (never an admin)."""
        return self.user.startswith(KIOSK_PREFIX)


@dataclass(frozen=True)
class Prepared:
    """A validated request with its model resolved.

    Attributes:
        kind: ``"text"``, ``"image"`` or ``"audio"`` (a stream is a text request).
        model: The model name sent.
        key_parts: Everything that changes the answer, for ``policies.cache.request_key``.
        random_parts: Key parts picked at random rather than by the user (an image's
            seed): replay-only lookups ignore them.
        wire: The backend call's parameters (kind-specific).
    """

    kind: str
    model: str
    key_parts: dict[str, Any]
    random_parts: tuple[str, ...] = ()
    wire: dict[str, Any] = field(default_factory=dict)

    def estimated_cost(self, price: Price | None, prompt: str | None) -> Decimal | None:
        """An upper bound of this request's cost in pollen before it runs (what a budget
        reserves; ``pricing.estimate_cost``): a text request's messages at
        ``CHARS_PER_TOKEN`` characters per token and its full ``max_tokens``; an image
        as one image plus its ``prompt``'s tokens; speech at its ``prompt``'s tokens only
        (the audio's length is unknown before). None when ``price`` is None (unpriced).
        """
        if self.kind == "text":
            chars = sum(len(text_of(m.get("content"))) for m in self.wire.get("messages", []))  # images: no chars
            max_tokens = int(self.wire.get("max_tokens") or 0)
        else:
            chars, max_tokens = len(prompt or ""), 0
        return estimate_cost(price, prompt_tokens=math.ceil(chars / CHARS_PER_TOKEN), max_tokens=max_tokens,
                             images=1 if self.kind == "image" else 0)


def check_model(model: Any) -> str | None:
    """A model name stripped, or None for "the default".

    Raises:
        InvalidRequest: not text, or longer than ``MODEL_NAME_CHARS``.
    """
    if model is None or (isinstance(model, str) and not model.strip()):
        return None
    if not isinstance(model, str) or len(model) > MODEL_NAME_CHARS:
        raise InvalidRequest(f"{str(model)[:40]!r} is not a model name.", "Pick a model from the list.")
    return model.strip()


def _check_int(name: str, value: Any, lo: int, hi: int, hint: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi):
        raise InvalidRequest(f"{name} must be a whole number from {lo} to {hi}, not {value!r}.", hint)


@dataclass(frozen=True)
class TextRequest:
    """A chat completion, whole (``pipeline.run``) or streamed (``pipeline.stream``).

    Attributes:
        prompt: The user's message (1 to ``max_prompt_chars`` characters).
        model: A model name; None = the backend's default.
        system: Optional system prompt.
        history: Earlier turns ``[{"role": "user"|"assistant", "content": str}]``; the
            oldest are dropped to fit the request cap (the SDK's 5,000 characters). A
            user turn may carry ``"images"`` (as the Playground's message contract:
            ``[{"name", "mime", "data": bytes}]``), re-sent while the request's image
            caps allow (``gateway.vision``).
        images: Images attached to ``prompt`` (``vision.ImageInput`` or contract
            dicts): at most ``vision.MAX_IMAGES``, each checked by its bytes
            (``vision.check_image``); with images the prompt may be empty. Only a
            model whose input modalities include images may get them (the pipeline
            checks before anything is sent).
        max_tokens: 1 to ``MAX_TOKENS_LIMIT``; None = ``DEFAULT_MAX_TOKENS``.
        temperature: 0.0 to 2.0; None = the model's default.
        seed: 0 to ``SEED_MAX`` for a repeatable answer.
        context: What the request belongs to, recorded on its event and never part of
            the cache key: ``"chat:<id>"``, ``"comparison:<id>"``, ``"batch:<job_id>"``,
            "" when nothing (``gateway.event_detail``).
    """

    prompt: str
    model: str | None = None
    system: str | None = None
    history: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    context: str = ""
    images: tuple[ImageInput | dict[str, Any], ...] = ()

    kind = "text"

    @property
    def has_images(self) -> bool:
        """Whether the request carries images (its own, or an earlier user turn's)."""
        return bool(self.images) or any(isinstance(m, dict) and m.get("role") == "user" and m.get("images")
                                        for m in self.history or [])

    @property
    def event_prompt(self) -> str | None:
        """What the usage store may keep of the request (truncated there)."""
        return self.prompt if isinstance(self.prompt, str) else None

    def problems(self, max_prompt_chars: int) -> list[InvalidRequest]:
        """Every rule this request breaks, in field order (empty: it can be sent).

        Batch's preview lists them all per row; ``validate`` raises the first.
        """
        limit = max_prompt_chars
        found: list[InvalidRequest] = []

        def check(fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except InvalidRequest as err:
                found.append(err)

        prompt = self.prompt
        if self.has_images:
            check(check_images, self.images)
            for msg in self.history or []:
                if isinstance(msg, dict) and msg.get("role") == "user" and msg.get("images"):
                    check(check_images, msg["images"])
        if not isinstance(prompt, str) or (not prompt.strip() and not self.images):
            found.append(InvalidRequest("The prompt is empty.", "Type a question or an instruction first."))
        elif len(prompt) > limit:
            found.append(InvalidRequest(f"The prompt has {len(prompt):,} characters; the limit is {limit:,}.",
                                        "Shorten it, or split it into several requests."))
        elif isinstance(self.system, str) and len(prompt.strip()) + len(self.system.strip()) > limit:
            fixed = len(prompt.strip()) + len(self.system.strip())
            found.append(InvalidRequest(
                f"The system prompt and the prompt together have {fixed:,} characters; the limit is {limit:,}.",
                "Shorten the system prompt or the prompt."))
        for name, text in (("prompt", prompt), ("system prompt", self.system)):
            if isinstance(text, str) and "\x00" in text:  # PostgreSQL cannot store one; no model reads one
                found.append(InvalidRequest(f"The {name} contains a NUL character (\\x00).",
                                            "Remove it: it usually comes from binary data pasted or "
                                            "uploaded as text."))
        t = self.temperature
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 2.0):
            found.append(InvalidRequest(f"temperature must be between 0.0 and 2.0, not {t!r}.",
                                        "Use 0 for focused answers, 1 for the default, up to 2 for varied ones."))
        check(_check_int, "max_tokens", self.max_tokens, 1, MAX_TOKENS_LIMIT, "Pick a value in range.")
        check(_check_int, "seed", self.seed, 0, SEED_MAX,
              "Leave it empty for a random answer, or pick a number to repeat one.")
        if self.system is not None and not isinstance(self.system, str):
            found.append(InvalidRequest("The system prompt must be text.", "Type it as plain text."))
        check(check_model, self.model)
        return found

    def validate(self, max_prompt_chars: int) -> None:
        """Check everything but the model's existence.

        Raises:
            InvalidRequest: the first of ``problems``: what is wrong, and what to do.
        """
        if found := self.problems(max_prompt_chars):
            raise found[0]

    def messages(self, max_prompt_chars: int) -> list[dict[str, Any]]:
        """The messages sent: system, the newest history that fits, then the prompt."""
        return self._layout(max_prompt_chars)[0]

    def _layout(self, max_prompt_chars: int) -> tuple[list[dict[str, Any]], dict[int, tuple[ImageInput, ...]]]:
        """``(messages, {message index: its images})``: a user turn with images has a
        content array (``vision.content_parts``). The character budget counts text only;
        earlier turns' images are re-sent newest first while the request holds at most
        ``MAX_REQUEST_IMAGES`` images and ``MAX_REQUEST_IMAGE_BYTES``, and a turn whose
        images no longer fit says so in its text."""
        system = (self.system or "").strip()
        head = [{"role": "system", "content": system}] if system else []
        own = check_images(self.images) if self.images else ()
        prompt = self.prompt.strip()
        tail = [{"role": "user", "content": content_parts(prompt, own) if own else prompt}]
        budget = max_prompt_chars - len(system) - len(prompt)
        count, nbytes = len(own), sum(len(i.data) for i in own)
        history: list[tuple[dict[str, Any], tuple[ImageInput, ...]]] = []
        for msg in reversed(self.history or []):  # keep the newest history that fits
            if not isinstance(msg, dict) or msg.get("role") not in {"user", "assistant"}:
                continue
            content = str(msg.get("content") or "").strip()
            pictures: tuple[ImageInput, ...] = ()
            if msg["role"] == "user" and msg.get("images"):
                try:
                    pictures = check_images(msg["images"])
                except InvalidRequest:  # problems() names it; messages() alone never raises
                    pictures = ()
                size = sum(len(i.data) for i in pictures)
                if count + len(pictures) > MAX_REQUEST_IMAGES or nbytes + size > MAX_REQUEST_IMAGE_BYTES:
                    note = f"[{len(pictures)} image(s) attached here are not re-sent: over this request's image limit]"
                    content, pictures = f"{content}\n{note}".strip(), ()
                count, nbytes = count + len(pictures), nbytes + (size if pictures else 0)
            if (not content and not pictures) or len(content) > budget:
                break
            budget -= len(content)
            history.insert(0, ({"role": msg["role"], "content": content_parts(content, pictures) if pictures
                                else content}, pictures))
        messages = head + [m for m, _ in history] + tail
        images = {len(head) + i: pics for i, (_, pics) in enumerate(history) if pics}
        if own:
            images[len(messages) - 1] = own
        return messages, images

    def prepare(self, model: str, max_prompt_chars: int) -> Prepared:
        """Validate and resolve (``model`` is the name to send).

        Streamed and whole answers share keys: the answer is the same either way.

        Raises:
            InvalidRequest: as ``validate``.
        """
        self.validate(max_prompt_chars)
        messages, images = self._layout(max_prompt_chars)
        extra: dict[str, Any] = {}
        if self.temperature is not None:
            extra["temperature"] = float(self.temperature)
        if self.seed is not None:
            extra["seed"] = self.seed
        max_tokens = self.max_tokens or DEFAULT_MAX_TOKENS
        return Prepared("text", model, {"kind": "text", "model": model, "messages": key_messages(messages, images),
                                        "max_tokens": max_tokens, **extra},
                        wire={"messages": messages, "max_tokens": max_tokens, "extra": extra})


@dataclass(frozen=True)
class ImageRequest:
    """One image.

    Attributes:
        prompt: What to draw; it travels in the URL, so its URL-encoded length is
            capped at ``IMAGE_PROMPT_URL_CHARS``.
        model: A model name; None = the backend's default.
        width / height: Pixels, ``IMAGE_MIN_PX`` to ``IMAGE_MAX_PX`` (the SDK's bounds).
        seed: 0 to ``SEED_MAX``; None picks one at random at ``prepare`` (returned in
            the result), so "generate again" gives a new image.
        context: What the request belongs to, recorded on its event and never part of
            the cache key: ``"chat:<id>"``, ``"comparison:<id>"``, ``"batch:<job_id>"``,
            "" when nothing (``gateway.event_detail``).
    """

    prompt: str
    model: str | None = None
    width: int = 1024
    height: int = 1024
    seed: int | None = None
    context: str = ""

    kind = "image"

    @property
    def event_prompt(self) -> str | None:
        """What the usage store may keep of the request."""
        return self.prompt if isinstance(self.prompt, str) else None

    def validate(self, max_prompt_chars: int) -> None:
        """Check everything but the model's existence.

        Raises:
            InvalidRequest: what is wrong, and what to do.
        """
        prompt = self.prompt
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequest("The image prompt is empty.", "Describe the picture you want first.")
        encoded = len(quote(prompt.strip(), safe=""))
        if len(prompt) > max_prompt_chars or encoded > IMAGE_PROMPT_URL_CHARS:
            raise InvalidRequest(
                f"The image prompt is too long: {len(prompt):,} characters, {encoded:,} once URL-encoded; "
                f"an image prompt travels in the URL, which holds {IMAGE_PROMPT_URL_CHARS:,}.",
                "Shorten the description (spaces and punctuation count three times).")
        for name, value in (("width", self.width), ("height", self.height)):
            if isinstance(value, bool) or not isinstance(value, int) or not IMAGE_MIN_PX <= value <= IMAGE_MAX_PX:
                raise InvalidRequest(f"{name} must be {IMAGE_MIN_PX} to {IMAGE_MAX_PX} pixels, not {value!r}.",
                                     "Pick a size in range.")
        _check_int("seed", self.seed, 0, SEED_MAX, "Leave it empty for a random image.")
        check_model(self.model)

    def prepare(self, model: str, max_prompt_chars: int) -> Prepared:
        """Validate and resolve; a missing seed is drawn here.

        Raises:
            InvalidRequest: as ``validate``.
        """
        self.validate(max_prompt_chars)
        random_parts = ("seed",) if self.seed is None else ()  # replay-only: any recorded seed will do
        seed = random.randint(0, SEED_MAX) if self.seed is None else self.seed
        prompt = self.prompt.strip()
        params = {"prompt": prompt, "width": self.width, "height": self.height, "seed": seed}
        return Prepared("image", model, {"kind": "image", "model": model, **params}, random_parts, wire=params)


@dataclass(frozen=True)
class SpeechRequest:
    """Text read aloud by a chat model with audio output (``openai-audio``).

    Attributes:
        text: What to say, 1 to ``MAX_SPEECH_CHARS`` characters (and at most
            ``max_prompt_chars``).
        voice: One of ``sdk.speech.VOICES``.
        audio_format: ``"wav"`` or ``"mp3"``.
        model: A model with audio output; None = the first the backend lists.
        context: What the request belongs to, recorded on its event and never part of
            the cache key: ``"chat:<id>"``, ``"comparison:<id>"``, ``"batch:<job_id>"``,
            "" when nothing (``gateway.event_detail``).
    """

    text: str
    voice: str = "alloy"
    audio_format: str = "wav"
    model: str | None = None
    context: str = ""

    kind = "audio"

    @property
    def event_prompt(self) -> str | None:
        """What the usage store may keep of the request."""
        return self.text if isinstance(self.text, str) else None

    def validate(self, max_prompt_chars: int) -> tuple[str, str, str]:
        """Check the text, voice, format (``sdk.speech.validate_speech``) and model name.

        Returns:
            ``(text stripped, voice, format)`` as they are sent.

        Raises:
            InvalidRequest: what is wrong, and what to do.
        """
        checked = validate_speech(self.text, self.voice, self.audio_format,
                                  max_chars=min(MAX_SPEECH_CHARS, max_prompt_chars))
        check_model(self.model)
        return checked

    def prepare(self, model: str, max_prompt_chars: int) -> Prepared:
        """Validate and resolve.

        Raises:
            InvalidRequest: as ``validate``.
        """
        text, voice, audio_format = self.validate(max_prompt_chars)
        params = {"text": text, "voice": voice, "format": audio_format}
        return Prepared("audio", model, {"kind": "audio", "model": model, **params},
                        wire={"body": speech_body(text, model=model, voice=voice, audio_format=audio_format),
                              "voice": voice, "audio_format": audio_format})


Request = TextRequest | ImageRequest | SpeechRequest

__all__ = [
    "CHARS_PER_TOKEN", "DEFAULT_MAX_TOKENS", "IMAGE_MAX_PX", "IMAGE_MIN_PX", "IMAGE_PROMPT_URL_CHARS", "KIOSK_PREFIX",
    "MAX_TOKENS_LIMIT",
    "SEED_MAX", "Caller", "ImageRequest", "Prepared", "Request", "SpeechRequest", "TextRequest", "check_model",
]
