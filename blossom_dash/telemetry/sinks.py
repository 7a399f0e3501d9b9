"""Observability: Prometheus metrics and one JSON log line per request.

Both are event sinks on the service's ``MetricsCollector`` (``add_sink``): they see
exactly the events the usage store sees (DESIGN.md, "One event per request"), after
each is durable, on the request's thread. Nothing here touches the request path
otherwise, and a sink that fails is logged by the collector, never raised.

Prometheus
    Everything lives on this module's own ``REGISTRY`` (not prometheus-client's
    default one), so the exporter serves only what is declared here plus the
    process/platform collectors added deliberately below. ``attach(service, port)``
    starts the exporter on ``127.0.0.1:<port>`` once per process: the endpoint has no
    authentication, so it is never exposed beyond loopback (scrape it from the same
    host, or through a sidecar or reverse proxy that adds access control).

    Metric names and label sets:

    - ``blossom_requests_total{model,kind,outcome}``
    - ``blossom_request_duration_seconds{model,kind}`` and
      ``blossom_ttft_seconds{model,kind}`` (histograms, served requests only)
    - ``blossom_tokens_total{model,direction}`` (``prompt`` | ``completion``)
    - ``blossom_cache_hits_total``, ``blossom_cache_misses_total``
    - ``blossom_rate_limited_total``
    - ``blossom_errors_total{model,kind,error_type}``
    - ``blossom_cache_entries`` (gauge, read from the live cache at scrape time)
    - ``blossom_log_lines_dropped_total`` (JSON log lines stderr could not take)

    No label carries a user, a session, a prompt or an API key. Model names are the
    one open-ended label; ``model_label`` bounds them.

JSON logs
    ``attach_logging(service)`` writes one JSON object per request to stderr through
    the ``blossom_dash.requests`` logger (its own handler, not propagated), so a log
    shipper can parse every line without a regex. The line is built on the request's
    thread and written by a background thread, so a stderr nobody reads cannot stall
    requests (``_StderrHandler``); ``flush_logs()`` waits for the lines written so far.
"""

from __future__ import annotations

import logging
import queue
import re
import sys
import threading
import time
import weakref
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from .collector import Event, MetricsCollector


class BlossomService(Protocol):
    """What the sinks read of the service (structural: telemetry sits below the service).

    ``metrics`` gets the sinks; ``cache.stats().entries`` feeds the gauge; ``settings``
    gives the log level and prompt logging.
    """

    metrics: MetricsCollector
    settings: Any
    cache: Any

log = logging.getLogger("blossom_dash.observability")

#: The registry the exporter serves; process-wide, like the exporter itself.
REGISTRY = CollectorRegistry()
# Memory, CPU, open fds and the Python version: the first things asked when latency
# moves, and free to collect (they read /proc at scrape time).
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

#: Latency buckets in seconds: from a cache hit (~5 ms) to a slow image generation;
#: 120 s is the default ``image_timeout_s`` and 300 s catches retried calls.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)

#: Error types whose request reached the backend even without an HTTP status (a
#: timeout, a dropped connection, a refused key, an unusable body). An
#: ``InvalidRequest`` without a status was decided locally, before any backend call;
#: our own limiter's refusals are outcome ``rate_limited``, never ``error``.
BACKEND_ERROR_TYPES = frozenset({"BackendUnavailable", "UpstreamError", "AuthenticationFailed"})

#: Longest model label, in characters; longer names are cut.
MODEL_LABEL_CHARS = 64
#: Most distinct model label values; later names share the label ``"other"``.
MAX_MODEL_LABELS = 200
OTHER_MODEL = "other"
#: Label for a model name that cannot be a model (free text, a key-shaped string).
INVALID_MODEL = "invalid"
UNKNOWN_MODEL = "unknown"
# Model names seen in the wild: "openai", "gpt-4o-mini", "llama3.1:8b",
# "meta-llama/Llama-3-8B", "flux". No spaces: a value with spaces is most likely a
# prompt typed in the wrong field, which must not become a label.
_MODEL_NAME_RE = re.compile(r"[\w.:/@+-]+")
# Pollinations keys begin with sk_ or pk_ (settings.py): a "model" that looks like a
# key was pasted into the wrong field and must not reach a label either.
_KEY_PREFIXES = ("sk_", "pk_")

REQUESTS = Counter(
    "blossom_requests", "Requests handled by the service, by model, kind and outcome "
    "(ok | cache_hit | rate_limited | error).",
    ["model", "kind", "outcome"], registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "blossom_request_duration_seconds", "Wall time of served requests (outcome ok only: "
    "cache hits, refusals and errors are not observed), seconds.",
    ["model", "kind"], buckets=LATENCY_BUCKETS_S, registry=REGISTRY,
)
TTFT = Histogram(
    "blossom_ttft_seconds", "Time to first token of served streams (outcome ok only), seconds; "
    "non-streamed answers have no TTFT.",
    ["model", "kind"], buckets=LATENCY_BUCKETS_S, registry=REGISTRY,
)
TOKENS = Counter(
    "blossom_tokens", "Tokens of served requests (outcome ok) as the backend reported them "
    "(estimated for a stream stopped before its usage arrived), by direction (prompt | completion).",
    ["model", "direction"], registry=REGISTRY,
)
COST = Counter(
    "blossom_cost_pollen", "Pollen spent on served requests (outcome ok; usage x the model's price), by "
    "model; unpriced requests add nothing (the exact sums are in the usage store).",
    ["model"], registry=REGISTRY,
)
COST_SAVED = Counter(
    "blossom_cost_saved_pollen", "Pollen the response cache saved: the cost of the answers it served "
    "(outcome cache_hit), by model.", ["model"], registry=REGISTRY,
)
CACHE_HITS = Counter("blossom_cache_hits", "Requests answered from the response cache.", registry=REGISTRY)
CACHE_MISSES = Counter(
    "blossom_cache_misses", "Requests the cache did not answer and that reached the backend: "
    "outcome ok, or error with an HTTP status or a backend error type.", registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "blossom_rate_limited", "Requests refused by the service's own rate limiter (an upstream 429 "
    "counts as an error with error_type RateLimited).", registry=REGISTRY,
)
ERRORS = Counter(
    "blossom_errors", "Failed requests by model, kind and error type (the DashError subclass).",
    ["model", "kind", "error_type"], registry=REGISTRY,
)
LOG_LINES_DROPPED = Counter(
    "blossom_log_lines_dropped", "JSON request log lines dropped because stderr did not keep up "
    "(its queue was full).", registry=REGISTRY,
)
CACHE_ENTRIES = Gauge(
    "blossom_cache_entries", "Live entries in the response cache of the current service, read at "
    "scrape time.", registry=REGISTRY,
)

_lock = threading.Lock()
_model_labels: dict[str, str] = {}
# Collectors that already carry a sink: a second attach must not count events twice.
_prom_attached: weakref.WeakSet[MetricsCollector] = weakref.WeakSet()
_log_attached: weakref.WeakSet[MetricsCollector] = weakref.WeakSet()
# The service whose cache the gauge reads; weak, so a closed service can be freed.
_live_service: weakref.ref[BlossomService] | None = None
_server: Any = None  # the exporter's WSGI server, once started
_server_port: int | None = None


def model_label(model: str) -> str:
    """The bounded label value for a model name.

    Every distinct label value is a new time series in each labelled metric (and
    ~17 more per histogram), held in this process and in Prometheus for as long as
    the process lives. Model names come from the backend's list, which a custom
    backend may make long, and from user input on failed requests, so they are
    bounded here: cut to ``MODEL_LABEL_CHARS`` characters, and after
    ``MAX_MODEL_LABELS`` distinct values (Pollinations lists a few dozen models)
    new names share ``"other"``. Names that cannot be model names (spaces, control
    characters, a key-shaped ``sk_``/``pk_`` prefix) become ``"invalid"``, so free
    text typed into the model field never reaches a label.

    Args:
        model: The event's model name.

    Returns:
        The label value: the name (maybe cut), ``"unknown"`` for an empty name,
        ``"invalid"`` or ``"other"``.
    """
    label = _model_labels.get(model)  # lock-free fast path: a dict read is atomic
    if label is not None:
        return label
    name = model.strip()
    if not name:
        return UNKNOWN_MODEL
    if not _MODEL_NAME_RE.fullmatch(name) or name.lower().startswith(_KEY_PREFIXES):
        return INVALID_MODEL
    name = name[:MODEL_LABEL_CHARS]
    with _lock:
        label = _model_labels.get(model)
        if label is None:
            if len(_model_labels) >= MAX_MODEL_LABELS:
                return OTHER_MODEL  # not memoised: the map stays bounded
            label = _model_labels[model] = name
    return label


def reached_backend(event: Event) -> bool:
    """Whether a cache-missing request reached the backend (a cache miss).

    The rule behind ``blossom_cache_misses_total``: outcome ``ok``, or ``error``
    with an HTTP status or an error type in ``BACKEND_ERROR_TYPES``. Requests
    rejected before the backend (invalid input, our own rate limiter) are not
    misses, so hits / (hits + misses) is the share of backend work the cache saved.
    This differs from ``ResponseCache.stats()``, which counts every lookup,
    including those of requests the rate limiter then refused; and, unlike it,
    served requests still count as misses while the cache is disabled.
    """
    if event.outcome == "ok":
        return True
    return event.outcome == "error" and (
        event.status_code is not None or event.error_type in BACKEND_ERROR_TYPES
    )


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, cached: ``labels()`` validates and locks on every
    call (~3 µs), a dict lookup does not. Bounded by ``model_label``'s clamp."""
    key = (id(metric), labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def prometheus_sink(event: Event) -> None:
    """Count one event in the Prometheus metrics (an ``add_sink`` callable).

    Durations arrive in milliseconds (``latency_ms``, ``ttft_ms``) and are
    observed in seconds, Prometheus' base unit.
    """
    model = model_label(event.model)
    kind, outcome = event.kind, event.outcome
    _child(REQUESTS, model, kind, outcome).inc()
    if outcome == "cache_hit":
        CACHE_HITS.inc()
    elif outcome == "rate_limited":
        RATE_LIMITED.inc()
    elif outcome == "error":
        _child(ERRORS, model, kind, event.error_type or "unknown").inc()
    if outcome == "ok":
        if event.latency_ms is not None:
            _child(REQUEST_DURATION, model, kind).observe(event.latency_ms / 1000.0)
        if event.ttft_ms is not None:  # None: a stream stopped before its first token
            _child(TTFT, model, kind).observe(event.ttft_ms / 1000.0)
        if event.prompt_tokens:
            _child(TOKENS, model, "prompt").inc(event.prompt_tokens)
        if event.completion_tokens:
            _child(TOKENS, model, "completion").inc(event.completion_tokens)
        if event.cost:
            _child(COST, model).inc(float(event.cost))  # Prometheus counts in floats
    elif outcome == "cache_hit" and event.cost:
        _child(COST_SAVED, model).inc(float(event.cost))
    if reached_backend(event):
        CACHE_MISSES.inc()


def _cache_entries() -> float:
    service = _live_service() if _live_service is not None else None
    if service is None:
        return 0.0
    return float(service.cache.stats().entries)


def attach(service: BlossomService, port: int | None) -> None:
    """Feed ``service``'s events to Prometheus and serve them on ``port``.

    Adds ``prometheus_sink`` to ``service.metrics`` (once per collector), points
    ``blossom_cache_entries`` at this service's cache (the newest service wins),
    and starts the exporter on ``127.0.0.1:<port>`` the first time a port is given.
    The exporter is one per process: a later attach with the same port reuses it;
    a different port logs a warning and keeps the first. A port already in use is
    a logged warning, not an error: the dashboard matters more than its metrics.

    Args:
        service: The service whose events to export.
        port: TCP port for ``/metrics``; None serves nothing (events still count);
            0 picks a free port (see ``metrics_url()``).
    """
    global _live_service, _server, _server_port
    with _lock:
        if service.metrics not in _prom_attached:
            service.metrics.add_sink(prometheus_sink)
            _prom_attached.add(service.metrics)
        _live_service = weakref.ref(service)
        if port is None:
            return
        if _server is not None:
            if port != _server_port:
                log.warning("Prometheus metrics are already served on 127.0.0.1:%d; not starting a "
                            "second exporter on port %d (one per process).", _server_port, port)
            return
        try:
            _server = start_http_server(port, addr="127.0.0.1", registry=REGISTRY)[0]
        except OSError as exc:
            log.warning("Could not serve Prometheus metrics on 127.0.0.1:%d (%s): the port is probably "
                        "in use by another process. The dashboard runs without /metrics; set "
                        "BLOSSOM_DASH_METRICS_PORT to a free port.", port, exc.strerror or exc)
            return
        _server_port = int(_server.server_port)
    log.info("Prometheus metrics on %s", metrics_url())


def metrics_url() -> str | None:
    """``http://127.0.0.1:<port>/metrics`` of this process' exporter, None when off."""
    port = _server_port
    return f"http://127.0.0.1:{port}/metrics" if _server is not None and port is not None else None


CACHE_ENTRIES.set_function(_cache_entries)


# ----- JSON logs ---------------------------------------------------------------------

REQUEST_LOGGER = "blossom_dash.requests"
#: Lines the JSON log holds while stderr is slow (~3 MB at ~300 bytes a line).
LOG_QUEUE_LINES = 10_000
#: Log level of each outcome: served is routine, a refusal is worth a look, an error
#: needs one.
OUTCOME_LEVELS = {"ok": logging.INFO, "cache_hit": logging.INFO, "rate_limited": logging.WARNING,
                  "error": logging.ERROR}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line.

    Records from ``json_log_sink`` carry their fields in ``record.fields``; any other
    record on the logger becomes ``{"ts", "level", "logger", "message"}``.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields is None:
            fields = {"ts": _iso_utc(record.created), "level": record.levelname, "logger": record.name,
                      "message": record.getMessage()}
        else:
            fields = {"ts": fields["ts"], "level": record.levelname, **fields}
        return orjson.dumps(fields, default=str).decode()


class _StderrHandler(logging.Handler):
    """A daemon thread formats the records and writes the lines to stderr.

    The logging cookbook's answer to "handlers that block": a request must never wait
    on stderr. A supervisor that does not drain its pipe (a full 64 KiB pipe buffer
    blocks ``write``), a paused terminal or a slow log driver would otherwise stall
    every request on the sink's ``write``. The queue is bounded
    (``LOG_QUEUE_LINES``): when stderr cannot keep up, new lines are dropped and
    counted in ``blossom_log_lines_dropped_total`` rather than held without limit.
    The writer looks ``sys.stderr`` up for each line (as ``logging.lastResort``
    does), so a later redirection (a test's capture) is honoured.
    """

    def __init__(self, max_lines: int) -> None:
        super().__init__()
        # Records, or (logger, level, event, include_prompt) from json_log_sink: the
        # request thread only enqueues; building a LogRecord and the JSON costs more
        # than a cache hit, so the writer thread does it.
        self._queue: queue.Queue[Any] = queue.Queue(max_lines)
        self.dropped = 0
        self._writer = threading.Thread(target=self._drain, name="blossom-dash-json-log", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        self.submit(record)

    def submit(self, item: Any) -> None:
        """Queue a record (or a request event, see ``__init__``) without waiting."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            LOG_LINES_DROPPED.inc()

    def _line(self, item: Any) -> str:
        if isinstance(item, tuple):
            # A request event: the same JSON that JsonFormatter makes of a record with
            # ``fields``, without building a LogRecord (most of the cost per line).
            _logger, level, event, include_prompt = item
            fields = log_fields(event, include_prompt=include_prompt)
            return orjson.dumps({"ts": fields["ts"], "level": logging.getLevelName(level), **fields},
                                default=str).decode() + "\n"
        try:
            return self.format(item) + "\n"
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise
            self.handleError(item)
            return ""

    def _drain(self) -> None:
        while True:
            items = [self._queue.get()]
            # Under load, one write for everything queued: fewer system calls and less
            # time holding the GIL that request threads need.
            while len(items) < 256:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines = [self._line(item) for item in items]
            try:
                stream = sys.stderr
                stream.write("".join(lines))
                stream.flush()
            except Exception:  # noqa: BLE001 - stderr closed or gone: nowhere left to say so
                pass
            finally:
                for _ in items:
                    self._queue.task_done()

    def flush(self) -> None:
        """Wait (at most 2 s) for the queued lines; ``logging.shutdown`` calls it at exit.

        Bounded, so a blocked stderr cannot hang the process on its way out.
        """
        self.drain(2.0)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued line is written, at most ``timeout_s`` seconds.

        Returns:
            Whether the queue was drained in time.
        """
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True


def flush_logs(timeout_s: float = 2.0) -> bool:
    """Wait until the JSON request lines logged so far are on stderr.

    Args:
        timeout_s: Longest wait, seconds.

    Returns:
        Whether every line was written in time (False when stderr is blocked);
        True when the logger was never configured.
    """
    for handler in logging.getLogger(REQUEST_LOGGER).handlers:
        if isinstance(handler, _StderrHandler) and not handler.drain(timeout_s):
            return False
    return True


def _iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_logger(level: str = "INFO") -> logging.Logger:
    """The ``blossom_dash.requests`` logger, configured once per process.

    Its one handler writes JSON lines to stderr (from a background thread, see
    ``_StderrHandler``); ``propagate`` is off so the lines are not repeated by
    handlers on the root logger (Streamlit's, a test's). Calling it again only
    updates the level: the last ``settings.log_level`` wins.

    Args:
        level: ``DEBUG`` | ``INFO`` | ``WARNING`` | ``ERROR``.
    """
    logger = logging.getLogger(REQUEST_LOGGER)
    with _lock:
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler(LOG_QUEUE_LINES)
            handler.setFormatter(JsonFormatter())
            logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(level)
    return logger


def log_fields(event: Event, *, include_prompt: bool = False) -> dict[str, Any]:
    """The fields of one request's log line.

    ``ts`` is the request's start (ISO 8601, UTC), as in the usage store, so a line
    joins with its stored event by ``request_id`` or time. ``user`` is included: the
    log is operator data on the server, and a request id alone rarely tells whom to
    ask. The API key is never in an event, so never here; ``prompt`` (already cut to
    ``settings.prompt_chars``, None when prompts are not stored) only on request.

    Args:
        event: The recorded event.
        include_prompt: Add ``prompt`` (``settings.log_prompts``).

    Returns:
        ``ts, request_id, user, kind, model, backend, outcome, latency_ms, ttft_ms,
        status_code, error_type, prompt_tokens, completion_tokens, cost`` (+ ``prompt``);
        durations in milliseconds rounded to 0.1, absent values as null; ``cost`` in
        pollen as an exact decimal string (for a cache hit, what it saved; null when
        unpriced).
    """
    fields: dict[str, Any] = {
        "ts": _iso_utc(event.ts),
        "request_id": event.request_id,
        "user": event.user,
        "kind": event.kind,
        "model": event.model,
        "backend": event.backend,
        "outcome": event.outcome,
        "latency_ms": None if event.latency_ms is None else round(event.latency_ms, 1),
        "ttft_ms": None if event.ttft_ms is None else round(event.ttft_ms, 1),
        "status_code": event.status_code,
        "error_type": event.error_type or None,
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "cost": None if event.cost is None else format(event.cost.normalize(), "f"),
    }
    if include_prompt:
        fields["prompt"] = event.prompt
    return fields


def attach_logging(service: BlossomService) -> None:
    """Log one JSON line per request of ``service`` on stderr.

    Levels follow ``OUTCOME_LEVELS`` (INFO served, WARNING rate-limited, ERROR
    failed); lines below ``settings.log_level`` are not even built. Attaching the
    same service twice adds one sink.

    Args:
        service: The service whose events to log; its settings give the level and
            whether prompts are logged (``log_prompts``).
    """
    settings = service.settings
    logger = request_logger(settings.log_level)
    include_prompt = bool(settings.log_prompts)

    handler = next(h for h in logger.handlers if isinstance(h, _StderrHandler))

    def json_log_sink(event: Event) -> None:
        level = OUTCOME_LEVELS.get(event.outcome, logging.INFO)
        if logger.isEnabledFor(level):
            # Only enqueue here: the writer thread builds the record and the JSON
            # (together ~20 µs, as much as the rest of a cache hit).
            handler.submit((logger, level, event, include_prompt))

    with _lock:
        if service.metrics in _log_attached:
            return
        _log_attached.add(service.metrics)
    service.metrics.add_sink(json_log_sink)


__all__ = [
    "BACKEND_ERROR_TYPES",
    "LATENCY_BUCKETS_S",
    "REGISTRY",
    "JsonFormatter",
    "attach",
    "attach_logging",
    "flush_logs",
    "log_fields",
    "metrics_url",
    "model_label",
    "prometheus_sink",
    "reached_backend",
    "request_logger",
]
