"""A backend: a ``BlossomClient`` aimed at one base URL, and its wire calls.

All coroutines here run on the service's ``LoopThread``, inside an observation
(``sdk.call``), which applies the deadline, the retries and the error mapping
(``sdk.mapping``).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from blossom_ai import BlossomClient
from blossom_ai.core.config import ENDPOINTS, SessionConfig
from blossom_ai.core.models import DEFAULT_IMAGE_MODELS, DEFAULT_TEXT_MODELS

from ..errors import (
    AuthenticationFailed,
    UpstreamError,
)
from .transport import NoLimiter, ObservingHttpClient, SdkLogger, iter_lines_capped

#: Status codes worth one more attempt (the SDK's own retry set, RETRYABLE_HTTP_CODES).
TRANSIENT_STATUS = frozenset({502, 503, 504, 522})

#: Fallback model lists when a backend does not answer its model endpoints.
STATIC_MODELS: dict[str, list[str]] = {
    "text": list(DEFAULT_TEXT_MODELS),
    "image": list(DEFAULT_IMAGE_MODELS),
}


@dataclass(frozen=True)
class StreamChunk:
    """One parsed SSE frame: a content delta, and ``usage`` on the final frame."""

    delta: str = ""
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None


class Backend:
    """One live backend.

    Args:
        name: ``demo``, ``pollinations`` or ``custom`` (shown on every page).
        base_url: Where the SDK's requests go.
        api_key: Default key for this backend (a session may override it per call).
        timeout_s: HTTP read timeout of one request, seconds.

    Raises:
        AuthenticationFailed: the key is malformed (the SDK refuses keys under 8 chars).
    """

    def __init__(self, *, name: str, base_url: str, api_key: str | None, timeout_s: float,
                 trusted: bool = True) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        #: Whether its error bodies may be quoted in messages (an allow-listed backend).
        self.trusted = trusted
        try:
            self.config = SessionConfig(
                api_key=api_key,
                timeout=timeout_s,
                max_retries=1,  # the service retries, honouring Retry-After
                cache_enabled=False,  # the service caches; the SDK's pins seed 42
            )
            self.http = ObservingHttpClient(self.config, self.base_url)
        except ValueError as exc:
            raise AuthenticationFailed(
                f"The API key was refused before sending anything: {exc}.",
                "Paste the whole key (sk_... or pk_...) from enter.pollinations.ai.",
            ) from exc
        self.client = BlossomClient(
            config=self.config, http_client=self.http, logger=SdkLogger(), rate_limiter=NoLimiter()
        )

    @functools.cached_property
    def shown_url(self) -> str:
        """``base_url`` without any ``user:password@``: what pages, logs and exports show.

        Computed once: parsing the URL costs ~45 µs, and every request names its backend
        several times (its circuit breaker, its event), a tenth of a cache miss's overhead.
        """
        return redact_url(self.base_url)

    @property
    def label(self) -> str:
        """How pages name the backend, e.g. ``demo (http://127.0.0.1:40123)`` (no credentials)."""
        return f"{self.name} ({self.shown_url})"

    async def chat(self, messages: list[dict[str, Any]], *, model: str, max_tokens: int,
                   extra: dict[str, Any]) -> str:
        """One chat completion through the SDK; ``usage`` lands in the observation.

        Messages with a content array (``image_url`` parts, ``gateway.vision``) are posted
        through the SDK's own HTTP client (its URL, key, size cap and observation) and
        its own response parser, but not through ``client.text.chat``: that sums
        ``len(str(content))`` of every message against its 5,000-character cap
        (``ChatParamsV2.to_body``), so the base64 of any image over ~3.5 KB would fail.
        The body is the one the SDK builds (model, messages, max_tokens, extra_params).
        """
        if any(isinstance(m.get("content"), list) for m in messages):
            body = {"model": model, "messages": messages, "max_tokens": max_tokens, **extra}
            resp = await self.http.post(ENDPOINTS.TEXT_CHAT, json=body, headers={"Content-Type": "application/json"})
            return self.client.text._parse_response(resp)  # the SDK's parser: its errors, mapped as for chat
        # temperature and seed travel in extra_params: the SDK prints a 35 KB banner
        # for every temperature != 1.0 passed the documented way.
        return await self.client.text.chat(messages, model=model, max_tokens=max_tokens, extra_params=extra)

    async def stream_chat(self, body: dict[str, Any], emit: Callable[[StreamChunk], None],
                          stopped: Callable[[], bool] = lambda: False) -> None:
        """Stream a chat completion, calling ``emit`` for each SSE frame as it arrives.

        The SDK's ``stream=True`` joins the whole answer before returning, so the SSE
        is read here from the SDK's own HTTP client. ``stopped()`` is checked after
        every line: a stream its reader stopped returns normally, so the response is
        closed by its ``async with`` rather than by a cancellation, which with httpx
        0.28 / httpcore 1.0 left the connection held (100 of 100 pooled connections
        after 200 streams stopped after two deltas).

        Raises:
            httpx.HTTPStatusError: the backend answered with an error status.
            ResponseTooLarge: the stream passed ``Observation.max_bytes``.
            UpstreamError: a frame was not JSON, or the stream ended without [DONE].
        """
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        first, done = True, False
        async with self.http.stream("POST", ENDPOINTS.TEXT_CHAT, json=body, headers=headers) as resp:
            resp.raise_for_status()
            async for line in iter_lines_capped(resp):
                if stopped():
                    return
                if done or not line.startswith("data:"):
                    continue  # after [DONE], read the body to its end: the connection goes back to the pool
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    continue
                try:
                    frame = json.loads(data)
                except ValueError as exc:
                    raise UpstreamError(
                        "The backend sent a stream frame that is not JSON.",
                        "Try again without streaming, or pick another model.",
                        status_code=resp.status_code,
                    ) from exc
                choice = (frame.get("choices") or [{}])[0] or {}
                delta = (choice.get("delta") or {}).get("content") or ""
                usage = frame.get("usage") if isinstance(frame.get("usage"), dict) else None
                if delta or usage or choice.get("finish_reason"):
                    emit(StreamChunk(delta, usage, choice.get("finish_reason")))
                    if delta and first:
                        first = False
                        # Hand the GIL to the page's thread waiting for this delta: without
                        # it the loop first parses the rest of a buffered stream, and the
                        # first delta shows ~0.5 ms later (bench/overhead.py, stream TTFT).
                        time.sleep(0)
        if done:
            return
        raise UpstreamError(
            "The stream ended before the backend said it was done.",
            "The connection dropped mid-answer; try again.",
            status_code=200,
        )

    async def image(self, prompt: str, *, model: str, width: int, height: int, seed: int) -> bytes:
        """Generate one image through the SDK; returns the raw body bytes."""
        return await self.client.image.generate(
            prompt, model=model, width=width, height=height, seed=seed, nologo=True
        )

    async def models(self, kind: str) -> list[str]:
        """Model names from the backend's model endpoint.

        Raises:
            httpx.HTTPError, ValueError: the endpoint failed or sent something else.
        """
        url = ENDPOINTS.TEXT_MODELS if kind == "text" else ENDPOINTS.IMAGE_MODELS
        resp = await self.http.get(url)
        payload = resp.json()
        items = payload.get("data", []) if isinstance(payload, dict) else payload
        names = [str(i.get("id") or i.get("name")) if isinstance(i, dict) else str(i) for i in items]
        names = [n for n in names if n and n != "None"]
        if not names:
            raise ValueError("empty model list")
        return names

    async def close(self) -> None:
        """Close the SDK client and its HTTP pool."""
        await self.client.close()


def redact_url(url: str) -> str:
    """``url`` with its userinfo (``user:password@``) removed; unparsable URLs become ``"(hidden)"``."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "(hidden)"
    return str(parsed.copy_with(username=None, password=None)) if parsed.userinfo else url


__all__ = ["STATIC_MODELS", "TRANSIENT_STATUS", "Backend", "StreamChunk", "redact_url"]
