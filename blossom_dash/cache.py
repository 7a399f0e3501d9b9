"""The service's response cache: an in-memory TTL + LRU map with honest statistics.

Built on ``cachetools.TLRUCache`` (LRU with a per-entry expiry time); this module adds
what a dashboard needs on top: a lock (the service is called from many Streamlit
threads), hit/miss/eviction/expiration counters that mean what they say, live
reconfiguration that keeps each entry's age and recency, and the canonical request key.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from cachetools import TLRUCache


def request_key(**parts: Any) -> str:
    """The cache key of a request: sha256 of its canonical JSON.

    Args:
        **parts: Everything that changes the answer (backend URL, kind, model,
            messages, parameters). Never pass the API key.

    Returns:
        A 64-character hex digest. Key order does not matter; ``None`` values are kept,
        so ``seed=None`` and ``seed=1`` are different keys.
    """
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One cached response.

    Attributes:
        value: The result object returned to callers (immutable).
        nbytes: Size of the payload (text bytes or image bytes).
        latency_ms: What the original backend call cost; a hit saves this much.
        created: Timer reading when stored (seconds).
    """

    value: Any
    nbytes: int
    latency_ms: float
    created: float


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of the cache counters.

    ``hit_rate`` is hits / (hits + misses) over lookups made while the cache was
    enabled, 0.0 before the first lookup.
    """

    enabled: bool
    entries: int
    max_entries: int
    ttl_s: float
    hits: int
    misses: int
    hit_rate: float
    evictions: int
    expirations: int
    bytes: int
    saved_ms: float


class _CountingCache(TLRUCache):
    """TLRUCache that reports capacity evictions and expirations to callbacks."""

    def __init__(self, maxsize: int, ttl_s: Callable[[], float], timer: Callable[[], float],
                 on_evict: Callable[[], None], on_expire: Callable[[int], None]) -> None:
        # An entry expires ttl_s after it was first stored, whenever it is re-inserted.
        super().__init__(maxsize=maxsize, ttu=lambda _k, entry, _now: entry.created + ttl_s(), timer=timer)
        self._on_evict = on_evict
        self._on_expire = on_expire

    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()
        self._on_evict()
        return item

    def expire(self, time: float | None = None) -> list[tuple[Any, Any]]:
        expired = super().expire(time)
        if expired:
            self._on_expire(len(expired))
        return expired

    def lru_items(self) -> list[tuple[Any, Any]]:
        """Every live entry, least recently used first (empties the cache)."""
        items = []
        while len(self):
            items.append(TLRUCache.popitem(self))  # the base method: not an eviction
        return items


class ResponseCache:
    """Thread-safe TTL + LRU response cache.

    Args:
        enabled: Whether lookups and stores happen at all.
        ttl_s: Seconds an entry stays valid.
        max_entries: Capacity; the least recently used entry is evicted beyond it.
        timer: Clock in seconds (inject a fake one in tests).
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        ttl_s: float = 3600.0,
        max_entries: int = 512,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._timer = timer
        self._enabled = enabled
        self._ttl_s = float(ttl_s)
        self._hits = self._misses = self._evictions = self._expirations = 0
        self._saved_ms = 0.0
        self._data = self._new_map(max_entries)

    def _new_map(self, max_entries: int) -> _CountingCache:
        return _CountingCache(max_entries, lambda: self._ttl_s, self._timer, self._count_eviction,
                              self._count_expirations)

    # Both are called under self._lock, from inside the cache's own methods.
    def _count_eviction(self) -> None:
        self._evictions += 1

    def _count_expirations(self, n: int) -> None:
        self._expirations += n

    def get(self, key: str) -> CacheEntry | None:
        """Look a key up, counting a hit or a miss.

        Returns:
            The entry, or None when absent, expired or the cache is disabled (a
            disabled cache counts nothing).
        """
        with self._lock:
            if not self._enabled:
                return None
            entry = self._data.get(key)  # None once expired (purged and counted by expire())
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            self._saved_ms += entry.latency_ms
            return entry

    def put(self, key: str, value: Any, *, nbytes: int, latency_ms: float) -> None:
        """Store a response (no-op while disabled)."""
        with self._lock:
            if self._enabled:
                self._data[key] = CacheEntry(value, int(nbytes), float(latency_ms), self._timer())

    def clear(self) -> int:
        """Drop every entry; counters are kept.

        Returns:
            How many entries were removed.
        """
        with self._lock:
            n = len(self._data)
            self._data.clear()
            return n

    def configure(
        self,
        *,
        enabled: bool | None = None,
        ttl_s: float | None = None,
        max_entries: int | None = None,
    ) -> CacheStats:
        """Change the live cache; takes effect for the next lookup.

        Args:
            enabled: Turn lookups and stores on or off (entries are kept while off).
            ttl_s: New TTL in seconds (> 0); entries older than it expire at once.
            max_entries: New capacity (>= 1); the least recently used entries beyond
                it are evicted and counted.

        Returns:
            The stats after the change.

        Raises:
            ValueError: ``ttl_s <= 0`` or ``max_entries < 1``.
        """
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError("ttl_s must be > 0 seconds")
        if max_entries is not None and max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        with self._lock:
            if enabled is not None:
                self._enabled = bool(enabled)
            if ttl_s is not None or max_entries is not None:
                if ttl_s is not None:
                    self._ttl_s = float(ttl_s)
                capacity = max_entries or int(self._data.maxsize)
                self._data.expire()  # under the old TTL
                old = self._data.lru_items()
                self._evictions += max(0, len(old) - capacity)
                self._data = self._new_map(capacity)
                now = self._timer()
                for key, entry in old[-capacity:]:  # the most recently used, in recency order
                    if entry.created + self._ttl_s <= now:
                        self._expirations += 1  # a shorter TTL has already run out
                    else:
                        self._data[key] = entry
        return self.stats()

    def stats(self) -> CacheStats:
        """A consistent snapshot of the counters and sizes."""
        with self._lock:
            self._data.expire()
            lookups = self._hits + self._misses
            return CacheStats(
                enabled=self._enabled,
                entries=len(self._data),
                max_entries=int(self._data.maxsize),
                ttl_s=self._ttl_s,
                hits=self._hits,
                misses=self._misses,
                hit_rate=(self._hits / lookups) if lookups else 0.0,
                evictions=self._evictions,
                expirations=self._expirations,
                bytes=sum(e.nbytes for e in self._data.values()),
                saved_ms=self._saved_ms,
            )
