"""A batch job's time to finish that does not jump: its rows' own pace, bounded by its rate limit.

The earlier estimate (rows left × the run's mean time per row, with the rate limit counted
only once the job had waited for it) read 6 s while the first rows ran at once and 68 s a
moment later when the window filled. Here the estimate is, from the first poll, the
longer of:

- the **rows' own pace**: the rows left × the mean latency of the last ``RECENT_ROWS``
  settled rows (cache hits included, at their few milliseconds) ÷ the rows run at the
  same time (``parallel``). Waits are not in it: they are the next bound's;
- the **rate limit** the rows go through (``window_floor``), plus one row's latency: of
  the rows left and not in flight, those expected to need a slot (the share of recent
  rows that were not cache hits) beyond the slots free now wait for the moving window's slots to free. The
  window's counted requests are taken as spread evenly from its oldest (which leaves in
  ``reset_in_s``) to the job's newest settled row (its slot leaves 60 s after it, or
  about), and the slots used now as leaving in 60 s; the ``j``-th waiting row goes when
  the ``j``-th of those leaves, a whole window later for each ``rpm`` rows before it
  (``rpm`` the batch's share of the user's limit, ``policies.ratelimit.batch_rpm``). So
  45 rows at 30 requests/min say "about 60 s" from the start, not 6 s and then 68 s;
- a current wait (a full window, a backend's Retry-After, a budget).

The figure is then **smoothed** between polls (``EtaSmoother``: exponential smoothing of
the estimate, the previous one counted down by the time since), so one slow row moves it
by a fraction. No streamlit here; the runner calls ``estimate_eta`` with plain values,
the page shows the result (``BatchStatus.eta_s``, ``eta_paced``, ``pace_rpm``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine

from .batch_tables import ROW_ERROR, ROW_OK, batch_rows

__all__ = ["RECENT_ROWS", "SMOOTHING", "Eta", "EtaSmoother", "estimate_eta", "recent_finishes", "window_floor"]

#: Settled rows the recent pace is measured over.
RECENT_ROWS = 20
#: Weight of a new estimate against the previous one counted down (0..1; 1 = no smoothing).
SMOOTHING = 0.35


@dataclass(frozen=True)
class Eta:
    """An estimate of the time left.

    Attributes:
        eta_s: Seconds until the last row settles; None before anything can be said
            (no row settled and the window has room for every row left).
        paced: Whether the rate limit, not the rows' own pace, sets it.
    """

    eta_s: float | None
    paced: bool = False


def window_floor(waiting_rows: int, *, rpm: int, used: int, reset_in_s: float, newest_in_s: float = 60.0) -> float:
    """Seconds until the last of ``waiting_rows`` rows beyond the free slots gets a slot (module docstring).

    Args:
        waiting_rows: Rows that need a slot after the free ones are taken (0: none wait).
        rpm: The window's limit, requests per 60 s.
        used: Requests counted in the window now.
        reset_in_s: Seconds until its oldest counted request leaves (0 if empty).
        newest_in_s: Seconds until its newest counted request leaves (60 if it was
            just made); the counted ones are taken as spread evenly between the two.

    Returns:
        Seconds from now; 0.0 when no row waits.
    """
    if waiting_rows <= 0:
        return 0.0
    used = min(max(0, used), rpm)
    newest_in_s = min(60.0, max(reset_in_s, newest_in_s))
    windows, j = divmod(waiting_rows - 1, rpm)  # the last row: whole windows before it, then its place in one
    if j < used:  # a slot of a request counted now
        leaves = reset_in_s + (newest_in_s - reset_in_s) * (j / (used - 1) if used > 1 else 0.0)
    else:  # a slot taken now (a free one), back in 60 s
        leaves = 60.0
    return 60.0 * windows + max(0.0, leaves)


def estimate_eta(*, remaining: int, finishes: Sequence[tuple[float, bool, float]], now: float, parallel: int = 1,
                 running: int = 0, rpm: int | None = None, free: int = 0, used: int = 0, reset_in_s: float = 0.0,
                 waiting_s: float = 0.0) -> Eta:
    """Seconds left for a running job (module docstring).

    Args:
        remaining: Rows not yet settled.
        finishes: ``(finished_ts, cached, latency_ms)`` of this run's newest settled
            rows, newest first (epoch seconds; ``recent_finishes``); the first
            ``RECENT_ROWS`` are used.
        now: Epoch seconds.
        parallel: Rows of the job run at the same time (at least 1).
        running: Rows of ``remaining`` in flight now: they hold their slots already.
        rpm: Requests per minute the job's rows may take (its batch share); None:
            unknown, no bound from the limit.
        free: Slots free in that window now.
        used: Requests counted in that window now.
        reset_in_s: Seconds until the oldest of them leaves (``WindowStatus.reset_in_s``).
        waiting_s: Seconds until the job may send again (a full window, a backend's
            Retry-After, a budget), 0 if not waiting.

    Returns:
        The estimate; ``Eta(0.0)`` when nothing is left; ``Eta(None)`` when no row has
        settled and nothing bounds it (the window has room for every row left).
    """
    if remaining <= 0:
        return Eta(0.0)
    recent = list(finishes[:RECENT_ROWS])
    latency_s = sum(lat for _, _, lat in recent) / len(recent) / 1000.0 if recent else None
    pace = remaining * latency_s / max(1, parallel) if latency_s is not None else None
    floor: float | None = None
    if rpm:
        # Cache hits take no slot; judge the rows left by the recent ones (all need a slot when none settled).
        needing = sum(not cached for _, cached, _ in recent) / len(recent) if recent else 1.0
        waits_for = max(0, math.ceil(max(0, remaining - running) * needing) - max(0, free))
        if waits_for:
            newest_in = 60.0 - (now - recent[0][0]) if recent else 60.0
            floor = (window_floor(waits_for, rpm=rpm, used=used, reset_in_s=reset_in_s, newest_in_s=newest_in)
                     + (latency_s or 0.0))
    if waiting_s > 0:
        floor = max(floor or 0.0, waiting_s + (latency_s or 0.0))
    if pace is None and floor is None:
        return Eta(None)
    if pace is None or (floor is not None and floor > pace):
        return Eta(floor, paced=True)
    return Eta(pace)


def recent_finishes(engine: Engine, job_id: str, since_ts: float,
                    n: int = RECENT_ROWS) -> list[tuple[float, bool, float]]:
    """``(finished_ts, cached, latency_ms)`` of the job's newest ``n`` rows settled since
    ``since_ts``, newest first (a failed row without a latency counts 0 ms).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed.
    """
    r = batch_rows.c
    with engine.connect() as conn:
        rows = conn.execute(select(r.finished_ts, r.cached, r.latency_ms).where(
            r.job_id == job_id, r.status.in_([ROW_OK, ROW_ERROR]), r.finished_ts >= since_ts)
            .order_by(r.finished_ts.desc()).limit(n)).all()
    return [(float(ts), bool(cached), float(lat or 0.0)) for ts, cached, lat in rows]


class EtaSmoother:
    """Exponentially smoothed estimates, one per job, between a page's polls.

    The previous estimate is counted down by the time since it was made, then moved
    ``SMOOTHING`` of the way to the new one. A job not asked about for ``forget_s``
    starts afresh. Thread-safe.

    Args:
        alpha: Weight of the new estimate (``SMOOTHING``).
        forget_s: Seconds after which a job's previous estimate no longer counts.
        max_jobs: Jobs remembered (the oldest is dropped beyond it).
    """

    def __init__(self, alpha: float = SMOOTHING, *, forget_s: float = 30.0, max_jobs: int = 256) -> None:
        self.alpha = alpha
        self.forget_s = forget_s
        self.max_jobs = max_jobs
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, float]] = {}  # job id -> (when, estimate)

    def smooth(self, job_id: str, eta_s: float | None, now: float) -> float | None:
        """The smoothed estimate of ``job_id`` given a new raw one at ``now`` (epoch s)."""
        with self._lock:
            if eta_s is None:
                self._last.pop(job_id, None)
                return None
            prev = self._last.pop(job_id, None)
            if prev is not None and 0 <= now - prev[0] <= self.forget_s:
                counted_down = max(0.0, prev[1] - (now - prev[0]))
                eta_s = counted_down + self.alpha * (eta_s - counted_down)
            self._last[job_id] = (now, eta_s)
            while len(self._last) > self.max_jobs:
                del self._last[next(iter(self._last))]
            return eta_s

    def forget(self, job_id: str) -> None:
        """Drop ``job_id``'s previous estimate (the job stopped)."""
        with self._lock:
            self._last.pop(job_id, None)
