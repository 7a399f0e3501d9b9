"""One computation per key and interval, shared by every caller in the process.

The Monitor page refreshes every few seconds in every open tab. Without sharing, each
viewer pays for the same SQL passes and the same pandas work: measured on the seeded
300-event store, one tab cost 6 % of a core at the 5 s refresh and twenty tabs a whole
core (``bench/monitor.py``). ``SharedResults`` keeps the last result per key for its
interval and makes callers that arrive while it is being computed wait for that one
computation instead of starting their own (single-flight).

Why not ``st.cache_data``: it keys by a hash of the pickled arguments, copies the value
out to every caller (pickling a snapshot of frames per viewer is the cost we are
removing), has one TTL per function rather than per refresh interval, and lets callers
that arrive during a computation each start another (no single-flight); it also lives
in ``ui/``, while the service owns the Monitor reads. cachetools' ``TLRUCache`` gives
per-entry expiry and a size bound; the in-flight bookkeeping around it is ours
because cachetools' ``@cached(lock=...)`` releases the lock while computing, so it
does not coalesce concurrent misses either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cachetools import TLRUCache

T = TypeVar("T")


@dataclass
class _Entry:
    value: Any
    expires: float  # on the cache's clock


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class SharedResults:
    """Results shared per key for an interval, each computed once however many ask.

    A result is fresh for ``every_s`` seconds from the moment its computation
    *started* (so what it shows is never older than ``every_s``); then the next caller
    recomputes it. Concurrent callers of one missing key wait for the first one's
    computation (single-flight). A failed computation is not kept: its waiters get the
    same exception and the next caller tries again. Values are handed out as they are:
    callers must treat them as read-only.

    Args:
        maxsize: Entries kept at most (least recently used dropped first).
        clock: Seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, maxsize: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cache: TLRUCache[Hashable, _Entry] = TLRUCache(maxsize, ttu=lambda _k, e, _now: e.expires,
                                                             timer=clock)
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()
        self._computations: dict[str, int] = {}
        self._hits = 0
        self._joined = 0

    def get(self, key: Hashable, every_s: float, compute: Callable[[], T], *, kind: str = "") -> T:
        """The fresh result for ``key``, computing it (once) when there is none.

        Args:
            key: Hashable identity of the result (everything the result depends on).
            every_s: How long a result stays fresh, seconds; 0 or less computes
                every time (nothing kept).
            compute: Builds the result; called at most once at a time per key.
            kind: Label the computation is counted under in ``stats()``.

        Raises:
            Whatever ``compute`` raised (to its caller and to every caller waiting on it).
        """
        if every_s <= 0:
            self._count(kind)
            return compute()
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._hits += 1
                return entry.value  # type: ignore[no-any-return]
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            else:
                self._joined += 1
            started = self._clock()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value  # type: ignore[no-any-return]
        try:
            value = compute()
        except BaseException as exc:
            with self._lock:
                del self._flights[key]
            flight.error = exc
            flight.done.set()
            raise
        with self._lock:
            self._computations[kind] = self._computations.get(kind, 0) + 1
            self._cache[key] = _Entry(value, started + every_s)  # not kept if already stale
            del self._flights[key]
        flight.value = value
        flight.done.set()
        return value

    def _count(self, kind: str) -> None:
        with self._lock:
            self._computations[kind] = self._computations.get(kind, 0) + 1

    def stats(self) -> dict[str, Any]:
        """``computations`` (by kind), ``hits`` (served from a kept result), ``joined``
        (waited for another caller's computation), ``entries`` (results kept now)."""
        with self._lock:
            return {"computations": dict(self._computations), "hits": self._hits, "joined": self._joined,
                    "entries": len(self._cache)}

    def clear(self) -> None:
        """Forget every kept result (computations in flight finish and are kept)."""
        with self._lock:
            self._cache.clear()


__all__ = ["SharedResults"]
