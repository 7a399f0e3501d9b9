"""Spend on the Monitor: the cost charts, the spend analytics, the Batch cost estimate."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd

from blossom_dash.features.batch_cost import estimate_batch
from blossom_dash.features.batch_files import BatchRow
from blossom_dash.pricing import Price
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
        assert "No priced requests" in fig.layout.annotations[0].text

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

    def test_nothing_priced_is_none_not_zero(self) -> None:
        """No priced row: the total is None (unpriced), never a 0 that pretends."""
        est = estimate_batch([BatchRow(2, "hi", model="mystery")], self.PRICES.get)
        assert est.total is None and est.unpriced_rows == 1
