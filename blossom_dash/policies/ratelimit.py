"""Per-user and global request limits over a moving window (the ``limits`` library).

Every request takes one slot from the user's window and one from the global window,
or from neither: the check and the take happen under one lock, so the limit is exact
under any number of threads (a plain test-then-hit pair of calls is not).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from ..errors import RateLimited

_GLOBAL_ID = "__global__"
_EXPIRE_EVERY_S = 1.0


class _Storage(MemoryStorage):
    """``limits``' MemoryStorage with one long-lived expiry thread.

    The stock storage starts a ``threading.Timer`` (a new OS thread) 10 ms after any
    hit whenever the previous one has finished: under steady traffic a thread start
    per request or two, and each start makes the request thread wait for the new
    thread to run (~0.2 ms here, more than the rest of the limiter). Expiry only
    trims old entries (the moving-window count itself uses timestamps), so one
    daemon thread doing it every second keeps memory bounded at no per-request cost.
    """

    def __init__(self) -> None:
        super().__init__()
        self._expiry_thread: threading.Thread | None = None

    def _MemoryStorage__schedule_expiry(self) -> None:
        if self._expiry_thread is None:
            self._expiry_thread = threading.Thread(target=self._expire_forever, name="blossom-dash-limits",
                                                   daemon=True)
            self._expiry_thread.start()

    def _expire_forever(self) -> None:
        while True:
            time.sleep(_EXPIRE_EVERY_S)
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class WindowStatus:
    """One window's state.

    Attributes:
        limit: Requests allowed per 60 s moving window (RPM).
        remaining: Requests still admitted now.
        reset_in_s: Seconds until the oldest request leaves the window (0 if empty).
    """

    limit: int
    remaining: int
    reset_in_s: float


@dataclass(frozen=True)
class LimitStatus:
    """The state of a user's window and of the global window."""

    user: WindowStatus
    global_: WindowStatus


class RateLimiter:
    """Moving-window limits per user and for the whole process.

    Args:
        per_user_rpm: Requests per minute one user identity may make.
        global_rpm: Requests per minute all users together may make.
    """

    def __init__(self, *, per_user_rpm: int = 30, global_rpm: int = 120) -> None:
        self._lock = threading.Lock()
        self._storage = _Storage()
        self._strategy = MovingWindowRateLimiter(self._storage)
        self._user_item = RateLimitItemPerMinute(per_user_rpm)
        self._global_item = RateLimitItemPerMinute(global_rpm)
        self._seen: dict[str, float] = {}  # identity -> last admitted (epoch s), for configure()

    def _window(self, item: RateLimitItemPerMinute, ident: str) -> WindowStatus:
        stats = self._strategy.get_window_stats(item, ident)
        reset_in = max(0.0, stats.reset_time - time.time()) if stats.remaining < item.amount else 0.0
        return WindowStatus(limit=item.amount, remaining=max(0, stats.remaining), reset_in_s=round(reset_in, 3))

    def acquire(self, user: str) -> None:
        """Take one slot for ``user`` and one global slot, or neither.

        Raises:
            RateLimited: a window is full; ``retry_after_s`` is when its oldest
                request leaves it, ``scope`` says which window ("user"/"global").
        """
        with self._lock:
            # test(global), then hit(user) which tests and takes in one step, then
            # hit(global), which cannot fail under the lock: both slots or neither.
            if not self._strategy.test(self._global_item, _GLOBAL_ID):
                raise self._refusal(self._global_item, _GLOBAL_ID, "global")
            if not self._strategy.hit(self._user_item, user):
                raise self._refusal(self._user_item, user, "user")
            self._strategy.hit(self._global_item, _GLOBAL_ID)
            self._seen[user] = time.time()

    def _refusal(self, item: RateLimitItemPerMinute, ident: str, scope: str) -> RateLimited:
        status = self._window(item, ident)
        who = "You have" if scope == "user" else "All users together have"
        return RateLimited(
            f"{who} reached the limit of {item.amount} requests per minute.",
            f"Wait {status.reset_in_s:.0f} s, or raise the limit on the Controls page.",
            retry_after_s=max(status.reset_in_s, 0.001), scope=scope, status_code=None,
        )

    def status(self, user: str) -> LimitStatus:
        """The current windows of ``user`` and of the process, without taking a slot."""
        with self._lock:
            return LimitStatus(self._window(self._user_item, user), self._window(self._global_item, _GLOBAL_ID))

    def configure(self, *, per_user_rpm: int | None = None, global_rpm: int | None = None) -> None:
        """Change the limits; they apply to the next request.

        Requests already in a window keep counting against the new limit. ``limits``
        keys a moving window by its limit, so they are carried into the new window
        as if made now: the new window is exact in count and at most 60 s
        conservative in when those slots free up.

        Raises:
            ValueError: a limit below 1.
        """
        for name, value in (("per_user_rpm", per_user_rpm), ("global_rpm", global_rpm)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 request per minute")
        with self._lock:
            cutoff = time.time() - 60
            self._seen = {u: t for u, t in self._seen.items() if t > cutoff}
            if per_user_rpm is not None and per_user_rpm != self._user_item.amount:
                self._user_item = self._carry(self._user_item, RateLimitItemPerMinute(per_user_rpm), self._seen)
            if global_rpm is not None and global_rpm != self._global_item.amount:
                self._global_item = self._carry(self._global_item, RateLimitItemPerMinute(global_rpm),
                                                [_GLOBAL_ID])

    def _carry(self, old: RateLimitItemPerMinute, new: RateLimitItemPerMinute, idents: Iterable[str]
               ) -> RateLimitItemPerMinute:
        for ident in idents:
            used = old.amount - self._strategy.get_window_stats(old, ident).remaining
            if used > 0:
                self._strategy.hit(new, ident, cost=min(used, new.amount))
            self._strategy.clear(old, ident)
        return new

    @property
    def limits(self) -> tuple[int, int]:
        """``(per_user_rpm, global_rpm)``."""
        return self._user_item.amount, self._global_item.amount
