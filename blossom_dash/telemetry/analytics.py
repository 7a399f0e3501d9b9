"""Monitor analytics: the questions a team lead asks of the usage store, answered in SQL.

Every function takes the ``UsageStore`` and a ``MonitorQuery`` (a time range plus
filters) and returns a small pandas frame or dict. Aggregation happens in the database
(``GROUP BY`` over a time bucket, a latency bin, a model or a user), over the events of
a short range or the rollups of a long one, so a question costs a few hundred rows
back, never a million rows in Python.

The code is split by concern; this module is the one callers import, and it
re-exports the public names of the others:

- ``query``: ``MonitorQuery``, time buckets, histogram quantiles, and the plan that
  reads a long range from the rollups;
- ``passes``: the SQL passes (one ``GROUP BY`` each) and which rollup serves which;
- this module: the KPIs, time series, latency, errors, cache, per-user figures, the
  ``snapshot`` of them all that the page draws, and the exports built from a snapshot
  (``aggregate_frames``, ``export_aggregates``, ``export_frames``);
- ``requests_log``: the request log, one request's details, the filter lists, retention;
- ``export``: the file formats (CSV with spreadsheet formulas neutralised, JSON) and
  the request-log export.

Imports run one way, ``query`` <- ``passes`` <- ``requests_log`` <- ``export`` <- this
module (none of the others imports this one), so there is no import cycle.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import func, select

from .collector import OUTCOMES
from .export import (
    EXPORT_MAX_ROWS,
    FORMULA_PREFIXES,
    encode,
    export_log,
    neutralise_formulas,
    request_log_export,
    to_csv,
    to_json,
)
from .passes import _COUNTED, _marginal, _pass_cube, _pass_histogram, _pass_latency, _pass_totals, _pass_users
from .query import (
    BUCKET_STEPS_S,
    DIMENSIONS,
    LATENCY_BIN_ERROR,
    MAX_POINTS,
    RANGES,
    ROLLUP_MIN_SPAN_S,
    E,
    MonitorQuery,
    _frame,
    _group_quantiles,
    _iso,
    _merged,
    _parallel,
    _plan,
    _rollup_where,
    _to_time,
    _total,
    _where,
    bin_bounds,
    bucket_seconds,
    histogram_quantile,
    min_refresh_s,
)
from .requests_log import (
    CONVERSATION_COLUMNS,
    LOG_COLUMNS,
    SEARCHABLE,
    SORTABLE,
    conversation,
    count_older_than,
    filter_options,
    request_detail,
    request_log,
    retention_cutoff,
)
from .store import HOUR_S, LATENCY_BINS_PER_E, NO_STATUS, UsageStore, rollup_hour

# ----- KPIs --------------------------------------------------------------------------

def _kpis_from(q: MonitorQuery, totals: Mapping[str, int], joint: pd.DataFrame) -> dict[str, Any]:
    """KPIs from ``_pass_totals`` and a ``_pass_latency`` frame (any grouping)."""
    n, errors, limited, rejected, hits = (totals[k] for k in ("requests", "errors", "rate_limited", "rejected",
                                                                "cache_hits"))
    looked_up = n - limited - rejected
    lat, ttft = _marginal(joint, [], "bin"), _marginal(joint, [], "ttft_bin")

    def pct(hist: pd.DataFrame, qv: float) -> float | None:
        return histogram_quantile(qv, hist["bin"].to_numpy(), hist["count"].to_numpy())

    return {
        "requests": n, "errors": errors, "error_rate": errors / n if n else 0.0,
        "rate_limited": limited, "rejected": rejected,
        "cache_hits": hits, "cache_hit_rate": hits / looked_up if looked_up else 0.0,
        "rpm": n / (q.span_s / 60),
        "p50_latency_ms": pct(lat, 0.5), "p95_latency_ms": pct(lat, 0.95), "p99_latency_ms": pct(lat, 0.99),
        "p50_ttft_ms": pct(ttft, 0.5),
        "prompt_tokens": totals["prompt_tokens"], "completion_tokens": totals["completion_tokens"],
        "tokens": totals["prompt_tokens"] + totals["completion_tokens"],
    }


def kpis(store: UsageStore, q: MonitorQuery) -> dict[str, Any]:
    """Headline figures of the range.

    The error rate is errors (backend and system failures, outcome ``error``) over all
    requests: rate-limited and rejected requests (our own limits; the user's invalid
    request or a replay-only refusal) are counted on their own, not as errors. The hit
    rate is cache hits over the requests the dashboard would serve (all but
    rate-limited and rejected ones). Latency percentiles and tokens cover served
    (``ok``) requests; the TTFT percentile covers served streams only (the other kinds
    have no first token to time). Percentiles come from SQL histograms (see
    ``histogram_quantile``).

    Returns:
        ``requests, errors, error_rate, rate_limited, rejected, cache_hits,
        cache_hit_rate, rpm, p50_latency_ms, p95_latency_ms, p99_latency_ms,
        p50_ttft_ms, prompt_tokens, completion_tokens, tokens`` (rates are fractions in
        [0, 1]; ``rpm`` is requests per minute over the range; percentiles are None
        without served requests, ``p50_ttft_ms`` without served streams).
    """
    totals, joint = _parallel(lambda: _pass_totals(store, q), lambda: _pass_latency(store, q, None))
    return _kpis_from(q, totals, joint)


@dataclass(frozen=True, eq=False)
class Headline:
    """The Monitor's KPI row: what the page draws first, from four cheap passes.

    Compared by identity (``eq=False``): it is a shared, read-only result.

    Attributes:
        query: The range and filters.
        kpis / previous_kpis: ``kpis()`` of the range and of ``query.previous()``.
        as_of_ts: When the passes began, epoch seconds (events after it may be missing).
        elapsed_s: Wall time the passes took, seconds.
    """

    query: MonitorQuery
    kpis: dict[str, Any]
    previous_kpis: dict[str, Any]
    as_of_ts: float
    elapsed_s: float


def headline(store: UsageStore, q: MonitorQuery) -> Headline:
    """``kpis()`` of ``q`` and of ``q.previous()``, in four concurrent passes (totals and
    the latency histogram of each period): a fraction of ``snapshot``'s cost, so the
    page can show its KPI row before the charts' passes are done."""
    as_of, t0 = time.time(), time.perf_counter()
    prev = q.previous()
    totals, joint, prev_totals, prev_joint = _parallel(
        lambda: _pass_totals(store, q), lambda: _pass_latency(store, q, None),
        lambda: _pass_totals(store, prev), lambda: _pass_latency(store, prev, None))
    return Headline(q, _kpis_from(q, totals, joint), _kpis_from(prev, prev_totals, prev_joint), as_of,
                    time.perf_counter() - t0)


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
    """p50/p95/p99 latency of served requests and p50 TTFT of served streams per bucket,
    from SQL histograms.

    Args:
        store: The usage store.
        q: Range and filters.
        bucket_s: Bucket width in seconds; ``bucket_seconds(q.span_s)`` when None.

    Returns:
        ``ts`` (bucket start, UTC), ``served``, ``p50_ms``, ``p95_ms``, ``p99_ms``,
        ``ttft_p50_ms`` (NaN in a bucket without served streams); one row per bucket
        with served requests. Each figure is within ``LATENCY_BIN_ERROR`` of the exact
        nearest-rank value (``histogram_quantile``).
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
        looked_up: Requests the dashboard would serve, the hit rate's denominator: all
            but rate-limited and rejected ones.
        hit_rate: ``hits / looked_up`` (0 when there are none).
        saved_ms: Latency saved by the priced hits, milliseconds.
        unpriced_hits: Hits without a same-model reference latency.
        by_model: ``model``, ``hits``, ``median_ok_latency_ms``, ``saved_ms``.
        over_time: ``ts``, ``hits``, ``looked_up``, ``hit_rate`` (NaN when
            ``looked_up`` is 0), ``saved_ms`` per bucket.
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
    looked = cube[~cube["outcome"].isin(("rate_limited", "rejected"))].groupby("ts")["requests"].sum()
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
    """One row per user: requests, tokens, errors, rate-limited, rejected, cache hits, last seen.

    Tokens count served (``ok``) requests, as in ``kpis``.

    Returns:
        ``user``, ``requests``, ``tokens``, ``prompt_tokens``, ``completion_tokens``,
        ``errors``, ``rate_limited``, ``rejected``, ``cache_hits``, ``last_seen`` (UTC);
        busiest first, at most ``limit`` rows.
    """
    return _per_user_from(_pass_users(store, q), limit)


# ----- everything the page shows, in the fewest passes ------------------------------

@dataclass(frozen=True, eq=False)
class MonitorSnapshot:
    """Everything the Monitor draws for one query, from the fewest SQL passes.

    Compared (and hashed) by identity (``eq=False``): a snapshot is a shared, read-only
    result, and the page keys what it derives from one (its figures) by the snapshot
    itself.

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
        as_of_ts: When the passes began, epoch seconds (the headline's start when one
            was given); events after it may be missing.
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
    as_of_ts: float = 0.0


def snapshot(store: UsageStore, q: MonitorQuery, *, user_limit: int = 500,
             headline: Headline | None = None) -> MonitorSnapshot:
    """The results of every aggregate function above for ``q``, at a fraction of the cost.

    Seven passes instead of about twelve: one ``GROUP BY bucket, outcome, model``
    feeds the KPI counts, both time series and the cache hit rate; one joint
    latency/TTFT histogram by bucket feeds the percentiles over time and of the whole
    range; one latency histogram by model feeds the distribution chart and prices the
    cache hits; one ``GROUP BY user`` feeds the per-user and rate-limited tables; one
    for the errors; two for the previous period (none when a ``headline`` is given).
    They run concurrently (``_parallel``).

    Args:
        store: The usage store.
        q: Range and filters.
        user_limit: Rows of the per-user table.
        headline: ``headline(store, q)`` already on screen: its KPIs become the
            snapshot's (so the exports match the KPI row) and the two passes of the
            previous period are skipped.

    Raises:
        ValueError: ``headline`` is for another query.
    """
    if headline is not None and headline.query != q:
        raise ValueError("the headline is for another query")
    as_of, t0 = (headline.as_of_ts if headline else time.time()), time.perf_counter()
    bucket_s = bucket_seconds(q.span_s)
    prev = q.previous()
    calls = [
        lambda: _pass_cube(store, q, bucket_s),
        lambda: _pass_latency(store, q, bucket_s),
        lambda: _pass_histogram(store, q, E.latency_ms, [E.model]),
        lambda: _pass_users(store, q),
        lambda: errors_by_type(store, q),
    ]
    if headline is None:
        calls += [lambda: _pass_totals(store, prev), lambda: _pass_latency(store, prev, None)]
    cube, joint, by_model, users, errors, *previous_passes = _parallel(*calls)
    series = _timeseries_from(q, bucket_s, cube)
    totals = {
        "requests": int(cube["requests"].sum()),
        **{k: int(cube.loc[cube["outcome"] == o, "requests"].sum()) for k, o in _COUNTED.items()},
        "prompt_tokens": int(cube["prompt_tokens"].sum()), "completion_tokens": int(cube["completion_tokens"].sum()),
    }
    hist = _with_bounds(by_model)
    if headline is not None:
        current, previous = headline.kpis, headline.previous_kpis
    else:
        current, previous = _kpis_from(q, totals, joint), _kpis_from(prev, *previous_passes)
    return MonitorSnapshot(
        query=q, kpis=current, previous_kpis=previous,
        series=series, latency=_latency_over_time_from(bucket_s, joint), latency_hist=hist, errors=errors,
        cache=_cache_from(series, hist), users=_per_user_from(users, user_limit),
        rate_limited=_rate_limited_from(users, 20), elapsed_s=time.perf_counter() - t0, as_of_ts=as_of,
    )


# ----- exports of the aggregates -----------------------------------------------------

#: Aggregate tables ``aggregate_frames`` builds, by name (``kpis`` first).
AGGREGATES: tuple[str, ...] = ("kpis", "per_user", "requests_over_time", "tokens_over_time",
                               "latency_over_time", "latency_by_model", "errors_by_type",
                               "rate_limited_by_user", "cache_by_model")


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
    return encode(frames[table], fmt)


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


# Re-exported so that callers import this one module. A re-exported constant is a copy
# of the name: tuning one (``ROLLUP_MIN_SPAN_S``, say) means setting it in its own module.
__all__ = [
    "AGGREGATES", "BUCKET_STEPS_S", "CONVERSATION_COLUMNS", "DIMENSIONS", "EXPORT_MAX_ROWS", "FORMULA_PREFIXES",
    "LATENCY_BINS_PER_E",
    "LATENCY_BIN_ERROR", "LOG_COLUMNS", "MAX_POINTS", "OUTCOMES", "RANGES", "ROLLUP_MIN_SPAN_S", "SEARCHABLE",
    "SORTABLE", "CacheSavings", "Headline", "MonitorQuery", "MonitorSnapshot", "Timeseries", "aggregate_frames",
    "bin_bounds", "bucket_seconds", "cache_savings", "conversation", "count_older_than", "encode", "errors_by_type",
    "export_aggregates", "export_frames", "export_log", "filter_options", "headline", "histogram_quantile", "kpis",
    "latency_by_model", "latency_percentiles", "min_refresh_s", "model_latency_summary", "neutralise_formulas",
    "per_user", "rate_limited_by_user", "request_detail", "request_log", "request_log_export", "retention_cutoff",
    "snapshot", "timeseries", "to_csv", "to_json",
]
