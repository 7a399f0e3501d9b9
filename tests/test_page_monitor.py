"""Monitor page: KPIs and charts over the recorded requests, range, filters, log, export, retention."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pages_helpers import app, queue_fault, texts
from streamlit.proto.Metric_pb2 import Metric
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from blossom_dash.telemetry.store import ROW_COLUMNS, UsageStore


def _metric(at: AppTest, label: str) -> str:
    return next(str(m.value) for m in at.metric if m.label == label)


def _make_traffic() -> None:
    """Two answers, one cache hit and one backend error, made through the Playground."""
    at = app("app_pages/playground.py").run()
    for prompt in ("first question", "second question"):
        at.chat_input(key="playground_prompt").set_value(prompt).run()
    at.button(key="playground_clear").click().run()
    at.chat_input(key="playground_prompt").set_value("first question").run()  # cache hit
    queue_fault(at, "500", count=5)
    at.chat_input(key="playground_prompt").set_value("third question").run()
    assert not at.exception


def _row(request_id: str, ago_s: float, **fields: Any) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "ts": time.time() - ago_s, "request_id": request_id, "user": "dana", "session": "s", "kind": "text",
        "model": "demo-swift", "backend": "demo", "outcome": "ok", "error_type": "", "status_code": 200,
        "latency_ms": 120.0, "ttft_ms": 40.0, "prompt_tokens": 3, "completion_tokens": 9, "bytes": 40,
        "prompt": f"question {request_id}",
    }
    values.update(fields)
    return tuple(values.get(c) for c in ROW_COLUMNS)  # cost: None unless given


def _seed(tmp_path: Path, rows: list[tuple[Any, ...]]) -> None:
    """Write events straight into the store the page's service opens (BLOSSOM_DASH_DATA_DIR)."""
    store = UsageStore(f"sqlite:///{(tmp_path / 'data' / 'usage.db').as_posix()}")
    store.write_many(rows)
    store.close()


def _log_table(at: AppTest) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "request_id" in d.value.columns)


def _detail_fields(at: AppTest) -> dict[str, str]:
    """The request detail's labelled fields (its Field/Value table)."""
    table = next(d.value for d in at.dataframe if "Field" in d.value.columns)
    return dict(zip(table["Field"], table["Value"], strict=True))


def _chart_specs(at: AppTest) -> dict[str, str]:
    return {c.key: c.proto.spec for c in at.get("plotly_chart")}


CHARTS = 9


class TestMonitor:
    def test_empty_store_reads_as_empty(self) -> None:
        """With no requests, KPIs show zero and the charts say there is no data."""
        at = app("app_pages/monitor.py").run()
        assert not at.exception
        assert _metric(at, "Requests") == "0"
        assert _metric(at, "p95 latency") == "—"
        assert len(at.get("plotly_chart")) == CHARTS
        assert all("No requests" in spec or "No errors" in spec or "Nobody" in spec
                   for spec in _chart_specs(at).values())

    def test_requests_show_up_in_kpis_and_charts(self) -> None:
        """Requests made in the Playground appear: counts, error rate, hit rate, tokens, errors chart."""
        _make_traffic()
        at = app("app_pages/monitor.py").run()
        assert not at.exception
        assert _metric(at, "Requests") == "4"
        assert _metric(at, "Error rate") == "25.0%"
        assert _metric(at, "Cache hit rate") == "25%"
        assert int(_metric(at, "Tokens").replace(",", "")) > 0
        assert _metric(at, "p50 latency").endswith(("ms", " s"))
        specs = _chart_specs(at)
        assert len(specs) == CHARTS and "UpstreamError" in specs["monitor_chart_errors"]
        assert all('"uirevision":"monitor:' in spec for spec in specs.values())

    def test_window_and_pause_controls(self) -> None:
        """Changing the range and pausing keep the page working and say so."""
        _make_traffic()
        at = app("app_pages/monitor.py").run()
        assert any("refreshes every 5 s" in c for c in texts(at, "caption"))
        at.toggle(key="monitor_paused").set_value(True).run()
        assert any("paused" in c for c in texts(at, "caption"))
        at.segmented_control(key="monitor_range").set_value("15 min").run()
        assert not at.exception
        assert _metric(at, "Requests") == "4"
        assert any(c.startswith("15 min") for c in texts(at, "caption"))

    def test_long_range_refreshes_no_faster_than_a_minute(self) -> None:
        """A 30-day range refreshes at most once a minute, and says why."""
        at = app("app_pages/monitor.py").run()
        at.segmented_control(key="monitor_range").set_value("30 d").run()
        assert not at.exception
        assert any("refreshes every 60 s (at least 60 s for a 30 d range)" in c for c in texts(at, "caption"))


class TestComparisonAndFilters:
    def test_kpis_compare_with_the_previous_period(self, tmp_path: Path) -> None:
        """Three requests this hour against one the hour before: +2, and a latency rise reads as bad."""
        _seed(tmp_path, [_row("now1", 60), _row("now2", 120), _row("now3", 180, latency_ms=900.0),
                         _row("old1", 3600 + 60, latency_ms=50.0)])
        at = app("app_pages/monitor.py").run()
        requests = next(m for m in at.metric if m.label == "Requests")
        assert (requests.value, requests.delta) == ("3", "+2")
        p95 = next(m for m in at.metric if m.label == "p95 latency")
        assert p95.delta.startswith("+") and p95.proto.color == Metric.MetricColor.RED  # inverse: a rise is bad
        assert requests.proto.color == Metric.MetricColor.GREEN
        assert p95.proto.delta_description == "vs prior 1 h"

    def test_filters_change_the_kpis(self, tmp_path: Path) -> None:
        """Filtering by outcome, model or user narrows every KPI."""
        _seed(tmp_path, [_row("a", 10), _row("b", 20, user="erin", model="demo-deep"),
                         _row("c", 30, outcome="error", error_type="UpstreamError", status_code=502)])
        at = app("app_pages/monitor.py").run()
        assert _metric(at, "Requests") == "3"
        assert set(at.multiselect(key="monitor_filter_users").options) == {"dana", "erin"}
        at.multiselect(key="monitor_filter_outcomes").set_value(["error"]).run()
        assert (_metric(at, "Requests"), _metric(at, "Error rate")) == ("1", "100.0%")
        at.multiselect(key="monitor_filter_outcomes").set_value([]).run()
        at.multiselect(key="monitor_filter_models").set_value(["demo-deep"]).run()
        assert (_metric(at, "Requests"), _metric(at, "Error rate")) == ("1", "0.0%")
        assert any("models: demo-deep" in c for c in texts(at, "caption"))

    def test_rejected_and_stream_ttft(self, tmp_path: Path) -> None:
        """A rejected request has its own KPI, filter value and chart colour, outside the
        error rate; the TTFT KPI is the stream's, not the text request's stray value."""
        unserved = {"latency_ms": 0.0, "ttft_ms": None, "prompt_tokens": None, "completion_tokens": None}
        _seed(tmp_path, [_row("text", 10, ttft_ms=40.0), _row("stream", 20, kind="stream", latency_ms=900.0,
                                                              ttft_ms=300.0),
                         _row("bad", 30, outcome="rejected", error_type="InvalidRequest", status_code=None, **unserved),
                         _row("err", 40, outcome="error", error_type="UpstreamError", status_code=502, **unserved)])
        at = app("app_pages/monitor.py").run()
        assert not at.exception
        assert (_metric(at, "Requests"), _metric(at, "Rejected"), _metric(at, "Error rate")) == ("4", "1", "25.0%")
        ttft = _metric(at, "p50 TTFT (streams)")
        assert ttft.endswith(" ms") and abs(float(ttft[:-3]) - 300) <= 300 * 0.0645
        assert "rejected" in at.multiselect(key="monitor_filter_outcomes").options
        rpm = _chart_specs(at)["monitor_chart_rpm"]
        assert '"Rejected"' in rpm and "#757575" in rpm
        at.multiselect(key="monitor_filter_kinds").set_value(["text"]).run()
        assert (_metric(at, "Requests"), _metric(at, "p50 TTFT (streams)")) == ("3", "—")

    def test_custom_range(self, tmp_path: Path) -> None:
        """A custom range counts only its events; a past one does not refresh; a reversed one warns."""
        _seed(tmp_path, [_row("recent", 60), _row("two-days", 2 * 86_400)])
        at = app("app_pages/monitor.py").run()
        at.segmented_control(key="monitor_range").set_value("Custom").run()
        assert _metric(at, "Requests") == "1"  # the default custom range is the last 24 h
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        at.get("date_time_input")[0].set_value(now - dt.timedelta(days=3))
        at.get("date_time_input")[1].set_value(now - dt.timedelta(days=1)).run()
        assert not at.exception and _metric(at, "Requests") == "1"
        assert any("a past range" in c for c in texts(at, "caption"))
        at.get("date_time_input")[1].set_value(now - dt.timedelta(days=4)).run()
        assert any("end comes after its start" in w for w in texts(at, "warning"))


class TestRequestLog:
    def test_search_paging_and_detail(self, tmp_path: Path) -> None:
        """120 events page by 50; a search finds one request; picking it shows every field."""
        _seed(tmp_path, [_row(f"req{i:03d}", 10 + i) for i in range(119)]
              + [_row("needle", 5, prompt="where is the needle?", user="frank", model="demo-deep")])
        at = app("app_pages/monitor.py").run()
        assert any("120 matching events · page 1 of 3" in c for c in texts(at, "caption"))
        at.number_input(key="monitor_log_page").set_value(3).run()
        log = _log_table(at)
        assert len(log) == 20 and log["request_id"].iloc[-1] == "req118"  # oldest last
        at.text_input(key="monitor_log_search").input("NEEDLE").run()
        assert any("1 matching events · page 1 of 1" in c for c in texts(at, "caption"))
        at.selectbox(key="monitor_log_detail").set_value("needle").run()
        fields = _detail_fields(at)
        assert fields["User"] == "frank" and fields["Model"] == "demo-deep" and fields["Request id"] == "needle"
        assert "where is the needle?" in [c.value for c in at.code]

    def test_sort_by_latency(self, tmp_path: Path) -> None:
        """Sorting by latency, descending, puts the slowest request first."""
        _seed(tmp_path, [_row("fast", 10, latency_ms=5.0), _row("slow", 20, latency_ms=5000.0)])
        at = app("app_pages/monitor.py").run()
        at.selectbox(key="monitor_log_sort").set_value("latency_ms").run()
        assert _log_table(at)["request_id"].tolist() == ["slow", "fast"]


class TestExport:
    def test_export_buttons_serve_neutralised_files(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Log and aggregates download as CSV and JSON; CSV cells cannot run as formulas."""
        files: dict[str, Callable[[], bytes]] = {}
        real = MediaFileManager.add_deferred

        def capture(self: MediaFileManager, data: Callable[[], bytes], *args: Any, **kwargs: Any) -> str:
            files[kwargs.get("file_name") or args[2]] = data
            return real(self, data, *args, **kwargs)

        monkeypatch.setattr(MediaFileManager, "add_deferred", capture)
        _seed(tmp_path, [_row("evil", 10, prompt="=HYPERLINK(\"http://x\")", user="@admin"), _row("fine", 20)])
        at = app("app_pages/monitor.py").run()
        assert {b.label for b in at.get("download_button")} == {
            "Log (2 rows) CSV", "Log (2 rows) JSON", "Aggregates CSV", "Aggregates JSON", "Spend CSV", "Spend JSON"}
        log = pd.read_csv(io.BytesIO(files["blossom-requests.csv"]()))
        evil = log[log["request_id"] == "evil"].iloc[0]
        assert evil["prompt"] == "'=HYPERLINK(\"http://x\")" and evil["user"] == "'@admin"
        assert json.loads(files["blossom-requests.json"]())[0]["prompt"] == "=HYPERLINK(\"http://x\")"
        users = pd.read_csv(io.BytesIO(files["blossom-aggregates.csv"]()))
        assert "'@admin" in users["user"].tolist()
        doc = json.loads(files["blossom-aggregates.json"]())
        assert doc["kpis"][0]["requests"] == 2 and doc["query"]["since"]
        spend = json.loads(files["blossom-spend.json"]())
        assert spend["spend_kpis"][0]["unpriced"] == 2 and spend["query"]["since"]
        assert list(pd.read_csv(io.BytesIO(files["blossom-spend.csv"]()))["model"]) == ["demo-swift"]


class TestRetention:
    def test_delete_older_than_asks_first(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Old events are counted; the button stays disabled until confirmed; then they are deleted."""
        monkeypatch.setenv("BLOSSOM_DASH_RETENTION_DAYS", "7")
        _seed(tmp_path, [_row(f"old{i}", 10 * 86_400 + i) for i in range(3)] + [_row("new", 60)])
        at = app("app_pages/monitor.py").run()
        assert any("**3 events** are older" in m for m in texts(at, "markdown"))
        button = at.button(key="monitor_retention_delete")
        assert button.disabled and button.label == "Delete events older than 7 days"
        at.checkbox(key="monitor_retention_confirm").check().run()
        assert not at.button(key="monitor_retention_delete").disabled
        at.button(key="monitor_retention_delete").click().run()
        assert not at.exception
        assert any("Deleted 3 events" in s for s in texts(at, "success"))
        assert any("**0 events** are older" in m for m in texts(at, "markdown"))
        assert at.checkbox(key="monitor_retention_confirm").value is False
        store = UsageStore(f"sqlite:///{(tmp_path / 'data' / 'usage.db').as_posix()}")
        assert store.count() == 1
        store.close()

    def test_a_refused_delete_is_shown_in_words(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """If the database refuses the delete, the page says so and the events stay."""
        from blossom_dash import BlossomService
        from blossom_dash.errors import DashError

        def refuse(self: BlossomService, cutoff_ts: float, **_: object) -> int:
            raise DashError("Old history could not be deleted: the usage database refused.", "Try again.")

        monkeypatch.setenv("BLOSSOM_DASH_RETENTION_DAYS", "7")
        monkeypatch.setattr(BlossomService, "delete_events_older_than", refuse)
        _seed(tmp_path, [_row("old", 10 * 86_400)])
        at = app("app_pages/monitor.py").run()
        at.checkbox(key="monitor_retention_confirm").check().run()
        at.button(key="monitor_retention_delete").click().run()
        assert not at.exception
        assert any("could not be deleted" in e for e in texts(at, "error"))
        assert any("**1 events** are older" in m for m in texts(at, "markdown"))

    def test_without_retention_nothing_is_offered(self) -> None:
        """Without BLOSSOM_DASH_RETENTION_DAYS there is no delete button, only a note."""
        at = app("app_pages/monitor.py").run()
        assert not [b for b in at.button if b.key == "monitor_retention_delete"]
        assert any("all history is kept" in c for c in texts(at, "caption"))


def test_large_kpis_fit_their_column_and_keep_the_exact_value_in_the_help(tmp_path: Path) -> None:
    """A month of a busy team: 409,874,112 tokens read "409.9 M" (exact in the help), a day of saved time "22.2 h"."""
    from blossom_dash.ui.monitor import format_count, format_saved

    assert [format_count(n) for n in (0, 998_714, 1_000_000, 409_874_112, 2_500_000_000)] == \
        ["0", "998,714", "1.0 M", "409.9 M", "2.5 B"]
    assert [format_saved(ms) for ms in (0, 850, 42_000, 12 * 60_000, 22.2 * 3_600_000, 3.4 * 86_400_000)] == \
        ["—", "850 ms", "42.00 s", "12 min", "22.2 h", "3.4 d"]
    _seed(tmp_path, [_row(f"big{i}", 30 + i, prompt_tokens=100_000_000, completion_tokens=2_468_528)
                     for i in range(4)])
    at = app("app_pages/monitor.py").run(timeout=60)
    assert not at.exception
    tokens = next(m for m in at.get("metric") if m.proto.label == "Tokens")
    assert tokens.proto.body == "409.9 M"
    assert "409,874,112 tokens" in tokens.proto.help


class TestRequestDetailReadsWell:
    """Issue 11: labelled fields, the viewer's time zone, ms at a readable precision,
    the parameters, the answer, and links to the request's conversation."""

    def _open(self, tmp_path: Path, **fields: Any) -> AppTest:
        _seed(tmp_path, [_row("one", 5, **fields)])
        at = app("app_pages/monitor.py")
        at.context = {"timezone": "Europe/Berlin", "url": "http://127.0.0.1:8501/monitor"}
        at.run()
        at.selectbox(key="monitor_log_detail").set_value("one").run()
        assert not at.exception
        return at

    def test_labelled_fields_local_time_and_ms(self, tmp_path: Path) -> None:
        """Fields have labels, the time is Berlin time with its zone, latencies are ms with sensible precision."""
        at = self._open(tmp_path, latency_ms=1234.5678901234, ttft_ms=12.3456789, cost=None,
                        params='{"max_tokens":64,"model":"demo-swift","seed":7,"temperature":0.5}',
                        answer="Tulips are spring flowers.")
        fields = _detail_fields(at)
        assert fields["Latency"] == "1,235 ms" and fields["Time to first token (TTFT)"] == "12.3 ms"
        assert fields["Time"].split(" (UTC")[0].endswith(("CET", "CEST")) and "Z)" in fields["Time"]
        assert fields["Cost"] == "unpriced" and fields["Outcome"] == "Served"
        params = next(d.value for d in at.dataframe if "Parameter" in d.value.columns)
        assert dict(zip(params["Parameter"], params["Value"], strict=True))["Temperature"] == "0.5"
        assert "Tulips are spring flowers." in [c.value for c in at.code]
        log = next(d for d in at.dataframe if "request_id" in d.value.columns)
        assert str(log.value["ts"].dt.tz) == "Europe/Berlin"

    def test_a_stopped_stream_reads_as_stopped(self, tmp_path: Path) -> None:
        """A stream stopped before its end says so beside its outcome and among its parameters."""
        at = self._open(tmp_path, kind="stream", params='{"model":"demo-swift","stopped":true}')
        assert "stopped before the end" in _detail_fields(at)["Outcome"]
        params = next(d.value for d in at.dataframe if "Parameter" in d.value.columns)
        assert dict(zip(params["Parameter"], params["Value"], strict=True))["Stopped before the end"] == "yes"

    def test_a_chat_request_links_to_its_chat_and_conversation(self, tmp_path: Path) -> None:
        """A chat's request links to the Playground's ?chat=<id> and shows its conversation in order."""
        _seed(tmp_path, [_row("t1", 30, context="chat:abc"), _row("t2", 20, context="chat:abc"),
                         _row("x", 10, context="chat:other")])
        at = app("app_pages/monitor.py")
        at.context = {"timezone": "Europe/Berlin", "url": "http://127.0.0.1:8501/monitor"}
        at.run()
        at.selectbox(key="monitor_log_detail").set_value("t2").run()
        assert _detail_fields(at)["Belongs to"] == "Chat abc"
        links = [m.value for m in at.markdown if "](" in m.value]
        assert any("(http://127.0.0.1:8501/?chat=abc)" in m for m in links)
        convo = next(d.value for d in at.dataframe if "Answer" in d.value.columns)
        assert list(convo["Request id"]) == ["t1", "t2"]

    def test_monitor_opens_a_conversation_from_its_url(self, tmp_path: Path) -> None:
        """?chat=<id> on Monitor shows that chat's requests."""
        _seed(tmp_path, [_row("t1", 30, context="chat:abc"), _row("t2", 20, context="chat:abc")])
        at = app("app_pages/monitor.py")
        at.query_params["chat"] = "abc"
        at.run()
        assert not at.exception
        convo = next(d.value for d in at.dataframe if "Answer" in d.value.columns)
        assert list(convo["Request id"]) == ["t1", "t2"]
        assert any("Chat abc · 2 requests, 2 served" in c for c in texts(at, "caption"))
        at.button(key="monitor_conversation_close").click().run()
        assert "chat" not in at.query_params and not any(d.value.columns.isin(["Answer"]).any() for d in at.dataframe)

    def test_batch_and_comparison_links(self) -> None:
        """A batch job links to the Batch page, a comparison to Compare's permalink."""
        from blossom_dash.ui.request_view import context_link
        url = "https://dash.example/app/monitor"
        assert context_link("batch:j1", url=url)[1] == "https://dash.example/app/batch?job=j1"
        assert context_link("comparison:c1", url=url)[1] == "https://dash.example/app/compare?comparison=c1"
        assert context_link("chat:abc", url=None)[1] == "/?chat=abc"
        assert context_link("", url=url) is None


class TestFiltersFold:
    def test_filters_sit_in_an_expander_that_says_what_they_keep(self, tmp_path: Path) -> None:
        """The filters fold into an expander labelled with the range and the filters chosen."""
        _seed(tmp_path, [_row("one", 5, model="demo-deep")])
        at = app("app_pages/monitor.py").run()
        assert [e.label for e in at.expander][:1] == ["Filters · last 1 h · all models"]
        at.multiselect(key="monitor_filter_models").set_value(["demo-deep"]).run()
        assert at.expander[0].label == "Filters · last 1 h · model demo-deep"
