"""``BlossomService``: the one sync facade the pages, tests and benchmarks call.

Per request: validate -> cache lookup -> rate limit -> call the SDK on the loop
thread (with retries for transient failures) -> record one event -> cache -> result.
Only ``errors.DashError`` subclasses escape a public method.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import io
import logging
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from .errors import BackendUnavailable, DashError, InvalidRequest, UpstreamError
from .features.batch import BatchRow, BatchRunner, BatchStatus, check_owner, check_rows, store_errors
from .features.compare import Comparison, ComparisonStore, TextComparison, Vote, check_request, image_panel, run_all
from .features.conversations import Conversation, ConversationError, ConversationStore
from .policies.cache import CacheEntry, CacheStats, ResponseCache, backend_identity, request_key
from .policies.ratelimit import LimitStatus, RateLimiter
from .policies.replay import ImportReport, RecordError, not_recorded
from .sdk.backend import STATIC_MODELS, TRANSIENT_STATUS, Backend, StreamChunk, to_dash_error
from .sdk.speech import (
    FALLBACK_AUDIO_MODELS,
    AudioResult,
    audio_models,
    speak,
    speech_body,
    validate_speech,
    verify_audio,
)
from .sdk.transport import LoopThread, Observation, current_observation, monotonic_ms
from .settings import POLLINATIONS_URL, Settings
from .telemetry.collector import Event, MetricsCollector, new_request_id
from .telemetry.sinks import attach, attach_logging
from .telemetry.store import UsageStore

T = TypeVar("T")
log = logging.getLogger("blossom_dash")

#: Token rule for estimates (a stream stopped before the backend sent usage): words
#: and single punctuation marks. The demo backend counts with the same rule.
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
MAX_TOKENS_LIMIT = 8192
IMAGE_MIN_PX, IMAGE_MAX_PX = 64, 2048  # the SDK's own bounds (_Validators.dimensions)
SEED_MAX = 2**31 - 1
#: Longest URL-encoded image prompt the SDK sends (MAX_SAFE_URL_LENGTH - 200 in
#: blossom_ai.generators.image_generator).
IMAGE_PROMPT_URL_CHARS = 1848
MODELS_TTL_S = 300.0


def estimate_tokens(text: str) -> int:
    """Approximate token count of ``text`` (words plus punctuation marks)."""
    return len(_TOKEN_RE.findall(text))


@dataclass(frozen=True)
class Usage:
    """Token usage of one answer, as the backend reported it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def estimate(cls, messages: list[dict[str, Any]], text: str) -> Usage:
        """Estimated usage (``estimate_tokens``) when the backend reported none."""
        p = estimate_tokens(" ".join(str(m["content"]) for m in messages))
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
        ttft_ms: Time to first token; for a non-streamed answer, to the whole answer.
        cached: Served from the response cache (no backend call, no rate-limit slot).
        stopped_early: The consumer of a stream stopped reading before the end.
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


@dataclass(frozen=True)
class ImageResult:
    """One generated image (``data`` verified as an image with Pillow)."""

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


@dataclass(frozen=True)
class _TextRequest:
    messages: list[dict[str, Any]]
    model: str
    max_tokens: int
    extra: dict[str, Any]
    prompt: str


_DONE = object()


class TextStream:
    """An iterator of ``str`` deltas (what ``st.write_stream`` consumes).

    After iteration ends, ``result`` holds the ``TextResult``; if the stream failed,
    iteration raised a ``DashError`` and ``error`` holds it. Closing the iterator
    early (``close()``, or dropping it) cancels the backend call and still records
    the event with TTFT and (estimated) usage.
    """

    def __init__(self, gen_factory: Callable[[TextStream], Iterator[str]]) -> None:
        self.result: TextResult | None = None
        self.error: DashError | None = None
        self._gen = gen_factory(self)
        self._started = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        self._started = True
        return next(self._gen)

    def close(self) -> None:
        """Stop reading; the backend call is cancelled and the event recorded."""
        if not self._started:
            # A generator closed before its first next() never runs its finally
            # block: start it, so that it records its event and cancels the call.
            self._started = True
            try:
                next(self._gen)
            except (StopIteration, DashError):
                return
        self._gen.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass


class BlossomService:
    """The process-wide service: one client on one loop, cache, limits, metrics.

    Args:
        settings: Configuration; ``Settings()`` (the environment) when omitted.

    Raises:
        DashError: the backend could not be set up (bad key, bad URL).

    Example:
        >>> with BlossomService(Settings(backend="demo")) as svc:
        ...     svc.generate_text("Hello").text
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        s = self.settings
        self._lock = threading.RLock()
        self._loop = LoopThread()
        self._demo: Any = None
        self._models: dict[tuple[str, str], tuple[float, list[str]]] = {}
        self._health: tuple[float, dict[str, Any]] | None = None
        self.cache = ResponseCache(enabled=s.cache_enabled, ttl_s=s.cache_ttl_s, max_entries=s.cache_max_entries,
                                   persist_dir=s.data_dir / "replay", persistent=s.persistent_cache,
                                   replay_only=s.replay_only)
        self.limiter = RateLimiter(per_user_rpm=s.per_user_rpm, global_rpm=s.global_rpm)
        self.store = UsageStore(s.resolved_database_url())
        self.metrics = MetricsCollector(self.store, s.data_dir / "journal", window=s.metrics_window)
        self._closed = False
        key = s.api_key.get_secret_value() if s.api_key else None
        try:
            self._backend = self._make_backend(s.backend, key)
            attach(self, s.metrics_port)  # Prometheus sink + exporter (once per process)
            attach_logging(self)  # one JSON line per request on stderr
        except BaseException:
            self.close()
            raise

    # ----- backends -------------------------------------------------------------

    def _demo_url(self) -> str:
        if self._demo is None:
            from .demo_backend import DemoServer

            demo = DemoServer(latency=self.settings.demo_latency)
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

    def _make_backend(self, spec: str, key: str | None) -> Backend:
        spec = Settings.model_validate({"backend": spec}).backend if spec else "auto"
        if spec == "auto":
            # Without a key we never probe the network: anonymous Pollinations access
            # has varied over time, and an offline machine should start at once.
            spec = "pollinations" if key and self._pollinations_answers(key) else "demo"
        if spec == "demo":
            return Backend(name="demo", base_url=self._demo_url(), api_key=None,
                           timeout_s=self.settings.request_timeout_s)
        if spec == "pollinations":
            return Backend(name="pollinations", base_url=POLLINATIONS_URL, api_key=key,
                           timeout_s=self.settings.request_timeout_s)
        return Backend(name="custom", base_url=spec, api_key=key, timeout_s=self.settings.request_timeout_s)

    @property
    def backend(self) -> Backend:
        """The live backend."""
        return self._backend

    def backend_info(self) -> dict[str, Any]:
        """``{"name", "base_url", "label", "is_demo"}`` of the live backend."""
        b = self._backend
        return {"name": b.name, "base_url": b.base_url, "label": b.label, "is_demo": b.name == "demo"}

    def switch_backend(self, spec: str, *, api_key: str | None = None) -> dict[str, Any]:
        """Point the service at another backend; in-flight calls finish on the old one.

        Args:
            spec: ``demo``, ``pollinations``, ``auto`` or an ``http(s)://`` base URL.
            api_key: Key for this backend; defaults to the configured one.

        Returns:
            ``backend_info()`` of the new backend.

        Raises:
            InvalidRequest: ``spec`` is not one of the above.
            AuthenticationFailed: the key is malformed.
        """
        try:
            Settings.model_validate({"backend": spec})
        except Exception as exc:
            raise InvalidRequest(
                f"{spec!r} is not a backend.", "Use demo, pollinations, auto, or a URL such as http://127.0.0.1:11434."
            ) from exc
        key = api_key or (self.settings.api_key.get_secret_value() if self.settings.api_key else None)
        new = self._make_backend(spec, key)
        with self._lock:
            old, self._backend = self._backend, new
            self._health = None
        self._loop.submit(old.close())
        return self.backend_info()

    def _run(self, coro: Any, timeout_s: float) -> Any:
        if self._closed:
            coro.close()
            raise BackendUnavailable("The service has been shut down.", "Reload the page to start it again.")
        try:
            return self._loop.run(coro, timeout=timeout_s)
        except concurrent.futures.TimeoutError as exc:
            raise BackendUnavailable(
                f"{self._backend.label} did not answer within {timeout_s:.0f} s.",
                "Try again, or pick a faster model.",
            ) from exc

    async def _call(self, fn: Callable[[], Any], *, backend: Backend, model: str, api_key: str | None,
                    timeout_s: float, retry: bool = True) -> tuple[Any, Observation]:
        """Run ``fn()`` (an SDK coroutine factory) with an observation and retries."""
        last: list[Observation] = []

        async def attempt() -> Any:
            obs = Observation(api_key=api_key, timeout_s=timeout_s)
            last.append(obs)
            token = current_observation.set(obs)
            try:
                async with asyncio.timeout(timeout_s):
                    return await fn()
            except Exception as exc:
                raise to_dash_error(exc, obs, backend=backend, model=model, timeout_s=timeout_s) from exc
            finally:
                current_observation.reset(token)

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, UpstreamError) and exc.status_code in TRANSIENT_STATUS

        retries = self.settings.retries if retry else 0
        try:
            return await attempt(), last[-1]
        except DashError as err:
            if not retries or not transient(err):
                raise
            first_error = err

        max_wait = self.settings.retry_max_wait_s

        def backoff(err: BaseException | None, attempt_number: int) -> float:
            hinted = getattr(err, "retry_after_s", None)  # the backend's Retry-After wins
            return min(hinted if hinted is not None else 0.25 * 2 ** (attempt_number - 1), max_wait)

        # The first attempt above runs without tenacity (its per-call set-up costs
        # more than the rest of the service's overhead); only retries go through it.
        await asyncio.sleep(backoff(first_error, 1))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(retries), retry=retry_if_exception(transient), reraise=True,
            wait=lambda state: backoff(state.outcome.exception() if state.outcome else None, state.attempt_number + 1),
        )
        async for att in retrying:
            with att:
                value = await attempt()
        return value, last[-1]

    # ----- validation -------------------------------------------------------------

    def _default_model(self, kind: str) -> str:
        preferred = self.settings.default_text_model if kind == "text" else self.settings.default_image_model
        if preferred:
            return preferred
        names = self.list_models(kind)
        return names[0]

    def _validate_model(self, model: str | None, kind: str) -> str:
        if model is None or (isinstance(model, str) and not model.strip()):
            return self._default_model(kind)
        if not isinstance(model, str) or len(model) > 128:
            raise InvalidRequest(f"{str(model)[:40]!r} is not a model name.", "Pick a model from the list.")
        return model.strip()

    def _text_request(self, prompt: str, *, model: str | None, system: str | None,
                      messages: list[dict[str, Any]] | None, max_tokens: int | None,
                      temperature: float | None, seed: int | None) -> _TextRequest:
        limit = self.settings.max_prompt_chars
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequest("The prompt is empty.", "Type a question or an instruction first.")
        if len(prompt) > limit:
            raise InvalidRequest(
                f"The prompt has {len(prompt):,} characters; the limit is {limit:,}.",
                "Shorten it, or split it into several requests.",
            )
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or not 1 <= max_tokens <= MAX_TOKENS_LIMIT):
            raise InvalidRequest(f"max_tokens must be a whole number from 1 to {MAX_TOKENS_LIMIT}, not {max_tokens!r}.",
                                 "Pick a value in range.")
        if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                        or not 0.0 <= float(temperature) <= 2.0):
            raise InvalidRequest(f"temperature must be between 0.0 and 2.0, not {temperature!r}.",
                                 "Use 0 for focused answers, 1 for the default, up to 2 for varied ones.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX):
            raise InvalidRequest(f"seed must be a whole number from 0 to {SEED_MAX}, not {seed!r}.",
                                 "Leave it empty for a random answer, or pick a number to repeat one.")
        if system is not None and not isinstance(system, str):
            raise InvalidRequest("The system prompt must be text.", "Type it as plain text.")
        model = self._validate_model(model, "text")
        head = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
        tail = [{"role": "user", "content": prompt.strip()}]
        fixed = sum(len(m["content"]) for m in head + tail)
        if fixed > limit:
            raise InvalidRequest(
                f"The system prompt and the prompt together have {fixed:,} characters; the limit is {limit:,}.",
                "Shorten the system prompt or the prompt.",
            )
        history: list[dict[str, Any]] = []
        budget = limit - fixed
        for msg in reversed(messages or []):  # keep the newest history that fits
            if not isinstance(msg, dict) or msg.get("role") not in {"user", "assistant"}:
                continue
            content = str(msg.get("content") or "").strip()
            if not content or len(content) > budget:
                break
            budget -= len(content)
            history.insert(0, {"role": msg["role"], "content": content})
        extra: dict[str, Any] = {}
        if temperature is not None:
            extra["temperature"] = float(temperature)
        if seed is not None:
            extra["seed"] = seed
        return _TextRequest(head + history + tail, model, max_tokens or 1024, extra, prompt)

    def _begin_text(self, kind: str, prompt: str, user: str, session: str, **params: Any
                    ) -> tuple[dict[str, Any], _TextRequest, str, CacheEntry | None]:
        """Validate a text request and look it up in the cache.

        Returns:
            ``(base event fields, request, cache key, cache entry or None)``.

        Raises:
            InvalidRequest: recorded as an error event first.
        """
        base = {"request_id": new_request_id(), "user": user, "session": session, "kind": kind,
                "ts": time.time(), "prompt": prompt if isinstance(prompt, str) else None}
        try:
            req = self._text_request(prompt, **params)
        except DashError as err:
            raise self._fail(err, model=str(params.get("model") or ""), **base) from None
        # Streamed and whole answers share keys: the answer is the same either way.
        key = request_key(backend=backend_identity(self._backend.name, self._backend.base_url), kind="text",
                          model=req.model, messages=req.messages, max_tokens=req.max_tokens, **req.extra)
        return base, req, key, self.cache.get(key)

    # ----- recording ---------------------------------------------------------------

    def _record(self, *, request_id: str, user: str, session: str, kind: str, model: str, outcome: str,
                ts: float, error: DashError | None = None, latency_ms: float | None = None,
                ttft_ms: float | None = None, usage: Usage | None = None, nbytes: int | None = None,
                status_code: int | None = None, prompt: str | None = None) -> None:
        if status_code is None and error is not None:
            status_code = error.status_code
        event = Event(
            ts, request_id, user, session, kind, model, self._backend.name, outcome,
            type(error).__name__ if error else "", status_code,
            latency_ms, ttft_ms,
            usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None,
            nbytes, prompt[:self.settings.prompt_chars] if prompt and self.settings.store_prompts else None,
        )
        try:
            self.metrics.record(event)
        except (OSError, ValueError):  # ValueError: the journal is closed (service shut down)
            # The answer is still good; a failed journal write must not lose it.
            self.metrics.store_errors += 1
            log.exception("could not journal event %s", request_id)

    def _admit(self, *, user: str, session: str, kind: str, model: str, request_id: str, ts: float,
               prompt: str) -> None:
        if self.cache.replay_only:  # every cache miss passes here before the network: refuse it unsent
            err = not_recorded(kind, prompt, model)
            self._record(request_id=request_id, user=user, session=session, kind=kind, model=model,
                         outcome="error", ts=ts, error=err, latency_ms=0.0, prompt=prompt)
            raise err
        try:
            self.limiter.acquire(user)
        except DashError as err:
            self._record(request_id=request_id, user=user, session=session, kind=kind, model=model,
                         outcome="rate_limited", ts=ts, error=err, latency_ms=0.0, prompt=prompt)
            raise

    def _fail(self, err: DashError, **fields: Any) -> DashError:
        self._record(outcome="error", error=err, **fields)
        return err

    # ----- text ------------------------------------------------------------------

    def generate_text(self, prompt: str, *, model: str | None = None, system: str | None = None,
                      messages: list[dict[str, Any]] | None = None, max_tokens: int | None = None,
                      temperature: float | None = None, seed: int | None = None, user: str = "anonymous",
                      session: str = "", api_key: str | None = None) -> TextResult:
        """Generate one answer.

        Args:
            prompt: The user's message (1 to ``max_prompt_chars`` characters).
            model: A model name from ``list_models("text")``; None = the default.
            system: Optional system prompt.
            messages: Earlier turns ``[{"role": "user"|"assistant", "content": str}]``;
                the oldest are dropped to fit the 5,000-character request cap.
            max_tokens: 1 to 8192 (default 1024).
            temperature: 0.0 to 2.0; None = the model's default.
            seed: 0 to 2**31-1 for a repeatable answer.
            user / session: Who asked (rate limits and metrics).
            api_key: A per-session key that overrides the configured one.

        Returns:
            ``TextResult``.

        Raises:
            InvalidRequest, RateLimited, BackendUnavailable, UpstreamError,
            AuthenticationFailed.
        """
        t0 = monotonic_ms()
        base, req, key, hit = self._begin_text("text", prompt, user, session, model=model, system=system,
                                               messages=messages, max_tokens=max_tokens,
                                               temperature=temperature, seed=seed)
        rid = base["request_id"]
        backend = self._backend
        if hit is not None:
            latency = monotonic_ms() - t0
            cached: TextResult = hit.value
            self._record(model=req.model, outcome="cache_hit", latency_ms=latency, ttft_ms=latency,
                         usage=cached.usage, nbytes=hit.nbytes, **base)
            return TextResult(cached.text, cached.model, cached.backend, latency, latency, cached.usage,
                              True, rid, cached.finish_reason)
        self._admit(model=req.model, **base)
        timeout = self.settings.request_timeout_s
        try:
            text, obs = self._run(
                self._call(lambda: backend.chat(req.messages, model=req.model, max_tokens=req.max_tokens,
                                                extra=req.extra),
                           backend=backend, model=req.model, api_key=api_key, timeout_s=timeout),
                timeout_s=timeout * (self.settings.retries + 1) + self.settings.retry_max_wait_s + 5,
            )
        except DashError as err:
            raise self._fail(err, model=req.model, latency_ms=monotonic_ms() - t0, **base) from None
        latency = monotonic_ms() - t0
        usage = Usage.from_dict(obs.usage) if obs.usage else Usage.estimate(req.messages, text)
        result = TextResult(text, req.model, backend.name, latency, latency, usage, False, rid)
        self._record(model=req.model, outcome="ok", latency_ms=latency, ttft_ms=latency, usage=usage,
                     nbytes=obs.nbytes, status_code=obs.status_code, **base)
        self.cache.put(key, result, nbytes=len(text.encode()), latency_ms=latency)
        return result

    def stream_text(self, prompt: str, *, model: str | None = None, system: str | None = None,
                    messages: list[dict[str, Any]] | None = None, max_tokens: int | None = None,
                    temperature: float | None = None, seed: int | None = None, user: str = "anonymous",
                    session: str = "", api_key: str | None = None) -> TextStream:
        """Stream one answer as it is generated.

        Takes the same arguments as ``generate_text``. Validation, the cache lookup
        and the rate limit happen now (their errors raise here); backend errors raise
        from the iterator. A cache hit replays the stored answer at once.

        Returns:
            ``TextStream``: iterate it for ``str`` deltas; ``.result`` afterwards.

        Raises:
            InvalidRequest, RateLimited (here); BackendUnavailable, UpstreamError,
            AuthenticationFailed, RateLimited (while iterating).
        """
        t0 = monotonic_ms()
        base, req, key, hit = self._begin_text("stream", prompt, user, session, model=model, system=system,
                                               messages=messages, max_tokens=max_tokens,
                                               temperature=temperature, seed=seed)
        if hit is not None:
            return TextStream(lambda s: self._replay(s, hit.value, hit.nbytes, t0, base))
        self._admit(model=req.model, **base)
        return TextStream(lambda s: self._stream(s, req, key, t0, base, api_key))

    def _replay(self, stream: TextStream, cached: TextResult, nbytes: int, t0: float,
                base: dict[str, Any]) -> Iterator[str]:
        yield from re.findall(r"\S+\s*|\s+", cached.text)
        latency = monotonic_ms() - t0
        stream.result = TextResult(cached.text, cached.model, cached.backend, latency, latency, cached.usage,
                                   True, base["request_id"], cached.finish_reason)
        self._record(model=cached.model, outcome="cache_hit", latency_ms=latency, ttft_ms=latency,
                     usage=cached.usage, nbytes=nbytes, **base)

    def _stream(self, stream: TextStream, req: _TextRequest, key: str, t0: float, base: dict[str, Any],
                api_key: str | None) -> Iterator[str]:
        backend = self._backend
        timeout = self.settings.request_timeout_s
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        obs = Observation(api_key=api_key)
        body = {"model": req.model, "messages": req.messages, "max_tokens": req.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}, **req.extra}

        async def run() -> None:
            token = current_observation.set(obs)
            try:
                await backend.stream_chat(body, q.put)
                q.put(_DONE)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to words for the page
                q.put(to_dash_error(exc, obs, backend=backend, model=req.model, timeout_s=timeout))
            finally:
                current_observation.reset(token)

        fut = self._loop.submit(run())
        parts: list[str] = []
        usage_raw: dict[str, Any] | None = None
        finish: str | None = None
        ttft: float | None = None
        done = False
        error: DashError | None = None
        try:
            while True:
                try:
                    item = q.get(timeout=timeout)
                except queue.Empty:
                    raise BackendUnavailable(
                        f"{backend.label} sent nothing for {timeout:.0f} s.",
                        "The model may be overloaded: try again or pick a faster model.",
                    ) from None
                if item is _DONE:
                    done = True
                    break
                if isinstance(item, DashError):
                    raise item
                chunk: StreamChunk = item
                usage_raw = chunk.usage or usage_raw
                finish = chunk.finish_reason or finish
                if chunk.delta:
                    if ttft is None:
                        ttft = monotonic_ms() - t0
                    parts.append(chunk.delta)
                    yield chunk.delta
            if not parts:
                raise UpstreamError(f"Model {req.model!r} on {backend.label} returned an empty answer.",
                                    "Try again, raise max tokens, or pick another model.", status_code=200)
        except DashError as err:
            error = stream.error = err
            raise
        finally:
            if not fut.done():
                fut.cancel()
            latency = monotonic_ms() - t0
            text = "".join(parts)
            if error is not None:
                self._record(model=req.model, outcome="error", error=error, latency_ms=latency, ttft_ms=ttft,
                             **base)
            else:
                usage = Usage.from_dict(usage_raw) if usage_raw else Usage.estimate(req.messages, text)
                result = TextResult(text, req.model, backend.name, latency, ttft, usage, False,
                                    base["request_id"], finish, stopped_early=not done)
                stream.result = result
                self._record(model=req.model, outcome="ok", latency_ms=latency, ttft_ms=ttft, usage=usage,
                             nbytes=len(text.encode()), status_code=obs.status_code, **base)
                if done:
                    self.cache.put(key, result, nbytes=len(text.encode()), latency_ms=latency)

    # ----- images --------------------------------------------------------------------

    def generate_image(self, prompt: str, *, model: str | None = None, width: int = 1024, height: int = 1024,
                       seed: int | None = None, user: str = "anonymous", session: str = "",
                       api_key: str | None = None) -> ImageResult:
        """Generate one image.

        Args:
            prompt: What to draw (1 to ``max_prompt_chars`` characters).
            model: A name from ``list_models("image")``; None = the default.
            width / height: Pixels, 64 to 2048 (the SDK's bounds).
            seed: 0 to 2**31-1; None picks a random one (returned in the result), so
                "generate again" gives a new image.

        Returns:
            ``ImageResult`` whose ``data`` Pillow has opened and verified.

        Raises:
            InvalidRequest, RateLimited, BackendUnavailable, UpstreamError (also for a
            body that is not an image), AuthenticationFailed.
        """
        ts, t0, rid = time.time(), monotonic_ms(), new_request_id()
        base = {"request_id": rid, "user": user, "session": session, "kind": "image", "ts": ts,
                "prompt": prompt if isinstance(prompt, str) else None}
        try:
            if not isinstance(prompt, str) or not prompt.strip():
                raise InvalidRequest("The image prompt is empty.", "Describe the picture you want first.")
            encoded = len(quote(prompt.strip(), safe=""))
            if len(prompt) > self.settings.max_prompt_chars or encoded > IMAGE_PROMPT_URL_CHARS:
                raise InvalidRequest(
                    f"The image prompt is too long: {len(prompt):,} characters, {encoded:,} once URL-encoded; "
                    f"an image prompt travels in the URL, which holds {IMAGE_PROMPT_URL_CHARS:,}.",
                    "Shorten the description (spaces and punctuation count three times).")
            for name, value in (("width", width), ("height", height)):
                if isinstance(value, bool) or not isinstance(value, int) or not IMAGE_MIN_PX <= value <= IMAGE_MAX_PX:
                    raise InvalidRequest(f"{name} must be {IMAGE_MIN_PX} to {IMAGE_MAX_PX} pixels, not {value!r}.",
                                         "Pick a size in range.")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX):
                raise InvalidRequest(f"seed must be a whole number from 0 to {SEED_MAX}, not {seed!r}.",
                                     "Leave it empty for a random image.")
            model = self._validate_model(model, "image")
        except DashError as err:
            raise self._fail(err, model=str(model or ""), **base) from None
        random_parts = ("seed",) if seed is None else ()  # replay-only: any recorded seed will do
        seed = random.randint(0, SEED_MAX) if seed is None else seed
        backend = self._backend
        key = request_key(backend=backend_identity(backend.name, backend.base_url), kind="image", model=model,
                          prompt=prompt.strip(), width=width, height=height, seed=seed, random_parts=random_parts)
        hit = self.cache.get(key)
        if hit is not None:
            latency = monotonic_ms() - t0
            c: ImageResult = hit.value
            self._record(model=model, outcome="cache_hit", latency_ms=latency, ttft_ms=latency, nbytes=hit.nbytes,
                         **base)
            return ImageResult(c.data, c.content_type, c.width, c.height, c.model, c.backend, c.seed, latency,
                               True, rid)
        self._admit(model=model, **base)
        timeout = self.settings.image_timeout_s
        try:
            data, obs = self._run(
                self._call(lambda: backend.image(prompt.strip(), model=model, width=width, height=height, seed=seed),
                           backend=backend, model=model, api_key=api_key, timeout_s=timeout),
                timeout_s=timeout * (self.settings.retries + 1) + self.settings.retry_max_wait_s + 5,
            )
            content_type, w, h = _verify_image(data, backend.label)
        except DashError as err:
            raise self._fail(err, model=model, latency_ms=monotonic_ms() - t0, **base) from None
        latency = monotonic_ms() - t0
        result = ImageResult(data, content_type, w, h, model, backend.name, seed, latency, False, rid)
        self._record(model=model, outcome="ok", latency_ms=latency, ttft_ms=latency, nbytes=len(data),
                     status_code=obs.status_code, **base)
        self.cache.put(key, result, nbytes=len(data), latency_ms=latency)
        return result

    # ----- models, health, lifecycle ---------------------------------------------------

    def list_models(self, kind: str = "text") -> list[str]:
        """Model names the live backend offers.

        Args:
            kind: ``"text"``, ``"image"`` or ``"audio"`` (text models with audio output).

        Returns:
            Names from the backend's model endpoint (cached 5 minutes), or the SDK's
            static list (``openai-audio`` for audio) when the endpoint fails.

        Raises:
            InvalidRequest: ``kind`` is none of these.
        """
        if kind not in STATIC_MODELS and kind != "audio":
            raise InvalidRequest(f"Unknown model kind {kind!r}.", "Use 'text', 'image' or 'audio'.")
        if self.cache.replay_only and (recorded := self.cache.recorded_models(kind)):
            return recorded  # offer what can be replayed, without asking the backend
        backend = self._backend
        cache_key = (backend.base_url, kind)
        with self._lock:
            cached = self._models.get(cache_key)
            if cached and time.monotonic() - cached[0] < MODELS_TTL_S:
                return list(cached[1])
        try:
            fetch = audio_models(backend.http) if kind == "audio" else backend.models(kind)
            names = self._loop.run(fetch, timeout=8)
        except Exception:  # noqa: BLE001 - fall back to the SDK's list
            names = list(STATIC_MODELS.get(kind, FALLBACK_AUDIO_MODELS))
        with self._lock:
            self._models[cache_key] = (time.monotonic(), names)
        return list(names)

    def health(self, *, max_age_s: float = 10.0) -> dict[str, Any]:
        """Probe the live backend's model endpoint (no generation is spent).

        Returns:
            ``{"ok": bool, "latency_ms": float, "detail": str, "checked_at": epoch s,
            **backend_info()}``, cached for ``max_age_s`` seconds.
        """
        with self._lock:
            if self._health and time.time() - self._health[0] < max_age_s:
                return dict(self._health[1])
        backend = self._backend
        t0 = monotonic_ms()
        try:
            names = self._loop.run(backend.models("text"), timeout=5)
            ok, detail = True, f"{len(names)} text models listed"
        except Exception as exc:  # noqa: BLE001 - reported as words
            ok = False
            detail = to_dash_error(exc, None, backend=backend, model="", timeout_s=5).message
        info = {"ok": ok, "latency_ms": round(monotonic_ms() - t0, 1), "detail": detail,
                "checked_at": time.time(), **self.backend_info()}
        with self._lock:
            self._health = (time.time(), info)
        return dict(info)

    # ----- comparisons (the Compare page; logic in compare.py) ---------------------------

    def _comparisons(self) -> ComparisonStore:
        """The comparison tables, created in the usage database on first use."""
        with self._lock:
            store = getattr(self, "_comparison_store", None)
            if store is None:
                store = self._comparison_store = ComparisonStore(self.store.engine)
            return store

    def compare_text(self, prompt: str, models: list[str], *, system: str | None = None,
                     max_tokens: int | None = None, temperature: float | None = None, seed: int | None = None,
                     user: str = "anonymous", session: str = "", api_key: str | None = None) -> TextComparison:
        """Start one streamed answer per model to the same prompt, all at once.

        Each stream is a ``stream_text`` request (cache, rate limit, one event each).
        A model whose request is refused at the start (rate limit, bad model name)
        gets its error in its own panel; the others still run.

        Args:
            prompt: The one prompt.
            models: 2 to 4 distinct model names, in column order.
            system / max_tokens / temperature / seed: As in ``generate_text``, for all models.

        Returns:
            ``TextComparison``: iterate ``updates()``, then ``finish()`` stores it.

        Raises:
            InvalidRequest: the prompt, the model list or a parameter is invalid.
        """
        models = check_request(prompt, models, max_prompt_chars=self.settings.max_prompt_chars)
        params = {"system": system, "max_tokens": max_tokens, "temperature": temperature, "seed": seed}
        # Parameters are checked once here, not as one identical error per panel.
        self._text_request(prompt, model=models[0], messages=None, **params)
        starts: list[Any] = []
        for model in models:
            try:
                starts.append(self.stream_text(prompt, model=model, **params, user=user, session=session,
                                               api_key=api_key))
            except DashError as err:
                starts.append(err)
        return TextComparison(prompt, models, params, starts, lambda panels: self._comparisons().save(
            kind="text", prompt=prompt, params=params, panels=panels, user=user, session=session,
            backend=self._backend.name))

    def compare_images(self, prompt: str, models: list[str], *, width: int = 1024, height: int = 1024,
                       seed: int | None = None, user: str = "anonymous", session: str = "",
                       api_key: str | None = None) -> Comparison:
        """Generate the same prompt with the same seed on 2 to 4 image models at once, and store it.

        Args:
            prompt: What to draw.
            models: 2 to 4 distinct image model names.
            width / height: Pixels, 64 to 2048.
            seed: One seed for every model; None picks one at random.

        Returns:
            The stored ``Comparison``; a model that failed has its error in its panel.

        Raises:
            InvalidRequest: the prompt, the models, the size or the seed is invalid.
            StorageFailed: the comparison could not be stored.
        """
        models = check_request(prompt, models, max_prompt_chars=self.settings.max_prompt_chars)
        seed = random.randint(0, SEED_MAX) if seed is None else seed
        outcomes = run_all([lambda m=m: self.generate_image(prompt, model=m, width=width, height=height, seed=seed,
                                                            user=user, session=session, api_key=api_key)
                            for m in models])
        invalid = [o for o, _ in outcomes if isinstance(o, InvalidRequest)]
        if len(invalid) == len(outcomes):
            raise invalid[0]  # the request itself is wrong: say it once, not once per cell
        panels = [image_panel(i, m, o, ms) for i, (m, (o, ms)) in enumerate(zip(models, outcomes, strict=True))]
        return self._comparisons().save(kind="image", prompt=prompt, panels=panels, user=user, session=session,
                                        params={"width": width, "height": height, "seed": seed},
                                        backend=self._backend.name)

    def compare_record(self, kind: str, prompt: str, panels: list[Any], *, params: dict[str, Any] | None = None,
                       user: str = "anonymous", session: str = "", api_key: str | None = None) -> Comparison:
        """Store a comparison made elsewhere (``compare.Panel`` per model).

        Raises:
            InvalidRequest: unknown kind, or not 2 to 4 panels.
            StorageFailed: the write failed.
        """
        if kind not in ("text", "image"):
            raise InvalidRequest(f"Unknown comparison kind {kind!r}.", "Use 'text' or 'image'.")
        check_request(prompt, [p.model for p in panels], max_prompt_chars=self.settings.max_prompt_chars)
        return self._comparisons().save(kind=kind, prompt=prompt, params=params or {}, panels=panels, user=user,
                                        session=session, backend=self._backend.name)

    def vote(self, comparison_id: str, choice: str, *, user: str = "anonymous", session: str = "",
             api_key: str | None = None) -> Vote:
        """Vote on a stored comparison: a model that answered, ``"tie"`` or ``"all_bad"``.

        Voting again on the same comparison replaces the earlier vote.

        Raises:
            InvalidRequest: unknown comparison or choice. StorageFailed: the write failed.
        """
        return self._comparisons().vote(comparison_id, choice, user=user, session=session)

    def leaderboard(self, kind: str = "text") -> Any:
        """Votes, wins, ties, losses, win rate and its 95 % interval per model (a DataFrame).

        See ``compare.ComparisonStore.leaderboard``.
        """
        return self._comparisons().leaderboard(kind)

    def load_comparison(self, comparison_id: str) -> Comparison:
        """A stored comparison (prompt, models, answers, figures, vote) for its permalink.

        Raises:
            InvalidRequest: malformed or unknown id. StorageFailed: the read failed.
        """
        return self._comparisons().load(comparison_id)

    # ----- speech (logic in audio.py) ---------------------------------------------------

    def generate_speech(self, text: str, *, voice: str = "alloy", audio_format: str = "wav",
                        model: str | None = None, user: str = "anonymous", session: str = "",
                        api_key: str | None = None) -> AudioResult:
        """Read ``text`` aloud with a chat model that has audio output (``openai-audio``).

        The request goes through the SDK's own HTTP client on the service's loop (the
        SDK 0.8.0 has no audio API and rejects the answer), with the same cache, rate
        limit, retries, error mapping and one ``audio`` event as every other request.

        Args:
            text: What to say, 1 to 4,096 characters (OpenAI's speech input cap).
            voice: One of ``audio.VOICES``.
            audio_format: ``"wav"`` or ``"mp3"``. The demo backend synthesises WAV
                only: asked for MP3 it sends WAV, and the result says so (``note``).
            model: A name from ``list_models("audio")``; None = the first one.
            user / session / api_key: As in ``generate_text``.

        Returns:
            ``AudioResult`` whose ``data`` is a verified WAV or MP3.

        Raises:
            InvalidRequest (empty or long text, unknown voice or format, a model that
            cannot speak), RateLimited, BackendUnavailable, UpstreamError (also for an
            answer without audio, or audio that is not WAV/MP3), AuthenticationFailed.
        """
        ts, t0, rid = time.time(), monotonic_ms(), new_request_id()
        base = {"request_id": rid, "user": user, "session": session, "kind": "audio", "ts": ts,
                "prompt": text if isinstance(text, str) else None}
        try:
            text, voice, audio_format = validate_speech(
                text, voice, audio_format, max_chars=min(4096, self.settings.max_prompt_chars))
            blank = model is None or (isinstance(model, str) and not model.strip())
            model = self.list_models("audio")[0] if blank else self._validate_model(model, "audio")
        except DashError as err:
            raise self._fail(err, model=str(model or ""), **base) from None
        backend = self._backend
        key = request_key(backend=backend.base_url, kind="audio", model=model, text=text, voice=voice,
                          format=audio_format)
        hit = self.cache.get(key)
        if hit is not None:
            latency = monotonic_ms() - t0
            self._record(model=model, outcome="cache_hit", latency_ms=latency, ttft_ms=latency, nbytes=hit.nbytes,
                         **base)
            return dataclasses.replace(hit.value, latency_ms=latency, cached=True, request_id=rid)
        self._admit(model=model, **base)
        timeout = self.settings.request_timeout_s
        body = speech_body(text, model=model, voice=voice, audio_format=audio_format)
        try:
            (data, transcript), obs = self._run(
                self._call(lambda: speak(backend.http, body, where=backend.label), backend=backend, model=model,
                           api_key=api_key, timeout_s=timeout),
                timeout_s=timeout * (self.settings.retries + 1) + self.settings.retry_max_wait_s + 5,
            )
            clip = verify_audio(data, where=backend.label)
        except DashError as err:
            raise self._fail(err, model=model, latency_ms=monotonic_ms() - t0, **base) from None
        latency = monotonic_ms() - t0
        result = AudioResult(data, clip.content_type, voice, clip.format, clip.duration_s, latency, False, rid,
                             model, backend.name, audio_format, transcript)
        self._record(model=model, outcome="ok", latency_ms=latency, ttft_ms=latency, nbytes=len(data),
                     usage=Usage.from_dict(obs.usage) if obs.usage else None, status_code=obs.status_code, **base)
        self.cache.put(key, result, nbytes=len(data), latency_ms=latency)
        return result

    # ----- batch jobs (the Batch page; logic in batch.py) --------------------------------

    def _batch_runner(self) -> BatchRunner:
        """The batch runner: its tables and daemon threads are created on first use."""
        with self._lock:
            if self._closed:
                raise BackendUnavailable("The service has been shut down.", "Reload the page to start it again.")
            runner = getattr(self, "_batch", None)
            if runner is None:
                with store_errors("started"):
                    runner = self._batch = BatchRunner(self)
            return runner

    def submit_batch(self, rows: Sequence[BatchRow | Mapping[str, Any]], *, name: str = "",
                     user: str = "anonymous", session: str = "", api_key: str | None = None) -> str:
        """Start a background job that answers every row with ``generate_text``.

        Each row is one request of kind ``text`` as ``user`` (cache, rate limits and
        Monitor as usual); a full rate-limit window pauses the job rather than
        failing rows. The job outlives the page and is kept in the usage database.

        Args:
            rows: 1 to ``batch.MAX_ROWS`` rows: ``BatchRow`` (``batch.parse_csv``'s
                valid rows) or mappings with ``prompt`` and optional ``model``,
                ``system``, ``temperature``, ``max_tokens``, ``seed``.
            name: A label for the job list (the file name).

        Returns:
            The job id (32 hex characters).

        Raises:
            InvalidRequest: no rows, too many, or a row that cannot run.
            BackendUnavailable: the service is shut down or the database failed.
        """
        checked = check_rows(rows, max_prompt_chars=self.settings.max_prompt_chars)
        runner = self._batch_runner()
        with store_errors("saved"):
            return runner.submit(checked, user=user, session=session, api_key=api_key, name=str(name or ""))

    def batch_status(self, job_id: str, *, user: str | None = None, session: str = "",
                     api_key: str | None = None) -> BatchStatus:
        """Counts (done/failed/remaining), ETA and rate-limit wait of ``user``'s job.

        Raises:
            InvalidRequest: no such job of ``user`` (any user's when None).
            BackendUnavailable: the database failed.
        """
        runner = self._batch_runner()
        with store_errors("read"):
            return runner.status(check_owner(runner, job_id, user))

    def batch_results(self, job_id: str, *, limit: int | None = None, user: str | None = None, session: str = "",
                      api_key: str | None = None) -> pd.DataFrame:
        """The job's rows in file order: input, answer, model, latency, tokens, error.

        Args:
            limit: Only the first ``limit`` rows (a live view); None = all.

        Returns:
            A DataFrame with ``batch.RESULT_COLUMNS``.

        Raises:
            InvalidRequest, BackendUnavailable: as ``batch_status``.
        """
        runner = self._batch_runner()
        with store_errors("read"):
            return runner.results(check_owner(runner, job_id, user), limit=limit)

    def cancel_batch(self, job_id: str, *, user: str | None = None, session: str = "",
                     api_key: str | None = None) -> BatchStatus:
        """Stop ``user``'s job: no further rows start; rows in flight finish and are kept.

        Returns:
            The job's status after the cancel (cancelling a stopped job changes nothing).

        Raises:
            InvalidRequest, BackendUnavailable: as ``batch_status``.
        """
        runner = self._batch_runner()
        with store_errors("cancelled"):
            runner.cancel(check_owner(runner, job_id, user))
            return runner.status(job_id)

    def resume_batch(self, job_id: str, *, retry_failed: bool = False, user: str | None = None,
                     session: str = "", api_key: str | None = None) -> BatchStatus:
        """Run the unfinished rows of an interrupted or cancelled job (finished rows are kept).

        Args:
            retry_failed: Also run the rows that failed.

        Raises:
            InvalidRequest: no such job, it is running, or nothing is left to run.
            BackendUnavailable: as ``batch_status``.
        """
        runner = self._batch_runner()
        with store_errors("resumed"):
            runner.resume(check_owner(runner, job_id, user), user=runner.owner(job_id) or "anonymous",
                          session=session, api_key=api_key, retry_failed=retry_failed)
            return runner.status(job_id)

    def delete_batch(self, job_id: str, *, user: str | None = None, session: str = "",
                     api_key: str | None = None) -> None:
        """Delete a stopped job of ``user`` and its rows.

        Raises:
            InvalidRequest: no such job, or it is running.
            BackendUnavailable: as ``batch_status``.
        """
        runner = self._batch_runner()
        with store_errors("deleted"):
            runner.delete(check_owner(runner, job_id, user))

    def list_batches(self, user: str | None, *, session: str = "", api_key: str | None = None,
                     limit: int = 50) -> list[BatchStatus]:
        """``user``'s newest ``limit`` jobs (everyone's when None), newest first.

        Raises:
            BackendUnavailable: the database failed.
        """
        runner = self._batch_runner()
        with store_errors("listed"):
            return runner.list(user, limit=limit)

    # ----- replay and shared conversations (logic in replay.py, conversations.py) --------

    def configure_replay(self, *, persistent: bool | None = None, replay_only: bool | None = None) -> CacheStats:
        """Turn recording (the persistent cache) and replay-only mode on or off, for everyone.

        Args:
            persistent: Record every answer under ``<data_dir>/replay`` and serve it
                after a restart; off keeps the recordings and turns replay-only off.
            replay_only: Serve recordings only; nothing reaches a backend and no
                rate-limit slot is spent. On also turns recording on.

        Returns:
            ``cache.stats()`` after the change.

        Raises:
            InvalidRequest: ``persistent=False`` together with ``replay_only=True``.
            DashError: the recordings folder cannot be opened.
        """
        try:
            return self.cache.configure(persistent=persistent, replay_only=replay_only)
        except ValueError as exc:
            raise InvalidRequest(f"Replay settings not applied: {exc}.",
                                 "Leave the persistent cache on while replay-only is on.") from exc
        except OSError as exc:
            raise DashError(f"The recordings folder {self.settings.data_dir / 'replay'} cannot be opened: {exc}.",
                            "Check that the data directory exists and is writable, then try again.") from exc

    def export_recordings(self) -> bytes:
        """Every recorded answer as one ``.zip`` to replay elsewhere (``replay.RecordingStore.export``).

        Raises:
            DashError: the recordings cannot be read.
        """
        try:
            return self.cache.export_recordings(self.backend_info())
        except (OSError, ValueError) as exc:
            raise DashError(f"The recordings could not be exported: {exc}.",
                            "Check the data directory, then try again.") from exc

    def import_recordings(self, data: bytes) -> ImportReport:
        """Merge an exported ``.zip`` into the recordings; nothing changes unless all of it reads.

        Returns:
            ``ImportReport``: added, skipped (already recorded), total.

        Raises:
            InvalidRequest: not a blossom-dash replay export, a newer format version,
                or damaged (the message says which).
            DashError: the recordings folder cannot be written.
        """
        try:
            return self.cache.import_recordings(data)
        except RecordError as exc:
            raise InvalidRequest(f"Nothing was imported. {exc}",
                                 "Export it again from blossom-dash (Controls → Replay) and import that .zip.") from exc
        except (OSError, ValueError) as exc:
            raise DashError(f"The recordings could not be written: {exc}.",
                            "Check that the data directory is writable, then try again.") from exc

    def clear_recordings(self) -> int:
        """Delete every recorded answer (the in-memory cache keeps what it has not read from them).

        Returns:
            How many recordings were deleted.

        Raises:
            DashError: the recordings folder cannot be opened.
        """
        try:
            return self.cache.clear_recordings()
        except OSError as exc:
            raise DashError(f"The recordings could not be deleted: {exc}.", "Check the data directory.") from exc

    def _conversations(self) -> ConversationStore:
        """The ``conversations`` table, created in the usage database on first use."""
        with self._lock:
            store = getattr(self, "_conversation_store", None)
            if store is None:
                store = self._conversation_store = ConversationStore(self.store.engine)
            return store

    def save_conversation(self, messages: list[dict[str, Any]], *, user: str = "anonymous", session: str = "",
                          api_key: str | None = None) -> Conversation:
        """Save a snapshot of a Playground chat for its permalink (``?conversation=<id>``).

        Args:
            messages: ``[{"role": "user"|"assistant", "content", "caption"?, "code"?}]``.
            user: Who shares it.

        Returns:
            The saved ``Conversation`` (its ``id`` goes in the link).

        Raises:
            InvalidRequest: empty chat, a bad role, too long (``conversations.MAX_*``).
            DashError: the database refused the write.
        """
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return self._conversations().save(messages, user=user)
        except ConversationError as exc:
            raise InvalidRequest(str(exc), "Chat first, then share.") from exc
        except SQLAlchemyError as exc:
            raise DashError("The conversation could not be saved: the usage database refused the write.",
                            "Try again; if it repeats, check the database.") from exc

    def load_conversation(self, conversation_id: str) -> Conversation:
        """A shared conversation, to show read-only.

        Raises:
            InvalidRequest: the id is malformed or unknown (the link is wrong or cut short).
            DashError: the database cannot be read.
        """
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return self._conversations().load(conversation_id)
        except ConversationError as exc:
            raise InvalidRequest(f"This conversation link does not open anything: {exc}",
                                 "Check that the link was copied whole, or start a new chat.") from exc
        except SQLAlchemyError as exc:
            raise DashError("The conversation could not be read from the usage database.",
                            "Try again in a moment.") from exc

    def session(self, user: str, session_id: str = "") -> SessionHandle:
        """A cheap per-session handle bound to ``user``."""
        return SessionHandle(self, user=user, session_id=session_id)

    def close(self) -> None:
        """Stop the demo backend, close the client and the store, stop the loop."""
        if self._closed:
            return
        self._closed = True
        if (runner := getattr(self, "_batch", None)) is not None:
            runner.close()  # its running jobs become "interrupted", resumable after a restart
        backend = getattr(self, "_backend", None)
        for coro in ([backend.close()] if backend else []) + ([self._demo.stop()] if self._demo else []):
            try:
                self._loop.run(coro, timeout=5)
            except Exception:
                log.debug("error while closing", exc_info=True)
        self._loop.stop()
        self.metrics.close()
        self.store.close()

    def __enter__(self) -> BlossomService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _verify_image(data: Any, where: str) -> tuple[str, int, int]:
    """Check that ``data`` is an image; returns ``(content_type, width, height)``.

    Raises:
        UpstreamError: empty, or not an image Pillow can read.
    """
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise UpstreamError(f"{where} answered the image request with an empty body.",
                            "Try again, or pick another image model.", status_code=200)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format or "PNG", img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        preview = bytes(data[:60]).decode("utf-8", errors="replace").strip()
        raise UpstreamError(
            f"{where} answered the image request with {len(data):,} bytes that are not an image "
            f"(it begins “{preview[:40]}”).",
            "The backend may be overloaded or rate-limiting: try again in a moment, or pick another model.",
            status_code=200,
        ) from exc
    return Image.MIME.get(fmt, f"image/{fmt.lower()}"), w, h


class SessionHandle:
    """One browser session's view of the service: identity and a private API key.

    Args:
        service: The process-wide service.
        user: The user identity (rate limits, metrics).
        session_id: The browser session (metrics).
    """

    def __init__(self, service: BlossomService, *, user: str, session_id: str = "") -> None:
        self.service = service
        self.user = user
        self.session_id = session_id
        self._api_key: str | None = None

    def set_api_key(self, key: str | None) -> None:
        """Use ``key`` for this session's requests only (None or "" clears it)."""
        self._api_key = key.strip() if key and key.strip() else None

    @property
    def has_session_key(self) -> bool:
        """Whether a session key is set (the key itself is never handed back)."""
        return self._api_key is not None

    def _ids(self) -> dict[str, Any]:
        return {"user": self.user, "session": self.session_id, "api_key": self._api_key}

    def generate_text(self, prompt: str, **kwargs: Any) -> TextResult:
        """``BlossomService.generate_text`` as this session's user."""
        return self.service.generate_text(prompt, **kwargs, **self._ids())

    def stream_text(self, prompt: str, **kwargs: Any) -> TextStream:
        """``BlossomService.stream_text`` as this session's user."""
        return self.service.stream_text(prompt, **kwargs, **self._ids())

    def generate_image(self, prompt: str, **kwargs: Any) -> ImageResult:
        """``BlossomService.generate_image`` as this session's user."""
        return self.service.generate_image(prompt, **kwargs, **self._ids())

    def rate_status(self) -> LimitStatus:
        """This user's and the global moving windows."""
        return self.service.limiter.status(self.user)

    def generate_speech(self, text: str, **kwargs: Any) -> AudioResult:
        """``BlossomService.generate_speech`` as this session's user."""
        return self.service.generate_speech(text, **kwargs, **self._ids())

    def compare_text(self, prompt: str, models: list[str], **kwargs: Any) -> TextComparison:
        """``BlossomService.compare_text`` as this session's user."""
        return self.service.compare_text(prompt, models, **kwargs, **self._ids())

    def compare_images(self, prompt: str, models: list[str], **kwargs: Any) -> Comparison:
        """``BlossomService.compare_images`` as this session's user."""
        return self.service.compare_images(prompt, models, **kwargs, **self._ids())

    def compare_record(self, kind: str, prompt: str, panels: list[Any], **kwargs: Any) -> Comparison:
        """``BlossomService.compare_record`` as this session's user."""
        return self.service.compare_record(kind, prompt, panels, **kwargs, **self._ids())

    def vote(self, comparison_id: str, choice: str) -> Vote:
        """``BlossomService.vote`` as this session's user."""
        return self.service.vote(comparison_id, choice, **self._ids())

    def leaderboard(self, kind: str = "text") -> Any:
        """``BlossomService.leaderboard`` (the team's votes)."""
        return self.service.leaderboard(kind)

    def load_comparison(self, comparison_id: str) -> Comparison:
        """``BlossomService.load_comparison``."""
        return self.service.load_comparison(comparison_id)

    def submit_batch(self, rows: Any, **kwargs: Any) -> str:
        """``BlossomService.submit_batch`` as this session's user."""
        return self.service.submit_batch(rows, **kwargs, **self._ids())

    def batch_status(self, job_id: str) -> BatchStatus:
        """``BlossomService.batch_status`` of this user's job."""
        return self.service.batch_status(job_id, **self._ids())

    def batch_results(self, job_id: str, **kwargs: Any) -> pd.DataFrame:
        """``BlossomService.batch_results`` of this user's job."""
        return self.service.batch_results(job_id, **kwargs, **self._ids())

    def cancel_batch(self, job_id: str) -> BatchStatus:
        """``BlossomService.cancel_batch`` of this user's job."""
        return self.service.cancel_batch(job_id, **self._ids())

    def resume_batch(self, job_id: str, **kwargs: Any) -> BatchStatus:
        """``BlossomService.resume_batch`` of this user's job, with this session's key."""
        return self.service.resume_batch(job_id, **kwargs, **self._ids())

    def delete_batch(self, job_id: str) -> None:
        """``BlossomService.delete_batch`` of this user's job."""
        return self.service.delete_batch(job_id, **self._ids())

    def list_batches(self) -> list[BatchStatus]:
        """``BlossomService.list_batches`` of this user."""
        return self.service.list_batches(**self._ids())

    def save_conversation(self, messages: list[dict[str, Any]]) -> Conversation:
        """``BlossomService.save_conversation`` as this session's user."""
        return self.service.save_conversation(messages, **self._ids())
