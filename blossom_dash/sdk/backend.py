"""A backend: a ``BlossomClient`` aimed at one base URL, plus the error mapping.

All coroutines here run on the service's ``LoopThread``. ``to_dash_error`` turns
whatever the SDK, httpx or the backend produced into one of ``errors``' types with a
message a person can act on (BLOSSOM_SDK.md, "Errors", lists what can come back).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from blossom_ai import BlossomClient, BlossomError, EmptyResponseError
from blossom_ai import ValidationError as SdkValidationError
from blossom_ai.core.config import ENDPOINTS, SessionConfig
from blossom_ai.core.models import DEFAULT_IMAGE_MODELS, DEFAULT_TEXT_MODELS

from ..errors import (
    AuthenticationFailed,
    BackendUnavailable,
    DashError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
)
from .transport import NoLimiter, Observation, ObservingHttpClient, SdkLogger, current_observation

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

    def __init__(self, *, name: str, base_url: str, api_key: str | None, timeout_s: float) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
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

    @property
    def label(self) -> str:
        """How pages name the backend, e.g. ``demo (http://127.0.0.1:40123)``."""
        return f"{self.name} ({self.base_url})"

    async def chat(self, messages: list[dict[str, Any]], *, model: str, max_tokens: int,
                   extra: dict[str, Any]) -> str:
        """One chat completion through the SDK; ``usage`` lands in the observation."""
        # temperature and seed travel in extra_params: the SDK prints a 35 KB banner
        # for every temperature != 1.0 passed the documented way.
        return await self.client.text.chat(messages, model=model, max_tokens=max_tokens, extra_params=extra)

    async def stream_chat(self, body: dict[str, Any], emit: Callable[[StreamChunk], None]) -> None:
        """Stream a chat completion, calling ``emit`` for each SSE frame as it arrives.

        The SDK's ``stream=True`` joins the whole answer before returning, so the SSE
        is read here from the SDK's own HTTP client.

        Raises:
            httpx.HTTPStatusError: the backend answered with an error status.
            UpstreamError: a frame was not JSON, or the stream ended without [DONE].
        """
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        async with self.http.stream("POST", ENDPOINTS.TEXT_CHAT, json=body, headers=headers) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
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
        resp = await self.http.get(url, timeout=5.0)
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


def _upstream_message(body: str) -> str:
    """The human part of an error body in Pollinations' or OpenAI's shapes."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:200]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err.get("code") or "")[:300]
        return str(data.get("message") or err or "")[:300]
    return ""


def to_dash_error(exc: BaseException, obs: Observation | None, *, backend: Backend, model: str,
                  timeout_s: float) -> DashError:
    """Map anything a backend call raised to a ``DashError``.

    The observation is trusted first: the SDK turns a 429 into ``TypeError`` and a 402
    into a bare ``BlossomError``, but the transport saw the real status.

    Args:
        exc: What the call raised.
        obs: What the transport recorded during the call.
        backend: The backend that was called (named in messages).
        model: The model that was asked for.
        timeout_s: The deadline that applied, for the timeout message.

    Returns:
        The error to raise; never raises itself.
    """
    if isinstance(exc, DashError):
        return exc
    status = obs.status_code if obs is not None else None
    if status is None and isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
    detail = _upstream_message(obs.error_body) if obs is not None and obs.error_body else ""
    said = f" It said: “{detail}”" if detail else ""
    where = backend.label
    if status is not None and status >= 400:
        if status == 429:
            wait = obs.retry_after_s if obs is not None and obs.retry_after_s is not None else 60.0
            return RateLimited(
                f"{where} is rate-limiting requests (HTTP 429).{said}",
                f"Wait {wait:.0f} s and try again. With Pollinations, a secret key (sk_) is not rate-limited.",
                retry_after_s=max(wait, 0.001), scope="upstream", status_code=429,
            )
        if status in (401, 403):
            what = "rejected the API key" if status == 401 else "does not allow this key to do that"
            return AuthenticationFailed(
                f"{where} {what} (HTTP {status}).{said}",
                "Check POLLINATIONS_API_KEY, or enter a key for this session on the Controls page.",
                status_code=status,
            )
        if status == 402:
            return UpstreamError(
                f"{where} says the account has no balance left (HTTP 402 Payment Required).{said}",
                "Top up the key's balance at enter.pollinations.ai, use another key, or pick a free model.",
                status_code=402,
            )
        if status in (400, 404, 422) and ("model" in detail.lower() or status == 404):
            return InvalidRequest(
                f"Model {model!r} is not available on {where} (HTTP {status}).{said}",
                "Pick a model from the list on the page.",
                status_code=status,
            )
        if status < 500:
            return InvalidRequest(
                f"{where} refused the request (HTTP {status}).{said}",
                "Check the prompt and parameters, then try again.",
                status_code=status,
            )
        err = UpstreamError(
            f"{where} failed to answer (HTTP {status}).{said}",
            "The problem is on the backend's side: try again in a moment, or pick another model.",
            status_code=status,
        )
        err.retry_after_s = obs.retry_after_s if obs is not None else None
        return err
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError, httpx.TimeoutException)):
        return BackendUnavailable(
            f"{where} did not answer within {timeout_s:.0f} s.",
            "The model may be overloaded: try again, pick a faster model, or raise the timeout.",
        )
    if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)) or (
        isinstance(exc, BlossomError) and "connection" in str(exc).lower()
    ):
        return BackendUnavailable(
            f"Cannot reach {where}: the connection failed or was dropped.",
            "Check that the backend is running and reachable, or switch backend on the Controls page.",
        )
    if isinstance(exc, httpx.RequestError):
        return BackendUnavailable(
            f"The request to {where} failed: {type(exc).__name__}.",
            "Check the network and the backend, then try again.",
        )
    if isinstance(exc, SdkValidationError):
        return InvalidRequest(f"The request was refused before sending: {getattr(exc, 'message', exc)}",
                              "Check the prompt and parameters.")
    if isinstance(exc, EmptyResponseError):
        return UpstreamError(
            f"Model {model!r} on {where} returned an empty answer.",
            "Try again, raise max tokens, or pick another model.",
            status_code=status or 200,
        )
    if isinstance(exc, BlossomError) and ("json" in str(exc).lower() or "parse" in str(exc).lower()):
        return UpstreamError(
            f"{where} sent a response that could not be read (not the JSON an answer should be).",
            "Try again; if it persists, the backend is misbehaving: pick another model or backend.",
            status_code=status or 200,
        )
    if isinstance(exc, BlossomError):
        message = getattr(exc, "message", None) or str(exc).splitlines()[0]
        return UpstreamError(f"{where}: {message}", "Try again, or pick another model.", status_code=status)
    return UpstreamError(
        f"Unexpected failure talking to {where}: {type(exc).__name__}: {str(exc)[:200]}",
        "Try again; if it keeps happening, report it with the request id.",
        status_code=status,
    )


__all__ = ["STATIC_MODELS", "TRANSIENT_STATUS", "Backend", "StreamChunk", "current_observation", "to_dash_error"]
