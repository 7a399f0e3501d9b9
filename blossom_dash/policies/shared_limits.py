"""Per-user and global moving-window limits shared by every replica, in Redis.

The windows are ``limits``' own ``RedisStorage`` and ``MovingWindowRateLimiter``, the
library unmodified: each window is one Redis list of admission times, newest first,
and ``hit`` checks and takes a slot in one Lua script, so a limit is exact across any
number of threads and processes, and survives a restart of every replica (Redis keeps
the lists; each expires 60 s after its last admission).

Keys are the in-process limiter's (``ratelimit._Limit.key_for``: scope and who, not
the amount) under ``blossom-dash:limits:``, so a changed limit keeps its window. The
two configured limits live in the hash ``blossom-dash:limits:config``, beside the
settings' values they came from (``seed_per_user_rpm``, ``seed_global_rpm``).
``configure`` on any replica changes them for all, and every request reads them (one
round trip; ``HSETNX`` seeds an absent hash; a request reuses a read at most
``CONFIG_MAX_AGE_S`` old), so a change applies everywhere within half a second. A
replica that starts with a setting other than the recorded seed (the operator changed
``BLOSSOM_DASH_*_RPM`` and redeployed) makes its value the limit in force; one started
with the recorded seed keeps what Controls set. Only a start does
this, never a request, so old and new replicas of a rolling deploy do not take turns.

Differences from the in-process ``RateLimiter`` that come from the library's storage:

- Times are each replica's ``time.time()``: replicas' clocks must agree (NTP); a
  replica whose clock is ``d`` seconds off counts its admissions ``d`` seconds early
  or late.
- ``limits`` trims a window to the limit in force at each admission, so a limit
  lowered and raised again within a minute forgets the admissions trimmed off, and
  ``WindowStatus.used`` is at most ``limit``.
- A batch row tests the user's window, then hits (checks and takes) the user's batch
  window, then the user's window (in-process all under one lock). When another replica
  fills the user's window between the test and the last hit, the row is refused and its
  batch slot stays taken until it is 60 s old: that slows the batch, never the user's
  chats; the other order could let a refused batch row hold one of the slots kept for them.
- ``batch_share`` is this replica's setting (``Settings.batch_share``), not kept in
  Redis: replicas should be started with the same value.
"""

from __future__ import annotations

import math
import time

from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from .ratelimit import _GLOBAL_ID, LimitStatus, RateLimiter, WindowStatus, _check_rpm, _Limit, batch_rpm
from .shared import PREFIX, REDIS_ERRORS, Outage, connect

#: Seconds after which a page or a paused batch looks again while Redis is unreachable.
RETRY_S = 1.0
#: Seconds a request may use the limits read by an earlier one on this replica: a
#: limit changed on another replica applies here within this time (pages and
#: ``configure`` always read Redis). Saves one of the request path's Redis round trips,
#: each of which costs milliseconds when many threads share the interpreter.
CONFIG_MAX_AGE_S = 0.5

# At a replica's start: a setting other than the recorded seed (a new environment)
# replaces the limit in force and becomes the seed; the recorded seed leaves it alone.
_START_LUA = """
for i, field in ipairs({'per_user_rpm', 'global_rpm'}) do
  if redis.call('HGET', KEYS[1], 'seed_' .. field) ~= ARGV[i] then
    redis.call('HSET', KEYS[1], field, ARGV[i], 'seed_' .. field, ARGV[i])
  end
end
return 1
"""

# Seed the configured limits if absent and read them, in one round trip.
_CONFIG_LUA = """
redis.call('HSETNX', KEYS[1], 'per_user_rpm', ARGV[1])
redis.call('HSETNX', KEYS[1], 'global_rpm', ARGV[2])
return redis.call('HMGET', KEYS[1], 'per_user_rpm', 'global_rpm')
"""


class SharedRateLimiter(RateLimiter):
    """Moving-window limits per user and for all replicas together, kept in Redis.

    Exact as ``RateLimiter`` is, across processes: the user's window is checked and
    taken in one atomic step (``limits``' Lua script), so of any number of
    concurrent requests on any replicas exactly ``per_user_rpm`` are admitted per
    60 s. One request takes its slots in three steps: test the global window, hit
    (check and take) the user's, hit the global one. When another replica fills the
    global window between the first and the last step, the request is refused
    (scope "global") and the user's slot it took stays taken until it is 60 s old;
    testing the global window first makes this a race of microseconds. The user's
    window goes first so that a user at their own limit never uses up global slots.

    Fails closed: while Redis does not answer, ``acquire`` raises
    ``SharedStateUnavailable`` (an outage must not lift a limit to limit x replicas),
    ``status`` reports nothing admitted with the reason in ``unavailable``, and
    ``limits`` returns the last limits read.

    Args:
        url: The Redis URL (``Settings.redis_url``).
        per_user_rpm: The per-user limit of this replica's settings (in force when Redis
            holds none yet, or holds another seed: module docstring).
        global_rpm: The global limit of its settings (the same).
        batch_share: The fraction of the per-user limit a user's batch may take
            (``RateLimiter``; this replica's setting).
        prefix: Key prefix in Redis.

    Raises:
        ValueError: a limit below 1, a share outside 0.05 to 1.0, or a URL redis-py
            does not accept.
    """

    def __init__(self, url: str, *, per_user_rpm: int = 30, global_rpm: int = 120, batch_share: float = 1.0,
                 prefix: str = PREFIX) -> None:
        # validates; keeps the last read
        super().__init__(per_user_rpm=per_user_rpm, global_rpm=global_rpm, batch_share=batch_share)
        self._seed = (per_user_rpm, global_rpm)
        self._client = connect(url)
        self._redis_storage = RedisStorage(url, connection_pool=self._client.connection_pool,
                                           key_prefix=f"{prefix}:limits")
        self._shared = MovingWindowRateLimiter(self._redis_storage)
        self._config_key = f"{prefix}:limits:config"
        self._config = self._client.register_script(_CONFIG_LUA)
        self._read_at = -math.inf  # monotonic time of the last config read
        self._outage = Outage(url, "the shared rate-limit store",
                              "requests that need a rate-limit slot are refused until it answers again "
                              "(the limits fail closed)")
        try:  # a changed setting takes effect with this start (module docstring)
            self._client.register_script(_START_LUA)(keys=[self._config_key], args=[str(v) for v in self._seed])
        except REDIS_ERRORS as exc:  # Redis down at start: requests seed the hash once it answers
            self._outage.failed(exc)

    def _read_limits(self, *, max_age_s: float = 0.0) -> tuple[int, int]:
        """``(per_user_rpm, global_rpm)`` from Redis (seeded when absent); remembered as the last read.

        Args:
            max_age_s: Return the last read instead when it is at most this old (the
                request path passes ``CONFIG_MAX_AGE_S``: one Redis round trip fewer).

        Raises:
            redis.RedisError, OSError: Redis did not answer.
        """
        if max_age_s and time.monotonic() - self._read_at <= max_age_s:
            with self._lock:
                return self._user_item.amount, self._global_item.amount
        user_rpm, global_rpm = (int(v) for v in self._config(keys=[self._config_key], args=list(self._seed)))
        with self._lock:
            self._read_at = time.monotonic()
            if self._user_item.amount != user_rpm:
                self._user_item = _Limit(user_rpm, namespace="user")
            if self._global_item.amount != global_rpm:
                self._global_item = _Limit(global_rpm, namespace="global")
            return user_rpm, global_rpm

    def _window(self, item: _Limit, ident: str) -> WindowStatus:
        oldest, used = self._redis_storage.get_moving_window(item.key_for(ident), item.amount, item.get_expiry())
        # The oldest of the ``limit`` newest admissions: under the limit the next to
        # leave, at the limit the one whose leaving frees a slot (as RateLimiter says).
        rises_in = max(0.0, oldest + item.get_expiry() - time.time()) if used else 0.0
        return WindowStatus(limit=item.amount, remaining=max(0, item.amount - used), reset_in_s=round(rises_in, 3),
                            used=used)

    def acquire(self, user: str, *, rpm: int | None = None, batch: bool = False) -> None:
        """Take one slot for ``user`` and one global slot (and a batch slot for a batch
        row), on every replica's windows.

        Args:
            user: Whose window.
            rpm: A lower per-user limit for this user (kiosk visitors); the per-user
                limit in force still caps it.
            batch: A row of the user's batch (its share of the user's window, too).

        Raises:
            RateLimited: a window is full; ``retry_after_s`` is when its next slot
                frees, ``scope`` "global", "user" or "batch" (see the class and module
                docstrings for a refusal after an earlier window's slot was taken).
            SharedStateUnavailable: Redis did not answer (nothing was admitted).
        """
        try:
            user_rpm, global_rpm = self._read_limits(max_age_s=CONFIG_MAX_AGE_S)
            glob = _Limit(global_rpm, namespace="global")
            mine = _Limit(min(user_rpm, max(1, rpm)) if rpm is not None else user_rpm, namespace="user")
            if not self._shared.test(glob, _GLOBAL_ID):
                raise self._refusal(glob, _GLOBAL_ID, "global")
            if batch:  # test(user) first: a full window of chats must not cost the batch a slot
                if not self._shared.test(mine, user):
                    raise self._refusal(mine, user, "user")
                if not self._shared.hit(share := self._batch_item(mine), user):
                    raise self._refusal(share, user, "batch", of=mine.amount)
            if not self._shared.hit(mine, user):
                raise self._refusal(mine, user, "user")
            if not self._shared.hit(glob, _GLOBAL_ID):
                raise self._refusal(glob, _GLOBAL_ID, "global")
        except REDIS_ERRORS as exc:
            raise self._outage.failed(exc) from None
        self._outage.recovered()

    def status(self, user: str) -> LimitStatus:
        """``user``'s and everyone's windows as Redis holds them, without taking a slot.

        While Redis does not answer: nothing admitted, ``reset_in_s`` = ``RETRY_S``,
        the last limits read, and the reason in ``LimitStatus.unavailable`` (never raises).
        """
        try:
            user_rpm, global_rpm = self._read_limits()
            status = LimitStatus(self._window(_Limit(user_rpm, namespace="user"), user),
                                 self._window(_Limit(global_rpm, namespace="global"), _GLOBAL_ID),
                                 batch=self._window(_Limit(batch_rpm(user_rpm, self.batch_share), namespace="batch"),
                                                    user),
                                 batch_share=self.batch_share)
        except REDIS_ERRORS as exc:
            message = self._outage.failed(exc).message
            user_rpm, global_rpm = super().limits
            return LimitStatus(WindowStatus(user_rpm, 0, RETRY_S, 0), WindowStatus(global_rpm, 0, RETRY_S, 0),
                               unavailable=message, batch_share=self.batch_share,
                               batch=WindowStatus(batch_rpm(user_rpm, self.batch_share), 0, RETRY_S, 0))
        self._outage.recovered()
        return status

    def configure(self, *, per_user_rpm: int | None = None, global_rpm: int | None = None) -> None:
        """Change the limits on every replica: this one's next request, the others' within
        ``CONFIG_MAX_AGE_S``.

        Requests already made keep counting (see the module docstring for a limit
        lowered and raised again within a minute).

        Raises:
            ValueError: a limit below 1; then neither limit changes.
            SharedStateUnavailable: Redis did not answer; neither limit changed.
        """
        for name, value in (("per_user_rpm", per_user_rpm), ("global_rpm", global_rpm)):
            if value is not None:
                _check_rpm(name, value)
        fields = {k: v for k, v in (("per_user_rpm", per_user_rpm), ("global_rpm", global_rpm)) if v is not None}
        if not fields:
            return
        try:
            self._read_limits()  # seeds the other field, so an absent hash does not leave it empty
            self._client.hset(self._config_key, mapping=fields)
            self._read_limits()
        except REDIS_ERRORS as exc:
            raise self._outage.failed(exc) from None
        self._outage.recovered()

    @property
    def limits(self) -> tuple[int, int]:
        """``(per_user_rpm, global_rpm)`` in force on every replica; the last read while Redis is down."""
        try:
            return self._read_limits()
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return super().limits

    @property
    def unavailable(self) -> str:
        """Why Redis is unreachable right now, in words; "" while it answers."""
        return self._outage.message

    def close(self) -> None:
        """Close the connections to Redis."""
        self._client.close()


__all__ = ["CONFIG_MAX_AGE_S", "RETRY_S", "SharedRateLimiter"]
