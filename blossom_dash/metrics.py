"""The metrics collector: one event per request, to the store and a live window.

Events follow DESIGN.md ("One event per request"). The collector writes each one to
the usage store (committed before the caller gets its result) and keeps the most
recent ``window`` events in memory for the summary of the current process.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from .store import EVENT_COLUMNS, UsageStore

OUTCOMES = ("ok", "cache_hit", "rate_limited", "error")


def new_request_id() -> str:
    """A short random request id (12 hex characters), shown on the page and in logs."""
    return uuid.uuid4().hex[:12]


@dataclass
class Event:
    """One request, as recorded.

    Attributes:
        ts: Start time, unix epoch seconds.
        kind: ``text`` | ``stream`` | ``image`` | ``audio``.
        outcome: ``ok`` | ``cache_hit`` | ``rate_limited`` | ``error``.
        error_type: The ``DashError`` subclass name, "" when none.
        status_code: Upstream HTTP status, None when no response came back.
        latency_ms: Wall time from the call to its result (milliseconds).
        ttft_ms: Time to first token (streams), or to the whole answer otherwise.
        prompt_tokens / completion_tokens: As the backend reported them (estimated
            when a stream was stopped before the backend's usage arrived).
        bytes: Size of the response payload.
        prompt: The prompt, truncated; None when prompts are not stored.
    """

    request_id: str
    user: str
    session: str
    kind: str
    model: str
    backend: str
    outcome: str
    ts: float = field(default_factory=time.time)
    error_type: str = ""
    status_code: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    bytes: int | None = None
    prompt: str | None = None


class MetricsCollector:
    """Records events and answers questions about them.

    Args:
        store: Where every event is committed.
        window: How many recent events stay in memory.
    """

    def __init__(self, store: UsageStore, *, window: int = 5000) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._recent: deque[Event] = deque(maxlen=window)

    def record(self, event: Event) -> None:
        """Commit ``event`` to the store, then add it to the live window.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the store could not commit it.
        """
        self.store.write(asdict(event))
        with self._lock:
            self._recent.append(event)

    def recent(self, n: int = 50) -> list[Event]:
        """The last ``n`` events of this process, newest first."""
        with self._lock:
            return list(self._recent)[-n:][::-1]

    def frame(self, since: float | pd.Timestamp | None = None, *, limit: int = 200_000) -> pd.DataFrame:
        """One row per request since ``since`` (epoch seconds or a Timestamp).

        Returns:
            DataFrame with DESIGN.md's event columns (``ts`` as UTC datetimes),
            oldest first, at most ``limit`` rows (the newest ones).
        """
        if isinstance(since, pd.Timestamp):
            since = since.timestamp()
        return self.store.frame(since, limit=limit)

    def summary(self, since: float | None = None) -> dict[str, Any]:
        """Headline figures over the events since ``since``.

        Returns:
            ``requests, errors, error_rate, rate_limited, cache_hits, cache_hit_rate,
            p50_latency_ms, p95_latency_ms, p50_ttft_ms, prompt_tokens,
            completion_tokens, tokens``. Rates are fractions in [0, 1]; the hit rate
            is cache hits over requests that looked the cache up (all but
            rate-limited ones); latency percentiles exclude cache hits and failures.
        """
        return summarize(self.frame(since))


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """The headline figures of an event frame (see ``MetricsCollector.summary``)."""
    n = int(len(df))
    if n == 0:
        return {
            "requests": 0, "errors": 0, "error_rate": 0.0, "rate_limited": 0, "cache_hits": 0,
            "cache_hit_rate": 0.0, "p50_latency_ms": None, "p95_latency_ms": None,
            "p50_ttft_ms": None, "prompt_tokens": 0, "completion_tokens": 0, "tokens": 0,
        }
    outcome = df["outcome"]
    errors = int((outcome == "error").sum())
    limited = int((outcome == "rate_limited").sum())
    hits = int((outcome == "cache_hit").sum())
    served = df[outcome == "ok"]
    lat = served["latency_ms"].dropna()
    ttft = served["ttft_ms"].dropna()
    prompt_t = int(served["prompt_tokens"].fillna(0).sum())
    completion_t = int(served["completion_tokens"].fillna(0).sum())
    looked_up = n - limited
    return {
        "requests": n,
        "errors": errors,
        "error_rate": errors / n,
        "rate_limited": limited,
        "cache_hits": hits,
        "cache_hit_rate": hits / looked_up if looked_up else 0.0,
        "p50_latency_ms": float(lat.quantile(0.5)) if len(lat) else None,
        "p95_latency_ms": float(lat.quantile(0.95)) if len(lat) else None,
        "p50_ttft_ms": float(ttft.quantile(0.5)) if len(ttft) else None,
        "prompt_tokens": prompt_t,
        "completion_tokens": completion_t,
        "tokens": prompt_t + completion_t,
    }


__all__ = ["EVENT_COLUMNS", "OUTCOMES", "Event", "MetricsCollector", "new_request_id", "summarize"]
