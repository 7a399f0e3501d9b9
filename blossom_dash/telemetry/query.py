"""The shared SQL of the Monitor's queries: a range and its filters (``MonitorQuery``),
time buckets, latency histograms and their quantiles, and the plan that reads a long
range from the rollups.

The other Monitor modules (``passes``, ``analytics``, ``requests_log``, ``export``) build
on these blocks; callers use ``analytics``, which re-exports the public names.

Time buckets are ``floor(ts / bucket_s)``: ``CAST(... AS INTEGER)`` on SQLite (which
truncates, i.e. floors a positive value) and ``floor()`` elsewhere, because
PostgreSQL's ``CAST(double AS integer)`` *rounds*, which would shift every bucket by
half its width.

Percentiles come from a latency histogram computed in SQL with log-spaced bins
(``LATENCY_BINS_PER_E`` bins per factor e), read the way Prometheus'
``histogram_quantile`` reads a histogram: find the bin that holds the rank, interpolate
linearly inside it (https://prometheus.io/docs/prometheus/latest/querying/functions/
#histogram_quantile). See ``histogram_quantile`` for the error bound.

Ranges longer than ``ROLLUP_MIN_SPAN_S`` (24 h) are read from the store's hourly and
daily rollups (see ``store``) where the filters allow it: the range is cut into whole
days or hours, read from a rollup table, and the partial hours (days) at its edges,
read from the events (``_plan``); each pass sends the pieces as one ``UNION ALL`` and
sums them in SQL (``_merged``). Rollup rows and edges partition the range exactly, and
every rollup row is an aggregate of exactly the events it replaces, so the results
equal those of the scan (tests check it on random ranges and filters). ``passes`` says
which rollup serves which pass.

Ranges are half-open, ``since_ts <= ts < until_ts``, so a range and its ``previous()``
never count an event twice. All timestamps are epoch seconds, UTC.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy import BigInteger, Connection, Table, case, cast, false, func, select, true, union_all
from sqlalchemy.sql.elements import ColumnElement

from .store import LATENCY_BINS_PER_E, SQLITE_HAS_LN, UsageStore, events, floor_int, latency_bin, sqlite_ln, unit_column

#: Ranges the Monitor offers, in seconds.
RANGES: dict[str, int] = {"15 min": 900, "1 h": 3600, "24 h": 86_400, "7 d": 7 * 86_400, "30 d": 30 * 86_400}
#: A chart never has more points than this per series.
MAX_POINTS = 300
#: Bucket sizes (seconds) a range may use: the smallest that keeps ``MAX_POINTS``.
BUCKET_STEPS_S: tuple[int, ...] = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800,
                                   21_600, 43_200, 86_400)
#: The relative width of one latency bin, i.e. the percentiles' error bound (> 1 ms).
LATENCY_BIN_ERROR = math.exp(1 / LATENCY_BINS_PER_E) - 1
#: Filterable dimensions: ``MonitorQuery`` field -> event column.
DIMENSIONS: dict[str, str] = {"models": "model", "users": "user", "kinds": "kind", "outcomes": "outcome",
                              "backends": "backend"}
#: Ranges longer than this (seconds) read whole hours and days from the rollups where
#: the filters allow it; shorter ones scan their events (at most a day's worth: ~0.1 s
#: for the 33,000 events a day of the 1M-event benchmark holds).
ROLLUP_MIN_SPAN_S = 86_400

E = events.c


@dataclass(frozen=True)
class MonitorQuery:
    """A time range and filters that apply to everything on the Monitor page.

    Attributes:
        since_ts: Start of the range, epoch seconds (inclusive).
        until_ts: End of the range, epoch seconds (exclusive).
        models / users / kinds / outcomes / backends: Keep only events whose column is
            one of these values; an empty tuple keeps all.
    """

    since_ts: float
    until_ts: float
    models: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.until_ts > self.since_ts:
            raise ValueError(f"until_ts ({self.until_ts}) must be after since_ts ({self.since_ts})")
        for name in DIMENSIONS:  # lists from widgets become tuples, so the query stays hashable
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def last(cls, window_s: float, *, now: float | None = None, **filters: Iterable[str]) -> MonitorQuery:
        """The ``window_s`` seconds up to ``now`` (default: the current time)."""
        end = time.time() if now is None else now
        return cls(end - window_s, end, **{k: tuple(v) for k, v in filters.items()})

    @property
    def span_s(self) -> float:
        """The range's length in seconds."""
        return self.until_ts - self.since_ts

    def previous(self) -> MonitorQuery:
        """The period of the same length just before this one, with the same filters."""
        return dataclasses.replace(self, since_ts=self.since_ts - self.span_s, until_ts=self.since_ts)

    def rounded(self, every_s: float) -> MonitorQuery:
        """The same span and filters, moved forward so that it ends on a multiple of
        ``every_s`` seconds (by less than ``every_s``; unchanged when it already does).

        Viewers who ask for "the last 15 min" a moment apart within one refresh
        interval then ask for the same range, so they can share one result (the
        Monitor's ``SharedResults`` key). The end moves *forward*, so the range still
        covers every event up to the moment it is read. A custom range on whole
        minutes is unchanged for every refresh interval that divides a minute (2, 5,
        10, 30 and 60 s, the Monitor's).

        Raises:
            ValueError: ``every_s`` is not positive.
        """
        if not every_s > 0:
            raise ValueError(f"every_s must be positive, not {every_s}")
        end = math.ceil(self.until_ts / every_s) * every_s
        shift = end - self.until_ts
        if shift == 0:
            return self
        return dataclasses.replace(self, since_ts=self.since_ts + shift, until_ts=end)

    def filters(self) -> dict[str, tuple[str, ...]]:
        """The non-empty filters, by field name."""
        return {name: getattr(self, name) for name in DIMENSIONS if getattr(self, name)}

    def describe(self) -> dict[str, Any]:
        """The query as plain JSON-able values (for export metadata)."""
        return {"since": _iso(self.since_ts), "until": _iso(self.until_ts),
                **{k: list(v) for k, v in self.filters().items()}}


# ----- SQL building blocks -----------------------------------------------------------

#: Whether connections get ``ln`` registered (tests force the fallback through it).
_SQLITE_HAS_LN = SQLITE_HAS_LN


def _connect(store: UsageStore) -> Connection:
    """A connection; on a SQLite without math functions, ``ln`` is registered on it."""
    conn = store.engine.connect()
    if store.is_sqlite and not _SQLITE_HAS_LN:
        conn.connection.driver_connection.create_function(  # type: ignore[union-attr]
            "ln", 1, sqlite_ln, deterministic=True)
    return conn


def _floor(store: UsageStore, expr: ColumnElement[Any]) -> ColumnElement[Any]:
    return floor_int(expr, store.is_sqlite)


def _bucket(store: UsageStore, bucket_s: int) -> ColumnElement[Any]:
    return _floor(store, E.ts / float(bucket_s)).label("bucket")


def _bin(store: UsageStore, column: ColumnElement[Any], label: str) -> ColumnElement[Any]:
    """The latency bin of ``column`` (ms): ``floor(ln(x) * N)``, or -1 below 1 ms (the
    bins the latency rollups store, ``store.latency_bin``)."""
    return latency_bin(column, store.is_sqlite).label(label)


class _Piece(NamedTuple):
    """A slice ``[since, until)`` (epoch seconds) of a range, read from the events
    (``unit_s`` 0) or as whole units of a rollup table (``unit_s`` 3600 or 86400)."""

    unit_s: int
    since: float
    until: float  # math.inf: no end


def _where(q: MonitorQuery, piece: _Piece | None = None) -> list[ColumnElement[bool]]:
    """Conditions on ``events`` for ``q``'s filters over ``piece`` (default: ``q``'s range)."""
    since, until = (q.since_ts, q.until_ts) if piece is None else (piece.since, piece.until)
    conds: list[ColumnElement[bool]] = [E.ts >= since]
    if until != math.inf:
        conds.append(E.ts < until)
    for name, column in DIMENSIONS.items():
        if values := getattr(q, name):
            conds.append(E[column].in_(values))
    return conds


def _rollup_where(table: Table, q: MonitorQuery, piece: _Piece) -> list[ColumnElement[bool]]:
    """Conditions on a rollup ``table`` for ``q``'s filters over the whole units of ``piece``."""
    unit = table.c[unit_column(table)]
    conds: list[ColumnElement[bool]] = [unit >= int(piece.since) // piece.unit_s]
    if piece.until != math.inf:
        conds.append(unit < int(piece.until) // piece.unit_s)
    for name, column in DIMENSIONS.items():
        if not (values := getattr(q, name)):
            continue
        if column in table.c:
            conds.append(table.c[column].in_(values))
        elif column == "outcome":  # the latency rollups hold served (ok) events only
            conds.append(true() if "ok" in values else false())
        else:
            raise ValueError(f"{table.name} has no {column} column")  # _plan never asks for it
    return conds


def _whole_units(since: float, until: float, unit_s: int) -> tuple[int, int | None]:
    """``(lo, hi)``: units ``lo <= k < hi`` lie wholly in ``[since, until)``; ``hi`` is
    None for an open end. Checked in exact arithmetic, whatever the float division did."""
    lo = math.ceil(since / unit_s)
    while lo * unit_s < since:
        lo += 1
    while (lo - 1) * unit_s >= since:
        lo -= 1
    if until == math.inf:
        return lo, None
    hi = math.floor(until / unit_s)
    while hi * unit_s > until:
        hi -= 1
    while (hi + 1) * unit_s <= until:
        hi += 1
    return lo, hi


def _split(since: float, until: float, units: Sequence[int]) -> list[_Piece]:
    """``[since, until)`` cut into whole units of the first of ``units`` (seconds,
    largest first), the rest of each edge cut by the next unit, and so on; what no unit
    covers is read from the events."""
    if until <= since:
        return []
    if not units:
        return [_Piece(0, since, until)]
    unit, rest = units[0], units[1:]
    lo, hi = _whole_units(since, until, unit)
    if hi is not None and lo >= hi:
        return _split(since, until, rest)
    start, end = lo * unit, math.inf if hi is None else hi * unit
    return [*_split(since, start, rest), _Piece(unit, start, end), *_split(end, until, rest)]


def _plan(store: UsageStore, q: MonitorQuery, units: Sequence[int], bucket_s: int | None = None, *,
          by_user: bool = False, span_s: float | None = None) -> list[_Piece]:
    """How to read ``q``: one raw piece, or whole units of the rollups and raw edges.

    Args:
        store: The usage store (rollups only where ``store.rollups``).
        q: Range and filters.
        units: The rollup units (seconds, largest first) the pass has tables for.
        bucket_s: The pass's time bucket: only units that divide it may serve it.
        by_user: The pass's rollup has a user column (else a user filter reads events).
        span_s: The range's length for the decision (default ``q.span_s``).
    """
    span = q.span_s if span_s is None else span_s
    usable: tuple[int, ...] = ()
    if getattr(store, "rollups", False) and span > ROLLUP_MIN_SPAN_S and (by_user or not q.users):
        usable = tuple(u for u in units if bucket_s is None or bucket_s % u == 0)
    return _split(q.since_ts, q.until_ts, usable)


def _is_raw(plan: Sequence[_Piece]) -> bool:
    return len(plan) == 1 and plan[0].unit_s == 0


def _total(expr: ColumnElement[Any]) -> ColumnElement[Any]:
    """``coalesce(sum(expr), 0)`` as a 64-bit integer (PostgreSQL sums bigints to numeric)."""
    return cast(func.coalesce(func.sum(expr), 0), BigInteger)


def _unit_bucket(store: UsageStore, unit: ColumnElement[Any], unit_s: int, bucket_s: int) -> ColumnElement[Any]:
    """The time bucket of a rollup unit (``unit_s`` divides ``bucket_s``): the bucket of its events."""
    return _floor(store, unit * float(unit_s) / float(bucket_s)).label("bucket")


def _merged(parts: Sequence[Any], keys: int, sums: int, maxes: int = 0) -> Any:
    """One statement for the grouped ``parts`` (same columns: ``keys`` group keys, then
    ``sums`` counts, then ``maxes`` maxima): ``UNION ALL`` and group again, in SQL."""
    if len(parts) == 1:  # ordered too: PostgreSQL's hash aggregate returns groups in any order
        part = parts[0]
        return part.order_by(*list(part.selected_columns)[:keys]) if keys else part
    u = union_all(*parts).subquery()
    cols = list(u.c)
    key_cols = cols[:keys]
    stmt = select(*key_cols, *(_total(c) for c in cols[keys:keys + sums]),
                  *(func.max(c) for c in cols[keys + sums:keys + sums + maxes]))
    return stmt.group_by(*key_cols).order_by(*key_cols) if keys else stmt


def _count_if(cond: ColumnElement[bool]) -> ColumnElement[Any]:
    return _total(case((cond, 1), else_=0))


def _sum_if(cond: ColumnElement[bool], column: ColumnElement[Any]) -> ColumnElement[Any]:
    # _total's cast: PostgreSQL sums the rollups' bigints to numeric, read as Decimal.
    return _total(case((cond, column), else_=0))


def _rows(store: UsageStore, stmt: Any) -> list[tuple[Any, ...]]:
    with _connect(store) as conn:
        # Plain tuples: pandas builds a frame from them ~5x faster than from Row objects.
        return [tuple(row) for row in conn.execute(stmt)]


def _frame(store: UsageStore, stmt: Any, columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame.from_records(_rows(store, stmt), columns=list(columns))


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def _to_time(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values.astype("float64"), unit="s", utc=True)


def _parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Run independent queries at once, each on its own pooled connection.

    SQLite in WAL mode lets readers run side by side, and the sqlite3 module releases
    the GIL while a statement runs, so the passes overlap on several cores.
    """
    if len(calls) == 1:
        return [calls[0]()]
    with ThreadPoolExecutor(max_workers=min(len(calls), 4), thread_name_prefix="monitor-query") as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def bucket_seconds(span_s: float, max_points: int = MAX_POINTS) -> int:
    """The time bucket for a range: the smallest step of ``BUCKET_STEPS_S`` that keeps
    at most ``max_points`` buckets (e.g. 5 s for 15 min, 5 min for 24 h, 3 h for 30 d).

    Args:
        span_s: The range's length in seconds.
        max_points: The most buckets a chart may have.
    """
    for step in BUCKET_STEPS_S:
        if span_s / step <= max_points:
            return step
    return int(math.ceil(span_s / max_points / 86_400) * 86_400)


def min_refresh_s(span_s: float) -> int:
    """The shortest sensible live-refresh interval for a range, seconds.

    Up to 1 h: none (0). Longer ranges have buckets of minutes to hours, so refreshing
    every few seconds redraws the same picture while re-running every aggregation over
    up to 30 days of events: 10 s up to 24 h, 30 s up to 7 d, 60 s beyond.
    """
    if span_s <= 3600:
        return 0
    return 10 if span_s <= 86_400 else 30 if span_s <= 7 * 86_400 else 60


# ----- histogram quantiles -----------------------------------------------------------

def bin_bounds(bins: np.ndarray | pd.Series | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The ``[lo, hi)`` latency bounds (ms) of histogram bins; bin -1 is ``[0, 1)``."""
    k = np.asarray(bins, dtype="float64")
    lo = np.where(k < 0, 0.0, np.exp(k / LATENCY_BINS_PER_E))
    hi = np.where(k < 0, 1.0, np.exp((k + 1) / LATENCY_BINS_PER_E))
    return lo, hi


def histogram_quantile(q: float, bins: Sequence[int] | np.ndarray, counts: Sequence[int] | np.ndarray
                       ) -> float | None:
    """The ``q``-quantile of a log-binned latency histogram, like Prometheus'
    ``histogram_quantile``: the bin holding rank ``q * total``, linear inside the bin.

    Error bound: the estimate and the exact nearest-rank quantile (the value at rank
    ``ceil(q * total)`` of the sorted latencies) lie in the same bin, so they differ by
    less than one bin's width: at most ``LATENCY_BIN_ERROR`` (6.45 %) of the value
    above 1 ms, at most 1 ms below it.

    Args:
        q: The quantile, in [0, 1].
        bins: Bin indices (see ``LATENCY_BINS_PER_E``), any order.
        counts: Events per bin.

    Returns:
        The estimate in ms, or None for an empty histogram.
    """
    frame = pd.DataFrame({"g": 0, "bin": np.asarray(bins, dtype="int64"), "count": np.asarray(counts)})
    out = _group_quantiles(frame, ["g"], {"v": q})
    return None if out.empty else float(out["v"].iloc[0])


def _group_quantiles(hist: pd.DataFrame, keys: list[str], qs: Mapping[str, float]) -> pd.DataFrame:
    """Per group of ``keys`` in a histogram frame (``bin``, ``count``), the quantiles
    ``qs`` (name -> q), vectorised; plus ``count`` (events in the group)."""
    h = hist[hist["count"] > 0].sort_values([*keys, "bin"], ignore_index=True)
    if h.empty:
        return pd.DataFrame(columns=[*keys, *qs, "count"])
    grouped = h.groupby(keys, sort=True)["count"]
    cum = grouped.cumsum().to_numpy(dtype="float64")
    total = grouped.transform("sum").to_numpy(dtype="float64")
    n = h["count"].to_numpy(dtype="float64")
    lo, hi = bin_bounds(h["bin"])
    out = grouped.sum().rename("count").to_frame()
    for name, q in qs.items():
        rank = np.round(q * total, 9)  # 0.95 * 100 is 95.00000000000001, not past the 95th
        reached = cum >= rank
        first = h.index[reached].to_series().groupby([h.loc[reached, k] for k in keys]).first()
        frac = np.clip((rank - (cum - n)) / n, 0.0, 1.0)
        values = lo + (hi - lo) * frac
        out[name] = pd.Series(values[first.to_numpy()], index=first.index)
    return out.reset_index()[[*keys, *qs, "count"]]
