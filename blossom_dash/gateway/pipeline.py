"""THE request pipeline, once: ``Gateway.run(request, caller)`` and ``Gateway.stream``.

Every request, of every kind, from every page, feature and script:

    validate -> resolve the model -> key (the backend's identity applied once) -> cache
    -> admit (replay-only, rate limit, budgets, circuit breaker) -> sdk.call (deadline,
    retries, error mapping) -> verify -> record ONE event -> cache -> result

One event per request by construction: a request's ``_Ticket`` records at most once,
whichever way the request ends. Outcomes: ``ok``, ``cache_hit``, ``rate_limited`` (our
own limits), ``rejected`` (the user's own invalid request, or a replay-only refusal)
and ``error`` (a backend or system failure).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..errors import (
    BackendUnavailable,
    BudgetExceeded,
    CircuitOpen,
    DashError,
    InvalidRequest,
    NotRecorded,
    RateLimited,
    ResponseTooLarge,
    UpstreamError,
)
from ..policies.breaker import CircuitBreaker
from ..policies.budget import BudgetLedger, Reservation
from ..policies.cache import ResponseCache, backend_identity, request_key
from ..policies.ratelimit import RateLimiter
from ..policies.replay import not_recorded
from ..pricing import Price
from ..results import AudioResult, ImageResult, TextResult, Usage
from ..sdk.backend import Backend, StreamChunk
from ..sdk.call import CallPolicy, call, retry_stream, timeout_error
from ..sdk.loop import LoopThread, monotonic_ms
from ..sdk.mapping import to_dash_error
from ..sdk.speech import speak
from ..sdk.transport import Observation
from ..settings import Settings
from ..telemetry.collector import Event, MetricsCollector, new_request_id
from .answers import BUILDERS as _BUILDERS
from .answers import from_cache as _from_cache
from .costs import cost_of
from .event_detail import event_context, event_params, stopped_params, stored_text
from .models import ModelCatalog, ModelInfo, ModelList, no_models
from .requests import Caller, Prepared, Request, TextRequest, check_model
from .streams import DONE, StreamEnd, TextStream
from .vision import require_sight

log = logging.getLogger("blossom_dash")
_WORDS_RE = re.compile(r"\S+\s*|\s+")
#: Longest wait for a default model's lookup inside a request's deadline, seconds.
MODEL_LOOKUP_S = 5.0
#: Longest wait for a model's price on a request's path (its facts endpoint), seconds.
PRICE_LOOKUP_S = 2.0
#: How long a stopped stream's reader may take to notice before it is cancelled, seconds.
STOP_GRACE_S = 1.0
#: Slack on the loop-thread wait, seconds: the coroutine's own deadline fires first.
_BACKSTOP_S = 0.25


def outcome_of(err: DashError) -> str:
    """The event outcome of a request that ended with ``err``.

    ``rejected`` for the user's own invalid request (no backend status: refused before
    sending), for replay-only refusals and for a spending budget's refusal
    (``BudgetExceeded``: its ``error_type`` tells it apart; a new outcome would split
    every Monitor figure that sums outcomes); ``rate_limited`` for our own limits;
    ``error`` for every backend or system failure (an upstream 429 included).
    """
    if isinstance(err, NotRecorded | BudgetExceeded) or (isinstance(err, InvalidRequest) and err.status_code is None):
        return "rejected"
    if isinstance(err, RateLimited) and err.scope in ("user", "global", "batch"):
        return "rate_limited"
    return "error"


def counts_against_backend(err: DashError) -> bool:
    """Whether ``err`` is a backend failure for the circuit breaker: a timeout, a
    connection error or a 5xx; not a 4xx, a bad body, or our own refusal."""
    if isinstance(err, CircuitOpen):
        return False
    if isinstance(err, BackendUnavailable):
        return True
    return (isinstance(err, UpstreamError) and not isinstance(err, ResponseTooLarge)
            and (err.status_code or 0) >= 500)


@dataclass
class _Ticket:
    """One request's identity and its single event."""

    request_id: str
    ts: float
    t0: float
    caller: Caller
    kind: str
    prompt: str | None
    backend: str
    model: str = ""
    recorded: bool = False
    #: The model's price as admitted (None: unpriced), and what the budgets hold for it.
    price: Price | None = None
    reservation: Reservation | None = None
    #: What the event records beyond its figures (``event_detail``).
    context: str = ""
    params: str | None = None


class Gateway:
    """The request pipeline over one live backend at a time.

    Args:
        settings: Deadlines, retries, size caps, prompt limits, prompt storage.
        loop: The loop that owns the backends' clients.
        backend: The live backend (``switch`` replaces it).
        cache: The response cache (and replay recordings).
        limiter: Per-user and global moving windows.
        collector: Where each request's one event goes.
        models: The model lists.
        recorded_models: Models with recordings of a kind (replay-only offers only those).
        budget: The spending budgets (none set when omitted).

    Attributes:
        prices: ``prices(kind, model) -> Price | None``, the live backend's price of a
            model (None: unpriced); what a budget reserves and the real cost use.
    """

    def __init__(self, settings: Settings, loop: LoopThread, backend: Backend, *, cache: ResponseCache,
                 limiter: RateLimiter, collector: MetricsCollector, models: ModelCatalog,
                 budget: BudgetLedger | None = None) -> None:
        self.settings = settings
        self._loop = loop
        self._backend = backend
        self._cache = cache
        self._limiter = limiter
        self._collector = collector
        self._models = models
        self.budget = budget or BudgetLedger()
        self.prices: Callable[[str, str], Price | None] = self.price_of
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._policy = CallPolicy(settings.retries, settings.retry_max_wait_s, settings.max_response_bytes)
        self.closed = False
        #: ``listener(where, old, new)`` given to every breaker made from now on (the alerts).
        self.breaker_listener: Callable[[str, str, str], None] | None = None

    # ----- the backend, its breaker and its models -------------------------------------

    @property
    def backend(self) -> Backend:
        """The live backend."""
        return self._backend

    def switch(self, backend: Backend) -> Backend:
        """Make ``backend`` the live one; returns the old one (for the caller to close)."""
        with self._lock:
            old, self._backend = self._backend, backend
        self._models.forget()
        return old

    def breaker(self, backend: Backend | None = None) -> CircuitBreaker:
        """The circuit breaker of ``backend`` (the live one by default), made on first use."""
        backend = backend or self._backend
        with self._lock:
            breaker = self._breakers.get(backend.label)
            if breaker is None:
                breaker = self._breakers[backend.label] = CircuitBreaker(
                    backend.label, failures=self.settings.breaker_failures, reset_s=self.settings.breaker_reset_s,
                    listener=self.breaker_listener)
            return breaker

    @property
    def limits(self) -> tuple[int, int]:
        """``(per_user_rpm, global_rpm)`` in force."""
        return self._limiter.limits

    def limit_status(self, user: str) -> Any:
        """``user``'s and the global moving windows (``RateLimiter.status``)."""
        return self._limiter.status(user)

    def list_models(self, kind: str, *, timeout_s: float = MODEL_LOOKUP_S) -> ModelList:
        """The live backend's models of ``kind`` (``ModelCatalog.get``); in replay-only
        mode, the models that have recordings, when there are any.

        Raises:
            InvalidRequest: ``kind`` is not text, image or audio.
        """
        if kind not in ("text", "image", "audio"):
            raise InvalidRequest(f"Unknown model kind {kind!r}.", "Use 'text', 'image' or 'audio'.")
        if self._cache.replay_only and (recorded := self._cache.recorded_models(kind)):
            return ModelList(kind, tuple(recorded), "recorded")
        backend = self._backend
        breaker = self.breaker(backend)
        skip = "its circuit breaker is open" if breaker.state().circuit != "closed" else ""

        def counted(answered: bool) -> None:
            breaker.success() if answered else breaker.failure()

        return self._models.get(backend, kind, timeout_s=timeout_s, skip_fetch=skip, on_fetch=counted)

    def model_info(self, kind: str, model: str, *, timeout_s: float = MODEL_LOOKUP_S) -> ModelInfo | None:
        """The live backend's facts about ``model`` (``ModelCatalog.info``), or None;
        not asked while its circuit is open (cached facts only).

        Raises:
            InvalidRequest: ``kind`` is not text, image or audio.
        """
        if kind not in ("text", "image", "audio"):
            raise InvalidRequest(f"Unknown model kind {kind!r}.", "Use 'text', 'image' or 'audio'.")
        backend = self._backend
        skip = self.breaker(backend).state().circuit != "closed"
        return self._models.info(backend, kind, model, timeout_s=timeout_s, skip_fetch=skip)

    def price_of(self, kind: str, model: str) -> Price | None:
        """The live backend's price of ``model`` (None: unpriced; a stream's is text's), for
        costs and budgets; never raises. On the request's path, a backend slow to list its
        facts costs at most ``PRICE_LOOKUP_S`` once per ``retry_s`` (then it is unpriced)."""
        kind = "text" if kind == "stream" else kind
        if kind not in ("text", "image", "audio") or not model:
            return None
        info = self.model_info(kind, model, timeout_s=PRICE_LOOKUP_S)
        return info.price if info is not None else None

    def _model_for(self, request: Request, deadline: float) -> str:
        chosen = check_model(request.model)
        if chosen:
            return chosen
        preferred = {"text": self.settings.default_text_model,
                     "image": self.settings.default_image_model}.get(request.kind, "")
        if preferred:
            return preferred
        timeout = min(MODEL_LOOKUP_S, deadline - time.monotonic())
        if timeout <= 0:
            raise timeout_error(self._backend.label, self._timeout_s(request.kind))
        models = self.list_models(request.kind, timeout_s=timeout)
        if not models.names:
            breaker = self.breaker()
            raise breaker.refusal() if breaker.state().circuit != "closed" else no_models(models)
        return models.names[0]

    def _timeout_s(self, kind: str) -> float:
        return self.settings.image_timeout_s if kind == "image" else self.settings.request_timeout_s

    # ----- recording -----------------------------------------------------------------------

    def _ticket(self, kind: str, caller: Caller, prompt: str | None, t0: float) -> _Ticket:
        return _Ticket(new_request_id(), time.time(), t0, caller, kind, prompt, self._backend.name)

    def _record(self, ticket: _Ticket, outcome: str, *, error: DashError | None = None,
                latency_ms: float | None = None, ttft_ms: float | None = None, usage: Usage | None = None,
                nbytes: int | None = None, status_code: int | None = None,
                saved: Decimal | None = None, answer: str | None = None) -> Decimal | None:
        """Record the request's one event; returns its ``cost`` (pollen, None: unpriced).

        ``answer`` (the text served) is kept as ``stored_text`` allows.

        ``cost`` is usage x price for an answered request (``cost_of``), ``saved`` (the
        cost of the cached answer: what the hit saved) for a ``cache_hit``, else None.
        """
        if ticket.recorded:  # by construction this does not happen; never record twice if it does
            log.error("request %s tried to record a second event", ticket.request_id)
            return None
        ticket.recorded = True
        cost = self._settle(ticket, outcome, usage)  # the budgets first: they hold whatever the journal does
        if outcome == "cache_hit":
            cost = saved
        s = self.settings
        if status_code is None and error is not None:
            status_code = error.status_code
        prompt = ticket.prompt[:s.prompt_chars] if ticket.prompt and s.store_prompts else None
        event = Event(ticket.ts, ticket.request_id, ticket.caller.user, ticket.caller.session, ticket.kind,
                      ticket.model, ticket.backend, outcome, type(error).__name__ if error else "", status_code,
                      latency_ms, ttft_ms, usage.prompt_tokens if usage else None,
                      usage.completion_tokens if usage else None, nbytes, prompt, cost, ticket.context,
                      ticket.params, stored_text(answer, s))
        try:
            self._collector.record(event)
        except (OSError, ValueError):  # ValueError: the journal is closed (service shut down)
            # The answer is still good; a failed journal write must not lose it.
            self._collector.store_errors += 1
            log.exception("could not journal event %s", ticket.request_id)
        return cost

    def _settle(self, ticket: _Ticket, outcome: str, usage: Usage | None) -> Decimal | None:
        """The cost of an answered request (None: unpriced, or not answered); settles or
        releases its budget reservation."""
        cost = cost_of(ticket.kind, ticket.price, usage) if outcome == "ok" else None
        if ticket.reservation is not None:
            if outcome == "ok":
                self.budget.settle(ticket.reservation, cost)
            else:
                self.budget.release(ticket.reservation)
            ticket.reservation = None
        return cost

    def _failed(self, ticket: _Ticket, err: DashError) -> DashError:
        if not ticket.recorded:
            self._record(ticket, outcome_of(err), error=err, latency_ms=monotonic_ms() - ticket.t0)
        return err

    # ----- the steps shared by run and stream --------------------------------------------

    def _begin(self, request: Request, caller: Caller, kind: str) -> tuple[_Ticket, Prepared, Any, float]:
        """Validate, resolve the model, key and look up: ``(ticket, prepared, key, deadline)``."""
        t0 = monotonic_ms()
        deadline = time.monotonic() + self._timeout_s(request.kind)
        ticket = self._ticket(kind, caller, request.event_prompt, t0)
        ticket.context = event_context(request)
        if self.closed:
            raise self._failed(ticket, BackendUnavailable("The service has been shut down.",
                                                          "Reload the page to start it again."))
        max_chars = self.settings.max_prompt_chars
        try:
            request.validate(max_chars)
            ticket.model = str(request.model or "")
            ticket.model = self._model_for(request, deadline)
            prepared = request.prepare(ticket.model, max_chars)
            require_sight(self, request, ticket.model)  # before the cache, the limits, the network
            ticket.params = event_params(request, prepared)
        except DashError as err:
            raise self._failed(ticket, err) from None
        backend = self._backend
        key = request_key(backend=backend_identity(backend.name, backend.base_url), random_parts=prepared.random_parts,
                          **prepared.key_parts)
        return ticket, prepared, key, deadline

    def _admit(self, ticket: _Ticket, prepared: Prepared, breaker: CircuitBreaker) -> bool:
        """Replay-only, then the rate limit, then the budgets (the estimate reserved), then
        the breaker; returns whether this is its probe."""
        try:
            if self._cache.replay_only:  # every cache miss passes here before the network: refuse it unsent
                raise not_recorded(ticket.kind, ticket.prompt, prepared.model)
            caller = ticket.caller
            self._limiter.acquire(caller.user, rpm=self.settings.kiosk_rpm if caller.is_kiosk else None,
                                  batch=caller.purpose == "batch")
            ticket.price = self.prices(prepared.kind, prepared.model)
            ticket.reservation = self.budget.reserve(caller.user, prepared.estimated_cost(ticket.price, ticket.prompt))
            return breaker.admit()
        except DashError as err:
            raise self._failed(ticket, err) from None

    @staticmethod
    def _verdict(breaker: CircuitBreaker, err: DashError, probe: bool) -> None:
        if counts_against_backend(err):
            breaker.failure(probe)
        else:
            breaker.success(probe)  # the backend answered, if only to say no

    # ----- whole answers -------------------------------------------------------------------

    def run(self, request: Request, caller: Caller) -> TextResult | ImageResult | AudioResult:
        """One whole answer: a ``TextResult``, ``ImageResult`` or ``AudioResult``.

        Ends within the kind's deadline (``request_timeout_s``, or ``image_timeout_s``
        for images; the default-model lookup and retries included) whatever the
        backend does.

        Raises:
            InvalidRequest, NotRecorded (outcome ``rejected``); RateLimited;
            CircuitOpen, BackendUnavailable, UpstreamError (``ResponseTooLarge``
            included), AuthenticationFailed (outcome ``error``).
        """
        ticket, prepared, key, deadline = self._begin(request, caller, request.kind)
        hit = self._cache.get(key)
        if hit is not None:
            latency = monotonic_ms() - ticket.t0
            result = _from_cache(hit.value, latency, ticket.request_id)
            usage = getattr(result, "usage", None)
            if result.cost is None:  # cached before costs were kept: at today's price
                result = dataclasses.replace(result, cost=cost_of(ticket.kind, self.prices(request.kind, ticket.model),
                                                                  usage))
            self._record(ticket, "cache_hit", latency_ms=latency, usage=usage, nbytes=hit.nbytes, saved=result.cost,
                         answer=getattr(result, "text", None) if request.kind == "text" else None)
            return result
        backend = self._backend
        breaker = self.breaker(backend)
        probe = self._admit(ticket, prepared, breaker)
        send = _SENDERS[prepared.kind]
        timeout = self._timeout_s(request.kind)
        try:
            coro = call(lambda: send(backend, prepared), where=backend.label, model=prepared.model,
                        api_key=caller.api_key, deadline=deadline, timeout_s=timeout, policy=self._policy,
                        quote=backend.trusted)
            try:
                value, obs = self._loop.run(coro, timeout=max(0.0, deadline - time.monotonic()) + _BACKSTOP_S)
            except concurrent.futures.TimeoutError:
                raise timeout_error(backend.label, timeout) from None
            except RuntimeError as exc:  # the loop was stopped under us (service closing)
                raise BackendUnavailable("The service is shutting down.", "Reload the page.") from exc
            latency = monotonic_ms() - ticket.t0
            result, nbytes, usage = _BUILDERS[prepared.kind](value, obs, prepared, backend, latency,
                                                             ticket.request_id)
        except DashError as err:
            self._verdict(breaker, err, probe)
            raise self._failed(ticket, err) from None
        breaker.success(probe)
        cost = self._record(ticket, "ok", latency_ms=latency, usage=usage, nbytes=nbytes, status_code=obs.status_code,
                            answer=getattr(result, "text", None) if request.kind == "text" else None)
        result = dataclasses.replace(result, cost=cost)
        self._cache.put(key, result, nbytes=nbytes, latency_ms=latency)
        return result

    # ----- streams -------------------------------------------------------------------------

    def stream(self, request: TextRequest, caller: Caller) -> TextStream:
        """One answer as it is generated.

        Validation, the model lookup, the cache and admission happen now (their
        errors raise here); backend errors raise from the iterator. A cache hit
        replays the stored answer at once. ``request_timeout_s`` bounds the time to
        the first delta; ``stream_timeout_s`` the whole stream. Transient failures
        are retried before the first delta, never after.

        Raises:
            InvalidRequest, NotRecorded, RateLimited, CircuitOpen (here);
            BackendUnavailable, UpstreamError, AuthenticationFailed, RateLimited
            (while iterating).
        """
        ticket, prepared, key, _ = self._begin(request, caller, "stream")
        s = self.settings
        hit = self._cache.get(key)
        if hit is not None:
            cached: TextResult = hit.value
            items: queue.SimpleQueue[Any] = queue.SimpleQueue()
            for word in _WORDS_RE.findall(cached.text):
                items.put(StreamChunk(word))
            items.put(DONE)

            def replayed(end: StreamEnd) -> TextResult:
                ticket.params = stopped_params(ticket.params, end.done)
                saved = cached.cost if cached.cost is not None else cost_of(
                    "stream", self.prices("text", cached.model), cached.usage)
                result = TextResult(end.text, cached.model, cached.backend, end.latency_ms, end.ttft_ms,
                                    cached.usage, True, ticket.request_id, cached.finish_reason,
                                    stopped_early=not end.done, cost=saved)
                self._record(ticket, "cache_hit", latency_ms=end.latency_ms, ttft_ms=end.ttft_ms,
                             usage=cached.usage, nbytes=hit.nbytes, saved=saved, answer=end.text)
                return result

            return TextStream(items, replayed, cancel=None, t0_ms=ticket.t0, first_timeout_s=s.request_timeout_s,
                              timeout_s=s.stream_timeout_s, where=self._backend.label)
        backend = self._backend
        breaker = self.breaker(backend)
        probe = self._admit(ticket, prepared, breaker)
        wire = prepared.wire
        body = {"model": prepared.model, "messages": wire["messages"], "max_tokens": wire["max_tokens"],
                "stream": True, "stream_options": {"include_usage": True}, **wire["extra"]}
        out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        seen = Observation()
        started, stop = threading.Event(), threading.Event()

        def emit(chunk: StreamChunk) -> None:
            if chunk.delta:
                started.set()
            out.put(chunk)

        async def read() -> None:
            try:
                await retry_stream(lambda _obs: backend.stream_chat(body, emit, stop.is_set), where=backend.label,
                                   model=prepared.model, api_key=caller.api_key,
                                   first_deadline=time.monotonic() + s.request_timeout_s,
                                   deadline=time.monotonic() + s.stream_timeout_s, timeout_s=s.request_timeout_s,
                                   stream_timeout_s=s.stream_timeout_s, policy=self._policy,
                                   started=started.is_set, observation=seen, quote=backend.trusted)
                out.put(DONE)
            except DashError as err:
                out.put(err)

        def finished(end: StreamEnd) -> TextResult | None:
            if end.error is not None:
                self._verdict(breaker, end.error, probe)
                self._record(ticket, outcome_of(end.error), error=end.error, latency_ms=end.latency_ms,
                             ttft_ms=end.ttft_ms)
                return None
            if end.ttft_ms is not None or end.done:
                breaker.success(probe)
            else:
                breaker.release(probe)  # stopped before the backend said anything: no verdict
            usage = Usage.from_dict(end.usage) if end.usage else Usage.estimate(wire["messages"], end.text)
            result = TextResult(end.text, prepared.model, backend.name, end.latency_ms, end.ttft_ms, usage, False,
                                ticket.request_id, end.finish_reason, stopped_early=not end.done)
            nbytes, ticket.params = len(end.text.encode()), stopped_params(ticket.params, end.done)
            cost = self._record(ticket, "ok", latency_ms=end.latency_ms, ttft_ms=end.ttft_ms, usage=usage,
                                nbytes=nbytes, status_code=seen.status_code, answer=end.text)
            result = dataclasses.replace(result, cost=cost)
            if end.done:
                self._cache.put(key, result, nbytes=nbytes, latency_ms=end.latency_ms)
            return result

        try:
            reader = self._loop.submit(read())
        except RuntimeError as exc:  # the loop is closed
            err = BackendUnavailable("The service is shutting down.", "Reload the page.")
            breaker.release(probe)
            raise self._failed(ticket, err) from exc
        loop = self._loop.loop

        def cancel() -> None:
            # Ask the reader to stop at its next line (it then closes the response
            # itself); cancel it only if the backend sends nothing for STOP_GRACE_S.
            stop.set()
            if not reader.done() and not loop.is_closed():
                loop.call_soon_threadsafe(loop.call_later, STOP_GRACE_S, reader.cancel)

        return TextStream(out, finished, cancel=cancel, t0_ms=ticket.t0, first_timeout_s=s.request_timeout_s,
                          timeout_s=s.stream_timeout_s, where=backend.label)

    def probe(self, timeout_s: float = MODEL_LOOKUP_S) -> float:
        """Ask the live backend's model endpoint once (no generation is spent), as traffic.

        The answer counts for the circuit breaker like any call: an answer (any status
        under 500) is a success, a timeout, connection error or 5xx a failure.

        Returns:
            How long it took, ms.
        """
        backend = self._backend
        breaker = self.breaker(backend)
        t0 = monotonic_ms()
        try:
            self._loop.run(asyncio.wait_for(backend.models("text"), timeout_s), timeout=timeout_s + _BACKSTOP_S)
            breaker.success()
        except Exception as exc:  # noqa: BLE001 - the verdict is all that is kept
            self._verdict(breaker, to_dash_error(exc, None, where=backend.label, model="", timeout_s=timeout_s),
                          probe=False)
        return round(monotonic_ms() - t0, 1)

    # ----- health --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The live backend's health judged from live traffic (no request is spent).

        Returns:
            ``{"status": "ok"|"degraded"|"down"|"unknown", "ok": bool, "circuit":
            "closed"|"open"|"half-open", "recent_failures": int (last 5 min),
            "consecutive_failures": int, "next_probe_in_s": float | None, "detail": str}``.
            ``down`` while the circuit is not closed; ``degraded`` when the last call
            failed or failures happened in the last 5 minutes; ``ok`` when the last
            call succeeded; ``unknown`` before any call.
        """
        b = self.breaker().state()
        last_failed = b.last_failure_age_s is not None and (
            b.last_success_age_s is None or b.last_failure_age_s < b.last_success_age_s)
        if b.circuit != "closed":
            status = "down"
            wait = b.next_probe_in_s or 0.0
            detail = (f"circuit breaker {b.circuit} after {b.consecutive_failures} failed calls; "
                      + (f"next try in {wait:.0f} s" if wait >= 1 else "the next call is the test request"))
        elif last_failed or b.recent_failures:
            status = "degraded"
            detail = f"{b.recent_failures} failed call(s) in the last 5 minutes" + (
                "; the last call failed" if last_failed else "; the last call succeeded")
        elif b.calls:
            status, detail = "ok", "recent calls succeeded"
        else:
            status, detail = "unknown", "no calls yet"
        return {"status": status, "ok": status in ("ok", "unknown"), "circuit": b.circuit,
                "recent_failures": b.recent_failures, "consecutive_failures": b.consecutive_failures,
                "next_probe_in_s": b.next_probe_in_s, "detail": detail}


# ----- per-kind wire calls and results -------------------------------------------------------

async def _send_text(backend: Backend, p: Prepared) -> Any:
    w = p.wire
    return await backend.chat(w["messages"], model=p.model, max_tokens=w["max_tokens"], extra=w["extra"])


async def _send_image(backend: Backend, p: Prepared) -> Any:
    w = p.wire
    return await backend.image(w["prompt"], model=p.model, width=w["width"], height=w["height"], seed=w["seed"])


async def _send_speech(backend: Backend, p: Prepared) -> Any:
    return await speak(backend.http, p.wire["body"], where=backend.label)


_SENDERS: dict[str, Callable[[Backend, Prepared], Any]] = {
    "text": _send_text, "image": _send_image, "audio": _send_speech}

__all__ = ["Gateway", "counts_against_backend", "outcome_of"]
