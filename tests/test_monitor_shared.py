"""One Monitor computation per query and refresh interval, shared by every viewer of a process.

``SharedResults`` (single-flight, per-entry expiry) on a fake clock; ``MonitorQuery.rounded``;
the service's shared reads on a real SQLite store (``monitor(..., every_s=...)``, counted by
``monitor_stats``); ``headline`` against ``snapshot``; and twenty AppTest viewers of the page.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import make_service, run_in_threads
from pages_helpers import app

from blossom_dash import BlossomService
from blossom_dash.gateway import Caller
from blossom_dash.telemetry import analytics
from blossom_dash.telemetry.analytics import MonitorQuery
from blossom_dash.telemetry.shared import SharedResults
from blossom_dash.telemetry.store import ROW_COLUMNS

VIEWERS = 20
ADMIN = Caller("ada@team.org", role="admin")
MEMBER = Caller("mo@team.org", role="member")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _wait_for(condition: Any, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class TestSharedResults:
    def test_concurrent_callers_share_one_computation(self) -> None:
        """Twenty callers of one missing key: one computation, the other nineteen wait for it."""
        shared = SharedResults()
        calls = []

        def compute() -> object:
            calls.append(1)
            # Hold the computation until every other caller is waiting on it.
            _wait_for(lambda: shared.stats()["joined"] == VIEWERS - 1, "the other callers to join")
            return object()

        got: list[object] = []
        errors = run_in_threads(lambda _k: got.append(shared.get("k", 5, compute, kind="snapshot")), VIEWERS)
        assert not errors
        assert len(calls) == 1 and len(got) == VIEWERS and len({id(g) for g in got}) == 1
        assert shared.stats()["computations"] == {"snapshot": 1}

    def test_fresh_for_its_interval_then_recomputed(self) -> None:
        """Within ``every_s`` a result is reused; at ``every_s`` after its start, recomputed."""
        clock = FakeClock()
        shared = SharedResults(clock=clock)
        n = iter(range(100))
        assert shared.get("k", 5, lambda: next(n)) == 0
        clock.now += 4.9
        assert shared.get("k", 5, lambda: next(n)) == 0
        clock.now += 0.1
        assert shared.get("k", 5, lambda: next(n)) == 1
        assert shared.stats()["computations"] == {"": 2} and shared.stats()["hits"] == 1

    def test_age_counts_from_the_start_of_the_computation(self) -> None:
        """A computation that took 3 s of a 5 s interval is kept for the remaining 2 s only."""
        clock = FakeClock()
        shared = SharedResults(clock=clock)

        def slow(value: int) -> int:
            clock.now += 3
            return value

        assert shared.get("k", 5, lambda: slow(1)) == 1
        clock.now += 1.9
        assert shared.get("k", 5, lambda: slow(2)) == 1
        clock.now += 0.1  # 5 s after the first computation began
        assert shared.get("k", 5, lambda: slow(3)) == 3

    def test_a_computation_longer_than_its_interval_is_not_kept(self) -> None:
        """Its callers get it; the next caller computes again."""
        clock = FakeClock()
        shared = SharedResults(clock=clock)

        def slow(value: int) -> int:
            clock.now += 6
            return value

        assert shared.get("k", 5, lambda: slow(1)) == 1
        assert shared.get("k", 5, lambda: slow(2)) == 2

    def test_keys_are_apart(self) -> None:
        """Another key is another computation."""
        shared = SharedResults()
        assert shared.get("a", 5, lambda: "A") == "A"
        assert shared.get("b", 5, lambda: "B") == "B"
        assert shared.get("a", 5, lambda: "not computed") == "A"

    def test_a_failure_reaches_every_waiter_and_is_not_kept(self) -> None:
        """The callers waiting on a failed computation get its error; the next caller retries."""
        shared = SharedResults()

        def failing() -> object:
            _wait_for(lambda: shared.stats()["joined"] == 4, "the other callers to join")
            raise RuntimeError("database gone")

        errors = run_in_threads(lambda _k: shared.get("k", 5, failing), 5)
        assert len(errors) == 5 and all(str(e) == "database gone" for e in errors)
        assert shared.get("k", 5, lambda: "back") == "back"

    def test_no_interval_means_no_sharing(self) -> None:
        """``every_s`` 0: computed on every call, counted all the same."""
        shared = SharedResults()
        n = iter(range(10))
        assert [shared.get("k", 0, lambda: next(n), kind="x") for _ in range(3)] == [0, 1, 2]
        assert shared.stats()["computations"] == {"x": 3} and shared.stats()["entries"] == 0

    def test_clear_forgets(self) -> None:
        """After ``clear`` the next caller computes."""
        shared = SharedResults()
        shared.get("k", 60, lambda: 1)
        shared.clear()
        assert shared.get("k", 60, lambda: 2) == 2


class TestRounded:
    def test_viewers_a_moment_apart_ask_the_same_range(self) -> None:
        """"Last 15 min" asked 0.3 s apart within one 5 s interval is one range."""
        t = 1_700_000_001.2
        a, b = MonitorQuery.last(900, now=t).rounded(5), MonitorQuery.last(900, now=t + 0.3).rounded(5)
        assert a == b and a.until_ts == 1_700_000_005 and a.span_s == pytest.approx(900)

    def test_the_range_moves_forward_by_less_than_the_interval(self) -> None:
        """It still covers everything up to the moment it was asked, and keeps its filters."""
        q = MonitorQuery.last(3600, now=1_700_000_003.7, models=["m"])
        r = q.rounded(2)
        assert q.until_ts <= r.until_ts < q.until_ts + 2 and r.models == ("m",)
        assert r.until_ts % 2 == 0

    def test_a_custom_range_on_whole_minutes_is_unchanged(self) -> None:
        """2, 5, 10, 30 and 60 s all divide a minute."""
        q = MonitorQuery(1_699_999_980.0, 1_700_000_040.0)
        assert all(q.rounded(s) is q for s in (2, 5, 10, 30, 60))

    def test_the_interval_must_be_positive(self) -> None:
        """A zero interval has no multiples to round to."""
        with pytest.raises(ValueError, match="every_s"):
            MonitorQuery(0, 10).rounded(0)


@pytest.fixture()
def svc(tmp_path: Path) -> Iterator[BlossomService]:
    service = make_service(tmp_path, admins="ada@team.org")
    yield service
    service.close()


def _row(request_id: str, ts: float, **fields: Any) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "ts": ts, "request_id": request_id, "user": "dana", "session": "s", "kind": "text",
        "model": "demo-swift", "backend": "demo", "outcome": "ok", "error_type": "", "status_code": 200,
        "latency_ms": 120.0, "ttft_ms": None, "prompt_tokens": 3, "completion_tokens": 9, "bytes": 40,
        "prompt": f"question {request_id}",
    }
    values.update(fields)
    return tuple(values.get(c) for c in ROW_COLUMNS)  # cost: None unless given


def _interval_start(every_s: int) -> float:
    """A moment 1 s into the current ``every_s`` interval (queries built from it never straddle one)."""
    return math.floor(time.time() / every_s) * every_s + 1.0


class TestSharedMonitorReads:
    def test_twenty_viewers_one_computation(self, svc: BlossomService) -> None:
        """Twenty threads reading the same range 0.3 s apart within one interval: one headline
        and one snapshot computed, every viewer handed the same snapshot."""
        t0 = _interval_start(5)
        svc.store.write_many([_row(f"r{i}", t0 - 60 - i) for i in range(30)])
        got: list[analytics.MonitorSnapshot] = []

        def viewer(k: int) -> None:
            q = MonitorQuery.last(900, now=t0 + (k % 4) * 0.3)
            svc.monitor("headline", q, every_s=5)
            got.append(svc.monitor("snapshot", q, every_s=5))

        assert not run_in_threads(viewer, VIEWERS)
        stats = svc.monitor_stats()
        assert stats["computations"] == {"headline": 1, "snapshot": 1}
        # The other 19 viewers' two reads each, plus the snapshot's own read of the headline.
        assert stats["hits"] + stats["joined"] == 2 * (VIEWERS - 1) + 1
        assert len({id(s) for s in got}) == 1 and got[0].kpis["requests"] == 30

    def test_a_new_interval_or_another_filter_is_one_more(self, svc: BlossomService) -> None:
        """The next interval's range is another key; so is another filter; the same one is not."""
        t0 = _interval_start(5)
        svc.store.write_many([_row("a", t0 - 10), _row("b", t0 - 20, model="demo-deep")])
        first = svc.monitor("snapshot", MonitorQuery.last(900, now=t0), every_s=5)
        svc.monitor("snapshot", MonitorQuery.last(900, now=t0 + 0.5), every_s=5)
        assert svc.monitor_stats()["computations"]["snapshot"] == 1
        later = svc.monitor("snapshot", MonitorQuery.last(900, now=t0 + 5), every_s=5)
        assert svc.monitor_stats()["computations"]["snapshot"] == 2 and later is not first
        deep = svc.monitor("snapshot", MonitorQuery.last(900, now=t0, models=["demo-deep"]), every_s=5)
        assert svc.monitor_stats()["computations"]["snapshot"] == 3 and deep.kpis["requests"] == 1
        other_interval = svc.monitor("snapshot", MonitorQuery.last(900, now=t0), every_s=2)
        assert svc.monitor_stats()["computations"]["snapshot"] == 4 and other_interval is not first

    def test_the_result_says_which_range_it_covers(self, svc: BlossomService) -> None:
        """The snapshot's query is the range moved to the interval's end: it covers the asked range's end."""
        t0 = _interval_start(5)
        q = MonitorQuery.last(900, now=t0)
        snap = svc.monitor("snapshot", q, every_s=5)
        assert snap.query == q.rounded(5) and snap.query.until_ts >= q.until_ts
        assert snap.kpis == svc.monitor("headline", q, every_s=5).kpis  # the KPI row's figures

    def test_without_an_interval_every_read_is_fresh(self, svc: BlossomService) -> None:
        """Library callers (and the cross-replica check) read the store now, unshared."""
        q = MonitorQuery.last(900)
        assert svc.monitor("snapshot", q).kpis["requests"] == 0
        svc.store.write_many([_row("late", time.time() - 1)])
        assert svc.monitor("snapshot", q).kpis["requests"] == 1
        assert svc.monitor_stats()["computations"] == {}

    def test_within_the_interval_a_new_event_waits_for_the_next_one(self, svc: BlossomService) -> None:
        """The shared figures may lag by up to one interval, never more: the next interval's read has it."""
        t0 = _interval_start(60)
        q = MonitorQuery.last(900, now=t0)
        assert svc.monitor("kpis", q, every_s=60)["requests"] == 0
        svc.store.write_many([_row("new", t0 - 5)])
        assert svc.monitor("kpis", q, every_s=60)["requests"] == 0  # the same interval: shared, as computed
        assert svc.monitor("kpis", MonitorQuery.last(900, now=t0 + 60), every_s=60)["requests"] == 1

    def test_deleting_history_drops_the_shared_results(self, svc: BlossomService) -> None:
        """After a retention delete, the next read counts without the deleted events."""
        t0 = _interval_start(60)
        svc.store.write_many([_row("old", t0 - 600)])
        q = MonitorQuery.last(900, now=t0)
        assert svc.monitor("kpis", q, every_s=60)["requests"] == 1
        svc.delete_events_older_than(t0 - 300)
        assert svc.monitor("kpis", q, every_s=60)["requests"] == 0


class TestWhoSeesWhat:
    def test_aggregates_are_shared_and_hold_no_prompt(self, svc: BlossomService) -> None:
        """An admin's and a member's snapshot are one computation; nothing in it is a prompt."""
        svc.generate_text("member question", caller=MEMBER)
        svc.generate_text("admin secret prompt", caller=ADMIN)
        svc.flush_events()
        t0 = _interval_start(60)
        q = MonitorQuery.last(900, now=t0)
        admin = svc.monitor("snapshot", q, every_s=60, caller=ADMIN)
        member = svc.monitor("snapshot", q, every_s=60, caller=MEMBER)
        assert member is admin and svc.monitor_stats()["computations"]["snapshot"] == 1
        text = analytics.export_aggregates(member, "json").decode()
        assert "secret" not in text and "member question" not in text

    def test_a_member_never_gets_an_admins_request_log(self, svc: BlossomService) -> None:
        """The request log is not shared, interval or not: a member's read holds their own requests."""
        svc.generate_text("member question", caller=MEMBER)
        svc.generate_text("admin secret prompt", caller=ADMIN)
        svc.flush_events()
        q = MonitorQuery.last(900)
        _, everyone = svc.monitor("request_log", q, every_s=60, caller=ADMIN)
        frame, total = svc.monitor("request_log", q, every_s=60, caller=MEMBER)
        assert everyone == 2 and total == 1 and set(frame["user"]) == {MEMBER.user}
        assert not frame["prompt"].str.contains("secret").any()
        assert "request_log" not in svc.monitor_stats()["computations"]


class TestHeadline:
    def test_the_headline_is_the_snapshots_kpis(self, svc: BlossomService) -> None:
        """``headline``'s KPIs equal ``snapshot``'s, and a snapshot built on a headline equals one without."""
        now = time.time()
        svc.store.write_many([_row(f"h{i}", now - 30 * i, outcome=o, latency_ms=50.0 + i)
                              for i, o in enumerate(["ok", "ok", "cache_hit", "error", "rejected", "ok"] * 10)])
        q = MonitorQuery.last(3600, now=now)
        head = analytics.headline(svc.store, q)
        plain, built = analytics.snapshot(svc.store, q), analytics.snapshot(svc.store, q, headline=head)
        assert head.kpis == plain.kpis and head.previous_kpis == plain.previous_kpis
        assert built.kpis == plain.kpis and built.as_of_ts == head.as_of_ts
        for a, b in zip(analytics.aggregate_frames(plain).values(), analytics.aggregate_frames(built).values(),
                        strict=True):
            pd.testing.assert_frame_equal(a, b)

    def test_a_headline_of_another_query_is_refused(self, svc: BlossomService) -> None:
        """Mixing a headline with another range's charts would show figures that disagree."""
        q = MonitorQuery.last(3600)
        head = analytics.headline(svc.store, dataclasses.replace(q, models=("m",)))
        with pytest.raises(ValueError, match="another query"):
            analytics.snapshot(svc.store, q, headline=head)


class TestPageViewers:
    def test_twenty_viewers_of_the_page_share_one_computation(self) -> None:
        """Twenty AppTest sessions of the Monitor at once, on one range and refresh: one headline,
        one snapshot and one figure set for all of them, and every one draws its charts."""
        from blossom_dash import ui
        from blossom_dash.ui import monitor as ui_monitor

        end = dt.datetime.fromtimestamp(time.time() // 60 * 60 + 60, dt.UTC).replace(tzinfo=None)

        def session(refresh_s: int = 60) -> Any:
            at = app("app_pages/monitor.py", timeout=120)
            # A custom range and a 60 s interval: one key however long twenty runs take on two cores.
            at.session_state["monitor_range"] = "Custom"
            at.session_state["monitor_refresh_s"] = refresh_s
            at.session_state["monitor_custom_since"] = end - dt.timedelta(hours=1)
            at.session_state["monitor_custom_until"] = end
            return at

        first = session(refresh_s=30).run()  # starts the service; another interval, so another key
        assert not first.exception
        service = ui.get_service()
        assert service.monitor_stats()["computations"] == {"headline": 1, "snapshot": 1, "spend": 1}
        builds = ui_monitor.figure_builds
        results: list[Any] = []
        lock = threading.Lock()

        def viewer(_k: int) -> None:
            try:
                at = session().run()
            except KeyError as exc:  # AppTest's own bookkeeping races across threads now and then
                if "STREAMLIT_INTERNAL_KEY" not in str(exc):
                    raise
                at = session().run()  # the harness's race, not the page's: run this viewer again
            with lock:
                results.append(at)

        assert not run_in_threads(viewer, VIEWERS, timeout_s=240)
        assert all(not at.exception for at in results)
        assert all(len(at.get("plotly_chart")) == 9 for at in results)
        assert service.monitor_stats()["computations"] == {"headline": 2, "snapshot": 2, "spend": 2}
        assert ui_monitor.figure_builds == builds + 1
