"""The circuit breaker: closed -> open after N failures -> one half-open probe -> closed or open.

Unit tests drive ``policies.breaker.CircuitBreaker`` with a fake clock; the service
tests drive the real pipeline against the hostile loopback server (``model="never"``
hangs, ``model="html_520"`` is a 5xx, ``model="ok"`` answers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_in_threads
from hostile import HostileServer

from blossom_dash import BackendUnavailable, BlossomService, InvalidRequest, Settings, UpstreamError
from blossom_dash.errors import CircuitOpen
from blossom_dash.policies.breaker import CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def opened(clock: FakeClock, failures: int = 3, reset_s: float = 30.0) -> CircuitBreaker:
    b = CircuitBreaker("demo (x)", failures=failures, reset_s=reset_s, clock=clock)
    for _ in range(failures):
        assert b.admit() is False
        b.failure()
    return b


class TestStateMachine:
    def test_opens_after_n_consecutive_failures(self) -> None:
        """N-1 failures keep it closed; the Nth opens it; a success in between resets the count."""
        clock = FakeClock()
        b = CircuitBreaker("x", failures=3, clock=clock)
        b.failure()
        b.failure()
        b.success()
        b.failure()
        b.failure()
        assert b.state().circuit == "closed" and b.state().consecutive_failures == 2
        b.failure()
        assert b.state().circuit == "open"

    def test_open_fails_fast_with_when(self) -> None:
        """While open, admit raises CircuitOpen saying the backend fails and when it is tried again."""
        clock = FakeClock()
        b = opened(clock)
        clock.now = 10.0
        with pytest.raises(CircuitOpen) as info:
            b.admit()
        assert "is failing" in info.value.message and "in 20 s" in info.value.message
        assert info.value.retry_after_s == pytest.approx(20.0) and info.value.hint
        assert isinstance(info.value, BackendUnavailable)
        assert b.state().next_probe_in_s == pytest.approx(20.0)

    def test_one_probe_then_closed_on_success(self) -> None:
        """After reset_s one caller is the probe, the others still fail fast; its success closes."""
        clock = FakeClock()
        b = opened(clock)
        clock.now = 30.0
        assert b.state().circuit == "half-open"
        assert b.admit() is True
        with pytest.raises(CircuitOpen):
            b.admit()
        b.success(probe=True)
        assert b.state().circuit == "closed" and b.admit() is False

    def test_probe_failure_reopens_for_another_reset(self) -> None:
        """A failed probe opens the circuit again for a full reset_s."""
        clock = FakeClock()
        b = opened(clock)
        clock.now = 30.0
        assert b.admit() is True
        b.failure(probe=True)
        assert b.state().circuit == "open"
        clock.now = 59.0
        with pytest.raises(CircuitOpen):
            b.admit()
        clock.now = 60.0
        assert b.admit() is True

    def test_a_probe_without_verdict_frees_the_slot(self) -> None:
        """A probe that ended before the backend said anything lets the next caller probe."""
        clock = FakeClock()
        b = opened(clock)
        clock.now = 31.0
        assert b.admit() is True
        b.release(probe=True)
        assert b.admit() is True

    def test_exactly_one_probe_under_20_concurrent_callers(self) -> None:
        """20 threads at once in half-open: exactly one is admitted."""
        clock = FakeClock()
        b = opened(clock)
        clock.now = 31.0
        admitted: list[bool] = []
        barrier = threading.Barrier(20)
        lock = threading.Lock()

        def worker(_: int) -> None:
            barrier.wait()
            try:
                probe = b.admit()
            except CircuitOpen:
                return
            with lock:
                admitted.append(probe)

        assert not run_in_threads(worker, 20, timeout_s=10)
        assert admitted == [True]


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def service(tmp_path: Path, server: HostileServer, **over: object) -> BlossomService:
    settings = dict(backend=server.url(), data_dir=tmp_path, request_timeout_s=1.0, image_timeout_s=1.0, retries=0,
                    breaker_failures=3, breaker_reset_s=1.0, per_user_rpm=100_000, global_rpm=100_000,
                    cache_enabled=False)
    settings.update(over)
    return BlossomService(Settings(**settings))


class TestThroughTheService:
    def test_opens_fails_fast_then_recovers(self, tmp_path: Path, hostile: HostileServer) -> None:
        """Three hung calls open it; the next call fails in < 50 ms without reaching the server;
        after breaker_reset_s one probe goes through and its success closes the circuit."""
        with service(tmp_path, hostile) as svc:
            for _ in range(3):
                with pytest.raises(BackendUnavailable):
                    svc.generate_text("hang", model="never")
            assert svc.health()["circuit"] == "open" and svc.health()["status"] == "down"
            before = hostile.count("ok")
            t0 = time.perf_counter()
            with pytest.raises(CircuitOpen) as info:
                svc.generate_text("fast", model="ok")
            assert time.perf_counter() - t0 < 0.05
            assert hostile.count("ok") == before  # refused unsent
            assert "It will be tried again in" in info.value.message
            with pytest.raises(CircuitOpen):
                list(svc.stream_text("fast", model="ok"))
            time.sleep(1.05)
            assert svc.health()["circuit"] == "half-open"
            assert svc.generate_text("probe", model="ok").text
            h = svc.health()
            assert h["circuit"] == "closed" and h["status"] == "degraded"  # recent failures still shown
            svc.metrics.flush()
            events = svc.metrics.frame()
            refused = events[events.error_type == "CircuitOpen"]
            assert len(refused) == 2 and set(refused.outcome) == {"error"}

    def test_a_failed_probe_reopens(self, tmp_path: Path, hostile: HostileServer) -> None:
        """A 5xx probe opens the circuit again."""
        with service(tmp_path, hostile) as svc:
            for _ in range(3):
                with pytest.raises(UpstreamError):
                    svc.generate_text("boom", model="html_520")
            time.sleep(1.05)
            with pytest.raises(UpstreamError):
                svc.generate_text("probe", model="html_520")
            assert svc.health()["circuit"] == "open"

    def test_4xx_and_own_refusals_do_not_count(self, tmp_path: Path, hostile: HostileServer) -> None:
        """The user's invalid requests never reach the breaker: the circuit stays closed."""
        with service(tmp_path, hostile, breaker_failures=1) as svc:
            for _ in range(3):
                with pytest.raises(InvalidRequest):
                    svc.generate_text("", model="ok")
            assert svc.health()["circuit"] == "closed"
            assert svc.generate_text("fine", model="ok").text

    def test_one_probe_among_20_concurrent_requests(self, tmp_path: Path, hostile: HostileServer) -> None:
        """In half-open, 20 concurrent requests send exactly one to the backend."""
        with service(tmp_path, hostile) as svc:
            for _ in range(3):
                with pytest.raises(UpstreamError):
                    svc.generate_text("boom", model="html_520")
            time.sleep(1.05)
            before = hostile.count("never")
            barrier = threading.Barrier(20)
            outcomes: list[str] = []
            lock = threading.Lock()

            def worker(i: int) -> None:
                barrier.wait()
                try:
                    svc.generate_text(f"probe {i}", model="never")
                except CircuitOpen:
                    with lock:
                        outcomes.append("fast")
                except BackendUnavailable:
                    with lock:
                        outcomes.append("probe")

            assert not run_in_threads(worker, 20, timeout_s=20)
            assert sorted(outcomes).count("probe") == 1 and outcomes.count("fast") == 19
            assert hostile.count("never") - before == 1
