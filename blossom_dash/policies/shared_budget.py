"""Spending budgets shared by every replica, in Redis: exact across processes.

The same rules as ``budget.BudgetLedger`` (read its docstring), with the counters in
Redis: one hash per counter, ``blossom-dash:budget:<scope>:<period>:<period key>:<who>``
(fields ``spent``, ``reserved``, ``requests``, ``inflight``, ``fired80``,
``fired100``), which expires a day after its period ends. ``reserve`` checks all four
counters of a request (user day, user month, team day, team month) and takes from
them in one Lua script, so a budget admits exactly as many requests across any
number of threads and replicas as it would in one process; ``settle`` and
``release`` are one script each, and a crossing of 80 % / 100 % is claimed with
``HSETNX`` on its counter, so it is announced by exactly one replica.

Amounts are integers of 1e-12 pollen (``COST_QUANTUM`` of ``pricing``, the precision
Pollinations publishes): Redis adds them exactly (``HINCRBY``); the scripts compare them
as Lua numbers (doubles), exact up to 2**53 units, about 9,007 pollen per counter. An
amount with more decimals is rounded up to a whole unit when reserved.

The budgets live in the hash ``blossom-dash:budget:config`` beside the settings they
were seeded from (as ``shared_limits`` does for the rate limits): a replica started
with a ``BLOSSOM_DASH_BUDGET_*`` other than the recorded seed makes it the budget in
force; one started with the recorded seed keeps what Controls set. A request reads the
budgets inside its script; a replica skips Redis altogether while the budgets it read
at most ``CONFIG_MAX_AGE_S`` ago were all unset.

Counters survive a restart of every replica (``restore`` does nothing here). Fails
closed like the shared rate limits: while Redis does not answer, ``reserve`` raises
``SharedStateUnavailable``; a ``settle`` or ``release`` that cannot reach Redis is
logged and lost (its reservation stays held until the period ends).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import fields
from decimal import ROUND_CEILING, Decimal

from .budget import (
    TEAM,
    BudgetLedger,
    BudgetLine,
    Budgets,
    BudgetStatus,
    OnCrossing,
    Reservation,
    fraction_of,
    period_end,
    period_key,
    refusal,
)
from .shared import PREFIX, REDIS_ERRORS, Outage, connect

log = logging.getLogger("blossom_dash.budget")

#: 1e-12 pollen: the unit of every amount in Redis.
UNIT = Decimal("1e-12")
#: Seconds a replica may trust its last read of "no budget is set" (module docstring).
CONFIG_MAX_AGE_S = 0.5
#: Seconds a counter outlives its period.
_KEEP_S = 86400
_FIELDS = tuple(f.name for f in fields(Budgets))
_COUNTERS = ("user_day", "user_month", "team_day", "team_month")

_START_LUA = """
for i, field in ipairs(cjson.decode(ARGV[1])) do
  if redis.call('HGET', KEYS[1], 'seed_' .. field) ~= ARGV[i + 1] then
    redis.call('HSET', KEYS[1], field, ARGV[i + 1], 'seed_' .. field, ARGV[i + 1])
  end
end
return 1
"""

# KEYS: config, then the four counters. ARGV: amount, then the four expiry times (ms).
# Returns {0} no budget set (nothing taken), {-1} admitted, or {i, what, spent,
# reserved, requests, cap, cap_requests} refused by counter i (what: pollen|requests).
_RESERVE_LUA = """
local names = {'user_day', 'user_month', 'team_day', 'team_month'}
local amount = tonumber(ARGV[1])
local caps, any = {}, false
for i = 1, 4 do
  local c = redis.call('HMGET', KEYS[1], names[i], names[i] .. '_requests')
  caps[i] = {c[1] or '', c[2] or ''}
  if caps[i][1] ~= '' or caps[i][2] ~= '' then any = true end
end
if not any then return {0} end
for i = 1, 4 do
  local v = redis.call('HMGET', KEYS[i + 1], 'spent', 'reserved', 'requests', 'inflight')
  local spent, reserved = v[1] or '0', v[2] or '0'
  local counted = tonumber(v[3] or '0') + tonumber(v[4] or '0')
  local cap, capr = caps[i][1], caps[i][2]
  if cap ~= '' then
    local used = tonumber(spent) + tonumber(reserved)
    if used >= tonumber(cap) or used + amount > tonumber(cap) then
      return {i, 'pollen', spent, reserved, tostring(counted), cap, capr}
    end
  end
  if capr ~= '' and counted + 1 > tonumber(capr) then
    return {i, 'requests', spent, reserved, tostring(counted), cap, capr}
  end
end
for i = 1, 4 do
  redis.call('HINCRBY', KEYS[i + 1], 'reserved', ARGV[1])
  redis.call('HINCRBY', KEYS[i + 1], 'inflight', 1)
  redis.call('PEXPIREAT', KEYS[i + 1], ARGV[i + 1])
end
return {-1}
"""

# KEYS: config, then the four counters. ARGV: amount reserved, cost, answered (1/0),
# minus the amount reserved.
# Returns the crossings claimed: {i, threshold, what, used, cap} flattened.
_FINISH_LUA = """
local names = {'user_day', 'user_month', 'team_day', 'team_month'}
local out = {}
for i = 1, 4 do
  local key = KEYS[i + 1]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'reserved', ARGV[4])
    redis.call('HINCRBY', key, 'inflight', -1)
    if ARGV[3] == '1' then
      local spent = redis.call('HINCRBY', key, 'spent', ARGV[2])
      local requests = redis.call('HINCRBY', key, 'requests', 1)
      local c = redis.call('HMGET', KEYS[1], names[i], names[i] .. '_requests')
      for _, t in ipairs({80, 100}) do
        local what, used, cap = nil, nil, nil
        if c[1] and c[1] ~= '' and spent >= tonumber(c[1]) * t / 100 then
          what, used, cap = 'pollen', redis.call('HGET', key, 'spent'), c[1]
        elseif c[2] and c[2] ~= '' and requests * 100 >= tonumber(c[2]) * t then
          what, used, cap = 'requests', tostring(requests), c[2]
        end
        if what and redis.call('HSETNX', key, 'fired' .. t, 1) == 1 then
          table.insert(out, i) table.insert(out, t) table.insert(out, what)
          table.insert(out, used) table.insert(out, cap)
        end
      end
    end
  end
end
return out
"""


def to_units(amount: Decimal) -> int:
    """``amount`` pollen as whole 1e-12 units, rounded up."""
    return int((amount / UNIT).to_integral_value(ROUND_CEILING))


def from_units(units: int | str | bytes) -> Decimal:
    """Whole 1e-12 units as pollen."""
    return (Decimal(int(units)) * UNIT).normalize() if int(units) else Decimal(0)


def _encode(budgets: Budgets) -> list[str]:
    """The config hash's values, in ``_FIELDS`` order: pollen as units, "" for none."""
    out = []
    for name in _FIELDS:
        value = getattr(budgets, name)
        out.append("" if value is None else str(value if isinstance(value, int) else to_units(value)))
    return out


def _decode(values: list[bytes | str | None]) -> Budgets:
    kwargs: dict[str, object] = {}
    for name, raw in zip(_FIELDS, values, strict=True):
        text = raw.decode() if isinstance(raw, bytes) else raw
        if text:
            kwargs[name] = int(text) if name.endswith("_requests") else from_units(text)
    return Budgets(**kwargs)  # type: ignore[arg-type]


class SharedBudgetLedger(BudgetLedger):
    """``BudgetLedger`` on every replica's counters, in Redis (module docstring).

    Args:
        url: The Redis URL (``Settings.redis_url``).
        budgets: This replica's settings (in force when Redis holds none yet, or
            another seed).
        clock: Epoch seconds; replicas' clocks must agree (NTP) near a period's end.
        on_crossing: As ``BudgetLedger``; called on the replica whose settle crossed.
        prefix: Key prefix in Redis.

    Raises:
        ValueError: a URL redis-py does not accept.
    """

    shared = True

    def __init__(self, url: str, budgets: Budgets | None = None, *, clock: Callable[[], float] = time.time,
                 on_crossing: OnCrossing | None = None, prefix: str = PREFIX) -> None:
        super().__init__(budgets, clock=clock, on_crossing=on_crossing)  # keeps the last read
        self._client = connect(url)
        self._prefix = f"{prefix}:budget"
        self._config_key = f"{self._prefix}:config"
        self._reserve_script = self._client.register_script(_RESERVE_LUA)
        self._finish_script = self._client.register_script(_FINISH_LUA)
        self._read_at = -math.inf
        self._outage = Outage(url, "the shared budget store",
                              "requests are refused while budgets are set and it does not answer "
                              "(the budgets fail closed)")
        seed = _encode(self._budgets)
        try:
            self._client.register_script(_START_LUA)(
                keys=[self._config_key], args=[json.dumps(_FIELDS), *seed])
            self._read()
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)

    def _read(self) -> Budgets:
        """The budgets from Redis, remembered as the last read."""
        budgets = _decode(self._client.hmget(self._config_key, list(_FIELDS)))
        with self._lock:
            self._budgets = budgets
            self._read_at = time.monotonic()
        return budgets

    @property
    def budgets(self) -> Budgets:
        """The budgets in force on every replica; the last read while Redis is down."""
        try:
            budgets = self._read()
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return self._budgets
        self._outage.recovered()
        return budgets

    def configure(self, budgets: Budgets) -> None:
        """Make ``budgets`` the ones in force on every replica (their next request).

        Raises:
            SharedStateUnavailable: Redis did not answer; nothing changed.
        """
        try:
            self._client.hset(self._config_key, mapping=dict(zip(_FIELDS, _encode(budgets), strict=True)))
            self._read()
        except REDIS_ERRORS as exc:
            raise self._outage.failed(exc) from None
        self._outage.recovered()

    def _counter_keys(self, user: str, day: str, month: str) -> list[str]:
        return [f"{self._prefix}:{scope}:{period}:{key}:{who}"
                for scope, who, period, key in self._keys(user, day, month)]

    def reserve(self, user: str, estimate: Decimal | None) -> Reservation | None:
        """As ``BudgetLedger.reserve``, on every replica's counters.

        Raises:
            BudgetExceeded: as ``BudgetLedger.reserve``.
            SharedStateUnavailable: Redis did not answer while a budget was set (or
                last read as set); nothing was taken.
        """
        if time.monotonic() - self._read_at <= CONFIG_MAX_AGE_S and not self._budgets.any:
            return None
        now = self._clock()
        day, month = period_key("day", now), period_key("month", now)
        units = to_units(estimate) if estimate is not None else 0
        expiry = [int((period_end(p, now) + _KEEP_S) * 1000) for p in ("day", "month", "day", "month")]
        try:
            answer = self._reserve_script(keys=[self._config_key, *self._counter_keys(user, day, month)],
                                          args=[units, *expiry])
        except REDIS_ERRORS as exc:
            raise self._outage.failed(exc) from None
        self._outage.recovered()
        code = int(answer[0])
        if code == 0:
            with self._lock:
                self._budgets, self._read_at = Budgets(), time.monotonic()
            return None
        if code > 0:
            what, spent, reserved, counted, cap, capr = (a.decode() if isinstance(a, bytes) else str(a)
                                                         for a in answer[1:])
            scope, period = _COUNTERS[code - 1].split("_")
            raise refusal(scope, period, spent=from_units(spent), reserved=from_units(reserved),
                          budget=from_units(cap) if cap else None, requests=int(counted),
                          request_budget=int(capr) if capr else None, estimate=estimate,
                          resets_in_s=period_end(period, now) - now, on_requests=what == "requests")
        return Reservation(user, day, month, from_units(units))

    def _finish(self, r: Reservation | None, cost: Decimal, *, answered: bool) -> None:
        if r is None:
            return
        units = to_units(r.amount)
        try:
            flat = self._finish_script(keys=[self._config_key, *self._counter_keys(r.user, r.day, r.month)],
                                       args=[units, to_units(cost), 1 if answered else 0, -units])
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            log.warning("a budget reservation of %s could not be settled: Redis did not answer", r.user)
            return
        self._outage.recovered()
        items = [a.decode() if isinstance(a, bytes) else a for a in flat]
        crossed: list[tuple[str, str, str, float, Decimal | int, Decimal | int]] = []
        for j in range(0, len(items), 5):
            i, t, what, used, cap = items[j:j + 5]
            scope, period = _COUNTERS[int(i) - 1].split("_")
            amounts: tuple[Decimal | int, Decimal | int] = (
                (from_units(used), from_units(cap)) if what == "pollen" else (int(used), int(cap)))
            crossed.append((scope, r.user if scope == "user" else TEAM, period, int(t) / 100, *amounts))
        self._announce(crossed)

    def restore(self, rows: Iterable[tuple[str, str, Decimal, int]], *, replace: bool = False) -> None:
        """With ``replace`` (budgets were just set: nothing is counted while none is), make
        this period's settled counters the usage store's ``rows`` (as
        ``BudgetLedger.restore``; reservations in flight stay). Without, nothing: the
        counters outlive every replica in Redis.

        Raises:
            SharedStateUnavailable: Redis did not answer.
        """
        if not replace:
            return
        now = self._clock()
        day, month = period_key("day", now), period_key("month", now)
        totals: dict[tuple[str, str, str, str], list[Decimal | int]] = {}
        for user, period, spent, requests in rows:
            pkey = day if period == "day" else month
            for key in (("user", user, period, pkey), ("team", TEAM, period, pkey)):
                t = totals.setdefault(key, [Decimal(0), 0])
                t[0] += Decimal(spent)
                t[1] += int(requests)
        totals.setdefault(("team", TEAM, "day", day), [Decimal(0), 0])
        totals.setdefault(("team", TEAM, "month", month), [Decimal(0), 0])
        try:
            pipe = self._client.pipeline(transaction=True)
            for (scope, who, period, pkey), (spent, requests) in totals.items():
                name = f"{self._prefix}:{scope}:{period}:{pkey}:{who}"
                pipe.hset(name, mapping={"spent": to_units(Decimal(spent)), "requests": int(requests)})
                pipe.pexpireat(name, int((period_end(period, now) + _KEEP_S) * 1000))
            pipe.execute()
        except REDIS_ERRORS as exc:
            raise self._outage.failed(exc) from None
        self._outage.recovered()

    def status(self, user: str) -> BudgetStatus:
        """As ``BudgetLedger.status``, from Redis; while it is down, no lines and the
        reason in ``unavailable`` (never raises)."""
        now = self._clock()
        day, month = period_key("day", now), period_key("month", now)
        try:
            budgets = self._read()
            pipe = self._client.pipeline(transaction=False)
            for key in self._counter_keys(user, day, month):
                pipe.hmget(key, ["spent", "reserved", "requests", "inflight"])
            rows = pipe.execute()
        except REDIS_ERRORS as exc:
            return BudgetStatus((), unavailable=self._outage.failed(exc).message)
        self._outage.recovered()
        lines = []
        for (scope, who, period, _), row in zip(self._keys(user, day, month), rows, strict=True):
            cap, capr = budgets.cap(scope, period)
            if cap is None and capr is None:
                continue
            spent, reserved = from_units(row[0] or 0), from_units(row[1] or 0)
            counted = int(row[2] or 0) + int(row[3] or 0)
            lines.append(BudgetLine(scope, who, period, spent, reserved, cap, counted, capr,
                                    round(period_end(period, now) - now, 1),
                                    fraction_of(spent, reserved, cap, counted, capr)))
        return BudgetStatus(tuple(lines))

    @property
    def unavailable(self) -> str:
        """Why Redis is unreachable right now, in words; "" while it answers."""
        return self._outage.message

    def close(self) -> None:
        """Close the connections to Redis."""
        self._client.close()


__all__ = ["CONFIG_MAX_AGE_S", "UNIT", "SharedBudgetLedger", "from_units", "to_units"]
