"""The service's response cache: an in-memory TTL + LRU map with honest statistics.

Built on ``cachetools.TLRUCache`` (LRU with a per-entry expiry time); this module adds
what a dashboard needs on top: a lock (the service is called from many Streamlit
threads), hit/miss/eviction/expiration counters that mean what they say, live
reconfiguration that keeps each entry's age and recency, and the canonical request key.

With ``persistent`` on, every stored answer is also recorded on disk
(``replay.RecordingStore``, diskcache under ``<data_dir>/replay``) and a memory miss
falls back to the recording (a hit), so answers survive restarts. ``replay_only``
serves recordings only, of any age and from any backend that recorded them; the
service refuses whatever was not recorded instead of calling the backend.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachetools import TLRUCache

from .replay import ImportReport, RecordingStore, canonical_key, lookup_alias

log = logging.getLogger("blossom_dash.cache")


class RequestKey(str):
    """A request key (64 hex characters) that remembers what it was made of.

    It is a plain ``str`` to every caller; the cache reads ``parts`` to record the
    request for display and ``replay_alias`` to find the answer in replay-only mode
    whichever backend recorded it.
    """

    parts: dict[str, Any]
    random_parts: tuple[str, ...]

    def __new__(cls, parts: dict[str, Any], random_parts: Collection[str] = ()) -> RequestKey:
        key = super().__new__(cls, canonical_key(parts))
        key.parts = parts
        key.random_parts = tuple(random_parts)
        return key

    @functools.cached_property
    def replay_alias(self) -> str:
        """The backend-independent key replay-only lookups use (computed on first use:
        two more hashes that only a replay-only miss needs)."""
        return lookup_alias(self.parts, self.random_parts)


def request_key(*, random_parts: Collection[str] = (), **parts: Any) -> RequestKey:
    """The cache key of a request: sha256 of its canonical JSON.

    Args:
        random_parts: Names of parts the caller picked at random, not the user (an
            image's seed): replay-only lookups ignore them.
        **parts: Everything that changes the answer (``backend_identity``, kind,
            model, messages, parameters). Never pass the API key.

    Returns:
        A 64-character hex digest (a ``RequestKey``). Key order does not matter;
        ``None`` values are kept, so ``seed=None`` and ``seed=1`` are different keys.
    """
    return RequestKey(parts, random_parts)


def backend_identity(name: str, base_url: str) -> str:
    """What identifies a backend in a request key.

    The embedded demo backend listens on a random port each start but answers
    deterministically, so it is ``"demo"``; any other backend is its base URL.
    """
    return "demo" if name == "demo" else base_url


@dataclass(frozen=True)
class CacheEntry:
    """One cached response.

    Attributes:
        value: The result object returned to callers (immutable).
        nbytes: Size of the payload (text bytes or image bytes).
        latency_ms: What the original backend call cost; a hit saves this much.
        created: Timer reading when stored (seconds).
        recorded: Also on disk (written through, or read from a recording).
    """

    value: Any
    nbytes: int
    latency_ms: float
    created: float
    recorded: bool = False


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of the cache counters.

    ``hit_rate`` is hits / (hits + misses) over lookups made while the cache was
    enabled, 0.0 before the first lookup; answers read back from a recording count as
    hits. ``persistent_entries`` / ``persistent_bytes``: recordings on disk and their
    size (0 when no recording folder exists).

    ``shared``: the figures are every replica's together, read from Redis
    (``shared_cache.SharedResponseCache``; recordings stay this host's); False: this
    process's. ``unavailable``: why Redis could not be read ("" when it was); the
    other figures are then the last ones read.
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
    persistent: bool = False
    replay_only: bool = False
    persistent_entries: int = 0
    max_bytes: int = 0
    persistent_bytes: int = 0
    shared: bool = False
    unavailable: str = ""


class _CountingCache(TLRUCache):
    """TLRUCache capped in bytes (cachetools' ``getsizeof``) and in entries, reporting
    capacity evictions and expirations to callbacks."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: Callable[[], float], timer: Callable[[], float],
                 on_evict: Callable[[], None], on_expire: Callable[[int], None]) -> None:
        # An entry expires ttl_s after it was first stored, whenever it is re-inserted.
        super().__init__(maxsize=max_bytes, ttu=lambda _k, entry, _now: entry.created + ttl_s(), timer=timer,
                         getsizeof=lambda entry: max(1, entry.nbytes))
        self.max_entries = max_entries
        self._on_evict = on_evict
        self._on_expire = on_expire

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)  # evicts least recently used entries past max_bytes
        while len(self) > self.max_entries:
            self.popitem()

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
    """Thread-safe TTL + LRU response cache, optionally recorded on disk for replay.

    Args:
        enabled: Whether lookups and stores happen at all.
        ttl_s: Seconds an entry stays valid (a recording older than this is not
            served unless ``replay_only``; it stays on disk).
        max_entries: Capacity of the memory in entries; the least recently used entry
            is evicted beyond it (recordings are never evicted).
        max_bytes: Capacity of the memory in payload bytes, evicted the same way; an
            answer larger than it alone is not kept in memory.
        timer: Clock in seconds (inject a fake one in tests).
        persist_dir: Folder of the recordings (``<data_dir>/replay``); None allows
            no persistence.
        persistent: Record every stored answer and fall back to recordings.
        replay_only: Serve recordings only (implies ``persistent``).

    Raises:
        ValueError: ``persistent`` or ``replay_only`` without ``persist_dir``.
        OSError: the recording folder cannot be opened.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        ttl_s: float = 3600.0,
        max_entries: int = 512,
        max_bytes: int = 256 * 1024 * 1024,
        timer: Callable[[], float] = time.monotonic,
        persist_dir: Path | str | None = None,
        persistent: bool = False,
        replay_only: bool = False,
    ) -> None:
        self._lock = threading.Lock()
        self._timer = timer
        self._enabled = enabled
        self._ttl_s = float(ttl_s)
        self._hits = self._misses = self._evictions = self._expirations = 0
        self._saved_ms = 0.0
        self._max_bytes = int(max_bytes)
        self._data = self._new_map(max_entries)
        self._persist_dir = Path(persist_dir) if persist_dir is not None else None
        self._store: RecordingStore | None = None
        self._store_lock = threading.Lock()
        self._persistent = self._replay_only = False
        #: Answers that could not be recorded (disk full, unrecordable value); logged.
        self.record_errors = 0
        if persistent or replay_only:
            self.configure(persistent=True, replay_only=replay_only)

    def _new_map(self, max_entries: int) -> _CountingCache:
        return _CountingCache(max_entries, self._max_bytes, lambda: self._ttl_s, self._timer, self._count_eviction,
                              self._count_expirations)

    # Both are called under self._lock, from inside the cache's own methods.
    def _count_eviction(self) -> None:
        self._evictions += 1

    def _count_expirations(self, n: int) -> None:
        self._expirations += n

    @property
    def persistent(self) -> bool:
        """Whether answers are recorded on disk and read back from there."""
        return self._persistent

    @property
    def replay_only(self) -> bool:
        """Whether only recordings are served (the service then never calls a backend)."""
        return self._replay_only

    def recordings(self, *, create: bool = True) -> RecordingStore | None:
        """The recording store, opened on first use.

        Args:
            create: Open (and create) the folder if it is not open yet; with False,
                None unless it is open or already exists on disk.

        Returns:
            The store, or None (no ``persist_dir``, or ``create=False`` and no folder).

        Raises:
            OSError: the folder cannot be created or opened.
        """
        with self._store_lock:
            if self._store is None and self._persist_dir is not None and (create or self._persist_dir.exists()):
                self._store = RecordingStore(self._persist_dir)
            return self._store

    def get(self, key: str) -> CacheEntry | None:
        """Look a key up, counting a hit or a miss.

        A memory miss falls back to the recording when ``persistent`` (a recording
        older than the TTL is a miss) and, in ``replay_only``, to a recording of the
        same request made on another backend (``RequestKey.replay_alias``).

        Returns:
            The entry, or None when absent, expired or the cache is disabled (a
            disabled cache counts nothing; ``replay_only`` looks up even then).
        """
        with self._lock:
            replay_only = self._replay_only
            if not (self._enabled or replay_only):
                return None
            entry = self._data.get(key)  # None once expired (purged and counted by expire())
            if entry is not None and (entry.recorded or not replay_only):
                self._hits += 1
                self._saved_ms += entry.latency_ms
                return entry
            store = self._store if self._persistent else None
            ttl_s = self._ttl_s
        rec = None
        if store is not None:
            rec = store.get(key, max_age_s=None if replay_only else ttl_s)
            alias = getattr(key, "replay_alias", None)
            if rec is None and replay_only and alias and (other := store.resolve(alias)):
                rec = store.get(other)
        with self._lock:
            if rec is None:
                self._misses += 1
                return None
            self._hits += 1
            self._saved_ms += rec.latency_ms
            age_s = max(0.0, time.time() - rec.created)
            entry = CacheEntry(rec.value, rec.nbytes, rec.latency_ms, self._timer() - age_s, recorded=True)
            if self._enabled and rec.key == key and age_s < self._ttl_s and rec.nbytes <= self._max_bytes:
                self._data[key] = entry  # back on the fast path, keeping its age
            return entry

    def put(self, key: str, value: Any, *, nbytes: int, latency_ms: float) -> None:
        """Store a response: in memory while enabled, on disk while ``persistent``.

        A failed recording is logged and counted (``record_errors``), never raised:
        the answer itself is good.
        """
        with self._lock:
            store = self._store if self._persistent else None
            enabled = self._enabled
        recorded = False
        if store is not None:
            try:
                store.put(key, value, request=getattr(key, "parts", {"key": str(key)}), nbytes=nbytes,
                          latency_ms=latency_ms)
                recorded = True
            except (OSError, TypeError, ValueError) as exc:
                self.record_errors += 1
                log.warning("could not record answer %s: %s", str(key)[:12], exc)
        if enabled and nbytes <= self._max_bytes:  # larger than the whole cache: not kept in memory
            with self._lock:
                if self._enabled:
                    self._data[key] = CacheEntry(value, int(nbytes), float(latency_ms), self._timer(), recorded)

    def clear(self) -> int:
        """Drop every entry from memory; counters and recordings are kept.

        Returns:
            How many entries were removed.
        """
        with self._lock:
            n = len(self._data)
            self._data.clear()
            return n

    def clear_recordings(self) -> int:
        """Delete every recording (and the memory entries that came from them).

        Returns:
            How many recordings were deleted.

        Raises:
            OSError: the folder cannot be opened.
        """
        store = self.recordings(create=False)
        n = store.clear() if store is not None else 0
        with self._lock:
            for key in [k for k, e in self._data.items() if e.recorded]:
                del self._data[key]
        return n

    def export_recordings(self, backend: dict[str, Any]) -> bytes:
        """Every recording as one ``.zip`` (``RecordingStore.export``).

        Raises:
            ValueError: no ``persist_dir``.
            OSError: the folder cannot be read.
        """
        store = self.recordings()
        if store is None:
            raise ValueError("this cache has no recording folder")
        return store.export(backend)

    def import_recordings(self, data: bytes) -> ImportReport:
        """Merge an exported ``.zip`` into the recordings (``RecordingStore.import_bytes``).

        Raises:
            replay.RecordError: the file is not a valid export (the message says why).
            ValueError: no ``persist_dir``.
            OSError: the folder cannot be written.
        """
        store = self.recordings()
        if store is None:
            raise ValueError("this cache has no recording folder")
        return store.import_bytes(data)

    def recorded_models(self, kind: str) -> list[str]:
        """Models with recordings of ``kind``, most recorded first ([] without recordings)."""
        store = self.recordings(create=False)
        return store.recorded_models(kind) if store is not None else []

    def configure(
        self,
        *,
        enabled: bool | None = None,
        ttl_s: float | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        persistent: bool | None = None,
        replay_only: bool | None = None,
    ) -> CacheStats:
        """Change the live cache; takes effect for the next lookup.

        Args:
            enabled: Turn lookups and stores on or off (entries are kept while off).
            ttl_s: New TTL in seconds (> 0); entries older than it expire at once.
            max_entries: New capacity (>= 1); the least recently used entries beyond
                it are evicted and counted.
            max_bytes: New capacity in bytes (>= 1), applied the same way.
            persistent: Record answers on disk and read them back (recordings are
                kept when turned off). Off also turns ``replay_only`` off.
            replay_only: Serve recordings only; on also turns ``persistent`` on.

        Returns:
            The stats after the change.

        Raises:
            ValueError: ``ttl_s <= 0``, ``max_entries < 1``, persistence without a
                ``persist_dir``, or ``persistent=False`` with ``replay_only=True``.
            OSError: the recording folder cannot be opened.
        """
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError("ttl_s must be > 0 seconds")
        if max_entries is not None and max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if persistent is False and replay_only:
            raise ValueError("replay-only needs the persistent cache: it serves recordings")
        if persistent or replay_only:
            if self._persist_dir is None:
                raise ValueError("this cache has no folder for recordings")
            self.recordings()  # open before switching, so a failure changes nothing
        with self._lock:
            if enabled is not None:
                self._enabled = bool(enabled)
            if replay_only is not None:
                self._replay_only = bool(replay_only)
                self._persistent = self._persistent or self._replay_only
            if persistent is not None:
                self._persistent = bool(persistent)
                self._replay_only = self._replay_only and self._persistent
            if ttl_s is not None or max_entries is not None or max_bytes is not None:
                if ttl_s is not None:
                    self._ttl_s = float(ttl_s)
                if max_bytes is not None:
                    self._max_bytes = int(max_bytes)
                capacity = max_entries or int(self._data.max_entries)
                self._data.expire()  # under the old TTL
                old = self._data.lru_items()
                self._evictions += max(0, len(old) - capacity)
                self._data = self._new_map(capacity)
                now = self._timer()
                for key, entry in old[-capacity:]:  # the most recently used, in recency order
                    if entry.created + self._ttl_s <= now:
                        self._expirations += 1  # a shorter TTL has already run out
                    elif entry.nbytes > self._max_bytes:
                        self._evictions += 1
                    else:
                        self._data[key] = entry  # past max_bytes, the oldest of these are evicted (counted)
        return self.stats()

    def stats(self) -> CacheStats:
        """A consistent snapshot of the counters and sizes."""
        store = self.recordings(create=False)
        disk_entries, disk_bytes = (store.count(), store.volume()) if store is not None else (0, 0)
        with self._lock:
            self._data.expire()
            lookups = self._hits + self._misses
            return CacheStats(
                enabled=self._enabled,
                entries=len(self._data),
                max_entries=int(self._data.max_entries),
                max_bytes=self._max_bytes,
                ttl_s=self._ttl_s,
                hits=self._hits,
                misses=self._misses,
                hit_rate=(self._hits / lookups) if lookups else 0.0,
                evictions=self._evictions,
                expirations=self._expirations,
                bytes=sum(e.nbytes for e in self._data.values()),
                saved_ms=self._saved_ms,
                persistent=self._persistent,
                replay_only=self._replay_only,
                persistent_entries=disk_entries,
                persistent_bytes=disk_bytes,
            )
