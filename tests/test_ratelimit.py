"""Tests for the moving-window limits: ``RateLimiter`` alone, across limit changes on a test clock, then exact
under threads through the service."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
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


class FakeClock:
    """A clock that moves only when told to (seconds)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def admit_all(limiter: RateLimiter, user: str) -> int:
    """Acquire for ``user`` until refused; how many were admitted."""
    n = 0
    while True:
        try:
            limiter.acquire(user)
        except RateLimited:
            return n
        n += 1


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


class TestLimitChanges:
    """configure() on a test clock: requests already made count against a new limit at their real times."""

    def test_lower_then_raise_admits_no_more_than_the_limit(self) -> None:
        """15 requests, limit 15 -> 5 -> 15: nothing more until the first is 60 s old, then exactly one."""
        clock = FakeClock()
        rl = RateLimiter(per_user_rpm=15, global_rpm=1000, clock=clock)
        for _ in range(15):  # one a second, t = 0..14
            rl.acquire("u")
            clock.advance(1)
        rl.configure(per_user_rpm=5)
        rl.configure(per_user_rpm=15)
        assert admit_all(rl, "u") == 0
        assert (rl.status("u").user.used, rl.status("u").user.reset_in_s) == (15, 45.0)
        clock.advance(44.5)  # t = 59.5: the request of t = 0 still counts
        assert admit_all(rl, "u") == 0
        clock.advance(0.5)  # t = 60: it has left
        assert admit_all(rl, "u") == 1

    def test_lowered_limit_refuses_until_enough_requests_are_old(self) -> None:
        """10 requests at t = 0..9, limit lowered to 4: refused until only 3 count, with the true wait."""
        clock = FakeClock()
        rl = RateLimiter(per_user_rpm=10, global_rpm=1000, clock=clock)
        for _ in range(10):
            rl.acquire("u")
            clock.advance(1)
        rl.configure(per_user_rpm=4)
        s = rl.status("u").user
        # The 4th newest (t = 6) must leave, not just the oldest (t = 0): at t = 66.
        assert (s.limit, s.used, s.remaining, s.reset_in_s) == (4, 10, 0, 56.0)
        err = refusal(rl, "u")
        assert err.scope == "user" and err.retry_after_s == pytest.approx(56.0)
        clock.advance(55.5)
        assert refusal(rl, "u").retry_after_s == pytest.approx(0.5)
        clock.advance(0.5)
        assert admit_all(rl, "u") == 1
        assert rl.status("u").user.used == 4

    def test_raised_limit_frees_old_slots_on_time(self) -> None:
        """Slots carried into a raised limit free 60 s after their requests, not 60 s after the change."""
        clock = FakeClock()
        rl = RateLimiter(per_user_rpm=3, global_rpm=1000, clock=clock)
        for _ in range(3):
            rl.acquire("u")
        clock.advance(30)
        rl.configure(per_user_rpm=4)
        s = rl.status("u").user
        assert (s.used, s.remaining, s.reset_in_s) == (3, 1, 30.0)
        rl.acquire("u")
        clock.advance(30)
        assert rl.status("u").user.remaining == 3

    def test_global_window_across_lower_raise_lower(self) -> None:
        """The global window keeps its requests through 10 -> 3 -> 10 -> 12 -> 5 RPM."""
        clock = FakeClock()
        rl = RateLimiter(per_user_rpm=100, global_rpm=10, clock=clock)
        for i in range(10):
            rl.acquire(f"user{i}")
        clock.advance(1)
        rl.configure(global_rpm=3)
        assert refusal(rl, "new").scope == "global"
        rl.configure(global_rpm=10)
        assert refusal(rl, "new").scope == "global"
        rl.configure(global_rpm=12)
        assert admit_all(rl, "new") == 2
        rl.configure(global_rpm=5)
        s = rl.status("new").global_
        assert (s.limit, s.used, s.remaining, s.reset_in_s) == (5, 12, 0, 59.0)
        clock.advance(59)  # t = 60: the first ten have left, the two of t = 1 count
        assert admit_all(rl, "other") == 3

    def test_a_user_named_like_the_global_window_is_just_a_user(self) -> None:
        """User identities cannot share a window with the global one, whatever they are called."""
        rl = RateLimiter(per_user_rpm=1, global_rpm=100, clock=FakeClock())
        for user in ("all", "__global__", "global/all"):
            rl.acquire(user)
            assert rl.status(user).user.remaining == 0
        assert rl.status("x").global_.used == 3

    def test_invalid_limit_in_constructor(self) -> None:
        """A limit below 1 is refused when the limiter is built, as in configure()."""
        with pytest.raises(ValueError):
            RateLimiter(per_user_rpm=0)


@dataclass
class _Model:
    """The definition the limiter must meet, kept independently: every admission and its limits."""

    admitted: list[tuple[float, str, int, int]] = field(default_factory=list)  # (t, user, user_rpm, global_rpm)

    def counted(self, now: float, user: str | None) -> list[float]:
        """Admission times counting at ``now`` (in ``(now - 60, now]``), newest first; all users if None."""
        return sorted((t for t, u, _, _ in self.admitted if (user is None or u == user) and t > now - 60),
                      reverse=True)


def _rises_in(counted: list[float], limit: int, now: float) -> float:
    """Seconds until a window with these admissions (newest first) has one more free slot."""
    return counted[min(len(counted), limit) - 1] + 60 - now if counted else 0.0


class TestExactProperty:
    @pytest.mark.parametrize("seed", range(40))
    def test_random_acquire_configure_advance(self, seed: int) -> None:
        """Random acquires, limit changes and clock steps: every decision, wait and status matches the definition.

        Definition: a request at t is admitted iff, counting it, at most the user limit of that user's and at most
        the global limit of everyone's admissions lie in (t - 60 s, t], with the limits in force at t.
        """
        rng = random.Random(seed)
        clock = FakeClock()
        user_rpm, global_rpm = rng.randint(1, 6), rng.randint(1, 12)
        rl = RateLimiter(per_user_rpm=user_rpm, global_rpm=global_rpm, clock=clock)
        model = _Model()
        users = ["a", "b", "c", "d"]
        steps = [0.0, 0.0, 0.25, 1.0, 7.0, 30.0, 59.0, 59.75, 60.0, 61.0]
        for _ in range(300):
            op = rng.random()
            now = clock()
            if op < 0.55:
                user = rng.choice(users)
                mine, everyone = model.counted(now, user), model.counted(now, None)
                try:
                    rl.acquire(user)
                except RateLimited as exc:
                    scope = "global" if len(everyone) >= global_rpm else "user"
                    assert len(everyone) >= global_rpm or len(mine) >= user_rpm, "refused with room"
                    assert exc.scope == scope
                    window, limit = (everyone, global_rpm) if scope == "global" else (mine, user_rpm)
                    assert exc.retry_after_s == pytest.approx(_rises_in(window, limit, now), abs=1e-3)
                else:
                    assert len(everyone) < global_rpm and len(mine) < user_rpm, "admitted over a limit"
                    model.admitted.append((now, user, user_rpm, global_rpm))
            elif op < 0.7:
                choice = rng.randrange(3)
                new_user = rng.randint(1, 6) if choice != 1 else None
                new_global = rng.randint(1, 12) if choice != 0 else None
                rl.configure(per_user_rpm=new_user, global_rpm=new_global)
                user_rpm, global_rpm = new_user or user_rpm, new_global or global_rpm
            elif op < 0.95:
                clock.advance(rng.choice(steps))
            else:
                rl._storage.expire()  # what the background thread does, at a chosen moment
            user = rng.choice(users)
            status = rl.status(user)
            for window, counted, limit in ((status.user, model.counted(clock(), user), user_rpm),
                                           (status.global_, model.counted(clock(), None), global_rpm)):
                assert (window.limit, window.used, window.remaining) == (limit, len(counted),
                                                                        max(0, limit - len(counted)))
                assert window.reset_in_s == pytest.approx(_rises_in(counted, limit, clock()), abs=1e-3)
        assert rl.limits == (user_rpm, global_rpm)
        # The invariant itself, over the whole history: at each admission, it and those before it in the last
        # 60 s never exceed the limits in force then.
        for i, (t, user, u_rpm, g_rpm) in enumerate(model.admitted):
            in_window = [(t2, u2) for t2, u2, _, _ in model.admitted[: i + 1] if t2 > t - 60]
            assert sum(u2 == user for _, u2 in in_window) <= u_rpm
            assert len(in_window) <= g_rpm
        assert model.admitted, "the sequence admitted nothing: it tests nothing"


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
