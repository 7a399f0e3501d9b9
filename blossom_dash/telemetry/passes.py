"""The Monitor's SQL passes: one ``GROUP BY`` each, shared by ``analytics`` (KPIs, charts,
tables, the snapshot) and ``requests_log`` (the log's total).

Each pass reads the events of a short range, or the rollups of a long one and the
events at its edges (``query._plan``). Which rollup serves what:

- the per-bucket counts, totals, errors and filter lists: ``rollup_hour``, when the
  range's buckets are whole hours (every range over 75 h; a 25 h range has 5-minute
  buckets and scans its events) and no user filter is set;
- latency histograms: ``rollup_latency_day`` for whole days (the range's
  histograms), ``rollup_latency_hour`` for whole hours (over time, and the edges);
- the per-user table and the user list: ``rollup_user_day``, with any filter.

A user filter sends the other passes to the events, read through the ``(user, ts)``
index: the hourly rollups have no user column (it would make them nearly as long as
the events), so a filter on the heaviest users of a month is the slow case.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from sqlalchemy import String, case, func, literal_column, select
from sqlalchemy.sql.elements import ColumnElement

from .query import (
    E,
    MonitorQuery,
    _bin,
    _bucket,
    _count_if,
    _frame,
    _is_raw,
    _merged,
    _Piece,
    _plan,
    _rollup_where,
    _rows,
    _sum_if,
    _to_time,
    _total,
    _unit_bucket,
    _where,
)
from .store import (
    DAY_S,
    HOUR_S,
    UsageStore,
    rollup_hour,
    rollup_latency_day,
    rollup_latency_hour,
    rollup_user_day,
    unit_column,
)


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


def _measure(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """What a histogram of ``column`` counts: TTFT is a stream-only figure, so the TTFT
    of any other kind reads as NULL (the pipeline records none since schema 4, which
    cleared the history's; this keeps a stray value out of the percentiles too)."""
    return case((E.kind == "stream", column)) if column.name == "ttft_ms" else column


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
            conds.append((R.which != "ttft") | (R.kind == "stream"))  # as _measure
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
            value = _measure(E[column])
            binned = _bin(store, value, "bin")
            parts.append(select(*keys, literal_column(f"'{which}'", String).label("which"), binned, func.count())
                         .where(*_where(q, p), E.outcome == "ok", value.is_not(None))
                         .group_by(*keys, binned))
    names = [*by, *(["bucket"] if bucket_s else []), "which", "bin", "count"]
    return _frame(store, _merged(parts, len(names) - 1, 1), names)


def _pass_histogram(store: UsageStore, q: MonitorQuery, column: ColumnElement[Any],
                    by: Sequence[ColumnElement[Any]]) -> pd.DataFrame:
    """``*by, bin -> count``: the histogram of ``column`` (ms) over served (ok) events
    (streams alone for ``ttft_ms``, see ``_measure``)."""
    rolled = column.name in _WHICH and all(c.name in rollup_latency_hour.c for c in by)
    plan = _plan(store, q, (DAY_S, HOUR_S) if rolled else ())
    if not _is_raw(plan):
        hist = _histograms(store, q, plan, [column.name], [c.name for c in by], None)
        return hist.drop(columns="which")
    value = _measure(column)
    binned = _bin(store, value, "bin")
    stmt = (select(*by, binned, func.count())
            .where(*_where(q), E.outcome == "ok", value.is_not(None))
            .group_by(*by, binned))
    return _frame(store, stmt, [c.name for c in by] + ["bin", "count"])


def _pass_latency(store: UsageStore, q: MonitorQuery, bucket_s: int | None) -> pd.DataFrame:
    """``[bucket], bin, ttft_bin -> count``: latency and TTFT histograms of served events
    (per time bucket when ``bucket_s`` is given; TTFT of streams alone, see
    ``_measure``); read them with ``_marginal``.

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
    stream_ttft = _measure(E.ttft_ms)
    lat, ttft = _bin(store, E.latency_ms, "bin"), _bin(store, stream_ttft, "ttft_bin")
    stmt = (select(*keys, lat, ttft, func.count())
            .where(*_where(q), E.outcome == "ok", (E.latency_ms.is_not(None)) | (stream_ttft.is_not(None)))
            .group_by(*keys, lat, ttft))
    return _frame(store, stmt, [*by, "bin", "ttft_bin", "count"])


def _marginal(joint: pd.DataFrame, keys: Sequence[str], which: str = "bin") -> pd.DataFrame:
    """``keys, bin -> count`` of a ``_pass_latency`` frame, for ``which`` of its two bins."""
    h = joint.dropna(subset=[which])
    h = h.groupby([*keys, which], as_index=False)["count"].sum().rename(columns={which: "bin"})
    h["bin"] = h["bin"].astype("int64")
    return h


#: Counts by outcome the totals and per-user passes add: figure -> outcome.
_COUNTED: dict[str, str] = {"errors": "error", "rate_limited": "rate_limited", "rejected": "rejected",
                            "cache_hits": "cache_hit"}
_TOTALS = ("requests", *_COUNTED, "prompt_tokens", "completion_tokens")


def _pass_totals(store: UsageStore, q: MonitorQuery) -> dict[str, int]:
    """``_TOTALS`` of ``q``: requests, the ``_COUNTED`` outcomes, and served tokens."""
    parts = []
    for p in _plan(store, q, (HOUR_S,)):
        if p.unit_s:
            R, n = rollup_hour.c, rollup_hour.c.requests
            ok = R.outcome == "ok"
            parts.append(select(_total(n), *(_sum_if(R.outcome == o, n) for o in _COUNTED.values()),
                                _sum_if(ok, R.prompt_tokens), _sum_if(ok, R.completion_tokens))
                         .where(*_rollup_where(rollup_hour, q, p)))
        else:
            ok = E.outcome == "ok"
            parts.append(select(func.count(), *(_count_if(E.outcome == o) for o in _COUNTED.values()),
                                _sum_if(ok, E.prompt_tokens), _sum_if(ok, E.completion_tokens))
                         .where(*_where(q, p)))
    values = (int(v or 0) for v in _rows(store, _merged(parts, 0, len(_TOTALS)))[0])
    return dict(zip(_TOTALS, values, strict=True))


def _user_plan(store: UsageStore, q: MonitorQuery) -> list[_Piece]:
    return _plan(store, q, (DAY_S,), by_user=True)


def _pass_users(store: UsageStore, q: MonitorQuery) -> pd.DataFrame:
    """One row per user: ``user, requests, tokens, prompt_tokens, completion_tokens``,
    the ``_COUNTED`` outcomes, ``last_seen`` (UTC)."""
    parts = []
    for p in _user_plan(store, q):
        if p.unit_s:
            R = rollup_user_day.c
            ok, n = R.outcome == "ok", R.requests
            parts.append(select(R.user, _total(n), _sum_if(ok, R.prompt_tokens), _sum_if(ok, R.completion_tokens),
                                *(_sum_if(R.outcome == o, n) for o in _COUNTED.values()), func.max(R.last_ts))
                         .where(*_rollup_where(rollup_user_day, q, p)).group_by(R.user))
        else:
            ok = E.outcome == "ok"
            parts.append(select(E.user, func.count(), _sum_if(ok, E.prompt_tokens), _sum_if(ok, E.completion_tokens),
                                *(_count_if(E.outcome == o) for o in _COUNTED.values()), func.max(E.ts))
                         .where(*_where(q, p)).group_by(E.user))
    columns = ["user", "requests", "prompt_tokens", "completion_tokens", *_COUNTED, "last_seen"]
    df = _frame(store, _merged(parts, 1, 3 + len(_COUNTED), 1), columns)
    df.insert(2, "tokens", df["prompt_tokens"] + df["completion_tokens"])
    df["last_seen"] = _to_time(df["last_seen"])
    return df
