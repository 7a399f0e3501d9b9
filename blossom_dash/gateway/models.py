"""Model lists: what the backend says it offers, and a labelled fallback when it cannot say.

The SDK's own model lists are static and partly stale (BLOSSOM_SDK.md, "Endpoints"),
so lists are fetched from the backend. A backend's answer is kept for ``ttl_s``; a
failure is never cached as the backend's list: the fallback is marked as such and
kept only ``retry_s``, so a recovered backend is asked again within seconds. Only
Pollinations falls back to the SDK's Pollinations names; a custom or demo backend
that cannot list its models gets an empty list, never names it does not have.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BackendUnavailable
from ..sdk.backend import STATIC_MODELS, Backend
from ..sdk.loop import LoopThread
from ..sdk.speech import FALLBACK_AUDIO_MODELS, audio_models

KINDS = ("text", "image", "audio")


@dataclass(frozen=True)
class ModelList:
    """Model names of one kind, and where they came from.

    Attributes:
        kind: ``"text"``, ``"image"`` or ``"audio"``.
        names: The names, in the backend's order.
        source: ``"backend"`` (its model endpoint answered), ``"recorded"`` (replay-only:
            the models with recordings) or ``"fallback"`` (the endpoint failed).
        detail: Why a fallback is shown, in words ("" otherwise).
    """

    kind: str
    names: tuple[str, ...]
    source: str = "backend"
    detail: str = ""

    @property
    def fallback(self) -> bool:
        """Whether these are not the backend's own names."""
        return self.source == "fallback"


class ModelCatalog:
    """Per-backend, per-kind model lists with a TTL, fetched on the service's loop.

    Args:
        loop: The loop that owns the backends' clients.
        ttl_s: How long a backend's own list is kept, seconds.
        retry_s: How long a fallback is kept before the backend is asked again, seconds.
        clock: Monotonic clock (inject a fake one in tests).
    """

    def __init__(self, loop: LoopThread, *, ttl_s: float = 300.0, retry_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._loop = loop
        self.ttl_s, self.retry_s = ttl_s, retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._lists: dict[tuple[str, str], tuple[float, ModelList]] = {}

    def get(self, backend: Backend, kind: str, *, timeout_s: float = 5.0, skip_fetch: str = "",
            on_fetch: Callable[[bool], None] | None = None) -> ModelList:
        """The model list of ``kind`` on ``backend``.

        Args:
            timeout_s: Longest wait for the backend's endpoint, seconds.
            skip_fetch: When not "", do not ask the backend (its circuit is open) and
                give the fallback with this reason.
            on_fetch: Told, after asking the backend, whether it answered (True for
                any status under 500) or failed (a timeout, a connection error, a 5xx):
                the circuit breaker counts model lists as traffic too.

        Returns:
            ``ModelList``; never raises for a backend failure (that is a fallback).
        """
        cache_key = (backend.base_url, kind)
        with self._lock:
            cached = self._lists.get(cache_key)
            if cached and self._clock() < cached[0]:
                return cached[1]
        if skip_fetch:
            return self._fallback(backend, kind, skip_fetch)
        try:
            fetch = audio_models(backend.http) if kind == "audio" else backend.models(kind)
            names = self._loop.run(asyncio.wait_for(fetch, timeout=max(0.01, timeout_s)), timeout=timeout_s + 0.5)
            found = ModelList(kind, tuple(names), "backend")
            ttl = self.ttl_s
            answered = True
        except Exception as exc:  # noqa: BLE001 - any failure of the endpoint means "use the fallback"
            found = self._fallback(backend, kind, _reason(exc, timeout_s))
            ttl = self.retry_s
            status = getattr(getattr(exc, "response", None), "status_code", None)
            answered = isinstance(exc, ValueError) or (status is not None and status < 500)
        if on_fetch is not None:
            on_fetch(answered)
        with self._lock:
            self._lists[cache_key] = (self._clock() + ttl, found)
        return found

    @staticmethod
    def _fallback(backend: Backend, kind: str, reason: str) -> ModelList:
        if backend.name == "pollinations":
            names = tuple(STATIC_MODELS.get(kind, FALLBACK_AUDIO_MODELS))
            return ModelList(kind, names, "fallback", f"{backend.label} did not list its models ({reason}); "
                                                      "showing the SDK's built-in Pollinations list.")
        return ModelList(kind, (), "fallback", f"{backend.label} did not list its {kind} models ({reason}).")

    def forget(self) -> None:
        """Drop every cached list (after a backend switch)."""
        with self._lock:
            self._lists.clear()


def _reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in type(exc).__name__:
        return f"no answer within {timeout_s:.1f} s"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status:
        return f"HTTP {status}"
    if isinstance(exc, ValueError):
        return "the answer was not a model list"
    return "the connection failed"


def no_models(models: ModelList) -> BackendUnavailable:
    """The error of a request that named no model when the backend lists none."""
    return BackendUnavailable(f"No {models.kind} model to use: {models.detail}",
                              "Type a model name the backend serves, or check the backend on the Controls page.")


__all__ = ["KINDS", "ModelCatalog", "ModelList", "no_models"]
