"""Model lists: what the backend says it offers, and a labelled fallback when it cannot say.

The SDK's own model lists are static and partly stale (BLOSSOM_SDK.md, "Endpoints"),
so lists are fetched from the backend. A backend's answer is kept for ``ttl_s``; a
failure is never cached as the backend's list: the fallback is marked as such and
kept only ``retry_s``, so a recovered backend is asked again within seconds. Only
Pollinations falls back to the SDK's Pollinations names; a custom or demo backend
that cannot list its models gets an empty list, never names it does not have.

Model facts (``ModelCatalog.info``) come from Pollinations' ``/text/models``,
``/image/models`` and ``/audio/models`` entries (``sdk.catalog``; never from
``/v1/models``, which may carry only ids): price (``pricing.parse_pricing``, both of its
shapes), paid-only, the backend's health, modalities, aliases. They are kept with the
same TTL as the lists (a failure for ``retry_s``), and prices from the settings file
(``BLOSSOM_DASH_PRICES``) fill in for the models the backend does not price.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..errors import BackendUnavailable
from ..pricing import Price, parse_pricing
from ..sdk.backend import STATIC_MODELS, Backend
from ..sdk.catalog import entry_name, model_entries
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


@dataclass(frozen=True)
class ModelInfo:
    """What the backend (or the settings file) says about one model.

    Attributes:
        name: The entry's name (an alias asked for resolves to its entry).
        kind: ``"text"``, ``"image"`` or ``"audio"``.
        price: Per-unit prices in pollen (``Price.source``: ``backend``, ``demo`` or
            ``settings``); None when unpriced.
        paid_only: The backend's ``paid_only`` flag; None when it does not say.
        health: The backend's own ``health`` value, as given ("" when not given).
        input_modalities / output_modalities: As the backend lists them.
        aliases: Other names of the model.
        description: The backend's description ("" when none).
        voices: The voices of a speaking model.
        context_length: Tokens of context, when given.
    """

    name: str
    kind: str
    price: Price | None = None
    paid_only: bool | None = None
    health: str = ""
    input_modalities: tuple[str, ...] = ()
    output_modalities: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    description: str = ""
    voices: tuple[str, ...] = ()
    context_length: int | None = None


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def model_info(entry: Mapping[str, Any], kind: str, *, source: str = "backend") -> ModelInfo:
    """A ``ModelInfo`` from one entry of a Pollinations model list (missing fields: unknown)."""
    paid = entry.get("paid_only")
    health = entry.get("health")
    if isinstance(health, Mapping):  # some versions send {"status": ...}
        health = health.get("status", "")
    context = entry.get("context_length")
    return ModelInfo(
        name=entry_name(dict(entry)), kind=kind, price=parse_pricing(entry, source=source),
        paid_only=paid if isinstance(paid, bool) else None, health=str(health or ""),
        input_modalities=_strings(entry.get("input_modalities")),
        output_modalities=_strings(entry.get("output_modalities")), aliases=_strings(entry.get("aliases")),
        description=str(entry.get("description") or ""), voices=_strings(entry.get("voices")),
        context_length=context if isinstance(context, int) and not isinstance(context, bool) else None)


class ModelCatalog:
    """Per-backend, per-kind model lists and model facts with a TTL, fetched on the service's loop.

    Args:
        loop: The loop that owns the backends' clients.
        ttl_s: How long a backend's own list (and its model facts) is kept, seconds.
        retry_s: How long a fallback is kept before the backend is asked again, seconds.
        clock: Monotonic clock (inject a fake one in tests).
        prices: Model -> ``Price`` from the settings file (``pricing.load_prices_file``),
            used for the models the backend does not price.
    """

    def __init__(self, loop: LoopThread, *, ttl_s: float = 300.0, retry_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, prices: Mapping[str, Price] | None = None) -> None:
        self._loop = loop
        self.ttl_s, self.retry_s = ttl_s, retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._lists: dict[tuple[str, str], tuple[float, ModelList]] = {}
        self._infos: dict[tuple[str, str], tuple[float, dict[str, ModelInfo]]] = {}
        self.prices: dict[str, Price] = dict(prices or {})

    def info(self, backend: Backend, kind: str, model: str, *, timeout_s: float = 5.0,
             skip_fetch: bool = False) -> ModelInfo | None:
        """The facts of ``model`` (a name or an alias) of ``kind`` on ``backend``.

        Args:
            timeout_s: Longest wait for the backend's endpoint, seconds.
            skip_fetch: Do not ask the backend (its circuit is open): use what is
                cached, else the settings file alone.

        Returns:
            ``ModelInfo`` (its ``price`` from the backend, else from the settings file,
            else None), or None when neither the backend nor the settings file knows
            ``model``. Never raises for a backend failure (the facts are then the
            settings file's, and the backend is asked again after ``retry_s``).
        """
        infos = self._infos_of(backend, kind, timeout_s, skip_fetch)
        found = infos.get(model)
        fallback = self.prices.get(model)
        if found is None:
            return ModelInfo(model, kind, fallback) if fallback is not None else None
        if found.price is None and fallback is not None:
            return replace(found, price=fallback)
        return found

    def _infos_of(self, backend: Backend, kind: str, timeout_s: float, skip_fetch: bool) -> dict[str, ModelInfo]:
        cache_key = (backend.base_url, kind)
        with self._lock:
            cached = self._infos.get(cache_key)
            if cached and (skip_fetch or self._clock() < cached[0]):
                return cached[1]
        if skip_fetch:
            return {}
        source = "demo" if backend.name == "demo" else "backend"
        try:
            fetch = model_entries(backend.http, kind, timeout_s=timeout_s)
            entries = self._loop.run(asyncio.wait_for(fetch, timeout=max(0.01, timeout_s)), timeout=timeout_s + 0.5)
            infos: dict[str, ModelInfo] = {}
            for entry in entries:
                item = model_info(entry, kind, source=source)
                for name in (item.name, *item.aliases):
                    infos.setdefault(name, item)
            ttl = self.ttl_s
        except Exception as exc:  # noqa: BLE001 - any failure of the endpoint: no backend facts for now
            # A 4xx (the backend has no such endpoint) is its answer, kept as long as a
            # list; a timeout, a connection error or a 5xx is asked again soon.
            status = getattr(getattr(exc, "response", None), "status_code", None)
            infos, ttl = {}, self.ttl_s if status is not None and 400 <= status < 500 else self.retry_s
        with self._lock:
            self._infos[cache_key] = (self._clock() + ttl, infos)
        return infos

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
            with self._lock:  # a fresh list: its model facts are asked again with it
                self._infos.pop(cache_key, None)
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
            self._infos.clear()


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


__all__ = ["KINDS", "ModelCatalog", "ModelInfo", "ModelList", "model_info", "no_models"]
