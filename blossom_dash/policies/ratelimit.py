"""Per-user and global request limits over a moving window (the ``limits`` library).

Every request takes one slot from the user's window and one from the global window,
or from neither: the check and the take happen under one lock, so the limit is exact
under any number of threads (a plain test-then-hit pair of calls is not).

A window is keyed by who it counts (a user, or everyone), not by its limit, so when
``configure()`` changes a limit the requests already made stay in the window at the
times they were made and count against the new limit until they are 60 s old.

A user's batch rows (a ``Caller`` of purpose ``"batch"``) also take a slot from a third
window, the user's batch window, whose limit is their share of the user's limit:
``batch_rpm(per_user_rpm, batch_share)`` (``Settings.batch_share``, default 0.5). So a
running batch never holds more than that part of the user's window, and the rest
stays free for their chats, Compare and every other interactive request. The share
applies always, not only once the user has chatted in the last minute: a batch that had
filled the window before the user started typing would refuse their first prompt,
which is what the share is there to prevent.

These windows are this process's; ``shared_limits.SharedRateLimiter`` keeps them in
Redis for every replica (``Settings.redis_url``).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from ..errors import RateLimited

_GLOBAL_ID = "all"
_EXPIRE_EVERY_S = 1.0


def batch_rpm(per_user_rpm: int, share: float) -> int:
    """The requests per minute a user's batch may take: ``ceil(share × per_user_rpm)``, at least 1.

    Args:
        per_user_rpm: The user's limit (RPM) in force.
        share: The batch's fraction of it (``Settings.batch_share``, 0.05 to 1.0).

    Returns:
        Whole requests per minute; ``15`` for 30 RPM at 0.5, ``4`` for 10 RPM at 0.35.
    """
    # round() first: 0.1 * 30 is 3.0000000000000004 in binary floating point, not 4 requests.
    return max(1, math.ceil(round(share * per_user_rpm, 9)))


def _check_share(value: float) -> None:
    if not 0.05 <= value <= 1.0:
        raise ValueError(f"batch_share must be between 0.05 and 1.0 (a fraction of the per-user limit), not {value}")


class _Limit(RateLimitItemPerMinute):
    """A per-minute limit whose window key leaves out the amount.

    ``limits`` puts the amount in the key, so a changed limit would start a new, empty
    window and the requests already made would have to be copied into it (which lost
    count when a limit was lowered and raised again). Keyed by scope and identity only,
    one window outlives every change of its limit.
    """

    def key_for(self, *identifiers: bytes | str | int | float) -> str:
        """``"<namespace>/<identifiers>"``: the scope ("user"/"global") and who is counted."""
        return "/".join([self.namespace, *(str(i) for i in identifiers)])


class _Entry:
    """One admitted request in a moving window (the shape ``MemoryStorage`` stores).

    Attributes:
        atime: When it was admitted (clock seconds).
        expiry: When it leaves the window (clock seconds).
    """

    __slots__ = ("atime", "expiry")

    def __init__(self, atime: float, expiry_s: float) -> None:
        self.atime = atime
        self.expiry = atime + expiry_s


def _counted(events: list[_Entry], now: float, expiry: float) -> int:
    """How many of ``events`` (newest first) still count at ``now`` (window ``expiry`` seconds)."""
    return bisect.bisect_left(events, -(now - expiry), key=lambda e: -e.atime)


class _Storage(MemoryStorage):
    """``limits``' MemoryStorage for moving windows, on an injected clock, with one expiry thread.

    The stock moving-window methods read ``time.time()`` themselves and disagree about
    a request exactly ``expiry`` seconds old (``acquire_entry`` still counts it,
    ``get_moving_window`` does not). Here all of them read ``clock`` and use one rule:
    a request admitted at ``a`` counts at time ``t`` while ``t - expiry < a``.

    The stock storage also starts a ``threading.Timer`` (a new OS thread) 10 ms after any
    hit whenever the previous one has finished: under steady traffic a thread start
    per request or two, and each start makes the request thread wait for the new
    thread to run (~0.2 ms here, more than the rest of the limiter). Expiry only
    trims entries that no longer count, so one daemon thread doing it every second
    keeps memory bounded at no per-request cost; it ends once the storage is dropped.

    Args:
        clock: Current time in seconds; must never go backwards.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        # Set before MemoryStorage starts its one-off timer, which calls expire().
        self._clock = clock
        self._expiry_thread: threading.Thread | None = None
        super().__init__()

    def _MemoryStorage__schedule_expiry(self) -> None:
        if self._expiry_thread is None:
            self._expiry_thread = threading.Thread(target=_expire_forever, args=(weakref.ref(self),),
                                                   name="blossom-dash-limits", daemon=True)
            self._expiry_thread.start()

    def _MemoryStorage__expire_events(self) -> None:
        self.expire()

    def expire(self) -> None:
        """Drop the entries that have left their windows, and windows left empty."""
        now = self._clock()
        for key in list(self.events):
            with self.locks[key]:
                if events := self.events.get(key):
                    # Newest first; keep the entries whose expiry is still ahead.
                    self.events[key] = events[:bisect.bisect_left(events, -now, key=lambda e: -e.expiry)]
                if not self.events.get(key):
                    self.events.pop(key, None)
                    self.locks.pop(key, None)

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Admit ``amount`` requests into ``key``'s window if it then holds at most ``limit``.

        Args:
            key: The window.
            limit: Requests allowed in the window.
            expiry: Window length, seconds.
            amount: Requests to admit together.

        Returns:
            Whether they were admitted (all of them, or none).
        """
        if amount > limit:
            return False
        self._MemoryStorage__schedule_expiry()
        with self.locks[key]:
            events = self.events.setdefault(key, [])
            now = self._clock()
            # Newest first: the window is full if the entry ``amount`` places short of
            # the limit still counts.
            if limit - amount < len(events) and events[limit - amount].atime > now - expiry:
                return False
            events[:0] = [_Entry(now, expiry)] * amount
            return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """``(when the oldest counted request was admitted, how many count)``; ``(now, 0)`` if none."""
        now = self._clock()
        with self.locks[key]:
            events = self.events.get(key, [])
            count = _counted(events, now, expiry)
            return (events[count - 1].atime, count) if count else (now, 0)

    def window(self, key: str, limit: int, expiry: int) -> tuple[int, float]:
        """The requests counted in ``key``'s window and when its free slots next grow.

        Args:
            key: The window.
            limit: Requests allowed in the window (at least 1).
            expiry: Window length, seconds.

        Returns:
            ``(used, rises_in_s)``: the requests that count now, and seconds until
            ``limit - used`` next goes up, or until a slot frees when ``used >= limit``
            (0.0 if the window is empty).
        """
        now = self._clock()
        with self.locks[key]:
            events = self.events.get(key, [])
            used = _counted(events, now, expiry)
            if not used:
                return 0, 0.0
            # Newest first. Under the limit, a slot is added when the oldest leaves; at or
            # over it (a lowered limit), only once the limit-th newest has left too.
            return used, events[min(used, limit) - 1].expiry - now


def _expire_forever(ref: weakref.ref[_Storage]) -> None:
    """Run ``expire()`` every ``_EXPIRE_EVERY_S`` seconds until the storage is gone."""
    while True:
        time.sleep(_EXPIRE_EVERY_S)
        storage = ref()
        if storage is None:
            return
        storage.expire()
        del storage  # no strong reference while sleeping, so the storage can be collected


@dataclass(frozen=True)
class WindowStatus:
    """One window's state.

    Requests already made carry over when a limit changes: they count against the new
    limit until they are 60 s old, so right after a limit is lowered ``used`` can be
    above ``limit``.

    Attributes:
        limit: Requests allowed per 60 s moving window (RPM), as configured now.
        remaining: Requests still admitted now: ``limit - used``, at least 0.
        reset_in_s: Seconds until ``remaining`` next goes up (0 if the window is empty):
            until the oldest request leaves while there is room, and until a slot frees
            when the window is full, which after a lowered limit is later than that.
        used: Requests made in the last 60 s, under whatever limit applied when they were made.
    """

    limit: int
    remaining: int
    reset_in_s: float
    used: int


@dataclass(frozen=True)
class LimitStatus:
    """The state of a user's window and of the global window.

    Requests already made in the last minute still count after a limit changes
    (see ``WindowStatus.used``).

    Attributes:
        user: The user's window.
        global_: Everyone's window.
        unavailable: Why the windows could not be read (the shared Redis is
            unreachable; ``shared_limits.SharedRateLimiter``), "" when they were. Then
            nothing is admitted: ``remaining`` is 0, ``used`` is 0 (unknown),
            ``reset_in_s`` is when to look again and ``limit`` the last one read.
        batch: The user's batch window: ``used`` is how many of ``user.used`` their
            batch rows took, ``limit`` is ``batch_rpm(user.limit, batch_share)``.
            None only where a status is made without one.
        batch_share: The fraction of the user's limit a batch may take (0.05 to 1.0).
    """

    user: WindowStatus
    global_: WindowStatus
    unavailable: str = ""
    batch: WindowStatus | None = None
    batch_share: float = 1.0


def _check_rpm(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be at least 1 request per minute")


class RateLimiter:
    """Moving-window limits per user and for the whole process.

    Exact means: a request at time ``t`` is admitted if and only if, counting it, at
    most ``per_user_rpm`` of that user's requests and at most ``global_rpm`` of all
    users' requests were admitted in ``(t - 60 s, t]``, with the limits in force at
    ``t``. A request admitted at ``a`` counts until ``a + 60 s`` whatever ``configure()``
    does meanwhile: lowering a limit refuses new requests until enough earlier ones are
    60 s old, raising it admits the difference at once.

    Args:
        per_user_rpm: Requests per minute one user identity may make.
        global_rpm: Requests per minute all users together may make.
        batch_share: The fraction of ``per_user_rpm`` a user's batch rows may take
            (module docstring); 1.0 lets a batch use the whole window.
        clock: Current time in seconds; must never go backwards (the check and the
            take of one request read it separately).

    Raises:
        ValueError: a limit below 1, or a share outside 0.05 to 1.0.
    """

    def __init__(self, *, per_user_rpm: int = 30, global_rpm: int = 120, batch_share: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        _check_rpm("per_user_rpm", per_user_rpm)
        _check_rpm("global_rpm", global_rpm)
        _check_share(batch_share)
        self.batch_share = batch_share
        self._lock = threading.Lock()
        self._storage = _Storage(clock)
        self._strategy = MovingWindowRateLimiter(self._storage)
        self._user_item = _Limit(per_user_rpm, namespace="user")
        self._global_item = _Limit(global_rpm, namespace="global")

    def _window(self, item: _Limit, ident: str) -> WindowStatus:
        used, rises_in = self._storage.window(item.key_for(ident), item.amount, item.get_expiry())
        return WindowStatus(limit=item.amount, remaining=max(0, item.amount - used),
                            reset_in_s=round(rises_in, 3), used=used)

    def _batch_item(self, user_item: _Limit) -> _Limit:
        """The batch window's limit under the user limit ``user_item``."""
        return _Limit(batch_rpm(user_item.amount, self.batch_share), namespace="batch")

    def acquire(self, user: str, *, rpm: int | None = None, batch: bool = False) -> None:
        """Take one slot for ``user`` and one global slot (and one batch slot for a batch row), or none.

        Args:
            user: Whose window.
            rpm: A lower per-user limit for this user (kiosk visitors); the per-user
                limit in force still caps it.
            batch: A row of the user's batch: it must also fit the user's batch
                window (``batch_rpm`` of the per-user limit in force).

        Raises:
            RateLimited: a window is full; ``retry_after_s`` is when its next slot
                frees, ``scope`` says which window ("global", then "user", then
                "batch": in the order they are checked).
        """
        with self._lock:
            # test(global), test(batch) (when the user's window has room: a full one is
            # the reason to give), then hit(user) which tests and takes in one step, then
            # hit(batch) and hit(global), which cannot fail under the lock on a clock that
            # never goes back (a window only loses entries as time passes): every slot or none.
            if not self._strategy.test(self._global_item, _GLOBAL_ID):
                raise self._refusal(self._global_item, _GLOBAL_ID, "global")
            item = self._user_item
            if rpm is not None and rpm < item.amount:
                item = _Limit(max(1, rpm), namespace="user")  # the same window: keys leave the amount out
            share = self._batch_item(item) if batch else None
            if share is not None and self._strategy.test(item, user) and not self._strategy.test(share, user):
                raise self._refusal(share, user, "batch", of=item.amount)  # the user's own window first
            if not self._strategy.hit(item, user):
                raise self._refusal(item, user, "user")
            if share is not None:
                self._strategy.hit(share, user)
            self._strategy.hit(self._global_item, _GLOBAL_ID)

    def _refusal(self, item: _Limit, ident: str, scope: str, *, of: int = 0) -> RateLimited:
        status = self._window(item, ident)
        if scope == "batch":
            return RateLimited(
                f"Your batch has used its share of your limit: {item.amount} of your {of} requests per minute "
                f"({self.batch_share:.0%}).",
                f"It goes on as slots free up (in {status.reset_in_s:.0f} s); the rest of your limit stays free "
                "for your chats.",
                retry_after_s=max(status.reset_in_s, 0.001), scope="batch", status_code=None,
            )
        who = "You have" if scope == "user" else "All users together have"
        held = ""
        if scope == "user" and (batch := self._window(self._batch_item(item), ident).used):
            held = f" Your batch jobs made {batch:,} of them."  # the words the user never got
        return RateLimited(
            f"{who} reached the limit of {item.amount} requests per minute.{held}",
            f"Wait {status.reset_in_s:.0f} s, or raise the limit on the Controls page.",
            retry_after_s=max(status.reset_in_s, 0.001), scope=scope, status_code=None,
        )

    def status(self, user: str) -> LimitStatus:
        """The current windows of ``user`` and of the process, without taking a slot.

        Requests made before a limit changed are included (``used``, ``remaining``,
        ``reset_in_s`` all count them); ``batch`` is the user's batch window.
        """
        with self._lock:
            return LimitStatus(self._window(self._user_item, user), self._window(self._global_item, _GLOBAL_ID),
                               batch=self._window(self._batch_item(self._user_item), user),
                               batch_share=self.batch_share)

    def configure(self, *, per_user_rpm: int | None = None, global_rpm: int | None = None) -> None:
        """Change the limits; they apply to the next request.

        Requests already made keep counting against the new limit, at the times they
        were made, until they are 60 s old (see the class docstring).

        Raises:
            ValueError: a limit below 1; then neither limit changes.
        """
        for name, value in (("per_user_rpm", per_user_rpm), ("global_rpm", global_rpm)):
            if value is not None:
                _check_rpm(name, value)
        with self._lock:
            if per_user_rpm is not None:
                self._user_item = _Limit(per_user_rpm, namespace="user")
            if global_rpm is not None:
                self._global_item = _Limit(global_rpm, namespace="global")

    @property
    def limits(self) -> tuple[int, int]:
        """``(per_user_rpm, global_rpm)``."""
        return self._user_item.amount, self._global_item.amount
