"""The seam between the blossom-ai SDK and the network.

Three things the SDK needs around it to behave in a long-lived Streamlit process
(BLOSSOM_SDK.md):

- ``LoopThread``: one asyncio loop in a daemon thread that owns the client; every
  call is submitted with ``run_coroutine_threadsafe``. The SDK's sync API runs
  ``asyncio.run()`` per call and breaks its pooled connections, so it is never used.
- ``ObservingHttpClient``: the ``http_client`` injected into ``BlossomClient``. It
  points the SDK's hard-coded ``https://gen.pollinations.ai`` endpoints at the chosen
  backend, adds a per-session API key, and records what the SDK throws away: the
  real status, ``Retry-After``, the error body, bytes and token ``usage``.
- ``SdkLogger`` and ``NoLimiter``: keep the SDK's logging off stdout and the root
  logger, and switch off its limiter (ours is exact; the SDK's waits 30 s then sends
  anyway).

Every body is read through a size cap (``Observation.max_bytes``): a backend that
answers with 50 MB is refused with ``ResponseTooLarge`` once the cap is crossed,
without holding the rest in memory. The event loop itself is in ``loop.py``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from blossom_ai.core.config import ENDPOINTS, SessionConfig
from blossom_ai.core.models import ImageModel, TextModel
from blossom_ai.utils.http_client import HttpxClient

from ..errors import ResponseTooLarge

#: Response headers that describe the wire encoding of a body we have already decoded.
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})

_sdk_log = logging.getLogger("blossom_dash.sdk")
# Neither our SDK logger nor the SDK's module logger ("blossom_ai", which warns about
# model lists) may reach the root logger, Streamlit's console or stdout.
for _name in ("blossom_dash.sdk", "blossom_ai"):
    logging.getLogger(_name).propagate = False
    logging.getLogger(_name).addHandler(logging.NullHandler())


def pin_sdk_model_lists() -> None:
    """Stop the SDK from fetching its model lists from gen.pollinations.ai.

    ``TextModel.from_string`` (called on every request) refreshes a class-level model
    cache every 4 hours with a *blocking* ``requests`` GET to the real API, whatever
    backend is configured: it would stall the event loop for up to 5 s and send
    traffic off the machine. The service fetches model lists itself through the
    injected client, so the SDK's cache is marked fresh forever with its defaults.
    """
    for cls in (TextModel, ImageModel):
        cache = cls._cache
        with cache.sync_lock:
            for name in cls.get_defaults():
                cache._add_known_unsafe(name)
            cache.initialized = True
            cache.timestamp = math.inf


pin_sdk_model_lists()


class SdkLogger:
    """A logger object for the SDK (its ``LoggerProtocol``) that stays quiet.

    Everything goes to the non-propagating ``blossom_dash.sdk`` logger at DEBUG, so
    prompts the SDK logs never reach stdout or the root logger.
    """

    def _emit(self, message: str, kwargs: dict[str, Any]) -> None:
        if _sdk_log.isEnabledFor(logging.DEBUG):
            _sdk_log.debug("%s %s", message, {k: v for k, v in kwargs.items() if k != "prompt"})

    def debug(self, message: str, **kwargs: Any) -> None:
        self._emit(message, kwargs)

    info = warning = error = critical = debug


class NoLimiter:
    """The SDK's rate-limiter interface, admitting everything at once."""

    requests_per_minute = 0

    async def acquire(self, key: str = "default") -> bool:
        return True

    async def acquire_with_wait(self, key: str = "default", timeout: float | None = None) -> bool:
        return True

    async def release(self, key: str = "default") -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass
class Observation:
    """What the transport saw of one service call (the last HTTP exchange wins).

    Attributes:
        api_key: Key to send instead of the configured one (per session), or None.
        timeout_s: HTTP read timeout for the call's requests (the SDK passes none).
        extra_headers: Headers added to every request of the call.
        status_code: HTTP status of the last response, None if none arrived.
        retry_after_s: ``Retry-After`` header or ``retryAfterSeconds`` body field.
        error_body: The first 2 KB of an error response, for the message.
        usage: ``usage`` from a JSON chat response, as sent.
        nbytes: Response body size.
        attempts: HTTP requests made during the call.
        max_bytes: Largest body accepted (``ResponseTooLarge`` beyond it); None = no cap.
        where: The backend's label, for messages.
        quote: Whether a line of the backend's error body may be quoted in messages
            (only for allow-listed backends).
    """

    api_key: str | None = None
    timeout_s: float | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    status_code: int | None = None
    retry_after_s: float | None = None
    error_body: str = ""
    usage: dict[str, Any] | None = None
    nbytes: int = 0
    attempts: int = 0
    max_bytes: int | None = None
    where: str = "The backend"
    quote: bool = True


current_observation: contextvars.ContextVar[Observation | None] = contextvars.ContextVar(
    "blossom_dash_observation", default=None
)


def parse_retry_after(headers: httpx.Headers, body: bytes) -> float | None:
    """Seconds to wait, from ``Retry-After`` (delta-seconds, RFC 9110 §10.2.3) or
    Pollinations' ``retryAfterSeconds`` body field. None when neither is usable."""
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass  # an HTTP-date: rare upstream; fall through to the body
    if body[:1] == b"{":
        try:
            seconds = json.loads(body).get("retryAfterSeconds")
            return max(0.0, float(seconds)) if seconds is not None else None
        except (ValueError, AttributeError, TypeError):
            return None
    return None


class ObservingHttpClient(HttpxClient):
    """``HttpxClient`` aimed at ``base_url`` that records each exchange.

    Args:
        config: The SDK session config (timeouts, pool sizes, default key).
        base_url: Where requests for ``https://gen.pollinations.ai`` really go.
    """

    def __init__(self, config: SessionConfig, base_url: str) -> None:
        super().__init__(config, SdkLogger())
        self.base_url = base_url.rstrip("/")

    def _prepare(self, url: str, kwargs: dict[str, Any]) -> str:
        if url.startswith(ENDPOINTS.BASE):
            url = self.base_url + url[len(ENDPOINTS.BASE):]
        obs = current_observation.get()
        if obs is not None:
            headers = dict(kwargs.get("headers") or {})
            headers.update(obs.extra_headers)
            if obs.api_key:
                headers["Authorization"] = f"Bearer {obs.api_key}"
            kwargs["headers"] = headers
            if obs.timeout_s is not None and "timeout" not in kwargs:
                kwargs["timeout"] = obs.timeout_s
            obs.attempts += 1
        return url

    def _validate_url(self, url: str) -> str:
        """The SDK's checks, but ``..`` counts as traversal only as a whole path segment.

        The SDK rejects any URL containing ``..``, so an image prompt such as "A cat...
        and a dog" (quoted into the path, where ``.`` stays as it is) would fail.
        """
        segments = httpx.URL(url).path.split("/")
        if ".." in segments:
            raise ValueError("Path traversal detected in URL")
        return super()._validate_url(url.replace("..", "%2E%2E")).replace("%2E%2E", "..")

    @staticmethod
    def _observe(response: httpx.Response, body: bytes) -> None:
        obs = current_observation.get()
        if obs is None:
            return
        obs.status_code = response.status_code
        obs.nbytes = len(body)
        if response.status_code >= 400:
            obs.error_body = body[:2048].decode("utf-8", errors="replace")
            obs.retry_after_s = parse_retry_after(response.headers, body)
        elif body[:1] == b"{" and b'"usage"' in body:
            try:
                usage = json.loads(body).get("usage")
                obs.usage = usage if isinstance(usage, dict) else None
            except (ValueError, AttributeError):
                obs.usage = None

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send a request (see ``HttpxClient.request``), reading the body under the size cap.

        Returns:
            A response whose body is already read (``.content``, ``.json()`` work).

        Raises:
            ResponseTooLarge: the body passed ``Observation.max_bytes``.
            httpx.HTTPStatusError: an error status (after it was recorded).
            httpx.HTTPError: transport failures.
        """
        url = self._validate_url(self._prepare(url, kwargs))
        async with self._async_client.stream(method, url, **kwargs) as streamed:
            body = await read_capped(streamed)
        response = httpx.Response(
            streamed.status_code, content=body, request=streamed.request, extensions=streamed.extensions,
            headers=[(k, v) for k, v in streamed.headers.multi_items() if k.lower() not in _WIRE_HEADERS],
        )
        self._observe(response, body)
        response.raise_for_status()
        return response

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """GET through ``request``."""
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        """POST through ``request``."""
        return await self.request("POST", url, **kwargs)

    @asynccontextmanager
    async def stream(self, method: str, url: str, **kwargs: Any):  # type: ignore[override]
        """Open a streaming response; an error status is read and recorded first."""
        url = self._validate_url(self._prepare(url, kwargs))
        async with self._async_client.stream(method, url, **kwargs) as response:
            obs = current_observation.get()
            if obs is not None:
                obs.status_code = response.status_code
                if response.status_code >= 400:
                    body = await read_capped(response)
                    obs.error_body = body[:2048].decode("utf-8", errors="replace")
                    obs.retry_after_s = parse_retry_after(response.headers, body)
            yield response


async def read_capped(response: httpx.Response) -> bytes:
    """The decoded body of a streamed response, refused past ``Observation.max_bytes``.

    Raises:
        ResponseTooLarge: the declared Content-Length or the bytes read passed the cap
            (the connection is then closed by the caller's ``async with``).
    """
    obs = current_observation.get()
    limit = obs.max_bytes if obs is not None else None
    if limit is not None:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLarge.over(limit, obs.where if obs is not None else "The backend")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if limit is not None and size > limit:
            raise ResponseTooLarge.over(limit, obs.where if obs is not None else "The backend")
        chunks.append(chunk)
    return b"".join(chunks)


async def iter_lines_capped(response: httpx.Response) -> AsyncIterator[str]:
    """The lines of a streamed body (``\\n`` or ``\\r\\n``), under the same size cap.

    httpx's own ``aiter_lines`` buffers a line however long it grows; this counts every
    byte, so one endless line is refused at the cap rather than filling memory.

    Raises:
        ResponseTooLarge: more than ``Observation.max_bytes`` arrived.
    """
    obs = current_observation.get()
    limit = obs.max_bytes if obs is not None else None
    size = 0
    pending = bytearray()  # amortised appends: a long line costs O(n), not O(n^2)
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if limit is not None and size > limit:
            raise ResponseTooLarge.over(limit, obs.where if obs is not None else "The backend")
        pending += chunk
        if b"\n" not in chunk:
            continue
        *lines, rest = bytes(pending).split(b"\n")
        pending = bytearray(rest)
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", errors="replace")
