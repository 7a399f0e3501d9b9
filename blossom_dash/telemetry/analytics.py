"""Monitor analytics: the questions a team lead asks of the usage store, answered in SQL.

Every function takes the ``UsageStore`` and a ``MonitorQuery`` (a time range plus
filters) and returns a small pandas frame or dict. Aggregation happens in the database
(``GROUP BY`` over a time bucket, a latency bin, a model or a user), over the events of
a short range or the rollups of a long one (below), so a question costs a few hundred
rows back, never a million rows in Python. The request log is paged with
``LIMIT``/``OFFSET``.

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
sums them in SQL. Rollup rows and edges partition the range exactly, and every rollup
row is an aggregate of exactly the events it replaces, so the results equal those of
the scan (tests check it on random ranges and filters). Which rollup serves what:

- the per-bucket counts, totals, errors and filter lists: ``rollup_hour``, when the
  range's buckets are whole hours (every range over 75 h; a 25 h range has 5-minute
  buckets and scans its events) and no user filter is set;
- latency histograms: ``rollup_latency_day`` for whole days (the range's
  histograms), ``rollup_latency_hour`` for whole hours (over time, and the edges);
- the per-user table and the user list: ``rollup_user_day``, with any filter.

A user filter sends the other passes to the events, read through the ``(user, ts)``
index: the hourly rollups have no user column (it would make them nearly as long as
the events), so a filter on the heaviest users of a month is the slow case.

Ranges are half-open, ``since_ts <= ts < until_ts``, so a range and its ``previous()``
never count an event twice. All timestamps are epoch seconds, UTC.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson
import pandas as pd
from sqlalchemy import (
    BigInteger,
    Connection,
    String,
    Table,
    case,
    cast,
    false,
    func,
    literal_column,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement

from .collector import OUTCOMES
from .store import (
    DAY_S,
    HOUR_S,
    LATENCY_BINS_PER_E,
    NO_STATUS,
    ROW_COLUMNS,
    SQLITE_HAS_LN,
    UsageStore,
    events,
    floor_int,
    latency_bin,
    rollup_hour,
    rollup_latency_day,
    rollup_latency_hour,
    rollup_user_day,
    sqlite_ln,
    unit_column,
)

#: Ranges the Monitor offers, in seconds.
RANGES: dict[str, int] = {"15 min": 900, "1 h": 3600, "24 h": 86_400, "7 d": 7 * 86_400, "30 d": 30 * 86_400}
#: A chart never has more points than this per series.
MAX_POINTS = 300
#: Bucket sizes (seconds) a range may use: the smallest that keeps ``MAX_POINTS``.
BUCKET_STEPS_S: tuple[int, ...] = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800,
                                   21_600, 43_200, 86_400)
#: The relative width of one latency bin, i.e. the percentiles' error bound (> 1 ms).
LATENCY_BIN_ERROR = math.exp(1 / LATENCY_BINS_PER_E) - 1
#: Cells beginning with one of these are read as formulas by spreadsheets (OWASP,
#: https://owasp.org/www-community/attacks/CSV_Injection): prefixed with ``'`` on export.
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
#: Columns the request log can be sorted by.
SORTABLE: tuple[str, ...] = ("ts", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "bytes",
                             "model", "user", "kind", "outcome", "error_type", "status_code", "request_id")
#: Columns the request-log search looks in (case-insensitive substring).
SEARCHABLE: tuple[str, ...] = ("request_id", "prompt", "model", "user", "error_type")
#: Columns of one request-log row (the page shows these; the detail view shows all).
LOG_COLUMNS: tuple[str, ...] = ("ts", "request_id", "user", "model", "kind", "outcome", "error_type",
                                "status_code", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens",
                                "prompt")
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
    if len(parts) == 1:
        return parts[0]
    u = union_all(*parts).subquery()
    cols = list(u.c)
    key_cols = cols[:keys]
    stmt = select(*key_cols, *(_total(c) for c in cols[keys:keys + sums]),
                  *(func.max(c) for c in cols[keys + sums:keys + sums + maxes]))
    return stmt.group_by(*key_cols).order_by(*key_cols) if keys else stmt


def _count_if(cond: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)


def _sum_if(cond: ColumnElement[bool], column: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((cond, column), else_=0)), 0)


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


# ----- the passes: one GROUP BY each, shared by the public functions -----------------

def _pass_cube(store: UsageStore, q: MonitorQuery, bucket_s: int) -> pd.DataFrame:
    """``bucket, outcome, model -> requests, prompt_tokens, completion_tokens`` (tokens of ok)."""
    parts = []
    for p in _plan(store, q, (HOUR_S,), bucket_s):
        if p.unit_s:
            R = rollup_hour.c
            b, ok = _unit_bucket(store, R.hour, HOUR_S, bucket_s), R.outcome == "ok"
            parts.append(select(b, R.outcome, R.model, _total(R.requests), _sum_if(ok, R.prompt_tokens),
                                _sum_if(ok, R.completion_tokens))
                         .where(*_rollup_where(rollup_hour, q, p)).group_by(b, R.outcome, R.model))
        else:
            b, ok = _bucket(store, bucket_s), E.outcome == "ok"
            parts.append(select(b, E.outcome, E.model, func.count(), _sum_if(ok, E.prompt_tokens),
                                _sum_if(ok, E.completion_tokens))
                         .where(*_where(q, p)).group_by(b, E.outcome, E.model))
    return _frame(store, _merged(parts, 3, 3),
                  ["bucket", "outcome", "model", "requests", "prompt_tokens", "completion_tokens"])


_WHICH: dict[str, str] = {"latency_ms": "latency", "ttft_ms": "ttft"}


def _histograms(store: UsageStore, q: MonitorQuery, plan: Sequence[_Piece], columns: Sequence[str],
                by: Sequence[str], bucket_s: int | None) -> pd.DataFrame:
    """``*by, [bucket], which, bin -> count``: histograms of ``columns`` (``latency_ms``,
    ``ttft_ms``) over served events, from the rollups and raw edges of ``plan``."""
    whiches = [_WHICH[c] for c in columns]
    parts = []
    for p in plan:
        if p.unit_s:
            table = rollup_latency_day if p.unit_s == DAY_S else rollup_latency_hour
            R, unit = table.c, table.c[unit_column(table)]
            dims = [R[c] for c in by]
            conds = _rollup_where(table, q, p) + ([R.which == whiches[0]] if len(whiches) == 1 else [])
            if bucket_s:
                # Group by unit, which, bin: the table's key order, so SQLite streams the
                # rows instead of sorting them (the bucket is a function of the unit).
                parts.append(select(*dims, _unit_bucket(store, unit, p.unit_s, bucket_s), R.which, R.bin,
                                    _total(R.count)).where(*conds).group_by(unit, R.which, R.bin, *dims))
            else:
                parts.append(select(*dims, R.which, R.bin, _total(R.count)).where(*conds)
                             .group_by(*dims, R.which, R.bin))
            continue
        for column, which in zip(columns, whiches, strict=True):
            keys = [E[c] for c in by] + ([_bucket(store, bucket_s)] if bucket_s else [])
            binned = _bin(store, E[column], "bin")
            parts.append(select(*keys, literal_column(f"'{which}'", String).label("which"), binned, func.count())
                         .where(*_where(q, p), E.outcome == "ok", E[column].is_not(None))
                         .group_by(*keys, binned))
    names = [*by, *(["bucket"] if bucket_s else []), "which", "bin", "count"]
    return _frame(store, _merged(parts, len(names) - 1, 1), names)


def _pass_histogram(store: UsageStore, q: MonitorQuery, column: ColumnElement[Any],
                    by: Sequence[ColumnElement[Any]]) -> pd.DataFrame:
    """``*by, bin -> count``: the histogram of ``column`` (ms) over served (ok) events."""
    rolled = column.name in _WHICH and all(c.name in rollup_latency_hour.c for c in by)
    plan = _plan(store, q, (DAY_S, HOUR_S) if rolled else ())
    if not _is_raw(plan):
        hist = _histograms(store, q, plan, [column.name], [c.name for c in by], None)
        return hist.drop(columns="which")
    binned = _bin(store, column, "bin")
    stmt = (select(*by, binned, func.count())
            .where(*_where(q), E.outcome == "ok", column.is_not(None))
            .group_by(*by, binned))
    return _frame(store, stmt, [c.name for c in by] + ["bin", "count"])


def _pass_latency(store: UsageStore, q: MonitorQuery, bucket_s: int | None) -> pd.DataFrame:
    """``[bucket], bin, ttft_bin -> count``: latency and TTFT histograms of served events
    (per time bucket when ``bucket_s`` is given); read them with ``_marginal``.

    From the events, one joint pass (one sort instead of two; a bin is NULL where its
    value is missing). From the rollups, which keep the two histograms apart, each row
    has one of the two bins and NULL for the other: the marginals are the same.
    """
    plan = _plan(store, q, (DAY_S, HOUR_S), bucket_s)
    by = ["bucket"] if bucket_s else []
    if not _is_raw(plan):
        hist = _histograms(store, q, plan, ["latency_ms", "ttft_ms"], [], bucket_s)
        lat = hist["which"] == "latency"
        hist["ttft_bin"] = hist["bin"].where(~lat)
        hist["bin"] = hist["bin"].where(lat)
        return hist[[*by, "bin", "ttft_bin", "count"]]
    keys = [_bucket(store, bucket_s)] if bucket_s else []
    lat, ttft = _bin(store, E.latency_ms, "bin"), _bin(store, E.ttft_ms, "ttft_bin")
    stmt = (select(*keys, lat, ttft, func.count())
            .where(*_where(q), E.outcome == "ok", (E.latency_ms.is_not(None)) | (E.ttft_ms.is_not(None)))
            .group_by(*keys, lat, ttft))
    return _frame(store, stmt, [*by, "bin", "ttft_bin", "count"])


def _marginal(joint: pd.DataFrame, keys: Sequence[str], which: str = "bin") -> pd.DataFrame:
    """``keys, bin -> count`` of a ``_pass_latency`` frame, for ``which`` of its two bins."""
    h = joint.dropna(subset=[which])
    h = h.groupby([*keys, which], as_index=False)["count"].sum().rename(columns={which: "bin"})
    h["bin"] = h["bin"].astype("int64")
    return h


_TOTALS = ("requests", "errors", "rate_limited", "cache_hits", "prompt_tokens", "completion_tokens")


def _pass_totals(store: UsageStore, q: MonitorQuery) -> dict[str, int]:
    parts = []
    for p in _plan(store, q, (HOUR_S,)):
        if p.unit_s:
            R, n = rollup_hour.c, rollup_hour.c.requests
            ok = R.outcome == "ok"
            parts.append(select(_total(n), _sum_if(R.outcome == "error", n), _sum_if(R.outcome == "rate_limited", n),
                                _sum_if(R.outcome == "cache_hit", n), _sum_if(ok, R.prompt_tokens),
                                _sum_if(ok, R.completion_tokens)).where(*_rollup_where(rollup_hour, q, p)))
        else:
            ok = E.outcome == "ok"
            parts.append(select(func.count(), _count_if(E.outcome == "error"), _count_if(E.outcome == "rate_limited"),
                                _count_if(E.outcome == "cache_hit"), _sum_if(ok, E.prompt_tokens),
                                _sum_if(ok, E.completion_tokens)).where(*_where(q, p)))
    values = (int(v or 0) for v in _rows(store, _merged(parts, 0, len(_TOTALS)))[0])
    return dict(zip(_TOTALS, values, strict=True))


def _user_plan(store: UsageStore, q: MonitorQuery) -> list[_Piece]:
    return _plan(store, q, (DAY_S,), by_user=True)


def _pass_users(store: UsageStore, q: MonitorQuery) -> pd.DataFrame:
    parts = []
    for p in _user_plan(store, q):
        if p.unit_s:
            R = rollup_user_day.c
            ok, n = R.outcome == "ok", R.requests
            parts.append(select(R.user, _total(n), _sum_if(ok, R.prompt_tokens), _sum_if(ok, R.completion_tokens),
                                _sum_if(R.outcome == "error", n), _sum_if(R.outcome == "rate_limited", n),
                                _sum_if(R.outcome == "cache_hit", n), func.max(R.last_ts))
                         .where(*_rollup_where(rollup_user_day, q, p)).group_by(R.user))
        else:
            ok = E.outcome == "ok"
            parts.append(select(E.user, func.count(), _sum_if(ok, E.prompt_tokens), _sum_if(ok, E.completion_tokens),
                                _count_if(E.outcome == "error"), _count_if(E.outcome == "rate_limited"),
                                _count_if(E.outcome == "cache_hit"), func.max(E.ts))
                         .where(*_where(q, p)).group_by(E.user))
    df = _frame(store, _merged(parts, 1, 6, 1), ["user", "requests", "prompt_tokens", "completion_tokens", "errors",
                                                 "rate_limited", "cache_hits", "last_seen"])
    df.insert(2, "tokens", df["prompt_tokens"] + df["completion_tokens"])
    df["last_seen"] = _to_time(df["last_seen"])
    return df


def _parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Run independent queries at once, each on its own pooled connection.

    SQLite in WAL mode lets readers run side by side, and the sqlite3 module releases
    the GIL while a statement runs, so the passes overlap on several cores.
    """
    if len(calls) == 1:
        return [calls[0]()]
    with ThreadPoolExecutor(max_workers=min(len(calls), 4), thread_name_prefix="monitor-query") as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


# ----- KPIs --------------------------------------------------------------------------

def _kpis_from(q: MonitorQuery, totals: Mapping[str, int], joint: pd.DataFrame) -> dict[str, Any]:
    """KPIs from ``_pass_totals`` and a ``_pass_latency`` frame (any grouping)."""
    n, errors, limited, hits = (totals[k] for k in ("requests", "errors", "rate_limited", "cache_hits"))
    looked_up = n - limited
    lat, ttft = _marginal(joint, [], "bin"), _marginal(joint, [], "ttft_bin")

    def pct(hist: pd.DataFrame, qv: float) -> float | None:
        return histogram_quantile(qv, hist["bin"].to_numpy(), hist["count"].to_numpy())

    return {
        "requests": n, "errors": errors, "error_rate": errors / n if n else 0.0,
        "rate_limited": limited, "cache_hits": hits, "cache_hit_rate": hits / looked_up if looked_up else 0.0,
        "rpm": n / (q.span_s / 60),
        "p50_latency_ms": pct(lat, 0.5), "p95_latency_ms": pct(lat, 0.95), "p99_latency_ms": pct(lat, 0.99),
        "p50_ttft_ms": pct(ttft, 0.5),
        "prompt_tokens": totals["prompt_tokens"], "completion_tokens": totals["completion_tokens"],
        "tokens": totals["prompt_tokens"] + totals["completion_tokens"],
    }


def kpis(store: UsageStore, q: MonitorQuery) -> dict[str, Any]:
    """Headline figures of the range.

    Definitions follow ``metrics.summarize``: the error rate is errors over all
    requests; the hit rate is cache hits over requests that reached the cache (all but
    rate-limited ones); latency and TTFT percentiles and tokens cover served (``ok``)
    requests. Percentiles come from SQL histograms (see ``histogram_quantile``).

    Returns:
        ``requests, errors, error_rate, rate_limited, cache_hits, cache_hit_rate, rpm,
        p50_latency_ms, p95_latency_ms, p99_latency_ms, p50_ttft_ms, prompt_tokens,
        completion_tokens, tokens`` (rates are fractions in [0, 1]; ``rpm`` is requests
        per minute over the range; percentiles are None without served requests).
    """
    totals, joint = _parallel(lambda: _pass_totals(store, q), lambda: _pass_latency(store, q, None))
    return _kpis_from(q, totals, joint)


# ----- time series -------------------------------------------------------------------

@dataclass(frozen=True)
class Timeseries:
    """Per-bucket counts from one ``GROUP BY bucket, outcome, model`` pass.

    Attributes:
        bucket_s: Bucket width in seconds.
        since_ts / until_ts: The range, epoch seconds.
        requests: ``ts`` (bucket start, UTC), ``outcome``, ``requests``, ``rpm``.
        tokens: ``ts``, ``model``, ``prompt_tokens``, ``completion_tokens``, ``tokens``,
            ``tpm`` (tokens per minute); served requests only.
        by_model: ``ts``, ``model``, ``outcome``, ``requests``: the cube the other two
            come from (the cache chart prices hits per model from it).
    """

    bucket_s: int
    since_ts: float
    until_ts: float
    requests: pd.DataFrame
    tokens: pd.DataFrame
    by_model: pd.DataFrame = field(repr=False)


def _timeseries_from(q: MonitorQuery, bucket_s: int, raw: pd.DataFrame) -> Timeseries:
    raw = raw.copy()
    raw["ts"] = _to_time(raw["bucket"] * bucket_s)
    per_min = bucket_s / 60
    req = raw.groupby(["ts", "outcome"], as_index=False)["requests"].sum()
    req["rpm"] = req["requests"] / per_min
    tok = (raw[raw["outcome"] == "ok"]
           .groupby(["ts", "model"], as_index=False)[["prompt_tokens", "completion_tokens"]].sum())
    tok["tokens"] = tok["prompt_tokens"] + tok["completion_tokens"]
    tok["tpm"] = tok["tokens"] / per_min
    return Timeseries(bucket_s, q.since_ts, q.until_ts, req, tok,
                      raw[["ts", "model", "outcome", "requests"]].reset_index(drop=True))


def timeseries(store: UsageStore, q: MonitorQuery, bucket_s: int | None = None) -> Timeseries:
    """Requests per bucket by outcome and tokens per bucket by model, in one SQL pass.

    Args:
        store: The usage store.
        q: Range and filters.
        bucket_s: Bucket width in seconds; ``bucket_seconds(q.span_s)`` when None.
    """
    bucket_s = bucket_s or bucket_seconds(q.span_s)
    return _timeseries_from(q, bucket_s, _pass_cube(store, q, bucket_s))


def _latency_over_time_from(bucket_s: int, joint: pd.DataFrame) -> pd.DataFrame:
    lat = _marginal(joint, ["bucket"], "bin")
    out = _group_quantiles(lat, ["bucket"], {"p50_ms": 0.5, "p95_ms": 0.95, "p99_ms": 0.99})
    out = out.rename(columns={"count": "served"})
    ttft = _marginal(joint, ["bucket"], "ttft_bin")
    t = _group_quantiles(ttft, ["bucket"], {"ttft_p50_ms": 0.5}).drop(columns="count")
    out = out.merge(t, on="bucket", how="left")
    out.insert(0, "ts", _to_time(out["bucket"].astype("float64") * bucket_s))
    out["served"] = out["served"].astype("int64")
    return out[["ts", "served", "p50_ms", "p95_ms", "p99_ms", "ttft_p50_ms"]]


def latency_percentiles(store: UsageStore, q: MonitorQuery, bucket_s: int | None = None) -> pd.DataFrame:
    """p50/p95/p99 latency and p50 TTFT per bucket, served requests, from SQL histograms.

    Args:
        store: The usage store.
        q: Range and filters.
        bucket_s: Bucket width in seconds; ``bucket_seconds(q.span_s)`` when None.

    Returns:
        ``ts`` (bucket start, UTC), ``served``, ``p50_ms``, ``p95_ms``, ``p99_ms``,
        ``ttft_p50_ms``; one row per bucket with served requests. Each figure is within
        ``LATENCY_BIN_ERROR`` of the exact nearest-rank value (``histogram_quantile``).
    """
    bucket_s = bucket_s or bucket_seconds(q.span_s)
    return _latency_over_time_from(bucket_s, _pass_latency(store, q, bucket_s))


def _with_bounds(hist: pd.DataFrame) -> pd.DataFrame:
    hist = hist.groupby(["model", "bin"], as_index=False)["count"].sum()
    hist["lo_ms"], hist["hi_ms"] = bin_bounds(hist["bin"])
    return hist.sort_values(["model", "bin"], ignore_index=True)[["model", "bin", "lo_ms", "hi_ms", "count"]]


def latency_by_model(store: UsageStore, q: MonitorQuery) -> pd.DataFrame:
    """The latency histogram of served requests per model (for a distribution chart).

    Returns:
        ``model``, ``bin``, ``lo_ms``, ``hi_ms``, ``count``: one row per non-empty bin
        (bins as in ``LATENCY_BINS_PER_E``).
    """
    return _with_bounds(_pass_histogram(store, q, E.latency_ms, [E.model]))


def model_latency_summary(hist: pd.DataFrame) -> pd.DataFrame:
    """Per model: ``served`` and p5/p25/p50/p75/p95/p99 latency (``p50_ms``...) of a
    ``latency_by_model`` histogram (each within ``LATENCY_BIN_ERROR``), busiest first."""
    qs = {"p5_ms": 0.05, "p25_ms": 0.25, "p50_ms": 0.5, "p75_ms": 0.75, "p95_ms": 0.95, "p99_ms": 0.99}
    out = _group_quantiles(hist, ["model"], qs).rename(columns={"count": "served"})
    return out.sort_values(["served", "model"], ascending=[False, True], ignore_index=True)


# ----- errors, cache, rate limits, users ----------------------------------------------

def errors_by_type(store: UsageStore, q: MonitorQuery) -> pd.DataFrame:
    """Failed requests (outcome ``error``) by error type and upstream status.

    Returns:
        ``error_type``, ``status_code`` (<NA> when no response came back), ``errors``,
        ``last_seen`` (UTC); most frequent first.
    """
    parts = []
    for p in _plan(store, q, (HOUR_S,)):
        if p.unit_s:
            R = rollup_hour.c
            status = func.nullif(R.status_code, NO_STATUS)
            parts.append(select(R.error_type, status, _total(R.requests), func.max(R.last_ts))
                         .where(*_rollup_where(rollup_hour, q, p), R.outcome == "error").group_by(R.error_type, status))
        else:
            parts.append(select(E.error_type, E.status_code, func.count(), func.max(E.ts))
                         .where(*_where(q, p), E.outcome == "error").group_by(E.error_type, E.status_code))
    df = _frame(store, _merged(parts, 2, 1, 1), ["error_type", "status_code", "errors", "last_seen"])
    df["status_code"] = df["status_code"].astype("Int64")
    df["last_seen"] = _to_time(df["last_seen"])
    # Sorted here, not in SQL, so that both paths break ties alike (NULL status first).
    return df.sort_values(["errors", "error_type", "status_code"], ascending=[False, True, True],
                          na_position="first", kind="stable", ignore_index=True)


@dataclass(frozen=True)
class CacheSavings:
    """What the response cache saved in a range.

    The time saved by one hit is approximated by the median latency of the served
    (``ok``) requests of the same model in the same range and filters: the latency the
    request would have had without the cache. A hit on a model with no served request
    in the range cannot be priced and is counted in ``unpriced_hits``. The medians come
    from the SQL histogram, so they carry ``LATENCY_BIN_ERROR`` too.

    Attributes:
        hits: Cache hits.
        looked_up: Requests that reached the cache (all but rate-limited ones).
        hit_rate: ``hits / looked_up`` (0 when nothing was looked up).
        saved_ms: Latency saved by the priced hits, milliseconds.
        unpriced_hits: Hits without a same-model reference latency.
        by_model: ``model``, ``hits``, ``median_ok_latency_ms``, ``saved_ms``.
        over_time: ``ts``, ``hits``, ``looked_up``, ``hit_rate`` (NaN when nothing was
            looked up), ``saved_ms`` per bucket.
    """

    hits: int
    looked_up: int
    hit_rate: float
    saved_ms: float
    unpriced_hits: int
    by_model: pd.DataFrame
    over_time: pd.DataFrame


def _cache_from(series: Timeseries, hist: pd.DataFrame) -> CacheSavings:
    medians = _group_quantiles(hist, ["model"], {"median_ok_latency_ms": 0.5}).drop(columns="count")
    cube = series.by_model
    hits = cube[cube["outcome"] == "cache_hit"].merge(medians, on="model", how="left")
    hits["saved_ms"] = hits["requests"] * hits["median_ok_latency_ms"].astype("float64")
    by_model = (hits.groupby("model", as_index=False)
                .agg(hits=("requests", "sum"), median_ok_latency_ms=("median_ok_latency_ms", "first"),
                     saved_ms=("saved_ms", "sum"))
                .sort_values(["hits", "model"], ascending=[False, True], ignore_index=True))
    looked = cube[cube["outcome"] != "rate_limited"].groupby("ts")["requests"].sum()
    over = pd.DataFrame({"looked_up": looked})
    over["hits"] = hits.groupby("ts")["requests"].sum()
    over["saved_ms"] = hits.groupby("ts")["saved_ms"].sum()
    over = over.fillna({"hits": 0, "saved_ms": 0.0}).rename_axis("ts").reset_index()
    over["hits"] = over["hits"].astype("int64")
    over["hit_rate"] = over["hits"] / over["looked_up"].where(over["looked_up"] > 0)
    n_hits, n_looked = int(by_model["hits"].sum()), int(looked.sum())
    return CacheSavings(
        hits=n_hits, looked_up=n_looked, hit_rate=n_hits / n_looked if n_looked else 0.0,
        saved_ms=float(by_model["saved_ms"].fillna(0).sum()),
        unpriced_hits=int(by_model.loc[by_model["median_ok_latency_ms"].isna(), "hits"].sum()),
        by_model=by_model,
        over_time=over[["ts", "hits", "looked_up", "hit_rate", "saved_ms"]].sort_values("ts", ignore_index=True),
    )


def cache_savings(store: UsageStore, q: MonitorQuery, *, bucket_s: int | None = None) -> CacheSavings:
    """Cache hit rate and the time the cache saved (see ``CacheSavings`` for the estimate).

    Args:
        store: The usage store.
        q: Range and filters.
        bucket_s: Bucket width of ``over_time``; ``bucket_seconds(q.span_s)`` when None.
    """
    bucket_s = bucket_s or bucket_seconds(q.span_s)
    cube, hist = _parallel(lambda: _pass_cube(store, q, bucket_s),
                           lambda: _pass_histogram(store, q, E.latency_ms, [E.model]))
    return _cache_from(_timeseries_from(q, bucket_s, cube), _with_bounds(hist))


def _rate_limited_from(users: pd.DataFrame, limit: int) -> pd.DataFrame:
    df = users[users["rate_limited"] > 0][["user", "rate_limited", "requests"]]
    df = df.sort_values(["rate_limited", "user"], ascending=[False, True], ignore_index=True).head(limit)
    return df.assign(share=df["rate_limited"] / df["requests"])


def rate_limited_by_user(store: UsageStore, q: MonitorQuery, limit: int = 20) -> pd.DataFrame:
    """Users with rate-limited requests, most limited first.

    Returns:
        ``user``, ``rate_limited``, ``requests``, ``share`` (rate-limited / requests);
        at most ``limit`` rows.
    """
    # The per-user pass (one row per user, so bounded) serves the snapshot too: the
    # function and the snapshot cannot disagree, on either path.
    return _rate_limited_from(_pass_users(store, q), limit)


def _per_user_from(users: pd.DataFrame, limit: int) -> pd.DataFrame:
    return users.sort_values(["requests", "user"], ascending=[False, True], ignore_index=True).head(limit)


def per_user(store: UsageStore, q: MonitorQuery, limit: int = 500) -> pd.DataFrame:
    """One row per user: requests, tokens, errors, rate-limited, cache hits, last seen.

    Tokens count served (``ok``) requests, as in ``kpis``.

    Returns:
        ``user``, ``requests``, ``tokens``, ``prompt_tokens``, ``completion_tokens``,
        ``errors``, ``rate_limited``, ``cache_hits``, ``last_seen`` (UTC); busiest
        first, at most ``limit`` rows.
    """
    return _per_user_from(_pass_users(store, q), limit)


# ----- everything the page shows, in the fewest passes ------------------------------

@dataclass(frozen=True)
class MonitorSnapshot:
    """Everything the Monitor draws for one query, from the fewest SQL passes.

    Attributes:
        query: The range and filters.
        kpis / previous_kpis: ``kpis()`` of the range and of ``query.previous()``.
        series: ``timeseries()``.
        latency: ``latency_percentiles()``.
        latency_hist: ``latency_by_model()``.
        errors: ``errors_by_type()``.
        cache: ``cache_savings()``.
        users: ``per_user()``.
        rate_limited: ``rate_limited_by_user()``.
        elapsed_s: Wall time the passes took, seconds.
    """

    query: MonitorQuery
    kpis: dict[str, Any]
    previous_kpis: dict[str, Any]
    series: Timeseries
    latency: pd.DataFrame
    latency_hist: pd.DataFrame
    errors: pd.DataFrame
    cache: CacheSavings
    users: pd.DataFrame
    rate_limited: pd.DataFrame
    elapsed_s: float


def snapshot(store: UsageStore, q: MonitorQuery, *, user_limit: int = 500) -> MonitorSnapshot:
    """The results of every aggregate function above for ``q``, at a fraction of the cost.

    Seven passes instead of about twelve: one ``GROUP BY bucket, outcome, model``
    feeds the KPI counts, both time series and the cache hit rate; one joint
    latency/TTFT histogram by bucket feeds the percentiles over time and of the whole
    range; one latency histogram by model feeds the distribution chart and prices the
    cache hits; one ``GROUP BY user`` feeds the per-user and rate-limited tables; one
    for the errors; two for the previous period. They run concurrently (``_parallel``).

    Args:
        store: The usage store.
        q: Range and filters.
        user_limit: Rows of the per-user table.
    """
    t0 = time.perf_counter()
    bucket_s = bucket_seconds(q.span_s)
    prev = q.previous()
    cube, joint, by_model, users, errors, prev_totals, prev_joint = _parallel(
        lambda: _pass_cube(store, q, bucket_s),
        lambda: _pass_latency(store, q, bucket_s),
        lambda: _pass_histogram(store, q, E.latency_ms, [E.model]),
        lambda: _pass_users(store, q),
        lambda: errors_by_type(store, q),
        lambda: _pass_totals(store, prev),
        lambda: _pass_latency(store, prev, None),
    )
    series = _timeseries_from(q, bucket_s, cube)
    totals = {
        "requests": int(cube["requests"].sum()),
        **{k: int(cube.loc[cube["outcome"] == o, "requests"].sum())
           for k, o in (("errors", "error"), ("rate_limited", "rate_limited"), ("cache_hits", "cache_hit"))},
        "prompt_tokens": int(cube["prompt_tokens"].sum()), "completion_tokens": int(cube["completion_tokens"].sum()),
    }
    hist = _with_bounds(by_model)
    return MonitorSnapshot(
        query=q, kpis=_kpis_from(q, totals, joint), previous_kpis=_kpis_from(prev, prev_totals, prev_joint),
        series=series, latency=_latency_over_time_from(bucket_s, joint), latency_hist=hist, errors=errors,
        cache=_cache_from(series, hist), users=_per_user_from(users, user_limit),
        rate_limited=_rate_limited_from(users, 20), elapsed_s=time.perf_counter() - t0,
    )


# ----- request log -------------------------------------------------------------------

def _contains(store: UsageStore, column: ColumnElement[Any], text: str) -> ColumnElement[bool]:
    # SQLite's LIKE already ignores ASCII case, and lower() on five columns of every row
    # would triple the cost of a search; elsewhere (PostgreSQL) ILIKE.
    if store.is_sqlite:
        return column.contains(text, autoescape=True)
    return column.icontains(text, autoescape=True)


#: Searchable columns whose few distinct values the rollups hold: column -> rollup table.
_SEARCH_VIA_ROLLUP: dict[str, Table] = {"model": rollup_hour, "error_type": rollup_hour, "user": rollup_user_day}


def _matches(store: UsageStore, q: MonitorQuery, column: str, text: str) -> ColumnElement[bool]:
    """``column`` contains ``text``, for every event of ``q``'s range.

    A search that matches nothing scans every event of the range, so each LIKE per row
    counts (five cost ~0.8 s on 1M events). For the low-cardinality columns, the same
    LIKE runs on the distinct values the rollups hold for the range's hours (every
    event's value is there: the rollups are exact), and the events are matched with
    ``IN``: the same rows, two LIKEs per event instead of five.
    """
    table = _SEARCH_VIA_ROLLUP.get(column)
    if table is None or not getattr(store, "rollups", False):
        return _contains(store, E[column], text)
    unit_s = DAY_S if table is rollup_user_day else HOUR_S
    unit = table.c[unit_column(table)]
    units = (unit >= math.floor(q.since_ts / unit_s), unit <= math.floor(q.until_ts / unit_s))
    stmt = select(table.c[column]).where(*units, _contains(store, table.c[column], text)).group_by(table.c[column])
    values = [v for (v,) in _rows(store, stmt)]
    return E[column].in_(values) if values else false()


def _log_select(store: UsageStore, q: MonitorQuery, search: str, columns: Sequence[str]) -> Any:
    stmt = select(*(E[c] for c in columns)).where(*_where(q))
    if search := search.strip():
        stmt = stmt.where(or_(*(_matches(store, q, c, search) for c in SEARCHABLE)))
    return stmt


def _count(store: UsageStore, q: MonitorQuery, search: str = "") -> int:
    """How many events match ``q`` and ``search``: from the rollups when the range and
    filters allow it and nothing is searched, else counted in the events."""
    if not search.strip() and not _is_raw(_plan(store, q, (HOUR_S,))):
        return _pass_totals(store, q)["requests"]
    base = _log_select(store, q, search, ["id"])
    return int(_rows(store, select(func.count()).select_from(base.subquery()))[0][0] or 0)


def request_log(store: UsageStore, q: MonitorQuery, search: str = "", sort_by: str = "ts",
                descending: bool = True, page: int = 1, page_size: int = 50) -> tuple[pd.DataFrame, int]:
    """One page of the filtered events (``LIMIT``/``OFFSET`` in SQL).

    Args:
        store: The usage store.
        q: Range and filters.
        search: Case-insensitive substring of the request id, prompt, model, user or
            error type (``%`` and ``_`` match themselves); "" matches everything.
        sort_by: One of ``SORTABLE``; ties (and NULLs, last) are ordered by insertion.
        descending: Largest / newest first.
        page: 1-based page number; clamped to the last page.
        page_size: Rows per page.

    Returns:
        ``(frame, total)``: the page with ``LOG_COLUMNS`` (``ts`` as UTC datetimes)
        and how many events match in all.

    Raises:
        ValueError: ``sort_by`` is not sortable or ``page_size`` < 1.
    """
    if sort_by not in SORTABLE:
        raise ValueError(f"cannot sort by {sort_by!r}; choose one of {', '.join(SORTABLE)}")
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    base = _log_select(store, q, search, LOG_COLUMNS)
    key, tie = E[sort_by], E.id
    order = [key.desc().nulls_last(), tie.desc()] if descending else [key.asc().nulls_last(), tie.asc()]

    def rows_of(p: int) -> list[tuple[Any, ...]]:
        return _rows(store, base.order_by(*order).limit(page_size).offset((p - 1) * page_size))

    page = max(1, page)
    rows = rows_of(page)
    if 0 < len(rows) < page_size or (page == 1 and not rows):
        # A short page is the last one: the total follows, no count needed. Counting a
        # search scans the whole range (~0.5 s for 30 days of 1M events), and a rare
        # term is the case where the page itself has just scanned it all.
        total = (page - 1) * page_size + len(rows)
    else:
        total = _count(store, q, search)
        last = max(1, math.ceil(total / page_size))
        if page > last:
            page, rows = last, rows_of(last)
    df = pd.DataFrame.from_records(rows, columns=list(LOG_COLUMNS))
    df["ts"] = _to_time(df["ts"])
    df["status_code"] = df["status_code"].astype("Int64")
    return df, total


def request_detail(store: UsageStore, request_id: str) -> dict[str, Any] | None:
    """Every stored field of one request (``store.ROW_COLUMNS``), or None if unknown.

    ``ts`` is returned as epoch seconds and ``time`` as an ISO 8601 UTC string.
    """
    row = _rows(store, select(*(E[c] for c in ROW_COLUMNS)).where(E.request_id == request_id))
    if not row:
        return None
    detail = dict(zip(ROW_COLUMNS, row[0], strict=True))
    return {"time": _iso(detail["ts"]), **detail}


def filter_options(store: UsageStore, since: float, until: float | None = None, limit: int = 200
                   ) -> dict[str, list[str]]:
    """The distinct values of each filterable column in ``[since, until)``.

    Args:
        store: The usage store.
        since: Range start, epoch seconds.
        until: Range end (default: no end).
        limit: At most this many values per column (the most frequent ones), so a
            store with thousands of users keeps a usable widget.

    Returns:
        ``{"models": [...], "users": [...], "kinds": [...], "outcomes": [...],
        "backends": [...]}``, each sorted.
    """
    if until is not None and until <= since:
        return {name: [] for name in DIMENSIONS}
    q = MonitorQuery(since, math.inf if until is None else until)
    span = (time.time() if until is None else until) - since

    def distinct(column: str) -> list[str]:
        by_user = column == "user"
        table = rollup_user_day if by_user else rollup_hour
        parts = []
        for p in _plan(store, q, (DAY_S,) if by_user else (HOUR_S,), by_user=by_user, span_s=span):
            if p.unit_s:
                parts.append(select(table.c[column], _total(table.c.requests))
                             .where(*_rollup_where(table, q, p)).group_by(table.c[column]))
            else:
                parts.append(select(E[column], func.count()).where(*_where(q, p)).group_by(E[column]))
        counts = [(str(v), int(n)) for v, n in _rows(store, _merged(parts, 1, 1)) if v is not None]
        # The most frequent first, ties by name, so that both paths keep the same values.
        top = sorted(counts, key=lambda vn: (-vn[1], vn[0]))[:limit]
        return sorted(v for v, _n in top)

    values = _parallel(*(lambda c=c: distinct(c) for c in DIMENSIONS.values()))
    return dict(zip(DIMENSIONS, values, strict=True))


# ----- retention ---------------------------------------------------------------------

def retention_cutoff(retention_days: float, now: float | None = None) -> float:
    """The epoch second before which events are older than ``retention_days``."""
    return (time.time() if now is None else now) - retention_days * 86_400


def count_older_than(store: UsageStore, cutoff_ts: float) -> int:
    """How many events were recorded before ``cutoff_ts`` (what a deletion would remove)."""
    return int(_rows(store, select(func.count()).where(E.ts < cutoff_ts))[0][0] or 0)


# ----- export ------------------------------------------------------------------------

def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells cannot run as spreadsheet formulas.

    A text cell beginning with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a
    leading single quote, as OWASP advises against CSV injection
    (https://owasp.org/www-community/attacks/CSV_Injection). Numbers (a negative
    latency, say) are left alone: they are not text, and a spreadsheet reads them as
    numbers, not formulas.
    """
    out = df.copy()
    for col in out.columns:
        values = out[col]
        if not (values.dtype == object or pd.api.types.is_string_dtype(values)):
            continue
        if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
            risky = values.str.startswith(FORMULA_PREFIXES).fillna(False).to_numpy(dtype=bool)
            cells = values.to_numpy(dtype=object, copy=True)
            cells[risky] = ["'" + v for v in cells[risky]]
            out[col] = pd.Series(cells, index=values.index, dtype=values.dtype, name=col)
        else:  # mixed text and other values: test each cell
            out[col] = values.map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_PREFIXES) else v)
    return out


def _for_export(df: pd.DataFrame) -> pd.DataFrame:
    """Times as ISO 8601 UTC strings (``2025-01-31T12:00:00.250000+00:00``)."""
    out = df.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.DatetimeTZDtype):
            text = out[col].dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
            out[col] = text.astype(object).where(out[col].notna(), None)
    return out


def to_csv(df: pd.DataFrame) -> bytes:
    """``df`` as UTF-8 CSV with formulas neutralised (``neutralise_formulas``)."""
    buf = io.StringIO()
    neutralise_formulas(_for_export(df)).to_csv(buf, index=False)
    return buf.getvalue().encode("utf-8")


def to_json(data: pd.DataFrame | Mapping[str, Any]) -> bytes:
    """A frame as a JSON array of records, or a mapping of frames/values as one object.

    JSON is not opened as formulas by spreadsheets, so values are exported as stored;
    times are ISO 8601 UTC strings, missing values ``null``.
    """
    def plain(value: Any) -> Any:
        if isinstance(value, pd.DataFrame):
            frame = _for_export(value).astype(object)
            return frame.where(frame.notna(), None).to_dict(orient="records")
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return value

    return orjson.dumps(plain(data), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
                        default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if value is pd.NA:
        return None
    raise TypeError(f"cannot export {type(value).__name__}")


#: Aggregate tables ``aggregate_frames`` builds, by name (``kpis`` first).
AGGREGATES: tuple[str, ...] = ("kpis", "per_user", "requests_over_time", "tokens_over_time",
                               "latency_over_time", "latency_by_model", "errors_by_type",
                               "rate_limited_by_user", "cache_by_model")
#: The request-log export keeps at most this many (newest) events.
EXPORT_MAX_ROWS = 100_000


def aggregate_frames(snap: MonitorSnapshot) -> dict[str, pd.DataFrame]:
    """The aggregates of a snapshot as export-ready frames, named as in ``AGGREGATES``.

    ``kpis`` has one row for the range and one for the previous period (column
    ``period``); the range's row adds ``cache_saved_ms``.
    """
    q, prev = snap.query, snap.query.previous()
    return {
        "kpis": pd.DataFrame([
            {"period": "range", "since": _iso(q.since_ts), "until": _iso(q.until_ts), **snap.kpis,
             "cache_saved_ms": snap.cache.saved_ms},
            {"period": "previous", "since": _iso(prev.since_ts), "until": _iso(prev.until_ts),
             **snap.previous_kpis},
        ]),
        "per_user": snap.users,
        "requests_over_time": snap.series.requests,
        "tokens_over_time": snap.series.tokens,
        "latency_over_time": snap.latency,
        "latency_by_model": model_latency_summary(snap.latency_hist),
        "errors_by_type": snap.errors,
        "rate_limited_by_user": snap.rate_limited,
        "cache_by_model": snap.cache.by_model,
    }


def export_frames(store: UsageStore, q: MonitorQuery, *, search: str = "", max_rows: int = EXPORT_MAX_ROWS,
                  include_log: bool = True) -> dict[str, pd.DataFrame]:
    """Everything the page shows for ``q``, as frames ready for ``to_csv``/``to_json``.

    Args:
        store: The usage store.
        q: Range and filters.
        search: The request-log search applied to the ``log`` frame.
        max_rows: The log keeps the newest ``max_rows`` matching events.
        include_log: Build the ``log`` frame (skip it for aggregates-only exports).

    Returns:
        ``log`` (all ``store.ROW_COLUMNS``, newest first) when asked, then the
        ``AGGREGATES`` (see ``aggregate_frames``).
    """
    frames = {"log": request_log_export(store, q, search, max_rows)} if include_log else {}
    return frames | aggregate_frames(snapshot(store, q))


def request_log_export(store: UsageStore, q: MonitorQuery, search: str = "",
                       max_rows: int = EXPORT_MAX_ROWS) -> pd.DataFrame:
    """The newest ``max_rows`` events matching ``q`` and ``search``, every stored field."""
    stmt = _log_select(store, q, search, ROW_COLUMNS).order_by(E.ts.desc(), E.id.desc()).limit(max_rows)
    log = _frame(store, stmt, ROW_COLUMNS)
    log["ts"] = _to_time(log["ts"])
    log["status_code"] = log["status_code"].astype("Int64")
    return log


def export_log(store: UsageStore, q: MonitorQuery, search: str = "", fmt: str = "csv") -> bytes:
    """The filtered request log (newest ``EXPORT_MAX_ROWS`` events) as CSV or JSON.

    Raises:
        ValueError: ``fmt`` is neither ``csv`` nor ``json``.
    """
    return _encode(request_log_export(store, q, search), fmt)


def export_aggregates(snap: MonitorSnapshot, fmt: str = "json", table: str = "per_user") -> bytes:
    """A snapshot's aggregates: all tables as one JSON object (with the query), or one
    table (one of ``AGGREGATES``) as CSV.

    Raises:
        ValueError: ``fmt`` is neither ``csv`` nor ``json``.
        KeyError: ``table`` is not one of ``AGGREGATES``.
    """
    frames = aggregate_frames(snap)
    if fmt == "json":
        return to_json({"query": snap.query.describe(), **frames})
    return _encode(frames[table], fmt)


def _encode(df: pd.DataFrame, fmt: str) -> bytes:
    if fmt == "csv":
        return to_csv(df)
    if fmt == "json":
        return to_json(df)
    raise ValueError(f"unknown export format {fmt!r}; use csv or json")


__all__ = [
    "AGGREGATES", "EXPORT_MAX_ROWS", "FORMULA_PREFIXES", "LATENCY_BINS_PER_E", "LATENCY_BIN_ERROR", "LOG_COLUMNS",
    "MAX_POINTS", "OUTCOMES", "RANGES", "ROLLUP_MIN_SPAN_S", "SEARCHABLE", "SORTABLE", "CacheSavings", "MonitorQuery",
    "MonitorSnapshot", "Timeseries", "aggregate_frames", "bin_bounds", "bucket_seconds", "cache_savings",
    "count_older_than", "errors_by_type", "export_aggregates", "export_frames", "export_log", "filter_options",
    "histogram_quantile", "kpis", "latency_by_model", "latency_percentiles", "min_refresh_s", "model_latency_summary",
    "neutralise_formulas", "per_user", "rate_limited_by_user", "request_detail", "request_log", "request_log_export",
    "retention_cutoff", "snapshot", "timeseries", "to_csv", "to_json",
]
