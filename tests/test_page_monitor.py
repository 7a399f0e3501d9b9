"""Monitor page: KPIs and charts over the recorded requests, window and pause controls."""

from __future__ import annotations

from pages_helpers import app, queue_fault, texts


def _metric(at: object, label: str) -> str:
    return next(str(m.value) for m in at.metric if m.label == label)


def _make_traffic() -> None:
    """Two answers, one cache hit and one backend error, made through the Playground."""
    at = app("pages/playground.py").run()
    for prompt in ("first question", "second question"):
        at.chat_input(key="playground_prompt").set_value(prompt).run()
    at.button(key="playground_clear").click().run()
    at.chat_input(key="playground_prompt").set_value("first question").run()  # cache hit
    queue_fault(at, "500", count=5)
    at.chat_input(key="playground_prompt").set_value("third question").run()
    assert not at.exception


class TestMonitor:
    def test_empty_store_reads_as_empty(self) -> None:
        """With no requests, KPIs show zero and the charts say there is no data."""
        at = app("pages/monitor.py").run()
        assert not at.exception
        assert _metric(at, "Requests") == "0"
        assert _metric(at, "p95 latency") == "—"
        assert len(at.get("plotly_chart")) == 4

    def test_requests_show_up_in_kpis_and_charts(self) -> None:
        """Requests made in the Playground appear: counts, error rate, hit rate, tokens."""
        _make_traffic()
        at = app("pages/monitor.py").run()
        assert not at.exception
        assert _metric(at, "Requests") == "4"
        assert _metric(at, "Error rate") == "25.0%"
        assert _metric(at, "Cache hit rate") == "25%"
        assert int(_metric(at, "Tokens").replace(",", "")) > 0
        assert _metric(at, "p50 latency").endswith(("ms", " s"))
        assert any("UpstreamError × 1" in c for c in texts(at, "caption"))
        assert len(at.get("plotly_chart")) == 4

    def test_window_and_pause_controls(self) -> None:
        """Changing the window and pausing keep the page working and say so."""
        _make_traffic()
        at = app("pages/monitor.py").run()
        at.toggle(key="monitor_paused").set_value(True).run()
        assert any("paused" in c for c in texts(at, "caption"))
        at.segmented_control(key="monitor_window").set_value("15 min").run()
        assert not at.exception
        assert _metric(at, "Requests") == "4"
        assert any("Last 15 min" in c for c in texts(at, "caption"))
