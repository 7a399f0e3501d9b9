"""``BlossomService``: composition and lifecycle, and the thin facade pages call.

It builds the loop, the backend, the cache, the limiter, the store, the collector and
the ``gateway.Gateway`` (the one request pipeline), and closes them. Its methods turn
their arguments into a typed request and a ``Caller`` and hand them to the gateway or
to a feature; no request logic lives here. Only ``errors.DashError`` subclasses
escape a public method.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from .errors import BackendUnavailable, InvalidRequest, PermissionDenied
from .gateway import Caller, Gateway, ImageRequest, ModelCatalog, ModelList, SpeechRequest, TextRequest, TextStream
from .policies.build import cache_and_limiter
from .policies.cache import CacheStats
from .policies.ratelimit import LimitStatus
from .pricing import load_prices_file
from .results import AudioResult, ImageResult, TextResult
from .sdk.backend import Backend
from .sdk.loop import LoopThread
from .service_budget import BudgetMethods, make_ledger, restore_ledger
from .service_chat import ChatMethods
from .service_compare import CompareMethods
from .service_features import FeatureMethods
from .service_prompts import PromptMethods
from .service_vision import VisionMethods
from .session import SessionHandle
from .settings import POLLINATIONS_URL, Settings
from .telemetry.collector import MetricsCollector
from .telemetry.sinks import attach, attach_logging
from .telemetry.temporary_store import open_usage_store

log = logging.getLogger("blossom_dash")


def _caller(caller: Caller | None, user: str, session: str, api_key: str | None) -> Caller:
    return caller if caller is not None else Caller(user, session, api_key)


class BlossomService(FeatureMethods, CompareMethods, PromptMethods, BudgetMethods, ChatMethods, VisionMethods):
    """The process-wide service: one client on one loop, cache, limits, metrics.

    Args:
        settings: Configuration; ``Settings()`` (the environment) when omitted.

    Raises:
        DashError: the backend could not be set up (bad key, bad URL).

    Example:
        >>> with BlossomService(Settings(backend="demo")) as svc:
        ...     svc.generate_text("Hello").text

    Every request method takes ``caller`` (a ``gateway.Caller``), or the loose
    ``user`` / ``session`` / ``api_key`` that make one.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        s = self.settings
        self._lock = threading.RLock()
        self._loop = LoopThread()
        self._demo: Any = None
        self._probe: dict[str, Any] | None = None
        self.cache, self.limiter = cache_and_limiter(s)
        try:  # StorageUnavailable when the database cannot be used: nothing is left running
            # A SQLite file that cannot be used: history off, on a temporary store (history_off says why).
            self.store, self.history_off = open_usage_store(
                s.resolved_database_url(), pool_size=s.db_pool_size, max_overflow=s.db_max_overflow,
                pool_timeout_s=s.db_pool_timeout_s, connect_timeout_s=s.db_connect_timeout_s)
        except BaseException:
            self._loop.stop()
            for shared in (self.cache, self.limiter):  # their Redis connections, when shared
                if (close := getattr(shared, "close", None)) is not None:
                    close()
            raise
        self.metrics = MetricsCollector(self.store, s.data_dir / "journal" if self.history_off is None else None,
                                        window=s.metrics_window)
        self._closed = False
        self.gateway: Gateway | None = None
        key = s.api_key.get_secret_value() if s.api_key else None
        try:
            backend = self._make_backend(s.backend, key, startup=True)
            catalog = ModelCatalog(self._loop, prices=load_prices_file(s.prices) if s.prices else None)
            self.gateway = Gateway(s, self._loop, backend, cache=self.cache, limiter=self.limiter,
                                   collector=self.metrics, models=catalog, budget=make_ledger(s))
            restore_ledger(self.gateway.budget, self.store)  # this period's spending (no-op on Redis)
            attach(self, s.metrics_port)  # Prometheus sink + exporter (once per process)
            attach_logging(self)  # one JSON line per request on stderr
            self._start_alerts()  # the webhook, the error-rate check, the breaker listener
        except BaseException:
            self.close()
            raise
        # Every replica works its share of the running batch jobs (and those of a
        # replica that stopped), whether or not anyone opens the Batch page here.
        self.start_batch_runner()

    # ----- backends -------------------------------------------------------------

    def _demo_url(self) -> str:
        if self._demo is None:
            from .demo_backend import DemoServer

            demo = DemoServer(latency=self.settings.demo_latency, faults=self.settings.demo_faults)
            self._loop.run(demo.start("127.0.0.1", 0), timeout=30)
            self._demo = demo
        return str(self._demo.base_url)

    def _pollinations_answers(self, key: str) -> bool:
        probe = Backend(name="pollinations", base_url=POLLINATIONS_URL, api_key=key, timeout_s=3.0)
        try:
            self._loop.run(probe.models("text"), timeout=5)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False
        finally:
            self._loop.run(probe.close(), timeout=5)

    def _make_backend(self, spec: str, key: str | None, *, startup: bool = False) -> Backend:
        """The backend ``spec`` names, with the key it may receive.

        The server's Pollinations key goes to Pollinations only; a named backend of
        ``settings.backends`` gets its own key (``BLOSSOM_DASH_BACKEND_<NAME>_KEY``);
        the demo and any other URL get none. A URL is trusted (its error bodies
        quoted) when the operator configured it: at start-up or in the allow-list.

        Raises:
            InvalidRequest: ``spec`` names no backend.
        """
        spec = (Settings.model_validate({"backend": spec, "backends": self.settings.backends}).backend
                if spec else "auto")
        timeout = self.settings.request_timeout_s
        if spec == "auto":
            # Without a key we never probe the network: anonymous Pollinations access
            # has varied over time, and an offline machine should start at once.
            spec = "pollinations" if key and self._pollinations_answers(key) else "demo"
        if spec == "demo":
            return Backend(name="demo", base_url=self._demo_url(), api_key=None, timeout_s=timeout)
        if spec == "pollinations":
            return Backend(name="pollinations", base_url=POLLINATIONS_URL, api_key=key, timeout_s=timeout)
        if spec in self.settings.backends:
            env = "BLOSSOM_DASH_BACKEND_" + "".join(c if c.isalnum() else "_" for c in spec.upper()) + "_KEY"
            return Backend(name=spec, base_url=self.settings.backends[spec], api_key=os.environ.get(env) or None,
                           timeout_s=timeout)
        if not spec.startswith(("http://", "https://")):
            names = ", ".join(["demo", "pollinations", *self.settings.backends])
            raise InvalidRequest(f"{spec!r} is not a backend.", f"Use one of: {names}.")
        listed = spec in self.settings.backends.values()
        return Backend(name="custom", base_url=spec, api_key=None, timeout_s=timeout, trusted=startup or listed)

    def backend_choices(self) -> list[str]:
        """The backends an admin may switch to: ``demo``, ``pollinations`` and the allow-list."""
        return ["demo", "pollinations", *self.settings.backends]

    @property
    def _gw(self) -> Gateway:
        if self.gateway is None or self._closed:
            raise BackendUnavailable("The service has been shut down.", "Reload the page to start it again.")
        return self.gateway

    @property
    def backend(self) -> Backend:
        """The live backend."""
        return self._gw.backend

    def backend_info(self) -> dict[str, Any]:
        """``{"name", "base_url", "label", "is_demo"}`` of the live backend (no URL credentials)."""
        b = self._gw.backend
        return {"name": b.name, "base_url": b.shown_url, "label": b.label, "is_demo": b.name == "demo"}

    def switch_backend(self, spec: str, *, api_key: str | None = None, caller: Caller | None = None
                       ) -> dict[str, Any]:
        """Point the service at another backend, for everyone (an admin action, audited);
        in-flight calls finish on the old one.

        Args:
            spec: ``demo``, ``pollinations``, ``auto``, a name from ``settings.backends``,
                or (with ``allow_custom_backend``) an ``http(s)://`` base URL.
            api_key: A key for this backend, given by the admin; otherwise it gets only
                the key ``_make_backend`` allows (the server's key goes to Pollinations only).
            caller: Who asks (None: the process's owner).

        Returns:
            ``backend_info()`` of the new backend, after one model-list request to it
            (counted as its first traffic: a dead backend shows as failing at once).

        Raises:
            PermissionDenied: the caller is not an admin, or ``spec`` is a URL off the
                allow-list while custom backends are off.
            InvalidRequest: ``spec`` is not one of the above.
            AuthenticationFailed: the key is malformed.
        """
        caller = self._admin(caller, "switch the backend")
        before = self.backend_info()["label"]
        try:
            spec = Settings.model_validate({"backend": spec, "backends": self.settings.backends}).backend
        except Exception as exc:
            raise InvalidRequest(
                f"{spec!r} is not a backend.", f"Use one of: {', '.join(self.backend_choices())}."
            ) from exc
        if spec.startswith("http") and spec not in self.settings.backends.values() \
                and not self.settings.allow_custom_backend:
            raise PermissionDenied("Backend URLs typed in the app are off: only the allow-listed backends can be used.",
                                   "Add it to BLOSSOM_DASH_BACKENDS, or set BLOSSOM_DASH_ALLOW_CUSTOM_BACKEND=true.")
        key = self.settings.api_key.get_secret_value() if self.settings.api_key else None
        new = self._make_backend(spec, key)
        if api_key and new.name != "demo":  # an admin's explicit key for this backend, used as given
            new = Backend(name=new.name, base_url=new.base_url, api_key=api_key, timeout_s=new.config.timeout,
                          trusted=new.trusted)
        old = self._gw.switch(new)
        with self._lock:
            self._probe = None
        self._loop.submit(old.close())
        self._probe_backend()  # one model-list request, so every badge knows at once whether it answers
        info = self.backend_info()
        self._audit(caller, "switch_backend", before, info["label"])
        return info

    # ----- requests: each is one typed request through the gateway -------------------------

    def generate_text(self, prompt: str, *, model: str | None = None, system: str | None = None,
                      messages: list[dict[str, Any]] | None = None, max_tokens: int | None = None,
                      temperature: float | None = None, seed: int | None = None, caller: Caller | None = None,
                      user: str = "anonymous", session: str = "", api_key: str | None = None,
                      context: str = "", images: Sequence[Any] = ()) -> TextResult:
        """Generate one answer (``gateway.TextRequest`` documents every argument's range).

        Args:
            prompt: The user's message (1 to ``max_prompt_chars`` characters).
            model: A model name from ``list_models("text")``; None = the default.
            system: Optional system prompt.
            messages: Earlier turns ``[{"role": "user"|"assistant", "content": str}]``;
                the oldest are dropped to fit the 5,000-character request cap (text
                only: a user turn's ``"images"`` count no characters and are re-sent
                while the request's image caps allow, ``gateway.vision``).
            max_tokens: 1 to 8192 (default 1024).
            temperature: 0.0 to 2.0; None = the model's default.
            seed: 0 to 2**31-1 for a repeatable answer.
            caller: Who asks (or ``user`` / ``session`` / ``api_key``).
            context: What the request belongs to, kept on its event and never part of
                the cache key: ``"chat:<id>"``, ``"comparison:<id>"``,
                ``"batch:<job_id>"`` ("" for nothing); Monitor links the request to it.
            images: Images attached to ``prompt``: message-contract dicts ``{"name",
                "mime", "data": bytes}`` (or ``gateway.vision.ImageInput``), at most 4,
                PNG/JPEG/WebP/GIF by their bytes, 5 MB each; only to a model that sees
                images (``vision_models``), else ``InvalidRequest`` before sending.

        Returns:
            ``TextResult`` (``ttft_ms`` is None: TTFT is a stream's figure).

        Raises:
            InvalidRequest, NotRecorded, RateLimited, BackendUnavailable (CircuitOpen
            included), UpstreamError (ResponseTooLarge included), AuthenticationFailed.
        """
        request = TextRequest(prompt, model, system, messages, max_tokens, temperature, seed, context=context,
                              images=tuple(images or ()))
        return self._gw.run(request, _caller(caller, user, session, api_key))  # type: ignore[return-value]

    def stream_text(self, prompt: str, *, model: str | None = None, system: str | None = None,
                    messages: list[dict[str, Any]] | None = None, max_tokens: int | None = None,
                    temperature: float | None = None, seed: int | None = None, caller: Caller | None = None,
                    user: str = "anonymous", session: str = "", api_key: str | None = None,
                    context: str = "", images: Sequence[Any] = ()) -> TextStream:
        """Stream one answer as it is generated (``Gateway.stream``).

        Takes the same arguments as ``generate_text``. Validation, the cache lookup
        and admission happen now (their errors raise here); backend errors raise
        from the iterator. ``request_timeout_s`` bounds the wait for the first delta,
        ``stream_timeout_s`` the whole stream.

        Returns:
            ``TextStream``: iterate it for ``str`` deltas; ``.result`` afterwards.
        """
        request = TextRequest(prompt, model, system, messages, max_tokens, temperature, seed, context=context,
                              images=tuple(images or ()))
        return self._gw.stream(request, _caller(caller, user, session, api_key))

    def generate_image(self, prompt: str, *, model: str | None = None, width: int = 1024, height: int = 1024,
                       seed: int | None = None, caller: Caller | None = None, user: str = "anonymous",
                       session: str = "", api_key: str | None = None, context: str = "") -> ImageResult:
        """Generate one image (``gateway.ImageRequest``).

        Args:
            prompt: What to draw.
            model: A name from ``list_models("image")``; None = the default.
            width / height: Pixels, 64 to 2048 (the SDK's bounds).
            seed: 0 to 2**31-1; None picks a random one (returned in the result).
            context: As ``generate_text``.

        Returns:
            ``ImageResult`` whose ``data`` Pillow has opened and verified.

        Raises:
            As ``generate_text``; UpstreamError also for a body that is not an image.
        """
        request = ImageRequest(prompt, model, width, height, seed, context=context)
        return self._gw.run(request, _caller(caller, user, session, api_key))  # type: ignore[return-value]

    def generate_speech(self, text: str, *, voice: str = "alloy", audio_format: str = "wav",
                        model: str | None = None, caller: Caller | None = None, user: str = "anonymous",
                        session: str = "", api_key: str | None = None, context: str = "") -> AudioResult:
        """Read ``text`` aloud with a chat model that has audio output (``gateway.SpeechRequest``).

        Args:
            text: What to say, 1 to 4,096 characters (OpenAI's speech input cap).
            voice: One of ``sdk.speech.VOICES``.
            audio_format: ``"wav"`` or ``"mp3"`` (the demo backend sends WAV only; the
                result's ``note`` says so).
            model: A name from ``list_models("audio")``; None = the first one.
            context: As ``generate_text``.

        Returns:
            ``AudioResult`` whose ``data`` is a verified WAV or MP3.

        Raises:
            As ``generate_text``; UpstreamError also for an answer without audio.
        """
        request = SpeechRequest(text, voice, audio_format, model, context=context)
        return self._gw.run(request, _caller(caller, user, session, api_key))  # type: ignore[return-value]

    # ----- models and health -----------------------------------------------------------------

    def list_models(self, kind: str = "text") -> list[str]:
        """Model names the live backend offers (``model_list`` says where they came from).

        Raises:
            InvalidRequest: ``kind`` is not ``"text"``, ``"image"`` or ``"audio"``.
        """
        return list(self._gw.list_models(kind).names)

    def model_list(self, kind: str = "text") -> ModelList:
        """The live backend's models of ``kind``, with their source: ``backend``,
        ``recorded`` (replay-only) or ``fallback`` (the endpoint failed; ``detail`` says why).

        Raises:
            InvalidRequest: unknown kind.
        """
        return self._gw.list_models(kind)

    def health(self, *, max_age_s: float | None = None) -> dict[str, Any]:
        """The live backend's health, judged from live traffic.

        Args:
            max_age_s: Also ask the backend's model endpoint (one probe that spends
                no generation, counted as traffic) when the last such check is older
                than this many seconds; None never asks.

        Returns:
            ``Gateway.health()`` (``status``, ``ok``, ``circuit``, ``recent_failures``,
            ``next_probe_in_s``, ``detail``) plus ``latency_ms`` and ``checked_at`` of the
            last probe (None before one) and ``backend_info()``.
        """
        if max_age_s is not None:
            with self._lock:
                stale = self._probe is None or time.time() - self._probe["checked_at"] >= max_age_s
            if stale:
                self._probe_backend()
        with self._lock:
            probe = dict(self._probe or {"latency_ms": None, "checked_at": None})
        return {**self._gw.health(), **probe, **self.backend_info()}

    def _probe_backend(self) -> None:
        latency_ms = self._gw.probe()
        with self._lock:
            self._probe = {"latency_ms": latency_ms, "checked_at": time.time()}

    # ----- cache and rate limits (Controls) ---------------------------------------------------

    def cache_stats(self) -> CacheStats:
        """Counters and sizes of the response cache and the recordings."""
        return self.cache.stats()

    def configure_cache(self, *, enabled: bool | None = None, ttl_s: float | None = None,
                        max_entries: int | None = None, max_bytes: int | None = None,
                        caller: Caller | None = None) -> CacheStats:
        """Change the live cache for everyone (``ResponseCache.configure``; admin, audited).

        Raises:
            PermissionDenied: the caller is not an admin.
            InvalidRequest: a value out of range (the message says which).
        """
        caller = self._admin(caller, "change the cache")
        old = self.cache.stats()
        try:
            new = self.cache.configure(enabled=enabled, ttl_s=ttl_s, max_entries=max_entries, max_bytes=max_bytes)
        except ValueError as exc:
            raise InvalidRequest(f"Cache settings not applied: {exc}.", "Pick values in range.") from exc

        def shown(st: CacheStats) -> dict[str, Any]:
            return {"enabled": st.enabled, "ttl_s": st.ttl_s, "max_entries": st.max_entries,
                    "max_bytes": st.max_bytes}

        self._audit(caller, "configure_cache", shown(old), shown(new))
        return new

    def clear_cache(self, *, caller: Caller | None = None) -> int:
        """Drop every in-memory cache entry; returns how many (recordings are kept; admin, audited).

        Raises:
            PermissionDenied: the caller is not an admin.
        """
        caller = self._admin(caller, "clear the cache")
        n = self.cache.clear()
        self._audit(caller, "clear_cache", None, {"entries_cleared": n})
        return n

    def rate_limits(self) -> tuple[int, int]:
        """``(per_user_rpm, global_rpm)`` in force."""
        return self.limiter.limits

    def configure_limits(self, *, per_user_rpm: int | None = None, global_rpm: int | None = None,
                         caller: Caller | None = None) -> LimitStatus:
        """Change the moving-window limits for everyone (admin, audited); requests already
        made still count.

        Returns:
            The global window's status after the change (as ``RateLimiter.status``).

        Raises:
            PermissionDenied: the caller is not an admin.
            InvalidRequest: a limit below 1.
        """
        caller = self._admin(caller, "change the rate limits")
        old = self.limiter.limits
        try:
            self.limiter.configure(per_user_rpm=per_user_rpm, global_rpm=global_rpm)
        except ValueError as exc:
            raise InvalidRequest(f"Limits not applied: {exc}.", "Use whole numbers of at least 1.") from exc
        self._audit(caller, "configure_limits", {"per_user_rpm": old[0], "global_rpm": old[1]},
                    {"per_user_rpm": self.limiter.limits[0], "global_rpm": self.limiter.limits[1]})
        return self.limiter.status("")

    def limit_status(self, user: str) -> LimitStatus:
        """``user``'s and the global moving windows."""
        return self.limiter.status(user)

    @property
    def replay_only(self) -> bool:
        """Whether only recorded answers are served (nothing reaches a backend)."""
        return self.cache.replay_only

    def session(self, user: str, session_id: str = "", role: str = "member") -> SessionHandle:
        """A cheap per-session handle bound to ``user`` with ``role`` (see ``role_for``)."""
        return SessionHandle(self, user=user, session_id=session_id, role=role)

    def close(self) -> None:
        """Stop the batch runner and the demo backend, close the client, the store and the loop."""
        if self._closed:
            return
        self._closed = True
        if self.gateway is not None:
            self.gateway.closed = True
        if (runner := getattr(self, "_batch", None)) is not None:
            runner.close()  # its rows in flight go back to pending, for another replica or a restart
        backend = self.gateway.backend if self.gateway is not None else None
        for coro in ([backend.close()] if backend else []) + ([self._demo.stop()] if self._demo else []):
            try:
                self._loop.run(coro, timeout=5)
            except Exception:
                log.debug("error while closing", exc_info=True)
        self._loop.stop()
        self._stop_alerts()
        self.metrics.close()
        self.store.close()
        for shared in (self.cache, self.limiter, self.gateway and self.gateway.budget):  # Redis connections
            if (close := getattr(shared, "close", None)) is not None:
                close()

    def __enter__(self) -> BlossomService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
