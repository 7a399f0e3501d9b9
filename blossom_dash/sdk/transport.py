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
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import threading
import time
from collections.abc import Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from blossom_ai.core.config import ENDPOINTS, SessionConfig
from blossom_ai.core.models import ImageModel, TextModel
from blossom_ai.utils.http_client import HttpxClient

T = TypeVar("T")

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
    def _observe(response: httpx.Response) -> None:
        obs = current_observation.get()
        if obs is None:
            return
        obs.status_code = response.status_code
        body = response.content
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
        """Send a request (see ``HttpxClient.request``), recording the response."""
        url = self._validate_url(self._prepare(url, kwargs))
        response = await self._async_client.request(method, url, **kwargs)
        self._observe(response)
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
                    body = await response.aread()
                    obs.error_body = body[:2048].decode("utf-8", errors="replace")
                    obs.retry_after_s = parse_retry_after(response.headers, body)
            yield response


class LoopThread:
    """One asyncio event loop running forever in a daemon thread.

    Args:
        name: Thread name (shows in py-spy and thread dumps).
    """

    def __init__(self, name: str = "blossom-dash-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Schedule ``coro`` on the loop; returns a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[return-value]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result.

        Raises:
            concurrent.futures.TimeoutError: ``timeout`` seconds passed (the coroutine
                is cancelled).
            Exception: whatever the coroutine raised.
        """
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except BaseException:
            fut.cancel()
            raise

    @property
    def alive(self) -> bool:
        """Whether the loop thread is running."""
        return self._thread.is_alive() and not self.loop.is_closed()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and join its thread (pending tasks are cancelled)."""
        if self.loop.is_closed():
            return

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(_cancel_all(), timeout=timeout)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


def monotonic_ms() -> float:
    """A monotonic clock reading in milliseconds."""
    return time.perf_counter() * 1000.0
