"""What the team spent, in pollen: the Monitor's spend KPI, cost over time and per user
and model, answered in SQL over the events' ``cost`` (schema 5) or the rollups' ``cost``
and ``priced`` for long ranges (the same plan as every other Monitor pass, ``query._plan``).

Definitions (the README's Monitor KPIs):

- **Spend**: the sum of ``cost`` over served requests (outcome ``ok``) that have one.
- **Cache saving**: the sum of ``cost`` over cache hits: what each hit would have cost
  had it gone to the backend (the pipeline records it on the hit's event).
- **Unpriced**: served requests (or hits) without a ``cost`` (the model had no price);
  they are counted, never summed as 0. A figure with no priced request at all is
  ``None`` ("unpriced"), not 0.

Every sum is exact: the database adds the stored costs and the pieces of a long range
(rollup units and raw edges) are added here with ``Decimal``, never with floats, so the
rollups' answer equals the scan's (tests check it on SQLite and PostgreSQL).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pandas as pd
from sqlalchemy import case, func, select
from sqlalchemy.sql.elements import ColumnElement

from .analytics import latency_by_model, model_latency_summary
from .export import encode, to_json
from .query import (
    E,
    MonitorQuery,
    _bucket,
    _iso,
    _parallel,
    _plan,
    _rollup_where,
    _rows,
    _to_time,
    _unit_bucket,
    _where,
    bucket_seconds,
)
from .store import DAY_S, HOUR_S, UsageStore, rollup_hour, rollup_user_day

#: Columns of ``Spend.by_model``.
MODEL_COLUMNS = ("model", "requests", "served", "prompt_tokens", "completion_tokens", "tokens", "cost", "priced",
                 "unpriced", "errors", "error_rate", "p50_ms", "cache_saved")


def to_pollen(value: Any) -> Decimal | None:
    """A cost read from the database as ``Decimal`` pollen (None stays None).

    The drivers give ``Decimal`` (PostgreSQL ``numeric``) or ``int``/``float`` (SQLite);
    a float goes through ``str``, which gives back the decimal the column stored."""
    if value is None:
        return None
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _dsum(values: Iterable[Any]) -> Decimal | None:
    """The exact sum of the non-None ``values``; None when there is none."""
    total, seen = Decimal(0), False
    for v in values:
        if v is not None and not (isinstance(v, float) and v != v):
            total += to_pollen(v)  # type: ignore[operator]
            seen = True
    return total if seen else None


def _n(expr: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(expr), 0)


def _grouped(frame: pd.DataFrame, keys: list[str], ints: Sequence[str]) -> pd.DataFrame:
    """Pieces of a plan added together by ``keys``: counts as integers, ``cost`` exactly."""
    if frame.empty:
        return frame
    agg: dict[str, Any] = {c: "sum" for c in ints}
    agg["cost"] = _dsum
    out = frame.groupby(keys, as_index=False, dropna=False).agg(agg)
    return out.astype({c: "int64" for c in ints})


def _pass_spend(store: UsageStore, q: MonitorQuery, bucket_s: int | None) -> pd.DataFrame:
    """``[bucket], outcome, model -> requests, priced, cost, prompt_tokens, completion_tokens``.

    ``priced`` counts the events with a cost; ``cost`` sums them (None when none has one);
    tokens count served (ok) requests, as the other passes do."""
    frames = []
    for p in _plan(store, q, (HOUR_S,), bucket_s):
        if p.unit_s:
            R = rollup_hour.c
            ok = R.outcome == "ok"
            keys = ([_unit_bucket(store, R.hour, HOUR_S, bucket_s)] if bucket_s else []) + [R.outcome, R.model]
            stmt = (select(*keys, _n(R.requests), _n(R.priced), func.sum(case((R.priced > 0, R.cost))),
                           _n(case((ok, R.prompt_tokens), else_=0)), _n(case((ok, R.completion_tokens), else_=0)))
                    .where(*_rollup_where(rollup_hour, q, p)).group_by(*keys))
        else:
            ok = E.outcome == "ok"
            keys = ([_bucket(store, bucket_s)] if bucket_s else []) + [E.outcome, E.model]
            stmt = (select(*keys, func.count(), func.count(E.cost), func.sum(E.cost),
                           _n(case((ok, E.prompt_tokens), else_=0)), _n(case((ok, E.completion_tokens), else_=0)))
                    .where(*_where(q, p)).group_by(*keys))
        frames.append(pd.DataFrame.from_records(_rows(store, stmt)))
    names = [*(["bucket"] if bucket_s else []), "outcome", "model", "requests", "priced", "cost", "prompt_tokens",
             "completion_tokens"]
    frame = pd.concat([f.set_axis(names, axis=1) for f in frames if not f.empty] or [pd.DataFrame(columns=names)],
                      ignore_index=True)
    return _grouped(frame, names[:-5], ("requests", "priced", "prompt_tokens", "completion_tokens"))


def _pass_user_spend(store: UsageStore, q: MonitorQuery) -> pd.DataFrame:
    """``user -> requests, priced, cost`` over served (ok) requests."""
    frames = []
    for p in _plan(store, q, (DAY_S,), by_user=True):
        if p.unit_s:
            R = rollup_user_day.c
            stmt = (select(R.user, _n(R.requests), _n(R.priced), func.sum(case((R.priced > 0, R.cost))))
                    .where(*_rollup_where(rollup_user_day, q, p), R.outcome == "ok").group_by(R.user))
        else:
            stmt = (select(E.user, func.count(), func.count(E.cost), func.sum(E.cost))
                    .where(*_where(q, p), E.outcome == "ok").group_by(E.user))
        frames.append(pd.DataFrame.from_records(_rows(store, stmt)))
    names = ["user", "requests", "priced", "cost"]
    frame = pd.concat([f.set_axis(names, axis=1) for f in frames if not f.empty] or [pd.DataFrame(columns=names)],
                      ignore_index=True)
    return _grouped(frame, ["user"], ("requests", "priced"))


@dataclass(frozen=True)
class Total:
    """A sum of costs and the requests behind it.

    Attributes:
        cost: Pollen over the priced requests; None when none was priced.
        priced: Requests with a cost.
        unpriced: Requests without one (not in ``cost``).
    """

    cost: Decimal | None
    priced: int
    unpriced: int


def _total(cube: pd.DataFrame, outcome: str) -> Total:
    part = cube[cube["outcome"] == outcome] if not cube.empty else cube
    if part.empty:
        return Total(None, 0, 0)
    priced = int(part["priced"].sum())
    return Total(_dsum(part["cost"]) if priced else None, priced, int(part["requests"].sum()) - priced)


@dataclass(frozen=True, eq=False)
class Spend:
    """The spend panel of the Monitor for one query.

    Compared by identity (``eq=False``): a shared, read-only result.

    Attributes:
        query: The range and filters.
        spend / previous: Served requests' cost in the range and in ``query.previous()``.
        cache_saved: What the range's cache hits would have cost.
        bucket_s: The width of ``over_time``'s buckets, seconds.
        over_time: ``ts`` (bucket start, UTC), ``model``, ``cost`` (``Decimal`` or None),
            ``priced``, ``unpriced``: served requests per bucket and model.
        by_user: ``user``, ``requests`` (served), ``cost``, ``priced``, ``unpriced``;
            biggest spender first.
        by_model: ``MODEL_COLUMNS``: ``requests`` of every outcome, ``served`` (ok),
            served tokens, ``cost`` / ``priced`` / ``unpriced`` of the served requests,
            ``errors`` and ``error_rate`` (errors / requests), ``p50_ms`` (served
            latency, within ``LATENCY_BIN_ERROR``; NaN without served requests),
            ``cache_saved``; dearest first. The price column is the catalog's: the
            service adds it.
        as_of_ts: When the passes began, epoch seconds.
        elapsed_s: Wall time the passes took, seconds.
    """

    query: MonitorQuery
    spend: Total
    previous: Total
    cache_saved: Total
    bucket_s: int
    over_time: pd.DataFrame
    by_user: pd.DataFrame
    by_model: pd.DataFrame
    as_of_ts: float = 0.0
    elapsed_s: float = 0.0

    def only_user(self, user: str) -> Spend:
        """The same result with ``by_user`` cut to ``user``'s row (what a member may see)."""
        mine = self.by_user[self.by_user["user"] == user].reset_index(drop=True)
        return Spend(self.query, self.spend, self.previous, self.cache_saved, self.bucket_s, self.over_time, mine,
                     self.by_model, self.as_of_ts, self.elapsed_s)


def _by_model(cube: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    if cube.empty:
        return pd.DataFrame(columns=list(MODEL_COLUMNS))
    models = sorted(cube["model"].unique())
    rows = []
    p50 = dict(zip(summary["model"], summary["p50_ms"], strict=True)) if not summary.empty else {}
    for model in models:
        part = cube[cube["model"] == model]
        served, saved = _total(part, "ok"), _total(part, "cache_hit")
        ok = part[part["outcome"] == "ok"]
        requests = int(part["requests"].sum())
        errors = int(part.loc[part["outcome"] == "error", "requests"].sum())
        prompt, completion = int(ok["prompt_tokens"].sum()), int(ok["completion_tokens"].sum())
        rows.append((model, requests, served.priced + served.unpriced, prompt, completion, prompt + completion,
                     served.cost, served.priced, served.unpriced, errors, errors / requests if requests else 0.0,
                     # No hit at all saved nothing (0); hits without a price stay None ("unpriced").
                     p50.get(model, float("nan")),
                     saved.cost if saved.priced or saved.unpriced else Decimal(0)))
    out = pd.DataFrame(rows, columns=list(MODEL_COLUMNS))
    key = out["cost"].map(lambda c: -1.0 if c is None else float(c))
    return out.assign(_k=key).sort_values(["_k", "requests", "model"], ascending=[False, False, True],
                                          ignore_index=True).drop(columns="_k")


def spend(store: UsageStore, q: MonitorQuery, *, bucket_s: int | None = None) -> Spend:
    """The spend panel of ``q``: four passes (the cost cube by bucket, the previous period's
    totals, the per-user costs, the served latency by model), run concurrently.

    Args:
        store: The usage store.
        q: Range and filters.
        bucket_s: ``over_time``'s bucket width; ``bucket_seconds(q.span_s)`` when None.
    """
    as_of, t0 = time.time(), time.perf_counter()
    bucket_s = bucket_s or bucket_seconds(q.span_s)
    cube, prev, users, hist = _parallel(lambda: _pass_spend(store, q, bucket_s),
                                        lambda: _pass_spend(store, q.previous(), None),
                                        lambda: _pass_user_spend(store, q), lambda: latency_by_model(store, q))
    flat = _grouped(cube.drop(columns="bucket"), ["outcome", "model"],
                    ("requests", "priced", "prompt_tokens", "completion_tokens")) if not cube.empty else cube
    if cube.empty:
        over = pd.DataFrame(columns=["ts", "model", "cost", "priced", "unpriced"])
    else:
        served = cube[cube["outcome"] == "ok"]
        over = pd.DataFrame({"ts": _to_time(served["bucket"].astype("float64") * bucket_s), "model": served["model"],
                             "cost": [c if p else None for c, p in zip(served["cost"], served["priced"], strict=True)],
                             "priced": served["priced"], "unpriced": served["requests"] - served["priced"]})
        over = over.sort_values(["ts", "model"], ignore_index=True)
    if users.empty:
        by_user = pd.DataFrame(columns=["user", "requests", "cost", "priced", "unpriced"])
    else:
        by_user = users.assign(unpriced=users["requests"] - users["priced"],
                               cost=[c if p else None for c, p in zip(users["cost"], users["priced"], strict=True)])
        key = by_user["cost"].map(lambda c: -1.0 if c is None else float(c))
        by_user = (by_user.assign(_k=key).sort_values(["_k", "requests", "user"], ascending=[False, False, True],
                                                      ignore_index=True)
                   [["user", "requests", "cost", "priced", "unpriced"]])
    return Spend(q, _total(flat, "ok"), _total(prev, "ok"), _total(flat, "cache_hit"), bucket_s, over, by_user,
                 _by_model(flat, model_latency_summary(hist)), as_of, time.perf_counter() - t0)


#: How far back ``typical_completion_tokens`` looks by default, seconds (7 days).
TYPICAL_WINDOW_S = 7 * 86_400.0


def typical_completion_tokens(store: UsageStore, *, now: float | None = None, window_s: float = TYPICAL_WINDOW_S,
                              kinds: Sequence[str] = ("text", "stream")) -> dict[str, tuple[float, int]]:
    """Per model: the mean completion tokens of its served requests over the last
    ``window_s`` seconds, and how many requests that mean covers (the Batch estimate's
    "typical answer").

    A request whose backend reported no completion count counts as 0 tokens (the
    rollups sum NULL as 0), so the mean errs low only where counts are missing. Read
    from ``rollup_hour`` for whole hours, the events for the edges (``query._plan``).

    Returns:
        ``{model: (mean_tokens, served_requests)}`` for models with served requests.
    """
    end = time.time() if now is None else now
    q = MonitorQuery(end - window_s, end, kinds=tuple(kinds), outcomes=("ok",))
    totals: dict[str, list[int]] = {}
    for p in _plan(store, q, (HOUR_S,)):
        if p.unit_s:
            R = rollup_hour.c
            stmt = (select(R.model, _n(R.requests), _n(R.completion_tokens))
                    .where(*_rollup_where(rollup_hour, q, p)).group_by(R.model))
        else:
            stmt = (select(E.model, func.count(), _n(E.completion_tokens)).where(*_where(q, p)).group_by(E.model))
        for model, n, tokens in _rows(store, stmt):
            acc = totals.setdefault(model, [0, 0])
            acc[0], acc[1] = acc[0] + int(n), acc[1] + int(tokens)
    return {m: (tokens / n, n) for m, (n, tokens) in totals.items() if n}


#: The tables ``spend_frames`` builds, by name (``spend_kpis`` first).
SPEND_TABLES: tuple[str, ...] = ("spend_kpis", "cost_by_model", "cost_by_user", "cost_over_time")


def _exact(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``frame`` with its cost ``columns`` as exact decimal strings (``"0.000136"``), None kept."""
    out = frame.copy()
    for c in columns:
        out[c] = out[c].map(lambda v: None if v is None else format(to_pollen(v), "f")).astype(object)
    return out


def spend_frames(s: Spend) -> dict[str, pd.DataFrame]:
    """A ``Spend`` as export-ready frames, named as in ``SPEND_TABLES``, costs as exact
    decimal strings in pollen (a float would round them; None where unpriced).

    ``spend_kpis`` has one row per figure (``spend``, ``previous_spend``,
    ``cache_saved``) with ``since``, ``until``, ``cost``, ``priced``, ``unpriced``.
    """
    q, prev = s.query, s.query.previous()
    kpis = pd.DataFrame([
        {"figure": name, "since": _iso(a.since_ts), "until": _iso(a.until_ts), "cost": t.cost, "priced": t.priced,
         "unpriced": t.unpriced}
        for name, t, a in (("spend", s.spend, q), ("previous_spend", s.previous, prev),
                           ("cache_saved", s.cache_saved, q))])
    return {"spend_kpis": _exact(kpis, ["cost"]),
            "cost_by_model": _exact(s.by_model, ["cost", "cache_saved"]),
            "cost_by_user": _exact(s.by_user, ["cost"]),
            "cost_over_time": _exact(s.over_time, ["cost"])}


def export_spend(s: Spend, fmt: str = "json", table: str = "cost_by_model") -> bytes:
    """A ``Spend``'s tables: all as one JSON object (with the query), or one table (one
    of ``SPEND_TABLES``) as CSV (formulas neutralised, as every export).

    Raises:
        ValueError: ``fmt`` is neither ``csv`` nor ``json``.
        KeyError: ``table`` is not one of ``SPEND_TABLES``.
    """
    frames = spend_frames(s)
    if fmt == "json":
        return to_json({"query": s.query.describe(), **frames})
    return encode(frames[table], fmt)


__all__ = ["MODEL_COLUMNS", "SPEND_TABLES", "TYPICAL_WINDOW_S", "Spend", "Total", "export_spend", "spend",
           "spend_frames", "to_pollen", "typical_completion_tokens"]
