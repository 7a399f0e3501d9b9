"""Our own history of each model: recent success rate and p50 latency, with the requests behind them.

The figures shown beside every model picker (Playground, Compare, Batch), read from the
usage store (not the collector's in-memory window: the store holds every replica's
requests and survives a restart), over the last ``window_s`` seconds (default 24 h).

- **Success rate** = ``ok / (ok + error)``: the requests the backend answered against
  those it failed (outcome ``error``: a timeout, a 5xx, a refused key, an unreadable
  answer). Cache hits, rate-limited and rejected requests never reached the model, so
  they count for neither side.
- **p50 latency** of the served (``ok``) requests, from the store's log-binned latency
  histogram (``analytics.latency_by_model``; within ``query.LATENCY_BIN_ERROR``, 6.45 %).

Two ``GROUP BY`` passes over the events of the window (the ``(ts)`` index), a few rows
per model back; the service shares the result per kind for 30 s
(``AccessMethods.model_facts``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import func, select

from .analytics import latency_by_model, model_latency_summary
from .query import E, MonitorQuery, _frame, _where
from .store import UsageStore

#: The event kinds behind each picker kind: the text pickers serve plain and streamed answers.
PICKER_KINDS: dict[str, tuple[str, ...]] = {"text": ("text", "stream"), "image": ("image",), "audio": ("audio",)}
#: The default window of the figures, seconds (24 h).
DEFAULT_WINDOW_S = 24 * 3600.0


@dataclass(frozen=True)
class ModelFacts:
    """One model's recent history on this dashboard.

    Attributes:
        model: The model name as requested.
        ok: Requests the backend answered (outcome ``ok``) in the window.
        errors: Requests it failed (outcome ``error``) in the window.
        p50_latency_ms: Median latency of the ``ok`` requests, ms (None without any).
        window_s: The window the figures cover, seconds.
    """

    model: str
    ok: int
    errors: int
    p50_latency_ms: float | None
    window_s: float = DEFAULT_WINDOW_S

    @property
    def attempts(self) -> int:
        """The requests behind the success rate (``ok + errors``)."""
        return self.ok + self.errors

    @property
    def success_rate(self) -> float | None:
        """``ok / attempts`` in [0, 1], None without attempts."""
        return self.ok / self.attempts if self.attempts else None

    def summary(self) -> str:
        """``"98 % ok · p50 640 ms (212 requests, 24 h)"``; ``""`` without attempts."""
        rate = self.success_rate
        if rate is None:
            return ""
        parts = [f"{_pct(rate)} % ok"]
        if self.p50_latency_ms is not None:
            parts.append(f"p50 {_ms(self.p50_latency_ms)}")
        return " · ".join(parts) + f" ({self.attempts:,} request{'s' if self.attempts != 1 else ''}, " \
                                   f"{_span(self.window_s)})"


def _pct(rate: float) -> str:
    """Whole percent, rounded down so that one failure never reads as 100 % (and one success
    not as 0 %)."""
    if rate >= 1:
        return "100"
    whole = math.floor(rate * 100)
    return "<1" if whole == 0 and rate > 0 else str(whole)


def _ms(value: float) -> str:
    return f"{value / 1000:.1f} s" if value >= 10_000 else f"{value:,.0f} ms"


def _span(window_s: float) -> str:
    if window_s % 86400 == 0 and window_s >= 86400 * 2:
        return f"{window_s / 86400:.0f} d"
    if window_s % 3600 == 0:
        return f"{window_s / 3600:.0f} h"
    return f"{window_s / 60:.0f} min"


def model_facts(store: UsageStore, kind: str, *, backend: str | None = None, window_s: float = DEFAULT_WINDOW_S,
                now: float | None = None) -> dict[str, ModelFacts]:
    """Each model's success rate and p50 latency over the last ``window_s`` seconds.

    Args:
        store: The usage store (events already flushed are counted).
        kind: A picker kind, a key of ``PICKER_KINDS`` (``text`` covers streams).
        backend: Only this backend's requests (the events' ``backend``, e.g. ``demo``,
            ``pollinations``): one name may be another model elsewhere. None: all.
        window_s: How far back, seconds.
        now: The window's end, epoch seconds (default: the current time).

    Returns:
        ``{model: ModelFacts}`` for every model with an ``ok`` or ``error`` request in
        the window (a model without any is absent).

    Raises:
        ValueError: ``kind`` is not a picker kind.
    """
    if kind not in PICKER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(PICKER_KINDS)}, not {kind!r}")
    q = MonitorQuery.last(window_s, now=now, kinds=PICKER_KINDS[kind], outcomes=("ok", "error"),
                          backends=(backend,) if backend else ())
    counts = _frame(store, select(E.model, E.outcome, func.count()).where(*_where(q)).group_by(E.model, E.outcome),
                    ["model", "outcome", "requests"])
    if counts.empty:
        return {}
    p50 = {}
    summary = model_latency_summary(latency_by_model(store, q))
    for row in summary.itertuples(index=False):
        p50[str(row.model)] = float(row.p50_ms)
    out: dict[str, ModelFacts] = {}
    table = counts.pivot_table(index="model", columns="outcome", values="requests", aggfunc="sum", fill_value=0)
    for model, row in table.iterrows():
        out[str(model)] = ModelFacts(str(model), int(row.get("ok", 0)), int(row.get("error", 0)),
                                     p50.get(str(model)), window_s)
    return out


__all__ = ["DEFAULT_WINDOW_S", "PICKER_KINDS", "ModelFacts", "model_facts"]
