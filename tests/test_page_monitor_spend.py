"""Monitor page, spend panel: the Spend KPI against the prior period, the cache's saving,
the unpriced requests named, cost charts and the per-model table (AppTest)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from pages_helpers import app, texts
from test_auth import _team
from test_page_monitor import _make_traffic, _metric, _row, _seed


class TestSpendPanel:
    def test_spend_kpi_saving_unpriced_charts_and_table(self, tmp_path: Path) -> None:
        """Seeded costs read as pollen: spend with its change, the cache's saving, the
        unpriced served request counted apart, both cost charts, and the per-model table."""
        _seed(tmp_path, [
            _row("s1", 60, cost=Decimal("0.0125")), _row("s2", 120, cost=Decimal("0.0005"), user="erin"),
            _row("s3", 180, model="demo-deep"),  # unpriced
            _row("h1", 240, outcome="cache_hit", cost=Decimal("0.0125")),
            _row("p1", 3600 + 60, cost=Decimal("0.01")),  # the prior hour
        ])
        at = app("app_pages/monitor.py").run()
        assert not at.exception and not at.error
        assert _metric(at, "Spend (pollen)") == "0.013"
        spend = next(m for m in at.metric if m.label == "Spend (pollen)")
        assert "0.003 pollen" in str(spend.proto.delta)
        assert _metric(at, "Saved by cache (pollen)") == "0.0125"
        assert _metric(at, "Unpriced") == "1"
        assert any("1 served requests unpriced" in c for c in texts(at, "caption"))
        keys = {c.key for c in at.get("plotly_chart")}
        assert {"monitor_chart_cost", "monitor_chart_cost_users"} <= keys
        table = next(d.value for d in at.dataframe if "cache_saved" in d.value.columns)
        rows = table.set_index("model")
        assert rows.loc["demo-swift", "cost"] == "0.013 pollen" and rows.loc["demo-deep", "unpriced"] == 1
        assert rows.loc["demo-deep", "cost"] == "unpriced" and rows.loc["demo-swift", "cache_saved"] == "0.0125 pollen"
        # A model without cache hits saved nothing (not "unpriced"); without votes it says so.
        assert rows.loc["demo-deep", "cache_saved"] == "0 pollen" and rows.loc["demo-deep", "feedback"] == "no votes"
        assert rows.loc["demo-swift", "price"].endswith("pollen per 1k tokens (prompt / completion) (demo prices)")
        assert {"Spend CSV", "Spend JSON"} <= {d.label for d in at.get("download_button")}

    def test_empty_store_says_nothing_was_spent(self) -> None:
        """No requests: nothing was spent (0, not "unpriced"), no figure per request, the table says why."""
        at = app("app_pages/monitor.py").run()
        assert not at.exception
        assert (_metric(at, "Spend (pollen)"), _metric(at, "Saved by cache (pollen)")) == ("0", "0")
        assert _metric(at, "Per served request (pollen)") == "—"
        assert any(i == "No requests in this range." for i in texts(at, "info"))

    def test_demo_traffic_has_a_cost(self) -> None:
        """Answers from the demo backend (made-up prices) are priced: Spend reads pollen, the
        cache hit's saving too, and no served request is unpriced."""
        _make_traffic()
        at = app("app_pages/monitor.py").run()
        assert not at.exception
        assert Decimal(_metric(at, "Spend (pollen)")) > 0
        assert Decimal(_metric(at, "Saved by cache (pollen)")) > 0
        assert _metric(at, "Unpriced") == "0"

    def test_a_member_sees_their_own_cost_row(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Signed in as a member, the cost-by-user chart holds their own row; the team's spend stays whole."""
        monkeypatch.setenv("BLOSSOM_DASH_ADMINS", "admin@team.test")
        monkeypatch.setenv("BLOSSOM_DASH_ALLOWED_DOMAINS", "team.test")
        _seed(tmp_path, [_row("m1", 60, user="mia@team.test", cost=Decimal("0.25")),
                         _row("b1", 90, user="bob@team.test", cost=Decimal("0.5"))])
        at = _team("app_pages/monitor.py", {"is_logged_in": True, "email": "mia@team.test"})
        assert not at.exception
        assert _metric(at, "Spend (pollen)") == "0.75"
        spec = next(c.proto.spec for c in at.get("plotly_chart") if c.key == "monitor_chart_cost_users")
        assert "mia@team.test" in spec and "bob@team.test" not in spec and "Your cost" in spec
