"""Tests for spending budgets: ``BudgetLedger`` alone on a fake clock (reserve, settle,
release, UTC period resets, crossings, restore, the refusal's words), then exact under
threads."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import demo_stats, make_service, run_in_threads

from blossom_dash.errors import BudgetExceeded, DashError
from blossom_dash.policies.budget import BudgetLedger, Budgets, period_end, period_key, pollen

P = Decimal("0.0136")  # a price per request, pollen


class FakeClock:
    """Epoch seconds that move only when told to."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


def admit_all(ledger: BudgetLedger, user: str, estimate: Decimal | None, cost: Decimal | None = None) -> int:
    """Reserve and settle for ``user`` until refused; how many were admitted."""
    n = 0
    while True:
        try:
            r = ledger.reserve(user, estimate)
        except BudgetExceeded:
            return n
        ledger.settle(r, estimate if cost is None else cost)
        n += 1
        assert n < 10_000


class TestBudgets:
    def test_values_checked(self) -> None:
        """A negative or non-numeric budget is a ValueError naming the field."""
        with pytest.raises(ValueError, match="user_day"):
            Budgets(user_day=Decimal(-1))
        with pytest.raises(ValueError, match="team_day_requests"):
            Budgets(team_day_requests=-2)
        assert Budgets(user_day="0.5").user_day == Decimal("0.5")  # type: ignore[arg-type]
        assert not Budgets().any and Budgets(team_month=Decimal(1)).any


class TestPeriods:
    def test_utc_calendar(self) -> None:
        """Day and month keys and ends follow the UTC calendar."""
        t = utc(2026, 12, 31, 23, 59, 30)
        assert period_key("day", t) == "2026-12-31" and period_key("month", t) == "2026-12"
        assert period_end("day", t) == utc(2027, 1, 1) and period_end("month", t) == utc(2027, 1, 1)
        assert period_end("month", utc(2026, 2, 10, 5)) == utc(2026, 3, 1)

    def test_pollen_words(self) -> None:
        """Amounts are shown without trailing zeros, tiny ones in full."""
        assert pollen(Decimal("0.013600")) == "0.0136"
        assert pollen(Decimal("0.000000000001")) == "0.000000000001"
        assert pollen(Decimal(5)) == "5" and pollen(Decimal(0)) == "0"


class TestReserve:
    def test_exactly_n_requests(self) -> None:
        """A budget of N x price admits exactly N requests estimated at the price."""
        ledger = BudgetLedger(Budgets(user_day=P * 7), clock=FakeClock(utc(2026, 12, 1, 12)))
        assert admit_all(ledger, "ann", P) == 7
        assert admit_all(ledger, "bob", P) == 7  # a per-user budget

    def test_team_budget_is_shared(self) -> None:
        """The team budget counts everyone together."""
        ledger = BudgetLedger(Budgets(team_day=P * 5), clock=FakeClock(utc(2026, 12, 1, 12)))
        assert admit_all(ledger, "ann", P) == 5
        with pytest.raises(BudgetExceeded) as info:
            ledger.reserve("bob", P)
        assert info.value.scope == "team" and info.value.period == "day"

    def test_no_budget_takes_nothing(self) -> None:
        """Without a budget reserve returns None and settle(None) is a no-op."""
        ledger = BudgetLedger()
        r = ledger.reserve("ann", P)
        assert r is None
        ledger.settle(r, P)
        assert ledger.status("ann").lines == ()

    def test_reservation_then_settle_releases_difference(self) -> None:
        """In flight, the estimate is held; settling replaces it with the real cost."""
        ledger = BudgetLedger(Budgets(user_day=Decimal("1")), clock=FakeClock(utc(2026, 12, 1, 12)))
        r = ledger.reserve("ann", Decimal("0.6"))
        (line,) = ledger.status("ann").lines
        assert (line.spent, line.reserved, line.requests) == (0, Decimal("0.6"), 1)
        with pytest.raises(BudgetExceeded, match="0.6 more is held"):
            ledger.reserve("ann", Decimal("0.5"))
        ledger.settle(r, Decimal("0.25"))
        (line,) = ledger.status("ann").lines
        assert (line.spent, line.reserved, line.requests) == (Decimal("0.25"), 0, 1)
        assert ledger.reserve("ann", Decimal("0.5")) is not None

    def test_failed_request_releases(self) -> None:
        """A released reservation gives its pollen and its request back."""
        ledger = BudgetLedger(Budgets(user_day=P, user_day_requests=1), clock=FakeClock(utc(2026, 12, 1)))
        ledger.release(ledger.reserve("ann", P))
        (line,) = ledger.status("ann").lines
        assert (line.spent, line.reserved, line.requests) == (0, 0, 0)
        assert admit_all(ledger, "ann", P) == 1

    def test_unpriced_admitted_until_used_up(self) -> None:
        """An unpriced request reserves nothing and passes while the budget is not used up."""
        ledger = BudgetLedger(Budgets(user_day=P * 2), clock=FakeClock(utc(2026, 12, 1)))
        for _ in range(5):
            ledger.settle(ledger.reserve("ann", None), None)
        assert ledger.status("ann").lines[0].spent == 0
        ledger.settle(ledger.reserve("ann", P), P * 2)  # cost beyond its estimate: the budget is used up
        with pytest.raises(BudgetExceeded):
            ledger.reserve("ann", None)

    def test_request_budget(self) -> None:
        """A request budget admits that many requests, priced or not."""
        ledger = BudgetLedger(Budgets(team_month_requests=3), clock=FakeClock(utc(2026, 12, 1)))
        assert admit_all(ledger, "ann", None) == 3
        with pytest.raises(BudgetExceeded, match="made 3 of the 3 requests the team's monthly budget allows"):
            ledger.reserve("bob", None)

    def test_zero_budget_refuses_everything(self) -> None:
        """A budget of 0 pollen admits nothing, not even a free request."""
        ledger = BudgetLedger(Budgets(user_day=Decimal(0)), clock=FakeClock(utc(2026, 12, 1)))
        assert admit_all(ledger, "ann", Decimal(0)) == 0


class TestRefusal:
    def test_words(self) -> None:
        """The refusal says what was spent, the budget, when it resets, and what to do."""
        clock = FakeClock(utc(2026, 12, 1, 19, 30))
        ledger = BudgetLedger(Budgets(user_day=Decimal("0.05")), clock=clock)
        ledger.settle(ledger.reserve("ann", Decimal("0.04")), Decimal("0.04"))
        with pytest.raises(BudgetExceeded) as info:
            ledger.reserve("ann", Decimal("0.02"))
        err = info.value
        assert isinstance(err, DashError) and err.severity == "warning"
        assert err.message == ("You have spent 0.04 pollen of your daily budget of 0.05 pollen; this request is "
                               "estimated at 0.02 pollen. The budget resets at 00:00 UTC (in 4 h 30 min).")
        assert "Controls" in err.hint and "cheaper model" in err.hint
        assert err.retry_after_s == 4.5 * 3600

    def test_month_words(self) -> None:
        """A team's monthly refusal names the team and the 1st of next month."""
        ledger = BudgetLedger(Budgets(team_month=Decimal("1")), clock=FakeClock(utc(2026, 12, 30)))
        ledger.settle(ledger.reserve("ann", Decimal(1)), Decimal(1))
        words = (r"The team has spent 1 pollen of the team's monthly budget of 1 pollen\. "
                 r"The budget resets at the 1st of next month, 00:00 UTC \(in 2 d 0 h\)")
        with pytest.raises(BudgetExceeded, match=words):
            ledger.reserve("bob", P)


class TestPeriodReset:
    def test_day_resets_at_midnight_utc_month_does_not(self) -> None:
        """A new UTC day starts the daily budget afresh; the month's spending carries on."""
        clock = FakeClock(utc(2026, 12, 1, 23, 59, 59))
        ledger = BudgetLedger(Budgets(user_day=P * 2, user_month=P * 3), clock=clock)
        assert admit_all(ledger, "ann", P) == 2
        clock.now = utc(2026, 12, 2, 0, 0, 0)
        assert admit_all(ledger, "ann", P) == 1  # the month allows one more
        clock.now = utc(2027, 1, 1)
        assert admit_all(ledger, "ann", P) == 2

    def test_settle_after_period_end(self) -> None:
        """A request reserved before midnight and settled after counts in neither new period."""
        clock = FakeClock(utc(2026, 12, 1, 23, 59, 59))
        ledger = BudgetLedger(Budgets(user_day=P), clock=clock)
        r = ledger.reserve("ann", P)
        clock.now = utc(2026, 12, 2, 0, 0, 1)
        ledger.status("ann")  # the old day's counter is dropped
        ledger.settle(r, P)
        assert admit_all(ledger, "ann", P) == 1


class TestCrossings:
    def test_fires_once_per_threshold(self) -> None:
        """80 % and 100 % are announced once each per counter and period."""
        seen: list[tuple[object, ...]] = []
        clock = FakeClock(utc(2026, 12, 1))
        ledger = BudgetLedger(Budgets(user_day=P * 10, team_day=P * 100), clock=clock,
                              on_crossing=lambda *a: seen.append(a))
        assert admit_all(ledger, "ann", P) == 10
        assert seen == [("user", "ann", "day", 0.8, P * 8, P * 10), ("user", "ann", "day", 1.0, P * 10, P * 10)]
        clock.now = utc(2026, 12, 2)
        admit_all(ledger, "ann", P)
        assert len(seen) == 4  # a new day crosses again

    def test_hook_failure_does_not_fail_the_request(self) -> None:
        """An exception in the hook is logged, not raised."""
        def boom(*_: object) -> None:
            raise RuntimeError("receiver down")

        ledger = BudgetLedger(Budgets(user_day=P), clock=FakeClock(utc(2026, 12, 1)), on_crossing=boom)
        assert admit_all(ledger, "ann", P) == 1

    def test_restore(self) -> None:
        """Restored spending counts, for the user and the team, and is not announced again."""
        seen: list[tuple[object, ...]] = []
        ledger = BudgetLedger(Budgets(user_day=P * 10, team_month=P * 20), clock=FakeClock(utc(2026, 12, 1)),
                              on_crossing=lambda *a: seen.append(a))
        ledger.restore([("ann", "day", P * 9, 9), ("ann", "month", P * 9, 9), ("bob", "month", P * 8, 8)])
        assert seen == []
        assert admit_all(ledger, "ann", P) == 1
        assert seen == [("user", "ann", "day", 1.0, P * 10, P * 10)]
        status = ledger.status("bob")
        assert [(x.scope, x.period, x.spent) for x in status.lines] == [("user", "day", 0), ("team", "month", P * 18)]
        assert status.warnings == (status.lines[1],)


class TestThreads:
    def test_exact_under_50_threads(self) -> None:
        """50 threads racing on a budget of N x price: exactly N admitted, spent exactly N x price."""
        n = 37
        ledger = BudgetLedger(Budgets(user_day=P * n, team_day=P * 1000), clock=FakeClock(utc(2026, 12, 1)))
        admitted: list[int] = []
        barrier = threading.Barrier(50)

        def work() -> None:
            barrier.wait()
            mine = 0
            for _ in range(5):
                try:
                    r = ledger.reserve("ann", P)
                except BudgetExceeded:
                    continue
                ledger.settle(r, P)
                mine += 1
            admitted.append(mine)

        threads = [threading.Thread(target=work) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(admitted) == n
        line = ledger.status("ann").lines[0]
        assert line.spent == P * n and line.reserved == 0 and line.requests == n


class TestSettings:
    def test_from_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """BLOSSOM_DASH_BUDGET_* become the Budgets; empty is no budget."""
        from blossom_dash.settings import Settings

        monkeypatch.setenv("BLOSSOM_DASH_BUDGET_USER_DAY", "0.05")
        monkeypatch.setenv("BLOSSOM_DASH_BUDGET_TEAM_MONTH", "")
        monkeypatch.setenv("BLOSSOM_DASH_BUDGET_TEAM_DAY_REQUESTS", "100")
        b = Budgets.from_settings(Settings())
        assert b == Budgets(user_day=Decimal("0.05"), team_day_requests=100)


class TestShared:
    """Two ``SharedBudgetLedger`` on one real Redis stand for two replicas."""

    def test_exact_across_two_replicas_under_50_threads(self, redis_url: str) -> None:
        """50 threads over two replicas: exactly N admitted; every crossing announced once."""
        from blossom_dash.policies.shared_budget import SharedBudgetLedger

        n = 23
        seen: list[tuple[object, ...]] = []
        budgets = Budgets(user_day=P * n, team_month=P * 40)
        clock = FakeClock(utc(2026, 12, 1, 12))
        a = SharedBudgetLedger(redis_url, budgets, clock=clock, on_crossing=lambda *x: seen.append(x))
        b = SharedBudgetLedger(redis_url, budgets, clock=clock, on_crossing=lambda *x: seen.append(x))
        admitted: list[int] = []
        barrier = threading.Barrier(50)

        def work(ledger: BudgetLedger) -> None:
            barrier.wait()
            mine = 0
            for _ in range(3):
                try:
                    r = ledger.reserve("ann", P)
                except BudgetExceeded:
                    continue
                ledger.settle(r, P)
                mine += 1
            admitted.append(mine)

        threads = [threading.Thread(target=work, args=(a if i % 2 else b,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(admitted) == n
        user_day, team_month = b.status("ann").lines
        assert (user_day.spent, user_day.reserved, user_day.requests) == (P * n, 0, n)
        assert team_month.spent == P * n and not team_month.warn  # 23 of 40
        assert sorted(seen, key=str) == sorted([("user", "ann", "day", 0.8, P * 19, P * n),
                                                ("user", "ann", "day", 1.0, P * n, P * n)], key=str)
        a.close()
        b.close()

    def test_config_shared_and_seeded(self, redis_url: str) -> None:
        """configure on one replica applies on the other; a restart with the same
        settings keeps it, one with changed settings replaces it."""
        from blossom_dash.policies.shared_budget import SharedBudgetLedger

        clock = FakeClock(utc(2026, 12, 1, 12))
        a = SharedBudgetLedger(redis_url, Budgets(user_day=P), clock=clock)
        b = SharedBudgetLedger(redis_url, Budgets(user_day=P), clock=clock)
        a.configure(Budgets(user_day=P * 2, team_day_requests=5))
        assert b.budgets == Budgets(user_day=P * 2, team_day_requests=5)
        assert admit_all(b, "ann", P) == 2
        c = SharedBudgetLedger(redis_url, Budgets(user_day=P), clock=clock)  # same seed: Controls' value holds
        assert c.budgets.user_day == P * 2
        d = SharedBudgetLedger(redis_url, Budgets(user_day=P * 3), clock=clock)  # a changed setting wins
        assert a.budgets == Budgets(user_day=P * 3, team_day_requests=5)  # per field: the other stays
        assert admit_all(a, "ann", P) == 1  # 2 spent of 3
        a.configure(Budgets())
        assert a.reserve("ann", P) is None  # no budget: nothing taken
        for x in (a, b, c, d):
            x.close()

    def test_release_and_period_reset(self, redis_url: str) -> None:
        """A released reservation is given back; a new UTC day starts afresh; words as in-process."""
        from blossom_dash.policies.shared_budget import SharedBudgetLedger

        clock = FakeClock(utc(2026, 12, 1, 19, 30))
        ledger = SharedBudgetLedger(redis_url, Budgets(user_day=Decimal("0.05")), clock=clock)
        ledger.release(ledger.reserve("ann", Decimal("0.05")))
        ledger.settle(ledger.reserve("ann", Decimal("0.04")), Decimal("0.04"))
        with pytest.raises(BudgetExceeded) as info:
            ledger.reserve("ann", Decimal("0.02"))
        assert info.value.message.startswith("You have spent 0.04 pollen of your daily budget of 0.05 pollen")
        clock.now = utc(2026, 12, 2)
        assert admit_all(ledger, "ann", Decimal("0.01")) == 5
        ledger.close()

    def test_redis_down_fails_closed(self, redis_url: str) -> None:
        """With a budget set and Redis unreachable, a request is refused with SharedStateUnavailable."""
        from blossom_dash.errors import SharedStateUnavailable
        from blossom_dash.policies.shared_budget import SharedBudgetLedger

        ledger = SharedBudgetLedger("redis://127.0.0.1:1/0", Budgets(user_day=P))
        with pytest.raises(SharedStateUnavailable, match="shared budget store"):
            ledger.reserve("ann", P)
        assert ledger.status("ann").unavailable
        ledger.close()


class TestGateway:
    """Budgets through the service and the demo backend over loopback HTTP, at a stub price."""

    @staticmethod
    def priced(svc: object, per_request: Decimal) -> None:
        """Every model of ``svc`` costs ``per_request`` pollen a call (pricing's perRequest unit)."""
        from blossom_dash.pricing import Price

        svc.gateway.prices = lambda kind, model: Price((("perRequest", per_request),))  # type: ignore[attr-defined]

    def test_exactly_n_under_50_threads(self, tmp_path: Path) -> None:
        """A daily budget of N x price admits exactly N of 50 concurrent requests; the others are
        refused unsent with BudgetExceeded and recorded as rejected."""
        n = 17
        with make_service(tmp_path, budget_user_day=P * n) as svc:
            self.priced(svc, P)
            answered: list[int] = []
            refused: list[BudgetExceeded] = []

            def work(k: int) -> None:
                try:
                    svc.generate_text(f"hello {k}", user="ann")
                    answered.append(k)
                except BudgetExceeded as err:
                    refused.append(err)

            assert run_in_threads(work, 50) == []
            assert len(answered) == n and len(refused) == 50 - n
            assert all(f"of your daily budget of {pollen(P * n)} pollen" in e.message for e in refused)
            (line,) = svc.budget_status("ann").lines
            assert (line.spent, line.reserved, line.requests) == (P * n, 0, n)
            assert demo_stats(svc).get("chat", 0) == n
            svc.flush_events()
            frame = svc.store.frame()
            assert (frame.outcome == "ok").sum() == n
            rejected = frame[frame.outcome == "rejected"]
            assert len(rejected) == 50 - n and set(rejected.error_type) == {"BudgetExceeded"}

    def test_failed_request_releases_and_cache_hit_is_free(self, tmp_path: Path) -> None:
        """A backend error gives the reservation back; a cache hit spends nothing."""
        with make_service(tmp_path, budget_user_day=P) as svc:
            self.priced(svc, P)
            with pytest.raises(DashError):
                svc.generate_text("x", model="fault-500", user="ann")
            (line,) = svc.budget_status("ann").lines
            assert (line.spent, line.reserved, line.requests) == (0, 0, 0)
            svc.generate_text("same", user="ann")
            svc.generate_text("same", user="ann")  # from the cache
            with pytest.raises(BudgetExceeded):
                svc.generate_text("other", user="ann")

    def test_unpriced_is_admitted_and_spends_nothing(self, tmp_path: Path) -> None:
        """With no price known, requests pass and the budget stays at 0 (never a pretend cost)."""
        with make_service(tmp_path, budget_user_day=P) as svc:
            svc.gateway.prices = lambda kind, model: None  # type: ignore[attr-defined]  # the demo's are priced
            for k in range(3):
                svc.generate_text(f"u{k}", user="ann")
            (line,) = svc.budget_status("ann").lines
            assert (line.spent, line.requests) == (0, 3)

    def test_restart_restores_spending(self, tmp_path: Path, database_url: str) -> None:
        """A restarted service starts from what the usage store (SQLite, PostgreSQL) says was spent today."""
        with make_service(tmp_path, budget_user_day=P * 3, database_url=database_url) as svc:
            self.priced(svc, P)
            svc.generate_text("a", user="ann")
            svc.generate_text("b", user="ann")
            svc.flush_events()
            if "cost" not in svc.store.frame().columns or svc.store.frame().cost.isna().all():
                pytest.skip("events do not carry their cost yet")
        with make_service(tmp_path, budget_user_day=P * 3, database_url=database_url) as svc:
            self.priced(svc, P)
            (line,) = svc.budget_status("ann").lines
            assert (line.spent, line.requests) == (P * 2, 2)
            svc.generate_text("c", user="ann")
            with pytest.raises(BudgetExceeded):
                svc.generate_text("d", user="ann")

    def test_configure_is_admin_and_audited(self, tmp_path: Path) -> None:
        """Only an admin changes budgets; the change is audited; members read only their own."""
        from blossom_dash import Caller
        from blossom_dash.errors import InvalidRequest, PermissionDenied

        with make_service(tmp_path) as svc:
            member = Caller("bob", role="member")
            with pytest.raises(PermissionDenied):
                svc.configure_budgets(member, user_day=P)
            with pytest.raises(InvalidRequest, match="Budgets not applied"):
                svc.configure_budgets(None, user_day=Decimal(-1))
            assert svc.configure_budgets(None, user_day=P, team_month_requests=9) == Budgets(
                user_day=P, team_month_requests=9)
            assert svc.configure_budgets(None, user_day=None) == Budgets(team_month_requests=9)
            entries = svc.audit_entries()
            assert list(entries.action[:2]) == ["configure_budgets", "configure_budgets"]
            assert [x.scope for x in svc.budget_status("bob", caller=member).lines] == ["team"]
            with pytest.raises(PermissionDenied):
                svc.budget_status("ann", caller=member)


class TestBatch:
    def test_batch_pauses_on_budget_and_resumes(self, tmp_path: Path) -> None:
        """A batch over budget waits (no row fails) and resumes when an admin raises the budget."""
        import time

        def wait_for(check: object, what: str) -> None:
            deadline = time.monotonic() + 30
            while not check():  # type: ignore[operator]
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(0.02)

        with make_service(tmp_path, budget_user_day=P * 4) as svc:
            TestGateway.priced(svc, P)
            job = svc.submit_batch([{"prompt": f"row {i}"} for i in range(7)], user="ann")
            wait_for(lambda: svc.batch_status(job).waiting_s > 0 and svc.batch_status(job).running == 0,
                     "the job to wait for the budget")
            status = svc.batch_status(job)
            assert (status.status, status.done, status.failed, status.remaining) == ("running", 4, 0, 3)
            assert "spending budget" in status.wait_reason
            svc.configure_budgets(None, user_day=P * 10)
            wait_for(lambda: not svc.batch_status(job).active, "the job to finish")
            status = svc.batch_status(job)
            assert (status.done, status.failed) == (7, 0)


class TestSharedServices:
    def test_two_services_on_one_redis_admit_exactly_n(self, tmp_path: Path, redis_url: str) -> None:
        """Two services (replicas) on one Redis: 50 concurrent requests over both, exactly N admitted."""
        n = 11
        with make_service(tmp_path / "a", redis_url=redis_url, budget_team_day=P * n) as a, \
                make_service(tmp_path / "b", redis_url=redis_url, budget_team_day=P * n) as b:
            for svc in (a, b):
                TestGateway.priced(svc, P)
            answered: list[int] = []

            def work(k: int) -> None:
                try:
                    (a if k % 2 else b).generate_text(f"shared {k}", user=f"u{k % 5}")
                    answered.append(k)
                except BudgetExceeded:
                    pass

            assert run_in_threads(work, 50) == []
            assert len(answered) == n
            (line,) = a.budget_status("u0").lines
            assert (line.scope, line.spent, line.reserved, line.requests) == ("team", P * n, 0, n)
            a.configure_budgets(None, team_day=P * (n + 1))
            b.generate_text("one more", user="u1")  # the other replica sees the raised budget at once
            with pytest.raises(BudgetExceeded, match="The team has spent"):
                b.generate_text("too many", user="u1")


class TestStream:
    def test_stream_reserves_and_settles(self, tmp_path: Path) -> None:
        """A stream is admitted against the budget before it starts and settles when read to the end."""
        with make_service(tmp_path, budget_user_day=P) as svc:
            TestGateway.priced(svc, P)
            stream = svc.stream_text("tell me", user="ann")
            (line,) = svc.budget_status("ann").lines
            assert line.reserved == P
            with pytest.raises(BudgetExceeded):
                svc.stream_text("and again", user="ann")
            for _ in stream:
                pass
            (line,) = svc.budget_status("ann").lines
            assert (line.spent, line.reserved, line.requests) == (P, 0, 1)


class TestBudgetSetLater:
    def test_setting_a_budget_counts_the_day_so_far(self, tmp_path: Path) -> None:
        """Requests made while no budget was set count once one is set (from the usage store)."""
        with make_service(tmp_path) as svc:
            for k in range(3):
                svc.generate_text(f"before {k}", user="ann")
            svc.configure_budgets(None, user_day_requests=5)
            (line,) = svc.budget_status("ann").lines
            assert line.requests == 3
            svc.configure_budgets(None, user_day_requests=4)  # budgets already counted: no re-read
            svc.generate_text("fourth", user="ann")
            with pytest.raises(BudgetExceeded, match="made 4 of the 4 requests"):
                svc.generate_text("fifth", user="ann")

    def test_on_redis(self, tmp_path: Path, redis_url: str) -> None:
        """The same with the counters in Redis: the other replica sees the day so far."""
        with make_service(tmp_path / "a", redis_url=redis_url) as a, \
                make_service(tmp_path / "b", redis_url=redis_url, database_url=a.settings.resolved_database_url()) as b:
            for k in range(3):
                b.generate_text(f"before {k}", user="ann")
            b.flush_events()
            a.configure_budgets(None, team_day_requests=4)
            (line,) = b.budget_status("ann").lines
            assert (line.scope, line.requests) == ("team", 3)
            b.generate_text("fourth", user="bob")
            with pytest.raises(BudgetExceeded, match="The team has made 4 of the 4 requests"):
                a.generate_text("fifth", user="ann")
