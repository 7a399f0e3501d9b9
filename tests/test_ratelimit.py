"""Tests for the moving-window limits: ``RateLimiter`` alone, then exact under threads through the service."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from helpers import make_service, run_in_threads

from blossom_dash import RateLimited, TextResult
from blossom_dash.policies.ratelimit import LimitStatus, RateLimiter


def refusal(limiter: RateLimiter, user: str) -> RateLimited:
    """The RateLimited that acquire(user) raises."""
    with pytest.raises(RateLimited) as info:
        limiter.acquire(user)
    return info.value


class TestAcquire:
    def test_takes_one_user_and_one_global_slot(self) -> None:
        """Each acquire lowers both windows' remaining by one."""
        rl = RateLimiter(per_user_rpm=3, global_rpm=10)
        rl.acquire("u")
        s1 = rl.status("u")
        rl.acquire("u")
        s2 = rl.status("u")
        assert isinstance(s2, LimitStatus)
        assert (s1.user.remaining, s2.user.remaining) == (2, 1)
        assert (s1.global_.remaining, s2.global_.remaining) == (9, 8)
        assert s2.user.limit == 3 and s2.global_.limit == 10
        assert 0 < s2.user.reset_in_s <= 60

    def test_user_limit_refuses_with_scope_user(self) -> None:
        """Past the user's RPM, acquire raises RateLimited(scope="user") with a positive wait."""
        rl = RateLimiter(per_user_rpm=2, global_rpm=100)
        rl.acquire("u")
        rl.acquire("u")
        err = refusal(rl, "u")
        assert err.scope == "user"
        assert 0 < err.retry_after_s <= 60
        assert err.status_code is None
        assert err.message and err.hint and "2" in err.message
        assert err.severity == "warning"

    def test_other_users_are_unaffected(self) -> None:
        """One user at the limit does not stop another."""
        rl = RateLimiter(per_user_rpm=1, global_rpm=100)
        rl.acquire("u")
        refusal(rl, "u")
        rl.acquire("v")
        assert rl.status("v").user.remaining == 0

    def test_global_limit_refuses_with_scope_global(self) -> None:
        """When all users together reach the global RPM, a new user is refused with scope global."""
        rl = RateLimiter(per_user_rpm=10, global_rpm=3)
        for user in ("a", "b", "c"):
            rl.acquire(user)
        err = refusal(rl, "d")
        assert err.scope == "global"
        assert err.retry_after_s > 0
        assert err.message and err.hint

    def test_refusal_takes_no_slot(self) -> None:
        """A refused request leaves both windows as they were."""
        rl = RateLimiter(per_user_rpm=1, global_rpm=3)
        rl.acquire("u")
        refusal(rl, "u")
        assert rl.status("u").global_.remaining == 2
        rl.acquire("v")
        rl.acquire("w")
        refusal(rl, "x")
        assert rl.status("x").user.remaining == 1

    def test_exact_under_threads(self) -> None:
        """100 threads racing for 25 slots: exactly 25 are admitted."""
        rl = RateLimiter(per_user_rpm=25, global_rpm=1000)
        barrier = threading.Barrier(100)
        admitted: list[int] = []
        refused: list[int] = []

        def worker(i: int) -> None:
            barrier.wait()
            try:
                rl.acquire("u")
            except RateLimited:
                refused.append(i)
            else:
                admitted.append(i)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert (len(admitted), len(refused)) == (25, 75)
        assert rl.status("u").global_.remaining == 975


class TestStatus:
    def test_fresh_windows(self) -> None:
        """An unused window has all its slots and resets in 0 s."""
        s = RateLimiter(per_user_rpm=5, global_rpm=9).status("nobody")
        assert (s.user.limit, s.user.remaining, s.user.reset_in_s) == (5, 5, 0.0)
        assert (s.global_.limit, s.global_.remaining, s.global_.reset_in_s) == (9, 9, 0.0)

    def test_status_takes_no_slot(self) -> None:
        """Reading the status many times does not spend slots."""
        rl = RateLimiter(per_user_rpm=2, global_rpm=5)
        for _ in range(10):
            rl.status("u")
        rl.acquire("u")
        assert rl.status("u").user.remaining == 1

    def test_full_window(self) -> None:
        """A full window shows remaining 0 and a reset within the minute."""
        rl = RateLimiter(per_user_rpm=2, global_rpm=5)
        rl.acquire("u")
        rl.acquire("u")
        s = rl.status("u")
        assert s.user.remaining == 0
        assert 0 < s.user.reset_in_s <= 60


class TestConfigure:
    def test_limits_property_follows_configure(self) -> None:
        """configure changes the limits reported, one or both at a time."""
        rl = RateLimiter(per_user_rpm=3, global_rpm=10)
        assert rl.limits == (3, 10)
        rl.configure(per_user_rpm=7)
        assert rl.limits == (7, 10)
        rl.configure(global_rpm=70)
        assert rl.limits == (7, 70)

    def test_raised_limit_admits_at_once(self) -> None:
        """A user refused at the old limit is admitted after the limit is raised."""
        rl = RateLimiter(per_user_rpm=1, global_rpm=100)
        rl.acquire("u")
        refusal(rl, "u")
        rl.configure(per_user_rpm=5)
        rl.acquire("u")

    def test_lowered_global_limit_refuses(self) -> None:
        """Lowering the global limit to 1 refuses the second request."""
        rl = RateLimiter(per_user_rpm=100, global_rpm=100)
        rl.configure(global_rpm=1)
        rl.acquire("u")
        assert refusal(rl, "v").scope == "global"

    @pytest.mark.parametrize("kwargs", [{"per_user_rpm": 0}, {"global_rpm": 0}, {"per_user_rpm": -5}])
    def test_below_one_is_rejected(self, kwargs: dict[str, int]) -> None:
        """A limit below 1 is a ValueError and changes nothing."""
        rl = RateLimiter(per_user_rpm=3, global_rpm=10)
        with pytest.raises(ValueError):
            rl.configure(**kwargs)
        assert rl.limits == (3, 10)

    def test_new_limit_counts_requests_already_made(self) -> None:
        """After raising 3 -> 4 RPM with 3 requests in the window, one slot remains."""
        rl = RateLimiter(per_user_rpm=3, global_rpm=100)
        for _ in range(3):
            rl.acquire("u")
        rl.configure(per_user_rpm=4)
        assert rl.status("u").user.remaining == 1


class TestServiceLimits:
    def test_exact_under_fifty_threads(self, tmp_path: Path) -> None:
        """50 simultaneous calls for one user at 10 RPM: 10 answers, 40 refusals, all recorded."""
        with make_service(tmp_path, per_user_rpm=10, global_rpm=1000) as svc:
            barrier = threading.Barrier(50)
            ok: list[TextResult] = []
            limited: list[RateLimited] = []

            def worker(i: int) -> None:
                barrier.wait()
                try:
                    ok.append(svc.generate_text(f"Racing prompt {i}", user="alice"))
                except RateLimited as exc:
                    limited.append(exc)

            assert run_in_threads(worker, 50) == []
            assert (len(ok), len(limited)) == (10, 40)
            assert all(e.retry_after_s > 0 and e.scope == "user" for e in limited)
            assert all(e.message and e.hint for e in limited)

            status = svc.limiter.status("alice")
            assert status.user.remaining == 0 and status.user.reset_in_s > 0
            handle_status = svc.session("alice").rate_status()
            assert (handle_status.user.limit, handle_status.user.remaining) == (10, 0)

            bob = svc.generate_text("Bob is not limited", user="bob")
            assert bob.cached is False

            df = svc.metrics.frame()
            alice = df[df["user"] == "alice"]
            assert (alice["outcome"] == "ok").sum() == 10
            refused = alice[alice["outcome"] == "rate_limited"]
            assert len(refused) == 40
            assert set(refused["error_type"]) == {"RateLimited"}
            assert set(df.loc[df["user"] == "bob", "outcome"]) == {"ok"}

    def test_global_limit(self, tmp_path: Path) -> None:
        """With a global RPM of 3, the fourth user is refused with scope global and it is recorded."""
        with make_service(tmp_path, per_user_rpm=100, global_rpm=3) as svc:
            for user in ("a", "b", "c"):
                svc.generate_text(f"Global slot for {user}", user=user)
            with pytest.raises(RateLimited) as info:
                svc.generate_text("One too many", user="d")
            assert info.value.scope == "global" and info.value.retry_after_s > 0
            with pytest.raises(RateLimited):
                svc.stream_text("A stream is refused at once", user="e")
            df = svc.metrics.frame()
            assert list(df["outcome"]) == ["ok", "ok", "ok", "rate_limited", "rate_limited"]
            assert list(df["kind"])[-1] == "stream"

    def test_configure_changes_limits_live(self, tmp_path: Path) -> None:
        """Raising the user limit on the live service admits a refused user."""
        with make_service(tmp_path, per_user_rpm=2, global_rpm=1000) as svc:
            svc.generate_text("Live 1")
            svc.generate_text("Live 2")
            with pytest.raises(RateLimited):
                svc.generate_text("Live 3")
            svc.limiter.configure(per_user_rpm=10)
            assert svc.generate_text("Live 3").cached is False
            assert svc.limiter.limits == (10, 1000)
            assert svc.limiter.status("anonymous").user.limit == 10

    def test_stream_takes_a_slot(self, tmp_path: Path) -> None:
        """A stream spends one slot when it is created; the next call is refused."""
        with make_service(tmp_path, per_user_rpm=1, global_rpm=1000) as svc:
            stream = svc.stream_text("Streams count too")
            assert "".join(stream)
            with pytest.raises(RateLimited):
                svc.stream_text("No second stream")
