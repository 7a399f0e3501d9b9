"""Tests for ``analytics``: every query against a real database of hand-built events, on a
SQLite file and on PostgreSQL (the ``database_url`` fixture)."""

from __future__ import annotations

import io
import json
import math
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import event

from blossom_dash.telemetry import analytics as A
from blossom_dash.telemetry import query as Q
from blossom_dash.telemetry import requests_log as L
from blossom_dash.telemetry.analytics import MonitorQuery
from blossom_dash.telemetry.store import DAY_S, HOUR_S, ROW_COLUMNS, UsageStore

#: A whole hour (a multiple of 3600 s), so 600 s buckets start at NOW - 600·k.
NOW = 1_699_999_200.0
HOUR = 3600.0
ERR = A.LATENCY_BIN_ERROR


def row(request_id: str, ago: float, **fields: Any) -> tuple[Any, ...]:
    """One event ``ago`` seconds before NOW, in ``ROW_COLUMNS`` order."""
    values: dict[str, Any] = {
        "ts": NOW - ago, "request_id": request_id, "user": "alice", "session": "s1", "kind": "text",
        "model": "m-fast", "backend": "demo", "outcome": "ok", "error_type": "", "status_code": 200,
        "latency_ms": 100.0, "ttft_ms": 50.0, "prompt_tokens": 10, "completion_tokens": 20, "bytes": 64,
        "prompt": f"prompt of {request_id}",
    }
    values.update(fields)
    return tuple(values.get(c) for c in ROW_COLUMNS)  # cost: None unless given


def _limited(rid: str, ago: float) -> tuple[Any, ...]:
    return row(rid, ago, user="bob", model="m-slow", outcome="rate_limited", error_type="RateLimited",
               status_code=429, latency_ms=0.0, ttft_ms=None, prompt_tokens=None, completion_tokens=None)


def _hit(rid: str, ago: float, user: str, model: str) -> tuple[Any, ...]:
    return row(rid, ago, user=user, model=model, outcome="cache_hit", latency_ms=0.5, ttft_ms=0.5)


#: The last hour [NOW - 1 h, NOW): 12 events; the hour before: 2; older: 1; at NOW: 1.
EVENTS = [
    # alice: three served on m-fast, one cache hit, one upstream error on m-slow
    row("a1", 3000, latency_ms=100.0, ttft_ms=50.0),
    row("a2", 2000, latency_ms=200.0, ttft_ms=60.0),
    row("a3", 1000, latency_ms=300.0, ttft_ms=70.0),
    _hit("a4", 900, "alice", "m-fast"),
    row("a5", 800, model="m-slow", outcome="error", error_type="UpstreamError", status_code=500,
        latency_ms=50.0, ttft_ms=None, prompt_tokens=None, completion_tokens=None),
    # bob: two served streams on m-slow, two rate-limited, two cache hits (one on a model never served)
    row("b1", 700, user="bob", kind="stream", model="m-slow", latency_ms=1000.0, ttft_ms=400.0,
        prompt_tokens=5, completion_tokens=50),
    row("b2", 600, user="bob", kind="stream", model="m-slow", latency_ms=3000.0, ttft_ms=800.0,
        prompt_tokens=5, completion_tokens=50),
    _limited("b3", 500),
    _limited("b4", 400),
    _hit("b5", 300, "bob", "m-slow"),
    _hit("b6", 200, "bob", "m-none"),
    # carol: an image request that failed before any response, with a formula for a prompt
    row("c1", 100, user="carol", kind="image", backend="other", outcome="error", error_type="BackendUnavailable",
        status_code=None, latency_ms=None, ttft_ms=None, prompt_tokens=None, completion_tokens=None,
        prompt='=HYPERLINK("http://evil.example","click")'),
    # the previous hour, older history, and one event at the (exclusive) end of the range
    row("p1", 5000, prompt_tokens=1, completion_tokens=1),
    row("p2", 4000, prompt_tokens=1, completion_tokens=1),
    row("o1", 7300),
    row("z1", 0, model="m-late"),
]


@pytest.fixture
def store(database_url: str) -> UsageStore:
    """A database (SQLite, then PostgreSQL) seeded with ``EVENTS``."""
    s = UsageStore(database_url)
    s.write_many(EVENTS)
    yield s
    s.close()


def hour(**filters: Any) -> MonitorQuery:
    """The last hour before NOW, with ``filters``."""
    return MonitorQuery.last(HOUR, now=NOW, **filters)


def near(value: float | None, exact: float) -> bool:
    """``value`` is within one latency bin of ``exact``."""
    return value is not None and abs(value - exact) <= exact * ERR + 1e-9


class TestMonitorQuery:
    def test_previous_is_the_same_length_just_before(self) -> None:
        """previous() covers the equally long period that ends where this one starts, same filters."""
        q = MonitorQuery(1000.0, 1600.0, models=("m",))
        assert q.previous() == MonitorQuery(400.0, 1000.0, models=("m",))
        assert q.previous().span_s == q.span_s == 600

    def test_lists_become_tuples_and_empty_range_is_refused(self) -> None:
        """Filters given as lists are stored as tuples (hashable); an empty range raises."""
        q = MonitorQuery(0.0, 1.0, users=["a", "b"])  # type: ignore[arg-type]
        assert q.users == ("a", "b") and hash(q)
        with pytest.raises(ValueError, match="after"):
            MonitorQuery(5.0, 5.0)

    def test_last_and_describe(self) -> None:
        """last() ends at ``now``; describe() names the range in ISO UTC and only the filters set."""
        q = MonitorQuery.last(60, now=NOW, outcomes=["error"])
        assert (q.since_ts, q.until_ts) == (NOW - 60, NOW)
        assert q.describe() == {"since": "2023-11-14T21:59:00+00:00", "until": "2023-11-14T22:00:00+00:00",
                                "outcomes": ["error"]}


class TestBuckets:
    def test_every_range_stays_under_the_point_budget(self) -> None:
        """Each offered range gets a bucket that keeps its charts within MAX_POINTS."""
        assert {label: A.bucket_seconds(s) for label, s in A.RANGES.items()} == {
            "15 min": 5, "1 h": 15, "24 h": 300, "7 d": 3600, "30 d": 10_800}
        for span in (1, 59, 900, 4000, 86_400 * 3, 86_400 * 365):
            assert span / A.bucket_seconds(span) <= A.MAX_POINTS

    def test_refresh_floor_grows_with_the_range(self) -> None:
        """Short ranges refresh as asked; long ones no faster than their buckets can change."""
        assert [A.min_refresh_s(s) for s in A.RANGES.values()] == [0, 0, 10, 30, 60]


class TestHistogramQuantile:
    def test_single_bin_interpolates_linearly(self) -> None:
        """The rank's position inside its bin is interpolated like Prometheus' histogram_quantile."""
        k = 100  # bin [e^(100/16), e^(101/16))
        lo, hi = math.exp(k / 16), math.exp((k + 1) / 16)
        assert A.histogram_quantile(0.5, [k], [10]) == pytest.approx(lo + (hi - lo) * 0.5)
        assert A.histogram_quantile(1.0, [k], [10]) == pytest.approx(hi)

    def test_empty_and_sub_millisecond(self) -> None:
        """An empty histogram has no quantile; bin -1 holds [0, 1) ms."""
        assert A.histogram_quantile(0.5, [], []) is None
        assert 0 <= A.histogram_quantile(0.5, [-1], [4]) <= 1  # type: ignore[operator]

    def test_error_bound_on_many_values(self, tmp_path: Path) -> None:
        """On 5,000 log-normal latencies, p50/p95/p99 are within one bin (6.45 %) of the exact
        nearest-rank values."""
        rng = np.random.default_rng(7)
        lat = rng.lognormal(6.0, 0.8, 5000)
        s = UsageStore(f"sqlite:///{tmp_path / 'p.db'}")
        s.write_many([row(f"r{i}", 10 + i * 0.5, kind="stream", latency_ms=float(v), ttft_ms=float(v) / 3)
                      for i, v in enumerate(lat)])
        k = A.kpis(s, hour())
        for key, q in (("p50_latency_ms", 0.5), ("p95_latency_ms", 0.95), ("p99_latency_ms", 0.99)):
            exact = float(np.quantile(lat, q, method="inverted_cdf"))
            assert near(k[key], exact), (key, k[key], exact)
        assert near(k["p50_ttft_ms"], float(np.quantile(lat / 3, 0.5, method="inverted_cdf")))
        s.close()

    def test_ln_fallback_gives_the_same_bins(self, store: UsageStore, monkeypatch: pytest.MonkeyPatch) -> None:
        """Where SQLite lacks ln(), the Python function registered on the connection bins alike."""
        if not store.is_sqlite:
            pytest.skip("SQLite only: PostgreSQL always has ln()")
        built_in = A.latency_by_model(store, hour())
        monkeypatch.setattr(Q, "_SQLITE_HAS_LN", False)
        pd.testing.assert_frame_equal(A.latency_by_model(store, hour()), built_in)


class TestKpis:
    def test_exact_counts_rates_and_tokens(self, store: UsageStore) -> None:
        """Counts, rates and served tokens of the hour; the events at and before its edges are out."""
        k = A.kpis(store, hour())
        assert {key: k[key] for key in ("requests", "errors", "rate_limited", "cache_hits", "prompt_tokens",
                                        "completion_tokens", "tokens")} == {
            "requests": 12, "errors": 2, "rate_limited": 2, "cache_hits": 3, "prompt_tokens": 40,
            "completion_tokens": 160, "tokens": 200}
        assert k["error_rate"] == pytest.approx(2 / 12)
        assert k["cache_hit_rate"] == pytest.approx(3 / 10)  # rate-limited requests never reach the cache
        assert k["rpm"] == pytest.approx(12 / 60)

    def test_percentiles_of_served_requests(self, store: UsageStore) -> None:
        """Latency 100/200/300/1000/3000 ms: p50 ≈ 300, p95 = p99 ≈ 3000. TTFT p50 ≈ 400 ms,
        from the two streams alone: the text requests' stray TTFTs (50-70 ms) are not counted."""
        k = A.kpis(store, hour())
        assert near(k["p50_latency_ms"], 300) and near(k["p95_latency_ms"], 3000) and near(k["p99_latency_ms"], 3000)
        assert near(k["p50_ttft_ms"], 400)
        text_only = A.kpis(store, hour(kinds=["text"]))
        assert near(text_only["p50_latency_ms"], 200) and text_only["p50_ttft_ms"] is None

    def test_previous_period(self, store: UsageStore) -> None:
        """The hour before holds two served requests of 100 ms."""
        k = A.kpis(store, hour().previous())
        assert (k["requests"], k["errors"], k["tokens"]) == (2, 0, 4)
        assert near(k["p50_latency_ms"], 100)

    def test_empty_range(self, store: UsageStore) -> None:
        """A range without events has zeros and no percentiles."""
        k = A.kpis(store, MonitorQuery(0.0, 60.0))
        assert (k["requests"], k["error_rate"], k["cache_hit_rate"], k["p95_latency_ms"]) == (0, 0.0, 0.0, None)

    @pytest.mark.parametrize(("filters", "requests"), [
        ({"models": ["m-slow"]}, 6), ({"users": ["alice"]}, 5), ({"outcomes": ["error"]}, 2),
        ({"kinds": ["image", "stream"]}, 3), ({"backends": ["other"]}, 1),
        ({"users": ["bob"], "outcomes": ["cache_hit"]}, 2), ({"models": ["nope"]}, 0),
    ])
    def test_filters(self, store: UsageStore, filters: dict[str, list[str]], requests: int) -> None:
        """Each filter (and their combination) narrows the counted events."""
        assert A.kpis(store, hour(**filters))["requests"] == requests


class TestTimeseries:
    def test_requests_by_bucket_and_outcome(self, store: UsageStore) -> None:
        """10-minute buckets: the last one holds 1 ok, 2 rate-limited, 2 hits, 1 error; rpm = count / 10."""
        ts = A.timeseries(store, hour(), bucket_s=600)
        assert ts.bucket_s == 600 and ts.requests["requests"].sum() == 12
        last = ts.requests[ts.requests["ts"] == pd.Timestamp(NOW - 600, unit="s", tz="UTC")]
        assert dict(zip(last["outcome"], last["requests"], strict=True)) == {
            "ok": 1, "rate_limited": 2, "cache_hit": 2, "error": 1}
        assert last.set_index("outcome").loc["rate_limited", "rpm"] == pytest.approx(0.2)

    def test_tokens_by_bucket_and_model(self, store: UsageStore) -> None:
        """Served tokens only, per model and bucket (the cache hit's tokens are not counted)."""
        tok = A.timeseries(store, hour(), bucket_s=600).tokens
        assert tok.groupby("model")["tokens"].sum().to_dict() == {"m-fast": 90, "m-slow": 110}
        first = tok[tok["ts"] == pd.Timestamp(NOW - 3000, unit="s", tz="UTC")].iloc[0]
        assert (first["model"], first["tokens"], first["tpm"]) == ("m-fast", 30, 3.0)

    def test_default_bucket_follows_the_range(self, store: UsageStore) -> None:
        """Without a bucket, one hour uses 15 s buckets."""
        assert A.timeseries(store, hour()).bucket_s == 15


class TestLatency:
    def test_percentiles_per_bucket(self, store: UsageStore) -> None:
        """Bucket [NOW-20 min, NOW-10 min) served 300 and 1000 ms: p50 ≈ 300, p95 ≈ 1000;
        its TTFT is the stream's (400 ms). A bucket without streams has no TTFT."""
        lat = A.latency_percentiles(store, hour(), bucket_s=600).set_index("ts")
        b = lat.loc[pd.Timestamp(NOW - 1200, unit="s", tz="UTC")]
        assert b["served"] == 2 and near(b["p50_ms"], 300) and near(b["p95_ms"], 1000) and near(b["p99_ms"], 1000)
        assert near(b["ttft_p50_ms"], 400)
        text = lat.loc[pd.Timestamp(NOW - 3000, unit="s", tz="UTC")]
        assert text["served"] == 1 and near(text["p50_ms"], 100) and math.isnan(text["ttft_p50_ms"])
        assert lat["served"].sum() == 5

    def test_histogram_per_model(self, store: UsageStore) -> None:
        """Per model, served requests fall in bins whose bounds hold their latency."""
        hist = A.latency_by_model(store, hour())
        assert hist.groupby("model")["count"].sum().to_dict() == {"m-fast": 3, "m-slow": 2}
        assert ((hist["lo_ms"] <= 3000) & (hist["hi_ms"] > 3000)).sum() == 1
        summary = A.model_latency_summary(hist).set_index("model")
        assert near(summary.loc["m-slow", "p50_ms"], 1000) and summary.loc["m-fast", "served"] == 3


class TestErrorsCacheUsers:
    def test_errors_by_type(self, store: UsageStore) -> None:
        """Each error type with its status; a failure without a response has no status."""
        err = A.errors_by_type(store, hour())
        assert err[["error_type", "status_code", "errors"]].astype(object).where(err.notna(), None).values.tolist() \
            == [["BackendUnavailable", None, 1], ["UpstreamError", 500, 1]]

    def test_cache_savings(self, store: UsageStore) -> None:
        """Hits priced at the same model's median served latency (200 ms and 1000 ms); the
        hit on a model never served is counted as unpriced."""
        c = A.cache_savings(store, hour())
        assert (c.hits, c.looked_up, c.unpriced_hits) == (3, 10, 1)
        assert c.hit_rate == pytest.approx(0.3)
        by = c.by_model.set_index("model")
        assert near(by.loc["m-fast", "saved_ms"], 200) and near(by.loc["m-slow", "saved_ms"], 1000)
        assert abs(c.saved_ms - 1200) <= 1200 * ERR
        assert c.over_time["hits"].sum() == 3 and c.over_time["looked_up"].sum() == 10

    def test_rate_limited_by_user(self, store: UsageStore) -> None:
        """Only bob was limited: 2 of his 6 requests."""
        rl = A.rate_limited_by_user(store, hour())
        assert rl.to_dict("records") == [{"user": "bob", "rate_limited": 2, "requests": 6, "share": 2 / 6}]

    def test_per_user(self, store: UsageStore) -> None:
        """Requests, served tokens, errors, limits, hits and last seen per user, busiest first."""
        users = A.per_user(store, hour())
        assert users.drop(columns="last_seen").to_dict("records") == [
            {"user": "bob", "requests": 6, "tokens": 110, "prompt_tokens": 10, "completion_tokens": 100,
             "errors": 0, "rate_limited": 2, "rejected": 0, "cache_hits": 2},
            {"user": "alice", "requests": 5, "tokens": 90, "prompt_tokens": 30, "completion_tokens": 60,
             "errors": 1, "rate_limited": 0, "rejected": 0, "cache_hits": 1},
            {"user": "carol", "requests": 1, "tokens": 0, "prompt_tokens": 0, "completion_tokens": 0,
             "errors": 1, "rate_limited": 0, "rejected": 0, "cache_hits": 0},
        ]
        assert users["last_seen"].tolist() == [pd.Timestamp(NOW - s, unit="s", tz="UTC") for s in (200, 800, 100)]
        assert len(A.per_user(store, hour(), limit=1)) == 1


#: One hour of every way a request can end: served text requests (with the stray TTFTs
#: that history recorded for them before schema 4), served streams, a cache hit, our
#: own rate limit, the user's invalid request and a replay refusal (rejected), and
#: backend failures, one of them the backend's own 400 (an error, not a rejection).
_NONE = {"latency_ms": 0.0, "ttft_ms": None, "prompt_tokens": None, "completion_tokens": None}
OUTCOME_EVENTS = [
    row("t1", 3000, latency_ms=100.0, ttft_ms=100.0),
    row("t2", 2900, latency_ms=120.0, ttft_ms=150.0),
    row("s1", 2300, kind="stream", latency_ms=900.0, ttft_ms=200.0),
    row("s2", 2000, kind="stream", latency_ms=1100.0, ttft_ms=300.0),
    _hit("h1", 1500, "alice", "m-fast"),
    _limited("l1", 1200),
    row("r1", 1000, outcome="rejected", error_type="InvalidRequest", status_code=None, **_NONE),
    row("r2", 900, user="bob", outcome="rejected", error_type="NotRecorded", status_code=None, **_NONE),
    row("e1", 800, outcome="error", error_type="UpstreamError", status_code=502, **_NONE),
    row("e2", 700, outcome="error", error_type="InvalidRequest", status_code=400, **_NONE),
]


@pytest.fixture
def outcomes(database_url: str) -> UsageStore:
    """A database (SQLite, then PostgreSQL) seeded with ``OUTCOME_EVENTS``."""
    s = UsageStore(database_url)
    s.write_many(OUTCOME_EVENTS)
    yield s
    s.close()


class TestOutcomes:
    def test_rejected_is_counted_on_its_own(self, outcomes: UsageStore) -> None:
        """Error rate = errors / requests; rejected and rate-limited requests are neither
        errors nor requests the cache could serve."""
        k = A.kpis(outcomes, hour())
        assert (k["requests"], k["errors"], k["rejected"], k["rate_limited"], k["cache_hits"]) == (10, 2, 2, 1, 1)
        assert k["error_rate"] == pytest.approx(2 / 10)
        assert k["cache_hit_rate"] == pytest.approx(1 / 7)
        assert A.cache_savings(outcomes, hour()).looked_up == 7
        assert "rejected" in A.OUTCOMES

    def test_ttft_comes_from_streams_only(self, outcomes: UsageStore) -> None:
        """The p50 TTFT is the streams' (200 and 300 ms), not 150 ms as with the text
        requests' values; a range of text requests alone has none."""
        k = A.kpis(outcomes, hour())
        assert near(k["p50_ttft_ms"], 200) and near(k["p50_latency_ms"], 120)
        assert A.kpis(outcomes, hour(kinds=["text"]))["p50_ttft_ms"] is None
        lat = A.latency_percentiles(outcomes, hour(), bucket_s=600).set_index("ts")
        assert math.isnan(lat.loc[pd.Timestamp(NOW - 3000, unit="s", tz="UTC"), "ttft_p50_ms"])
        assert near(lat.loc[pd.Timestamp(NOW - 2400, unit="s", tz="UTC"), "ttft_p50_ms"], 200)

    def test_tables_series_and_filter(self, outcomes: UsageStore) -> None:
        """Rejected requests have their own series, per-user column and filter value, and
        stay out of the errors table."""
        series = A.timeseries(outcomes, hour(), bucket_s=3600).requests
        assert dict(zip(series["outcome"], series["requests"], strict=True)) == {
            "ok": 4, "cache_hit": 1, "rate_limited": 1, "rejected": 2, "error": 2}
        users = A.per_user(outcomes, hour()).set_index("user")
        assert users[["requests", "errors", "rejected", "rate_limited"]].to_dict("index") == {
            "alice": {"requests": 8, "errors": 2, "rejected": 1, "rate_limited": 0},
            "bob": {"requests": 2, "errors": 0, "rejected": 1, "rate_limited": 1}}
        errors = A.errors_by_type(outcomes, hour())
        assert errors[["error_type", "errors"]].values.tolist() == [["InvalidRequest", 1], ["UpstreamError", 1]]
        only = A.kpis(outcomes, hour(outcomes=["rejected"]))
        assert (only["requests"], only["rejected"], only["error_rate"]) == (2, 2, 0.0)
        assert "rejected" in A.filter_options(outcomes, NOW - HOUR, NOW)["outcomes"]
        snap = A.snapshot(outcomes, hour())
        assert snap.kpis == pytest.approx(A.kpis(outcomes, hour()))


class TestSnapshot:
    def test_matches_the_single_functions(self, store: UsageStore) -> None:
        """The shared-pass snapshot returns what each function returns on its own."""
        q = hour()
        snap = A.snapshot(store, q)
        assert snap.kpis == pytest.approx(A.kpis(store, q))
        assert snap.previous_kpis == pytest.approx(A.kpis(store, q.previous()))
        pd.testing.assert_frame_equal(snap.series.requests, A.timeseries(store, q).requests)
        pd.testing.assert_frame_equal(snap.series.tokens, A.timeseries(store, q).tokens)
        pd.testing.assert_frame_equal(snap.latency, A.latency_percentiles(store, q))
        pd.testing.assert_frame_equal(snap.latency_hist, A.latency_by_model(store, q))
        pd.testing.assert_frame_equal(snap.users, A.per_user(store, q))
        pd.testing.assert_frame_equal(snap.rate_limited, A.rate_limited_by_user(store, q))
        pd.testing.assert_frame_equal(snap.errors, A.errors_by_type(store, q))
        assert snap.cache.saved_ms == pytest.approx(A.cache_savings(store, q).saved_ms)


class TestRequestLog:
    def test_newest_first_and_paged(self, store: UsageStore) -> None:
        """12 matching events, 5 per page: page 3 holds the two oldest; a page past the end is the last."""
        first, total = A.request_log(store, hour(), page_size=5)
        assert total == 12 and first["request_id"].tolist() == ["c1", "b6", "b5", "b4", "b3"]
        third, _ = A.request_log(store, hour(), page=3, page_size=5)
        assert third["request_id"].tolist() == ["a2", "a1"]
        assert A.request_log(store, hour(), page=99, page_size=5)[0]["request_id"].tolist() == ["a2", "a1"]

    def test_sort_by_latency_with_missing_values_last(self, store: UsageStore) -> None:
        """Sorting by latency puts the slowest first and the request without a latency last."""
        desc, _ = A.request_log(store, hour(), sort_by="latency_ms", page_size=20)
        assert desc["request_id"].iloc[0] == "b2" and desc["request_id"].iloc[-1] == "c1"
        asc, _ = A.request_log(store, hour(), sort_by="latency_ms", descending=False, page_size=20)
        assert asc["latency_ms"].iloc[0] == 0.0 and asc["request_id"].iloc[-1] == "c1"

    @pytest.mark.parametrize(("search", "ids"), [
        ("EVIL.example", ["c1"]), ("upstream", ["a5"]), ("m-none", ["b6"]), ("carol", ["c1"]),
        ("b3", ["b3"]), ("%", []), ("_of", []),
    ])
    def test_search(self, store: UsageStore, search: str, ids: list[str]) -> None:
        """Search is a case-insensitive substring of id, prompt, model, user or error type;
        ``%`` and ``_`` match themselves."""
        frame, total = A.request_log(store, hour(), search=search)
        assert frame["request_id"].tolist() == ids and total == len(ids)

    def test_search_respects_filters_and_bad_sort_is_refused(self, store: UsageStore) -> None:
        """Search runs inside the filters; an unknown sort column raises."""
        assert A.request_log(store, hour(users=["alice"]), search="prompt of b")[1] == 0
        with pytest.raises(ValueError, match="cannot sort"):
            A.request_log(store, hour(), sort_by="prompt; DROP TABLE events")

    def test_detail(self, store: UsageStore) -> None:
        """Every stored field of one request, with its time in ISO UTC; None for an unknown id."""
        d = A.request_detail(store, "b2")
        assert d is not None and set(ROW_COLUMNS) <= set(d)
        assert (d["user"], d["kind"], d["latency_ms"], d["time"]) == ("bob", "stream", 3000.0,
                                                                      "2023-11-14T21:50:00+00:00")
        assert A.request_detail(store, "nope") is None


class TestFilterOptionsAndRetention:
    def test_filter_options(self, store: UsageStore) -> None:
        """Distinct values in range; without an end, the latest model counts too."""
        opts = A.filter_options(store, NOW - HOUR, NOW)
        assert opts["models"] == ["m-fast", "m-none", "m-slow"]
        assert opts["users"] == ["alice", "bob", "carol"] and opts["backends"] == ["demo", "other"]
        assert "m-late" in A.filter_options(store, NOW - HOUR)["models"]
        assert A.filter_options(store, NOW - HOUR, NOW, limit=1)["users"] == ["bob"]  # 6 requests; alice 5
        # Without an end, z1 ties alice with bob at 6: ties keep the first name.
        assert A.filter_options(store, NOW - HOUR, limit=1)["users"] == ["alice"]

    def test_count_older_than(self, store: UsageStore) -> None:
        """Three events precede the last hour (what a deletion at that cutoff would remove)."""
        assert A.count_older_than(store, NOW - HOUR) == 3
        assert A.retention_cutoff(2, now=NOW) == NOW - 2 * 86_400


# ----- the rollup path ----------------------------------------------------------------

#: The seeded month: twelve days of events ending 1234.5 s before NOW (not hour-aligned).
T0 = NOW - 12 * 86_400 - 1234.5
T1 = NOW - 1234.5


def random_events(n: int, seed: int) -> list[tuple[Any, ...]]:
    """``n`` varied events in ``[T0, T1)``: all outcomes, kinds, two backends, six users,
    missing values, sub-millisecond latencies, some exactly on hour boundaries, and
    TTFTs on every kind (the rollup path must drop the non-streams' as the scan does)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = T0 + rng.random() * (T1 - T0)
        if i % 13 == 0:
            ts = float(math.ceil(ts / HOUR) * HOUR)
        outcome = rng.choices(["ok", "cache_hit", "rate_limited", "rejected", "error"], weights=[70, 12, 8, 4, 6])[0]
        fields: dict[str, Any] = {"user": f"u{rng.randrange(6)}", "model": rng.choice(["m-a", "m-b", "m-c", "m-d"]),
                                  "kind": rng.choice(["text", "stream", "image"]),
                                  "backend": rng.choice(["demo", "demo", "other"]), "outcome": outcome}
        if outcome == "ok":
            lat = rng.choice([rng.lognormvariate(5.5, 1.0), rng.lognormvariate(5.5, 1.0), rng.random(), None])
            fields |= {"latency_ms": lat, "ttft_ms": None if lat is None or rng.random() < 0.3 else lat / 3,
                       "prompt_tokens": rng.choice([None, rng.randint(1, 500)]),
                       "completion_tokens": rng.randint(1, 900)}
        elif outcome == "error":
            fields |= {"error_type": rng.choice(["UpstreamError", "BackendUnavailable"]),
                       "status_code": rng.choice([500, 502, None]), "latency_ms": rng.choice([None, 40.0]),
                       "ttft_ms": None, "prompt_tokens": None, "completion_tokens": None}
        elif outcome == "rate_limited":
            fields |= {"error_type": "RateLimited", "status_code": 429, "latency_ms": 0.0, "ttft_ms": None,
                       "prompt_tokens": None, "completion_tokens": None}
        elif outcome == "rejected":
            fields |= {"error_type": rng.choice(["InvalidRequest", "NotRecorded"]), "status_code": None,
                       "latency_ms": 0.0, "ttft_ms": None, "prompt_tokens": None, "completion_tokens": None}
        else:
            fields |= {"latency_ms": 0.5, "ttft_ms": 0.5}
        out.append(row(f"e{seed}-{i}", NOW - ts, **fields))
    return out


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def month(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> UsageStore:
    """Six thousand events over twelve days, written in flusher-sized batches, plus a replay;
    on a SQLite file, then on PostgreSQL (one database for the module)."""
    if request.param == "sqlite":
        url = f"sqlite:///{(tmp_path_factory.mktemp('month') / 'usage.db').as_posix()}"
    else:
        url = request.getfixturevalue("postgres_server").fresh_url()
    s = UsageStore(url)
    events = random_events(6000, seed=11)
    for i in range(0, len(events), 250):
        s.write_many(events[i:i + 250])
    s.write_many(events[:500])  # a replayed journal: counted once
    yield s
    s.close()


def random_queries(n: int, seed: int) -> list[MonitorQuery]:
    """Ranges longer than a day, at random or on hour and day boundaries, with random filters."""
    rng = random.Random(seed)
    values = {"models": ["m-a", "m-b", "m-c", "m-d", "m-none"], "kinds": ["text", "stream", "image"],
              "outcomes": ["ok", "cache_hit", "rate_limited", "rejected", "error"], "backends": ["demo", "other"],
              "users": ["u0", "u1", "u2", "u3", "u4", "u5"]}
    out = [MonitorQuery(T0 - 86_400, T1 + 86_400), MonitorQuery(NOW - 7 * 86_400, NOW),
           MonitorQuery(NOW - 30 * 86_400, NOW)]
    for i in range(n):
        span = rng.uniform(86_401, 11 * 86_400)
        since = rng.uniform(T0 - 86_400, T1 - span / 2)
        if i % 4 == 1:
            since = math.floor(since / HOUR) * HOUR
        elif i % 4 == 2:
            since, span = math.floor(since / 86_400) * 86_400, round(span / 86_400) * 86_400
        filters = {name: tuple(rng.sample(vals, rng.randint(1, len(vals) - 1)))
                   for name, vals in values.items() if rng.random() < (0.15 if name == "users" else 0.3)}
        out.append(MonitorQuery(since, since + span, **filters))
    return out


QUERIES = random_queries(14, seed=5)
#: How many of ``QUERIES`` the rollup-equals-scan test runs on PostgreSQL (~0.9 s each).
PG_QUERIES = 8


def everything(store: UsageStore, q: MonitorQuery) -> dict[str, Any]:
    """What every public aggregate returns for ``q`` (frames, dicts, numbers)."""
    ts = A.timeseries(store, q)
    cache = A.cache_savings(store, q)
    snap = A.snapshot(store, q)
    out: dict[str, Any] = {
        "kpis": A.kpis(store, q), "requests": ts.requests, "tokens": ts.tokens, "by_model": ts.by_model,
        "latency": A.latency_percentiles(store, q), "latency_1d": A.latency_percentiles(store, q, bucket_s=86_400),
        "latency_2h": A.latency_percentiles(store, q, bucket_s=7200),
        "requests_1d": A.timeseries(store, q, bucket_s=86_400).requests,
        "hist": A.latency_by_model(store, q), "errors": A.errors_by_type(store, q),
        "cache": (cache.hits, cache.looked_up, cache.hit_rate, cache.saved_ms, cache.unpriced_hits),
        "cache_by_model": cache.by_model, "cache_over_time": cache.over_time,
        "users": A.per_user(store, q), "limited": A.rate_limited_by_user(store, q),
        "log_total": A.request_log(store, q, page_size=10)[1],
        "log_last_page": A.request_log(store, q, page=10_000, page_size=10)[0],
        "snap_kpis": snap.kpis, "snap_previous": snap.previous_kpis, "snap_latency": snap.latency,
        "snap_users": snap.users,
    }
    for term in ("M-B", "u3", "upstream", "e11-59", "limited", "nothing-matches"):
        out[f"search {term}"], out[f"search total {term}"] = A.request_log(store, q, search=term, page_size=20)
    return out


def scan_only(monkeypatch: pytest.MonkeyPatch, store: UsageStore) -> None:
    """Send every read to the events, as a short range's are: no rollups, and searches
    with LIKE on every column."""
    monkeypatch.setattr(Q, "ROLLUP_MIN_SPAN_S", math.inf)
    monkeypatch.setattr(L, "_SEARCH_VIA_ROLLUP", {})
    assert Q._is_raw(Q._plan(store, MonitorQuery(T0, T1), (HOUR_S,)))  # the patch reached the planner


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in a:
        if isinstance(a[key], pd.DataFrame):
            pd.testing.assert_frame_equal(a[key], b[key], obj=key)
        else:
            assert a[key] == b[key], key


class TestRollupPath:
    def test_plan_partitions_the_range(self) -> None:
        """Whole days, then whole hours, then raw edges cover a range exactly, in order."""
        since, until = 10 * 86_400 - 5000.5, 13 * 86_400 + 7300.25
        pieces = Q._split(since, until, (DAY_S, HOUR_S))
        assert [p.unit_s for p in pieces] == [0, 3600, 86_400, 3600, 0]
        assert pieces[0].since == since and pieces[-1].until == until
        assert all(a.until == b.since for a, b in zip(pieces, pieces[1:], strict=False))
        assert all(p.since % p.unit_s == 0 and p.until % p.unit_s == 0 for p in pieces if p.unit_s)
        assert Q._split(100.0, 3000.0, (HOUR_S,)) == [Q._Piece(0, 100.0, 3000.0)]
        open_end = Q._split(5000.0, math.inf, (HOUR_S,))
        assert open_end == [Q._Piece(0, 5000.0, 7200), Q._Piece(3600, 7200, math.inf)]

    def test_long_ranges_read_the_rollups(self, month: UsageStore) -> None:
        """A 7-day range reads rollup tables; 24 h and a user-filtered cube read events."""
        seen: list[str] = []

        def spy(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            seen.append(statement)

        event.listen(month.engine, "before_cursor_execute", spy)
        try:
            A.snapshot(month, MonitorQuery(NOW - 7 * 86_400, NOW))
            assert all(any(t in sql for sql in seen) for t in ("rollup_hour", "rollup_latency_hour",
                                                               "rollup_latency_day", "rollup_user_day"))
            seen.clear()
            A.snapshot(month, MonitorQuery(NOW - 86_400, NOW))
            assert seen and not any("rollup_" in sql for sql in seen)
            seen.clear()
            A.timeseries(month, MonitorQuery(NOW - 7 * 86_400, NOW, users=("u1",)))
            assert seen and not any("rollup_" in sql for sql in seen)
        finally:
            event.remove(month.engine, "before_cursor_execute", spy)

    @pytest.mark.parametrize("q", QUERIES, ids=[f"q{i}" for i in range(len(QUERIES))])
    def test_rollup_path_equals_the_scan(self, month: UsageStore, q: MonitorQuery,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        """For random ranges and filters, every aggregate read from the rollups equals the
        same aggregate computed from the events alone."""
        if not month.is_sqlite and QUERIES.index(q) >= PG_QUERIES:
            pytest.skip(f"PostgreSQL runs the first {PG_QUERIES} queries (the same SQL; SQLite runs all)")
        rolled = everything(month, q)
        scan_only(monkeypatch, month)
        assert_same(rolled, everything(month, q))

    def test_filter_options_equal_the_scan(self, month: UsageStore, monkeypatch: pytest.MonkeyPatch) -> None:
        """Filter lists of long ranges (with and without an end, with a limit) equal the scan's."""
        cases = [(T0 - 100, None, 200), (T0 + 4321.5, T1 - 999, 200), (NOW - 3 * 86_400, NOW, 2),
                 (T0 + 86_400 * 2.5, None, 3)]
        rolled = [A.filter_options(month, since, until, limit) for since, until, limit in cases]
        scan_only(monkeypatch, month)
        assert rolled == [A.filter_options(month, since, until, limit) for since, until, limit in cases]
        assert rolled[0]["users"] == [f"u{i}" for i in range(6)] and len(rolled[2]["models"]) == 2

    def test_rollups_follow_retention(self, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """After deleting old events mid-hour, long ranges still equal the scan."""
        s = UsageStore(database_url)
        s.write_many(random_events(1500, seed=12))
        s.delete_older_than(T0 + 3 * 86_400 + 1800.5)
        q = MonitorQuery(T0, T1)
        rolled = everything(s, q)
        scan_only(monkeypatch, s)
        assert_same(rolled, everything(s, q))
        s.close()

    def test_user_filter_reads_the_user_index(self, month: UsageStore) -> None:
        """A user filter on a long range reads events through the (user, ts) index (SQLite's
        plan; PostgreSQL's planner picks by its statistics)."""
        if not month.is_sqlite:
            pytest.skip("SQLite's query plan")
        with month.engine.connect() as conn:
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT count(*) FROM events WHERE ts >= ? AND ts < ? AND user IN ('u1', 'u2')",
                (NOW - 30 * 86_400, NOW)).all()
        assert "ix_events_user_ts" in str(plan)


class TestExport:
    def test_neutralise_formulas(self) -> None:
        """Text starting with = + - @ tab or CR gets a leading quote; other text and numbers do not."""
        df = pd.DataFrame({"t": ["=1+2", "+x", "-x", "@x", "\tx", "\rx", "a=b", None],
                           "n": [-5, 1, 2, 3, 4, 5, 6, 7], "m": ["-1", 2, None, "ok", "=x", 0, "y", "z"]})
        out = A.neutralise_formulas(df)
        assert out["t"].tolist()[:7] == ["'=1+2", "'+x", "'-x", "'@x", "'\tx", "'\rx", "a=b"]
        assert pd.isna(out["t"].iloc[7]) and out["n"].tolist() == df["n"].tolist()
        assert out["m"].tolist() == ["'-1", 2, None, "ok", "'=x", 0, "y", "z"]
        assert df["t"].iloc[0] == "=1+2"  # the input is not modified

    def test_log_csv_is_neutralised_and_json_is_faithful(self, store: UsageStore) -> None:
        """The CSV log cannot run carol's formula; the JSON keeps the prompt as stored."""
        csv = A.export_log(store, hour(), fmt="csv").decode()
        frame = pd.read_csv(io.StringIO(csv))
        assert len(frame) == 12 and list(frame.columns) == list(ROW_COLUMNS)
        assert frame.loc[frame["request_id"] == "c1", "prompt"].iloc[0].startswith("'=HYPERLINK")
        records = json.loads(A.export_log(store, hour(), fmt="json"))
        assert records[0]["request_id"] == "c1" and records[0]["prompt"].startswith("=HYPERLINK")
        assert records[0]["ts"] == "2023-11-14T21:58:20.000000+00:00" and records[0]["status_code"] is None

    def test_search_applies_to_the_export(self, store: UsageStore) -> None:
        """Exporting with a search keeps only the matching events."""
        assert [r["request_id"] for r in json.loads(A.export_log(store, hour(), "bob", "json"))] == \
            ["b6", "b5", "b4", "b3", "b2", "b1"]
        with pytest.raises(ValueError, match="format"):
            A.export_log(store, hour(), fmt="xml")

    def test_cost_is_exported_exactly(self, database_url: str) -> None:
        """The log's cost column: plain exact decimals in CSV and JSON, empty/null when unpriced."""
        s = UsageStore(database_url)
        s.write_many([row("p1", 100, cost=Decimal("0.000138000000")), row("p2", 90),
                      row("p3", 80, outcome="cache_hit", cost=Decimal("12.5"))])
        csv = A.export_log(s, hour(), fmt="csv").decode()
        records = {r["request_id"]: r for r in json.loads(A.export_log(s, hour(), fmt="json"))}
        s.close()
        frame = pd.read_csv(io.StringIO(csv), dtype={"cost": str}).set_index("request_id")
        assert frame.loc["p1", "cost"] == "0.000138" and pd.isna(frame.loc["p2", "cost"])
        assert frame.loc["p3", "cost"] == "12.5"
        assert records["p1"]["cost"] == "0.000138" and records["p2"]["cost"] is None

    def test_export_frames_and_aggregates(self, store: UsageStore) -> None:
        """All aggregate tables, KPIs for both periods, one JSON document with the query."""
        frames = A.export_frames(store, hour(), max_rows=3)
        assert list(frames) == ["log", *A.AGGREGATES] and frames["log"]["request_id"].tolist() == ["c1", "b6", "b5"]
        assert frames["kpis"]["period"].tolist() == ["range", "previous"]
        assert frames["kpis"]["requests"].tolist() == [12, 2]
        doc = json.loads(A.export_aggregates(A.snapshot(store, hour()), "json"))
        assert doc["query"]["since"] == "2023-11-14T21:00:00+00:00" and set(A.AGGREGATES) <= set(doc)
        assert doc["per_user"][0]["user"] == "bob"
        users = pd.read_csv(io.BytesIO(A.export_aggregates(A.snapshot(store, hour()), "csv", "per_user")))
        assert users["requests"].tolist() == [6, 5, 1]


class TestPostgresqlDialect:
    """What differs on PostgreSQL, checked on the compiled SQL (the tests above run the same
    queries on a real PostgreSQL too, through the ``database_url`` fixture)."""

    class _PgStore:
        is_sqlite = False

    def _sql(self, stmt: Any) -> str:
        from sqlalchemy.dialects import postgresql

        return str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))

    def test_buckets_and_bins_floor_instead_of_rounding(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """PostgreSQL's CAST(double AS integer) rounds, so buckets and latency bins use floor()."""
        seen: list[str] = []
        monkeypatch.setattr(Q, "_rows", lambda store, stmt: seen.append(self._sql(stmt)) or [])
        A.timeseries(self._PgStore(), hour(), bucket_s=600)  # type: ignore[arg-type]
        A.latency_by_model(self._PgStore(), hour())  # type: ignore[arg-type]
        assert "CAST(floor(events.ts / CAST(600.0 AS FLOAT)) AS INTEGER) AS bucket" in seen[0]
        assert "ELSE CAST(floor(ln(events.latency_ms) * 16) AS INTEGER) END" in seen[1]

    def test_search_uses_ilike(self) -> None:
        """Search is case-insensitive on PostgreSQL too (ILIKE), with % and _ escaped."""
        sql = self._sql(L._log_select(self._PgStore(), hour(), "50%_off", ["request_id"]))  # type: ignore[arg-type]
        assert sql.count("ILIKE") == len(A.SEARCHABLE) and "'50/%%/_off'" in sql  # %% is the driver's %
