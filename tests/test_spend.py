"""Spend on the Monitor: the cost charts, the spend analytics, the Batch cost estimate."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import event as sa_event

from blossom_dash.features.batch_cost import estimate_batch
from blossom_dash.features.batch_files import BatchRow
from blossom_dash.gateway import Caller
from blossom_dash.pricing import Price
from blossom_dash.service import BlossomService
from blossom_dash.settings import Settings
from blossom_dash.telemetry import query as Q
from blossom_dash.telemetry import spend as S
from blossom_dash.telemetry.query import MonitorQuery
from blossom_dash.telemetry.store import ROW_COLUMNS, UsageStore
from blossom_dash.ui import charts


def _ts(*minutes: int) -> pd.Series:
    return pd.to_datetime([1_700_000_000 + 60 * m for m in minutes], unit="s", utc=True)


class TestCostCharts:
    def test_cost_by_model_stacks_one_trace_per_model(self) -> None:
        """One bar trace per model, heights in pollen, priced counts in the hover."""
        frame = pd.DataFrame({"ts": _ts(0, 0, 1), "model": ["a", "b", "a"],
                              "cost": [Decimal("0.001"), Decimal("0.25"), Decimal("0.002")], "priced": [1, 5, 2]})
        fig = charts.cost_by_model(frame, bucket_s=60)
        assert [t.name for t in fig.data] == ["a", "b"]
        assert list(fig.data[0].y) == [0.001, 0.002]
        assert list(fig.data[1].customdata) == [5]
        assert fig.layout.uirevision == "monitor:cost"

    def test_cost_by_model_without_priced_requests_says_so(self) -> None:
        """No priced request: an empty chart that says so, never a zero bar that pretends."""
        frame = pd.DataFrame({"ts": _ts(0), "model": ["a"], "cost": [None], "priced": [0]})
        fig = charts.cost_by_model(frame, bucket_s=60)
        assert not fig.data
        assert "No requests with a price" in fig.layout.annotations[0].text

    def test_cost_by_user_biggest_spender_on_top(self) -> None:
        """Bars sorted so the biggest spender is drawn at the top (plotly draws bottom-up)."""
        frame = pd.DataFrame({"user": ["ann", "bob", "cy"], "cost": [Decimal("1"), Decimal("3"), None],
                              "priced": [1, 2, 0], "unpriced": [0, 0, 4]})
        fig = charts.cost_by_user(frame)
        assert list(fig.data[0].y) == ["cy", "ann", "bob"]
        assert list(fig.data[0].x) == [0.0, 1.0, 3.0]


class TestBatchEstimate:
    PRICES = {"cheap": Price((("completionTextTokens", Decimal("0.000002")),
                              ("promptTextTokens", Decimal("0.000001"))))}

    def test_sums_priced_rows_exactly_and_counts_unpriced(self) -> None:
        """Each priced row at prompt length / 4 and its full max_tokens; unpriced rows counted apart."""
        rows = [BatchRow(2, "x" * 40, model="cheap", max_tokens=100), BatchRow(3, "y" * 8),
                BatchRow(4, "z", model="mystery"), BatchRow(5, "bad", errors=("no",))]
        est = estimate_batch(rows, self.PRICES.get, model="cheap", max_tokens=50)
        # row 2: 10 prompt + 100 completion; row 3: 2 prompt + 50 completion (the defaults)
        assert est.total == Decimal("0.000010") + Decimal("0.000200") + Decimal("0.000002") + Decimal("0.000100")
        assert (est.priced_rows, est.unpriced_rows, est.unpriced_models) == (2, 1, ("mystery",))
        assert (est.prompt_tokens, est.completion_tokens) == (13, 200)
        assert "estimate" in est.method and "max_tokens" in est.method

    def test_demo_prices_are_named(self) -> None:
        """An estimate at the demo backend's made-up prices says so."""
        demo = {"cheap": self.PRICES["cheap"].with_source("demo")}
        est = estimate_batch([BatchRow(2, "hi", model="cheap")], demo.get)
        assert est.sources == ("demo",) and "demo backend's made-up prices" in est.method
        assert "current prices" in estimate_batch([BatchRow(2, "hi", model="cheap")], self.PRICES.get).method

    def test_typical_answer_length_from_history(self) -> None:
        """With a model's mean answer length, the typical figure prices answers at it
        (capped by max_tokens); rows of models without history stay at max_tokens."""
        rows = [BatchRow(2, "x" * 40, model="cheap", max_tokens=100), BatchRow(3, "y" * 8, model="other")]
        prices = {**self.PRICES, "other": self.PRICES["cheap"]}
        est = estimate_batch(rows, prices.get, max_tokens=50, typical={"cheap": (19.2, 40)})
        # row 2 at 20 completion tokens (10 prompt); row 3 without history at its 50
        assert est.typical_total == Decimal("0.000010") + Decimal("0.000040") + Decimal("0.000002") + \
            Decimal("0.000100")
        assert est.typical_rows == 1 and est.total > est.typical_total
        assert estimate_batch(rows, prices.get).typical_total is None

    def test_nothing_priced_is_none_not_zero(self) -> None:
        """No priced row: the total is None (unpriced), never a 0 that pretends."""
        est = estimate_batch([BatchRow(2, "hi", model="mystery")], self.PRICES.get)
        assert est.total is None and est.unpriced_rows == 1


# ----- the spend analytics -----------------------------------------------------------------

NOW = 1_699_999_200.0  # a whole hour
HOUR = 3600.0


def event(rid: str, ago: float, **fields: Any) -> tuple[Any, ...]:
    """One event ``ago`` seconds before NOW, in ``ROW_COLUMNS`` order (cost None by default)."""
    values: dict[str, Any] = {
        "ts": NOW - ago, "request_id": rid, "user": "alice", "session": "s1", "kind": "text", "model": "m-a",
        "backend": "demo", "outcome": "ok", "error_type": "", "status_code": 200, "latency_ms": 100.0,
        "ttft_ms": None, "prompt_tokens": 10, "completion_tokens": 20, "bytes": 64, "prompt": "p", "cost": None,
    }
    values.update(fields)
    return tuple(values.get(c) for c in ROW_COLUMNS)  # context, params, answer: None unless given


EVENTS = [
    event("a1", 3000, cost=Decimal("0.000000000001")),
    event("a2", 2000, cost=Decimal("0.1"), latency_ms=300.0),
    event("a3", 1000, model="m-free", cost=Decimal(0)),
    event("a4", 900, model="m-none"),  # served, unpriced
    event("a5", 800, outcome="cache_hit", cost=Decimal("0.05"), latency_ms=0.5),
    event("a6", 700, outcome="error", error_type="UpstreamError", status_code=500, prompt_tokens=None,
          completion_tokens=None),
    event("b1", 600, user="bob", model="m-b", cost=Decimal("1.25")),
    event("b2", 500, user="bob", model="m-none"),
    event("p1", 5000, cost=Decimal("0.3")),  # the previous hour
]


@pytest.fixture
def store(database_url: str) -> Iterator[UsageStore]:
    s = UsageStore(database_url)
    s.write_many(EVENTS)
    yield s
    s.close()


def last_hour(**filters: Any) -> MonitorQuery:
    return MonitorQuery.last(HOUR, now=NOW, **filters)


class TestSpend:
    def test_totals_are_exact_and_unpriced_is_counted(self, store: UsageStore) -> None:
        """Spend sums served costs exactly (1e-12 survives); unpriced served requests are
        counted, not summed; the cache's saving is the hits' cost; the prior hour apart."""
        s = S.spend(store, last_hour())
        assert s.spend == S.Total(Decimal("1.350000000001"), priced=4, unpriced=2)
        assert s.cache_saved == S.Total(Decimal("0.05"), priced=1, unpriced=0)
        assert s.previous == S.Total(Decimal("0.3"), priced=1, unpriced=0)

    def test_by_user_and_by_model(self, store: UsageStore) -> None:
        """Per user: served requests, cost, priced and unpriced; per model: every outcome's
        requests, error rate, served tokens, p50 and the cost, unpriced models as None."""
        s = S.spend(store, last_hour())
        users = s.by_user.set_index("user")
        assert users.loc["bob", "cost"] == Decimal("1.25") and users.loc["bob", "unpriced"] == 1
        assert users.loc["alice", "cost"] == Decimal("0.100000000001") and users.loc["alice", "priced"] == 3
        models = s.by_model.set_index("model")
        assert list(s.by_model["model"])[0] == "m-b"  # dearest first
        assert models.loc["m-none", "cost"] is None and models.loc["m-none", "unpriced"] == 2
        assert models.loc["m-free", "cost"] == Decimal(0)  # free is 0, unpriced is None
        assert models.loc["m-a", "requests"] == 4 and models.loc["m-a", "errors"] == 1
        assert models.loc["m-a", "error_rate"] == 0.25 and models.loc["m-a", "tokens"] == 60
        assert models.loc["m-a", "cache_saved"] == Decimal("0.05")
        assert 90 < models.loc["m-a", "p50_ms"] < 320

    def test_over_time_and_members_see_their_own_row(self, store: UsageStore) -> None:
        """Cost per bucket and model of served requests; ``only_user`` keeps one user's row."""
        s = S.spend(store, last_hour(), bucket_s=600)
        assert sum(c for c in s.over_time["cost"] if c is not None) == Decimal("1.350000000001")
        assert s.over_time["unpriced"].sum() == 2
        mine = s.only_user("bob")
        assert list(mine.by_user["user"]) == ["bob"] and mine.spend == s.spend

    def test_empty_range(self, store: UsageStore) -> None:
        """No events: every total is unpriced (None), never 0; empty frames."""
        s = S.spend(store, MonitorQuery(NOW + 10 * HOUR, NOW + 11 * HOUR))
        assert s.spend == S.Total(None, 0, 0) and s.by_model.empty and s.by_user.empty and s.over_time.empty


def random_costed(n: int, seed: int, since: float, until: float) -> list[tuple[Any, ...]]:
    """``n`` events over ``[since, until)``: every outcome, four models, one unpriced, exact costs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        outcome = rng.choices(["ok", "cache_hit", "error", "rate_limited"], weights=[70, 15, 10, 5])[0]
        model = rng.choice(["m-a", "m-b", "m-c", "m-none"])
        cost = None if model == "m-none" or outcome in ("error", "rate_limited") else \
            Decimal(rng.randint(0, 10**9)) * Decimal("1e-12")
        out.append(event(f"r{seed}-{i}", NOW - (since + rng.random() * (until - since)), outcome=outcome,
                         model=model, user=f"u{rng.randrange(5)}", cost=cost, latency_ms=rng.uniform(1, 5000)))
    return out


class TestTypicalCompletion:
    def test_mean_of_served_text_answers_and_rollups_equal_the_scan(self, database_url: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """Mean completion tokens of served text and stream answers per model over 7 days,
        the same from the rollups as from the events."""
        s = UsageStore(database_url)
        s.write_many([event("t1", 3 * 86_400 + 17.5, completion_tokens=30),
                      event("t2", 600, kind="stream", completion_tokens=50),
                      event("t3", 500, outcome="error", completion_tokens=None),
                      event("t4", 400, kind="image", model="m-img", completion_tokens=None),
                      event("t5", 8 * 86_400, completion_tokens=999)])  # too old
        rolled = S.typical_completion_tokens(s, now=NOW)
        assert rolled == {"m-a": (40.0, 2)}
        monkeypatch.setattr(Q, "ROLLUP_MIN_SPAN_S", math.inf)
        assert S.typical_completion_tokens(s, now=NOW) == rolled
        s.close()


class TestSpendRollups:
    def test_rollups_equal_the_scan(self, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Long ranges read the rollups (cost, priced) and equal the scan exactly, with and
        without filters, on SQLite and PostgreSQL."""
        s = UsageStore(database_url)
        s.write_many(random_costed(3000, 3, NOW - 10 * 86_400 - 1234.5, NOW - 77.25))
        queries = [MonitorQuery(NOW - 11 * 86_400, NOW), MonitorQuery(NOW - 7 * 86_400 - 999.5, NOW - 3333.25),
                   MonitorQuery(NOW - 5 * 86_400, NOW, models=("m-a", "m-none")),
                   MonitorQuery(NOW - 4 * 86_400, NOW - 86_400, users=("u1", "u3"), outcomes=("ok", "cache_hit"))]
        seen: list[str] = []
        listen = sa_event.listens_for(s.engine, "before_cursor_execute")
        listen(lambda _c, _k, sql, *_a: seen.append(sql))
        rolled = [S.spend(s, q) for q in queries]
        assert any("rollup_hour" in sql for sql in seen) and any("rollup_user_day" in sql for sql in seen)
        monkeypatch.setattr(Q, "ROLLUP_MIN_SPAN_S", math.inf)
        scanned = [S.spend(s, q) for q in queries]
        for a, b in zip(rolled, scanned, strict=True):
            assert (a.spend, a.previous, a.cache_saved) == (b.spend, b.previous, b.cache_saved)
            for name in ("over_time", "by_user"):
                pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), obj=name)
            cols = [c for c in S.MODEL_COLUMNS if c != "p50_ms"]  # p50: hourly vs raw bins agree anyway
            pd.testing.assert_frame_equal(a.by_model[cols], b.by_model[cols], obj="by_model")
        assert rolled[0].spend.priced > 1000 and rolled[0].spend.unpriced > 0
        s.close()


class TestServiceSpend:
    def test_a_member_sees_their_own_cost_row_the_admin_everyone(self, tmp_path: Path) -> None:
        """``monitor("spend")``: the team's totals for all; per user, a member's own row
        (shared or not), an admin's every row."""
        with BlossomService(Settings(backend="demo", demo_latency=False, data_dir=tmp_path)) as svc:
            svc.store.write_many([event("x1", 10, user="mo", cost=Decimal("0.2"), ts=time.time() - 10),
                                  event("x2", 10, user="ada", cost=Decimal("0.3"), ts=time.time() - 20)])
            q = MonitorQuery.last(3600)
            for every_s in (None, 5.0):
                mine = svc.monitor("spend", q, caller=Caller("mo", role="member"), every_s=every_s)
                everyone = svc.monitor("spend", q, caller=Caller("ada", role="admin"), every_s=every_s)
                assert list(mine.by_user["user"]) == ["mo"] and mine.spend.cost == Decimal("0.5")
                assert list(everyone.by_user["user"]) == ["ada", "mo"]

    def test_estimate_batch_through_the_service(self, tmp_path: Path) -> None:
        """The facade estimates a batch at the catalog's prices; without them, rows are unpriced."""
        with BlossomService(Settings(backend="demo", demo_latency=False, data_dir=tmp_path)) as svc:
            est = svc.estimate_batch([BatchRow(2, "hello there")], model=svc.list_models("text")[0], max_tokens=64)
            assert est.priced_rows == 1 and est.total is not None and est.total > 0 and est.sources == ("demo",)
            assert svc.estimate_batch([BatchRow(2, "hi", model="no-such-model")]).unpriced_rows == 1


class TestSpendExport:
    def test_exports_keep_costs_exact(self, store: UsageStore) -> None:
        """JSON and CSV carry costs as exact decimal strings (1e-12 survives), unpriced as empty/null."""
        s = S.spend(store, last_hour())
        data = json.loads(S.export_spend(s, "json"))
        assert set(data) == {"query", *S.SPEND_TABLES}
        kpis = {r["figure"]: r for r in data["spend_kpis"]}
        assert kpis["spend"]["cost"] == "1.350000000001" and kpis["spend"]["unpriced"] == 2
        models = {r["model"]: r for r in data["cost_by_model"]}
        assert models["m-none"]["cost"] is None and models["m-free"]["cost"] == "0.000000000000"
        csv_text = S.export_spend(s, "csv", "cost_by_user").decode()
        assert "0.100000000001" in csv_text and "1.250000000000" in csv_text


class TestFeedbackLabels:
    def test_compare_votes_per_model_and_none_when_unreadable(self) -> None:
        """The Compare leaderboard as the per-model feedback; an unreadable board gives none."""
        from blossom_dash.errors import StorageUnavailable
        from blossom_dash.ui import spend as view

        class Board:
            def leaderboard(self, kind: str) -> pd.DataFrame:
                if kind == "image":
                    raise StorageUnavailable("the database could not be read")
                return pd.DataFrame({"model": ["m-a", "m-b"], "votes": [10, 0], "wins": [6, 0]})

        assert view.feedback_labels(Board()) == {"m-a": "60% won (6 of 10 votes)"}


class TestFormatPollen:
    def test_sensible_precision_never_exponents(self) -> None:
        """Four decimals from 1 up, whole pollen from 10,000, four significant digits below 1."""
        from blossom_dash.ui.spend import format_pollen

        assert format_pollen(Decimal("1.23456")) == "1.2346 pollen"
        assert format_pollen(Decimal("12345.6")) == "12,346 pollen"
        assert format_pollen(Decimal("0.000136")) == "0.000136 pollen"
        assert format_pollen(Decimal("1.000000000001E-10")) == "0.0000000001 pollen"
        assert format_pollen(Decimal(0)) == "0 pollen" and format_pollen(None) == "unpriced"


class TestSpendFigures:
    def test_built_once_per_shared_result(self, store: UsageStore) -> None:
        """One shared spend result, one set of figures for every viewer; a new result, new figures."""
        from blossom_dash.ui.spend import spend_figures

        s = S.spend(store, last_hour())
        first = spend_figures(s)
        assert spend_figures(s) is first and set(first) == {"cost", "cost_users"}
        assert spend_figures(s.only_user("bob"), own_only=True)["cost_users"].layout.title.text.startswith("Your")
        assert spend_figures(S.spend(store, last_hour())) is not first
