"""The batch ETA (features/batch_eta.py): the recent pace, bounded by the moving window, smoothed between polls;
then through a running job at a low limit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import make_service

from blossom_dash.features.batch_eta import RECENT_ROWS, EtaSmoother, estimate_eta, window_floor


class TestWindowFloor:
    def test_no_row_waits(self) -> None:
        """Rows that fit the free slots add nothing."""
        assert window_floor(0, rpm=30, used=10, reset_in_s=12.0) == 0.0

    def test_an_empty_window_filled_now_frees_in_60_s(self) -> None:
        """30 RPM, nothing sent yet, 45 rows: the 15 beyond the free 30 go once those leave, 60 s on."""
        assert window_floor(15, rpm=30, used=0, reset_in_s=0.0) == 60.0

    def test_a_full_burst_window_frees_when_its_oldest_leaves(self) -> None:
        """Just after a burst of 30 (the oldest leaves in 58 s), 15 waiting rows take about 58-59 s."""
        assert 58.0 <= window_floor(15, rpm=30, used=30, reset_in_s=58.0) < 60.0

    def test_a_burst_long_ago_frees_its_slots_close_together(self) -> None:
        """30 requests made 50-38 s ago (oldest leaves in 10 s, newest in 22 s): 15 rows go within about 16 s."""
        assert window_floor(15, rpm=30, used=30, reset_in_s=10.0, newest_in_s=22.0) == pytest.approx(10 + 12 * 14 / 29)

    def test_a_steady_window_frees_a_slot_every_two_seconds(self) -> None:
        """At a steady 30 RPM (oldest leaves in 2 s), 15 rows take about 30 s and 300 rows about 600 s."""
        assert window_floor(15, rpm=30, used=30, reset_in_s=2.0) == pytest.approx(30.0)
        assert window_floor(300, rpm=30, used=30, reset_in_s=2.0) == pytest.approx(600.0)


def finishes(n: int, *, every_s: float, last: float, latency_ms: float = 1600.0,
             cached: bool = False) -> list[tuple[float, bool, float]]:
    """``n`` settled rows, newest first, the newest at ``last``, one every ``every_s``."""
    return [(last - i * every_s, cached, latency_ms) for i in range(n)]


class TestEstimate:
    def test_nothing_left_is_zero(self) -> None:
        """A job with no rows left is done."""
        assert estimate_eta(remaining=0, finishes=[], now=5.0).eta_s == 0.0

    def test_unknown_before_a_row_when_the_window_has_room(self) -> None:
        """No row settled and every row fits the window: nothing to say yet."""
        est = estimate_eta(remaining=10, finishes=[], now=1.0, parallel=4, rpm=30, free=30)
        assert est.eta_s is None and not est.paced

    def test_the_limit_speaks_from_the_start(self) -> None:
        """45 rows at 30 RPM, 4 at a time, 1.6 s each: about 60 s from the first poll, paced by the limit (the
        jump the issue saw was 6 s, then 68 s); about a minute still once the window is full; about 17 s when
        its oldest slots are 8 s from leaving."""
        first = estimate_eta(remaining=45, finishes=[], now=0.1, parallel=4, rpm=30, free=30)
        assert first.paced and first.eta_s == 60.0
        full = estimate_eta(remaining=15, finishes=finishes(20, every_s=0.4, last=13.0), now=14.0, parallel=4,
                            rpm=30, free=0, used=30, reset_in_s=47.0, waiting_s=47.0)
        assert full.paced and 50.0 <= full.eta_s <= 62.0  # type: ignore[operator]
        later = estimate_eta(remaining=15, finishes=finishes(20, every_s=0.4, last=13.0), now=52.0, parallel=4,
                             rpm=30, free=0, used=30, reset_in_s=8.0, waiting_s=8.0)
        assert later.paced and 10.0 <= later.eta_s <= 22.0  # type: ignore[operator]

    def test_rows_in_flight_hold_their_slots(self) -> None:
        """45 rows at 15 RPM, 4 in flight among the 41 left and 7 slots free: 30 wait, about two windows, as at the
        start (in-flight rows counted again read about three)."""
        est = estimate_eta(remaining=41, finishes=finishes(4, every_s=0.1, last=2.0), now=2.0, parallel=4, running=4,
                           rpm=15, free=7, used=8, reset_in_s=58.0)
        assert est.paced and 115.0 <= est.eta_s <= 125.0  # type: ignore[operator]

    def test_the_rows_own_pace_when_the_limit_is_far(self) -> None:
        """A roomy window: rows left x their mean latency / rows at a time."""
        est = estimate_eta(remaining=10, finishes=finishes(RECENT_ROWS, every_s=0.5, last=100.0, latency_ms=2000.0),
                           now=100.0, parallel=4, rpm=1000, free=1000)
        assert not est.paced and est.eta_s == pytest.approx(10 * 2.0 / 4)

    def test_cache_hits_take_no_slot(self) -> None:
        """Recent rows all from the cache: the rows left are not held to the window."""
        est = estimate_eta(remaining=100, finishes=finishes(5, every_s=0.01, last=1.0, latency_ms=2.0, cached=True),
                           now=1.0, parallel=4, rpm=10, free=0, used=10, reset_in_s=30.0)
        assert not est.paced and est.eta_s is not None and est.eta_s < 5

    def test_a_wait_is_the_least(self) -> None:
        """Waiting 40 s (a backend's Retry-After) bounds the estimate below even with no limit known."""
        est = estimate_eta(remaining=3, finishes=finishes(2, every_s=0.1, last=1.0, latency_ms=100.0), now=1.0,
                           parallel=4, waiting_s=40.0)
        assert est.paced and est.eta_s == pytest.approx(40.1)


class TestSmoother:
    def test_a_jump_moves_the_shown_estimate_by_a_fraction(self) -> None:
        """60 s, then a raw 120 s 2 s later: shown between the counted-down 58 and 120."""
        smoother = EtaSmoother(alpha=0.35)
        assert smoother.smooth("j", 60.0, now=0.0) == 60.0
        shown = smoother.smooth("j", 120.0, now=2.0)
        assert shown == pytest.approx(58 + 0.35 * (120 - 58))

    def test_a_steady_estimate_counts_down(self) -> None:
        """Raw estimates that agree with the clock are shown as they are."""
        smoother = EtaSmoother()
        smoother.smooth("j", 60.0, now=0.0)
        assert smoother.smooth("j", 50.0, now=10.0) == pytest.approx(50.0)

    def test_forgets_old_and_unknown(self) -> None:
        """After forget_s, or an unknown estimate, the next one starts afresh."""
        smoother = EtaSmoother(forget_s=30.0)
        smoother.smooth("j", 60.0, now=0.0)
        assert smoother.smooth("j", 200.0, now=100.0) == 200.0
        assert smoother.smooth("j", None, now=101.0) is None
        assert smoother.smooth("j", 10.0, now=102.0) == 10.0

    def test_bounded(self) -> None:
        """It remembers at most max_jobs jobs."""
        smoother = EtaSmoother(max_jobs=3)
        for i in range(10):
            smoother.smooth(f"j{i}", 1.0, now=0.0)
        assert len(smoother._last) == 3


class TestRunningJob:
    def test_the_eta_is_paced_by_the_window_from_the_start(self, tmp_path: Path) -> None:
        """12 rows at 10 RPM with share 0.5: 5 rows go, the rest wait, and the ETA says about a minute or
        more, paced by the limit, while the job waits (never a few seconds)."""
        with make_service(tmp_path, per_user_rpm=10, batch_share=0.5) as svc:
            job = svc.submit_batch([{"prompt": f"eta {i}"} for i in range(12)], user="ana")
            deadline = time.monotonic() + 60
            while not (svc.batch_status(job).waiting_s > 0 and svc.batch_status(job).running == 0):
                assert time.monotonic() < deadline, "the job never waited for its share"
                time.sleep(0.02)
            status = svc.batch_status(job)
            assert status.eta_paced and status.pace_rpm == 5
            assert status.eta_s is not None and status.eta_s >= 60.0  # 7 rows at 5 a minute: a window and more
            svc.cancel_batch(job, user="ana")
