"""Spending budgets in pollen (and optionally in requests), per user and team-wide, per
UTC calendar day and UTC calendar month.

Enforced by the gateway before a request is sent, like the rate limit: ``reserve``
takes the request's estimated cost (``pricing.estimate_cost``) from every budget that
applies, or refuses with ``BudgetExceeded``; once the request has ended ``settle``
replaces the reservation with its real cost (an answered request), or ``release``
gives the reservation back (a failed one: nothing was spent). Check and take happen
under one lock, so a budget is exact under any number of threads: a budget of
``N x p`` pollen admits exactly ``N`` requests estimated at ``p``.

Rules, per budget of ``B`` pollen (``used`` = settled cost + reservations in flight):

- ``used >= B``: the budget is used up; every request is refused, priced or not.
- otherwise a request estimated at ``e`` is admitted when ``used + e <= B``;
- an unpriced request (estimate ``None``: the model has no published price) reserves
  nothing and is admitted while the budget is not used up; it settles at its real
  cost when that is known, else at nothing (its event's cost is ``None`` too).

A request budget of ``R`` admits a request while settled plus in-flight requests are
below ``R``; a failed request does not count.

Periods are UTC calendar periods (a day from 00:00 UTC, a month from the 1st 00:00
UTC), whatever the server's time zone, so every replica and every viewer agree on
when a budget resets. A counter belongs to its period and is dropped when the period
ends.

``on_crossing(scope, who, period, fraction, spent, budget)`` (when set) is called once
per counter and period when its settled use crosses 80 % and 100 % of a budget
(``fraction`` 0.8 or 1.0; ``spent`` and ``budget`` in pollen as ``Decimal``, or in
requests as ``int`` for a request budget), outside the lock, on the thread that
settled; an exception it raises is logged and swallowed. ``restore`` marks crossings
already passed so a restart does not announce them again.

These counters are this process's; ``shared_budget.SharedBudgetLedger`` keeps them in
Redis for every replica (``Settings.redis_url``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from decimal import Decimal

from ..errors import BudgetExceeded
from ..settings import Settings

log = logging.getLogger("blossom_dash.budget")

SCOPES = ("user", "team")
PERIODS = ("day", "month")
#: Fractions of a budget whose crossing is announced (``on_crossing``); pages warn from the first.
THRESHOLDS = (0.8, 1.0)
WARN_FRACTION = THRESHOLDS[0]
#: The identity of the team-wide counters.
TEAM = "all"

OnCrossing = Callable[[str, str, str, float, "Decimal | int", "Decimal | int"], None]


@dataclass(frozen=True)
class Budgets:
    """The budgets in force; ``None`` is no budget.

    Attributes:
        user_day, user_month, team_day, team_month: Pollen per UTC day / month, for
            each user or for everyone together (``Decimal``, >= 0).
        user_day_requests, user_month_requests, team_day_requests,
            team_month_requests: Requests per UTC day / month (>= 0).
    """

    user_day: Decimal | None = None
    user_month: Decimal | None = None
    team_day: Decimal | None = None
    team_month: Decimal | None = None
    user_day_requests: int | None = None
    user_month_requests: int | None = None
    team_day_requests: int | None = None
    team_month_requests: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name.endswith("_requests"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{f.name} must be a whole number of requests, at least 0 (got {value!r})")
            else:
                try:
                    amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
                except ArithmeticError:
                    raise ValueError(f"{f.name} must be an amount of pollen (got {value!r})") from None
                if not amount.is_finite() or amount < 0:
                    raise ValueError(f"{f.name} must be an amount of pollen, at least 0 (got {value!r})")
                object.__setattr__(self, f.name, amount)

    @classmethod
    def from_settings(cls, settings: Settings) -> Budgets:
        """The ``BLOSSOM_DASH_BUDGET_*`` settings."""
        return cls(**{f.name: getattr(settings, f"budget_{f.name}") for f in fields(cls)})

    def cap(self, scope: str, period: str) -> tuple[Decimal | None, int | None]:
        """``(pollen, requests)`` budget of ``scope`` ("user"/"team") per ``period`` ("day"/"month")."""
        return getattr(self, f"{scope}_{period}"), getattr(self, f"{scope}_{period}_requests")

    @property
    def any(self) -> bool:
        """Whether any budget is set."""
        return any(getattr(self, f.name) is not None for f in fields(self))

    def as_dict(self) -> dict[str, str | int | None]:
        """Every field, pollen as a decimal string (for the audit log and JSON)."""
        return {f.name: (str(v) if isinstance(v, Decimal) else v) for f in fields(self)
                for v in [getattr(self, f.name)]}


def period_key(period: str, ts: float) -> str:
    """The UTC calendar period holding ``ts``: ``"2026-12-01"`` (day) or ``"2026-12"`` (month)."""
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    return d.strftime("%Y-%m-%d") if period == "day" else d.strftime("%Y-%m")


def period_end(period: str, ts: float) -> float:
    """When the UTC day or month holding ``ts`` ends (its budgets reset), epoch seconds."""
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    if period == "day":
        start = d.replace(hour=0, minute=0, second=0, microsecond=0)
        return (start + dt.timedelta(days=1)).timestamp()
    nxt = d.replace(year=d.year + 1, month=1) if d.month == 12 else d.replace(month=d.month + 1)
    return nxt.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def pollen(amount: Decimal) -> str:
    """``amount`` in words for a page: up to 6 decimals, trailing zeros dropped (all of
    its digits when smaller than 0.000001), e.g. ``"0.0136"``."""
    if amount == 0:
        return "0"
    shown = amount.quantize(Decimal("0.000001")) if abs(amount) >= Decimal("0.000001") else amount
    text = f"{shown:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _in_words(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else "under a minute"


@dataclass(frozen=True)
class Reservation:
    """What ``reserve`` took for one request; hand it to ``settle`` or ``release`` once.

    Attributes:
        user: Whose request.
        day, month: The period keys it was counted in (``period_key``).
        amount: Pollen reserved (0 for an unpriced request).
    """

    user: str
    day: str
    month: str
    amount: Decimal


@dataclass(frozen=True)
class BudgetLine:
    """One budget's state.

    Attributes:
        scope: ``"user"`` or ``"team"``; who: the user, or ``TEAM``.
        period: ``"day"`` or ``"month"`` (UTC).
        spent: Settled pollen this period; reserved: pollen held by requests in flight.
        budget: Pollen budget, ``None`` when only a request budget is set.
        requests: Settled requests; request_budget: ``None`` when not set.
        resets_in_s: Seconds until the period ends.
        fraction: The larger of ``(spent + reserved) / budget`` and ``requests /
            request_budget`` (1.0 for a budget of 0).
    """

    scope: str
    who: str
    period: str
    spent: Decimal
    reserved: Decimal
    budget: Decimal | None
    requests: int
    request_budget: int | None
    resets_in_s: float
    fraction: float

    @property
    def warn(self) -> bool:
        """At or past ``WARN_FRACTION`` (pages warn)."""
        return self.fraction >= WARN_FRACTION


@dataclass(frozen=True)
class BudgetStatus:
    """The budgets that apply to one user (theirs and the team's), with a budget set.

    Attributes:
        lines: One ``BudgetLine`` per budget set, user before team, day before month.
        unavailable: Why the counters could not be read (shared Redis down), "" when read.
    """

    lines: tuple[BudgetLine, ...] = ()
    unavailable: str = ""

    @property
    def warnings(self) -> tuple[BudgetLine, ...]:
        """The lines at or past 80 %."""
        return tuple(line for line in self.lines if line.warn)


def fraction_of(spent: Decimal, reserved: Decimal, budget: Decimal | None, requests: int,
                request_budget: int | None) -> float:
    """``BudgetLine.fraction`` (0.0 when no budget is set)."""
    parts = [0.0]
    if budget is not None:
        parts.append(1.0 if budget == 0 else float((spent + reserved) / budget))
    if request_budget is not None:
        parts.append(1.0 if request_budget == 0 else requests / request_budget)
    return max(parts)


def refusal(scope: str, period: str, *, spent: Decimal, reserved: Decimal, budget: Decimal | None,
            requests: int, request_budget: int | None, estimate: Decimal | None, resets_in_s: float,
            on_requests: bool) -> BudgetExceeded:
    """The ``BudgetExceeded`` for a refused request: what was spent, the budget, when it resets."""
    span = "daily" if period == "day" else "monthly"
    whose = ("You have", "your") if scope == "user" else ("The team has", "the team's")
    reset = "00:00 UTC" if period == "day" else "the 1st of next month, 00:00 UTC"
    if on_requests:
        what = f"{whose[0]} made {requests} of the {request_budget} requests {whose[1]} {span} budget allows"
    else:
        cap = pollen(budget or Decimal(0))
        what = f"{whose[0]} spent {pollen(spent)} pollen of {whose[1]} {span} budget of {cap} pollen"
        if reserved:
            what += f" ({pollen(reserved)} more is held by requests still running)"
        if estimate is not None and spent + reserved < (budget or 0):
            what += f"; this request is estimated at {pollen(estimate)} pollen"
    return BudgetExceeded(
        f"{what}. The budget resets at {reset} (in {_in_words(resets_in_s)}).",
        "Wait until it resets, pick a cheaper model or fewer max tokens, or ask an admin to raise the budget "
        "on the Controls page.", scope=scope, period=period, retry_after_s=resets_in_s)


@dataclass
class _Counter:
    spent: Decimal = Decimal(0)
    reserved: Decimal = Decimal(0)
    requests: int = 0
    inflight: int = 0
    fired: set[float] = field(default_factory=set)


class BudgetLedger:
    """Budgets per user and for the team, per UTC day and month, in this process.

    Args:
        budgets: The budgets in force (``configure`` changes them).
        clock: Epoch seconds (wall clock: budgets follow the UTC calendar).
        on_crossing: Called when settled use crosses 80 % / 100 % (module docstring);
            also settable later as the attribute of that name.
    """

    #: Whether the counters live outside this process (``restore`` has nothing to do).
    shared = False

    def __init__(self, budgets: Budgets | None = None, *, clock: Callable[[], float] = time.time,
                 on_crossing: OnCrossing | None = None) -> None:
        self._budgets = budgets or Budgets()
        self._clock = clock
        self.on_crossing = on_crossing
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, str, str, str], _Counter] = {}
        self._periods: tuple[str, str] = ("", "")

    @property
    def budgets(self) -> Budgets:
        """The budgets in force."""
        return self._budgets

    def configure(self, budgets: Budgets) -> None:
        """Make ``budgets`` the ones in force; spending so far this period still counts."""
        with self._lock:
            self._budgets = budgets

    def _keys(self, user: str, day: str, month: str) -> list[tuple[str, str, str, str]]:
        return [("user", user, "day", day), ("user", user, "month", month),
                ("team", TEAM, "day", day), ("team", TEAM, "month", month)]

    def _current(self, now: float) -> tuple[str, str]:
        """This period's keys; drops the counters of periods that have ended (lock held)."""
        periods = (period_key("day", now), period_key("month", now))
        if periods != self._periods:
            self._periods = periods
            self._counters = {k: c for k, c in self._counters.items() if k[3] in periods}
        return periods

    def reserve(self, user: str, estimate: Decimal | None) -> Reservation | None:
        """Take ``estimate`` pollen (and one request) from every budget of ``user`` and the team.

        Args:
            user: Whose request.
            estimate: The request's estimated cost in pollen; ``None`` when unpriced.

        Returns:
            The reservation to settle or release; ``None`` when no budget is set
            (nothing was taken: there is nothing to settle).

        Raises:
            BudgetExceeded: a budget is used up, or this request would pass it (the
                first of user day, user month, team day, team month).
        """
        budgets = self._budgets
        if not budgets.any:
            return None
        amount = estimate if estimate is not None else Decimal(0)
        now = self._clock()
        with self._lock:
            day, month = self._current(now)
            keys = self._keys(user, day, month)
            counters = [self._counters.get(k) or _Counter() for k in keys]
            for (scope, _who, period, _key), c in zip(keys, counters, strict=True):
                cap, cap_requests = budgets.cap(scope, period)
                over_requests = cap_requests is not None and c.requests + c.inflight + 1 > cap_requests
                used = c.spent + c.reserved
                over = cap is not None and (used >= cap or used + amount > cap)
                if over or over_requests:
                    raise refusal(scope, period, spent=c.spent, reserved=c.reserved, budget=cap,
                                  requests=c.requests + c.inflight, request_budget=cap_requests, estimate=estimate,
                                  resets_in_s=period_end(period, now) - now, on_requests=not over)
            for k, c in zip(keys, counters, strict=True):
                c.reserved += amount
                c.inflight += 1
                self._counters[k] = c
        return Reservation(user, day, month, amount)

    def settle(self, reservation: Reservation | None, cost: Decimal | None) -> None:
        """An answered request: its reservation becomes its real ``cost`` (``None``:
        unpriced, nothing is added) and it counts as one request."""
        self._finish(reservation, cost if cost is not None else Decimal(0), answered=True)

    def release(self, reservation: Reservation | None) -> None:
        """A failed request: give its reservation back; it does not count."""
        self._finish(reservation, Decimal(0), answered=False)

    def _finish(self, r: Reservation | None, cost: Decimal, *, answered: bool) -> None:
        if r is None:
            return
        crossed: list[tuple[str, str, str, float, Decimal | int, Decimal | int]] = []
        with self._lock:
            budgets = self._budgets
            for key in self._keys(r.user, r.day, r.month):
                c = self._counters.get(key)
                if c is None:  # its period ended meanwhile: nothing left to settle
                    continue
                c.reserved -= r.amount
                c.inflight -= 1
                if answered:
                    c.spent += cost
                    c.requests += 1
                    crossed += _crossings(c, key, *budgets.cap(key[0], key[2]))
        self._announce(crossed)

    def _announce(self, crossed: list[tuple[str, str, str, float, Decimal | int, Decimal | int]]) -> None:
        hook = self.on_crossing
        if hook is None:
            return
        for args in crossed:
            try:
                hook(*args)
            except Exception:  # an alert must never fail a request
                log.exception("the budget crossing hook failed for %s", args[:3])

    def restore(self, rows: Iterable[tuple[str, str, Decimal, int]], *, replace: bool = False) -> None:
        """Take what the usage store says was spent this period: at start (a restart), and
        when budgets are set (no counting happens while none is).

        Args:
            rows: ``(user, period, spent_pollen, requests)`` for the current UTC day
                (``period`` "day") and month ("month"), one row per user; the team's
                counters are their sums. Crossings already passed are not announced again.
            replace: The rows replace this period's settled counts (reservations in
                flight stay); else they are added.
        """
        with self._lock:
            day, month = self._current(self._clock())
            budgets = self._budgets
            if replace:
                for c in self._counters.values():
                    c.spent, c.requests = Decimal(0), 0
            for user, period, spent, requests in rows:
                pkey = day if period == "day" else month
                for key in (("user", user, period, pkey), ("team", TEAM, period, pkey)):
                    c = self._counters.setdefault(key, _Counter())
                    c.spent += Decimal(spent)
                    c.requests += int(requests)
            for key, c in self._counters.items():
                _crossings(c, key, *budgets.cap(key[0], key[2]))  # marks them fired, silently

    def status(self, user: str) -> BudgetStatus:
        """The budgets set that apply to ``user`` (theirs, then the team's), read only."""
        budgets = self._budgets
        now = self._clock()
        lines = []
        with self._lock:
            day, month = self._current(now)
            for key in self._keys(user, day, month):
                scope, who, period, _ = key
                cap, cap_requests = budgets.cap(scope, period)
                if cap is None and cap_requests is None:
                    continue
                c = self._counters.get(key) or _Counter()
                lines.append(BudgetLine(scope, who, period, c.spent, c.reserved, cap, c.requests + c.inflight,
                                        cap_requests, round(period_end(period, now) - now, 1),
                                        fraction_of(c.spent, c.reserved, cap, c.requests + c.inflight, cap_requests)))
        return BudgetStatus(tuple(lines))


def _crossings(c: _Counter, key: tuple[str, str, str, str], cap: Decimal | None,
               cap_requests: int | None) -> list[tuple[str, str, str, float, Decimal | int, Decimal | int]]:
    """The thresholds ``c``'s settled use has newly reached, marked fired (lock held)."""
    scope, who, period, _ = key
    out: list[tuple[str, str, str, float, Decimal | int, Decimal | int]] = []
    for t in THRESHOLDS:
        if t in c.fired:
            continue
        if cap is not None and (c.spent >= cap * Decimal(str(t))):
            c.fired.add(t)
            out.append((scope, who, period, t, c.spent, cap))
        elif cap_requests is not None and c.requests >= cap_requests * t:
            c.fired.add(t)
            out.append((scope, who, period, t, c.requests, cap_requests))
    return out


__all__ = [
    "PERIODS",
    "SCOPES",
    "TEAM",
    "THRESHOLDS",
    "WARN_FRACTION",
    "BudgetLedger",
    "BudgetLine",
    "BudgetStatus",
    "Budgets",
    "OnCrossing",
    "Reservation",
    "fraction_of",
    "period_end",
    "period_key",
    "pollen",
    "refusal",
]
