"""The response cache shared by every replica, in Redis: TTL, LRU, entry and byte caps, stats.

Used instead of ``ResponseCache``'s memory when ``Settings.redis_url`` is set. Keys
are ``RequestKey`` (the same rule on every replica), so a miss answered on one
replica is a hit on all of them. There is no in-process layer in front: every lookup
is one Lua script in Redis (about a tenth of a millisecond on a LAN), so a clear or a
configure on one replica holds on every replica for the very next lookup, and the
LRU order and the caps are the same for everyone.

Layout under ``blossom-dash:cache`` (``<P>``):

- ``<P>:e:<key>``: the answer, ``SET ... PX <ttl>`` so Redis drops it when the TTL
  runs out even if no replica looks;
- ``<P>:born`` (sorted set, Redis server time in ms) and ``<P>:lru`` (sorted set, a
  shared counter bumped on every use): which entries are past the TTL, which was
  used least recently;
- ``<P>:size`` / ``<P>:lat`` (hashes): each entry's payload bytes and the backend
  latency a hit saves; ``<P>:meta``: the byte total and the LRU counter;
- ``<P>:stats``: hits, misses, evictions, expirations, saved_ms, for all replicas;
- ``<P>:config``: enabled, ttl_ms, max_entries, max_bytes. A replica seeds it from
  its settings when absent (``HSETNX``); ``configure`` on any replica changes it
  for all. Redis' own ``maxmemory`` is server-wide and is not used.

Every script first drops the entries past the TTL (counted as expirations), and a
store then evicts least recently used entries until both caps hold (evictions).
Times are Redis' ``TIME``, so replicas' clocks do not matter here.

Answers are stored in an explicit, versioned format, never pickled: anyone who can
write to Redis could otherwise run code in every replica. ``encode`` writes a JSON
header (orjson) naming one of four result types and its fields, with ``bytes``
fields as raw blobs after it; ``decode`` rebuilds only ``TextResult``,
``ImageResult``, ``AudioResult`` and ``Usage`` (not any dataclass of the package,
as replay's files do) and refuses anything else.

Recordings (``persistent``, ``replay_only``) stay on this host's disk and these
switches stay per process, as in ``ResponseCache``: replay is per host.

If Redis does not answer, a lookup is a miss and a store is skipped (the answer
comes from the backend; logged at most every 30 s, and ``stats().unavailable``
says why); ``clear`` and ``configure`` raise ``SharedStateUnavailable``.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson

from ..results import AudioResult, ImageResult, TextResult, Usage
from .cache import CacheEntry, CacheStats, ResponseCache
from .shared import PREFIX, REDIS_ERRORS, Outage, connect

log = logging.getLogger("blossom_dash.shared_cache")

#: Version of the stored format (``encode``). 1: magic, version, header length, JSON header, blobs.
CODEC_VERSION = 1
_MAGIC = b"BDC"
_TYPES: dict[str, type] = {cls.__name__: cls for cls in (TextResult, ImageResult, AudioResult, Usage)}


class CodecError(ValueError):
    """Stored bytes that ``decode`` will not rebuild (damaged, newer, or an unknown type)."""


def _doc(value: Any, blobs: list[bytes]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):  # a result's cost in pollen: its exact digits
        return {"$decimal": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        blobs.append(bytes(value))
        return {"$blob": len(blobs) - 1}
    cls = type(value)
    if _TYPES.get(cls.__name__) is cls:
        fields = {f.name: _doc(getattr(value, f.name), blobs) for f in dataclasses.fields(value) if f.init}
        return {"$type": cls.__name__, "fields": fields}
    raise TypeError(f"the shared cache does not store a {cls.__name__}")


def encode(value: TextResult | ImageResult | AudioResult) -> bytes:
    """``value`` as bytes: ``b"BDC"``, version (1 byte), header length (4 bytes, big-endian),
    the JSON header ``{"result": doc, "blobs": [lengths]}``, then the blobs.

    Raises:
        TypeError: ``value`` holds something other than the four result types,
            scalars and bytes.
    """
    blobs: list[bytes] = []
    head = orjson.dumps({"result": _doc(value, blobs), "blobs": [len(b) for b in blobs]})
    return b"".join([_MAGIC, struct.pack(">BI", CODEC_VERSION, len(head)), head, *blobs])


def _build(doc: Any, blobs: list[bytes]) -> Any:
    if not isinstance(doc, dict):
        if isinstance(doc, list):
            raise CodecError("it holds a list, which no result has")
        return doc
    if "$blob" in doc:
        index = doc["$blob"]
        if not isinstance(index, int) or not 0 <= index < len(blobs):
            raise CodecError("a binary part is missing")
        return blobs[index]
    if "$decimal" in doc:
        try:
            return Decimal(str(doc["$decimal"]))
        except InvalidOperation as exc:
            raise CodecError("it holds a damaged amount") from exc
    cls = _TYPES.get(str(doc.get("$type")))
    if cls is None:
        raise CodecError(f"it holds a {doc.get('$type')!r}, which is not a result type")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    given = doc.get("fields")
    if not isinstance(given, dict):
        raise CodecError("its fields are missing")
    try:  # fields this version lacks are dropped; fields it added take their defaults
        return cls(**{k: _build(v, blobs) for k, v in given.items() if k in known})
    except TypeError as exc:
        raise CodecError(f"its {cls.__name__} lacks a field ({exc})") from exc


def decode(data: bytes) -> Any:
    """The result ``encode`` wrote.

    Raises:
        CodecError: not this format, a newer version, damaged, or a type other than
            ``TextResult``, ``ImageResult``, ``AudioResult`` (with its ``Usage``).
    """
    start = len(_MAGIC) + 5
    if not isinstance(data, bytes) or not data.startswith(_MAGIC) or len(data) < start:
        raise CodecError("it is not a blossom-dash cache entry")
    version, size = struct.unpack_from(">BI", data, len(_MAGIC))
    if version != CODEC_VERSION:
        raise CodecError(f"it is in format version {version}; this version reads {CODEC_VERSION}")
    try:
        header = orjson.loads(data[start:start + size])
        lengths = [int(n) for n in header["blobs"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CodecError("its header is damaged") from exc
    blobs, pos = [], start + size
    for n in lengths:
        blobs.append(data[pos:pos + n])
        pos += n
    if pos != len(data) or any(n < 0 for n in lengths):
        raise CodecError("its length does not add up (truncated or damaged)")
    result = _build(header.get("result"), blobs)
    if not isinstance(result, (TextResult, ImageResult, AudioResult)):
        raise CodecError("it holds no result")
    return result


# ----- the scripts: each runs atomically in Redis ---------------------------------------
# ARGV[1] is the key prefix, ARGV[2..5] the seed config (enabled 1/0, ttl_ms,
# max_entries, max_bytes); each script's own arguments follow from ARGV[6].

_PRELUDE = """
local P = ARGV[1]
local function cfg()
  local c = P .. ':config'
  redis.call('HSETNX', c, 'enabled', ARGV[2])
  redis.call('HSETNX', c, 'ttl_ms', ARGV[3])
  redis.call('HSETNX', c, 'max_entries', ARGV[4])
  redis.call('HSETNX', c, 'max_bytes', ARGV[5])
  local v = redis.call('HMGET', c, 'enabled', 'ttl_ms', 'max_entries', 'max_bytes')
  return tonumber(v[1]), tonumber(v[2]), tonumber(v[3]), tonumber(v[4])
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function drop(key)
  local size = tonumber(redis.call('HGET', P .. ':size', key) or '0')
  redis.call('DEL', P .. ':e:' .. key)
  redis.call('ZREM', P .. ':lru', key)
  redis.call('ZREM', P .. ':born', key)
  redis.call('HDEL', P .. ':size', key)
  redis.call('HDEL', P .. ':lat', key)
  if size ~= 0 then redis.call('HINCRBY', P .. ':meta', 'bytes', -size) end
end
local function purge(now, ttl)
  local old = redis.call('ZRANGEBYSCORE', P .. ':born', '-inf', now - ttl)
  for _, key in ipairs(old) do drop(key) end
  if #old > 0 then redis.call('HINCRBY', P .. ':stats', 'expirations', #old) end
end
local function trim(max_entries, max_bytes)
  local n = 0
  while redis.call('ZCARD', P .. ':lru') > max_entries
      or tonumber(redis.call('HGET', P .. ':meta', 'bytes') or '0') > max_bytes do
    local oldest = redis.call('ZRANGE', P .. ':lru', 0, 0)
    if #oldest == 0 then
      redis.call('HSET', P .. ':meta', 'bytes', 0)
      break
    end
    drop(oldest[1])
    n = n + 1
  end
  if n > 0 then redis.call('HINCRBY', P .. ':stats', 'evictions', n) end
end
local function touch(key)
  redis.call('ZADD', P .. ':lru', redis.call('HINCRBY', P .. ':meta', 'tick', 1), key)
end
"""

# ARGV[6] key, ARGV[7] "1" to count a miss here. -> {0, ttl} disabled, {1, ttl} miss,
# {2, ttl, value, latency_ms, age_ms, nbytes} hit (counted, touched).
_GET = _PRELUDE + """
local enabled, ttl = cfg()
if enabled == 0 then return {0, ttl} end
local now = now_ms()
purge(now, ttl)
local key = ARGV[6]
local value = redis.call('GET', P .. ':e:' .. key)
if not value then
  if ARGV[7] == '1' then redis.call('HINCRBY', P .. ':stats', 'misses', 1) end
  return {1, ttl}
end
touch(key)
local lat = redis.call('HGET', P .. ':lat', key) or '0'
local born = tonumber(redis.call('ZSCORE', P .. ':born', key) or now)
redis.call('HINCRBY', P .. ':stats', 'hits', 1)
redis.call('HINCRBYFLOAT', P .. ':stats', 'saved_ms', lat)
return {2, ttl, value, lat, tostring(now - born), redis.call('HGET', P .. ':size', key) or '0'}
"""

# ARGV[6] key, ARGV[7] value, ARGV[8] nbytes, ARGV[9] latency_ms -> 1 stored, 0 not.
_PUT = _PRELUDE + """
local enabled, ttl, max_entries, max_bytes = cfg()
local nbytes = tonumber(ARGV[8])
if enabled == 0 or nbytes > max_bytes then return 0 end
local now = now_ms()
purge(now, ttl)
local key = ARGV[6]
drop(key)
redis.call('SET', P .. ':e:' .. key, ARGV[7], 'PX', ttl)
redis.call('ZADD', P .. ':born', now, key)
touch(key)
redis.call('HSET', P .. ':size', key, nbytes)
redis.call('HSET', P .. ':lat', key, ARGV[9])
redis.call('HINCRBY', P .. ':meta', 'bytes', nbytes)
trim(max_entries, max_bytes)
return 1
"""

# -> how many entries were dropped (counters kept).
_CLEAR = _PRELUDE + """
cfg()
local keys = redis.call('ZRANGE', P .. ':lru', 0, -1)
for _, key in ipairs(keys) do redis.call('DEL', P .. ':e:' .. key) end
redis.call('DEL', P .. ':lru', P .. ':born', P .. ':size', P .. ':lat')
redis.call('HSET', P .. ':meta', 'bytes', 0)
return #keys
"""

# ARGV[6..9]: new enabled, ttl_ms, max_entries, max_bytes ("" keeps one). A new TTL
# applies to the entries already stored (from when each was stored).
_CONFIGURE = _PRELUDE + """
local _, old_ttl = cfg()
local names = {'enabled', 'ttl_ms', 'max_entries', 'max_bytes'}
for i, name in ipairs(names) do
  if ARGV[5 + i] ~= '' then redis.call('HSET', P .. ':config', name, ARGV[5 + i]) end
end
local enabled, ttl, max_entries, max_bytes = cfg()
purge(now_ms(), ttl)
if ttl ~= old_ttl then
  local live = redis.call('ZRANGE', P .. ':born', 0, -1, 'WITHSCORES')
  for i = 1, #live, 2 do
    redis.call('PEXPIREAT', P .. ':e:' .. live[i], tonumber(live[i + 1]) + ttl)
  end
end
trim(max_entries, max_bytes)
return 1
"""

# -> {enabled, ttl_ms, max_entries, max_bytes, entries, bytes, hits, misses, evictions,
# expirations, saved_ms}
_STATS = _PRELUDE + """
local enabled, ttl, max_entries, max_bytes = cfg()
purge(now_ms(), ttl)
local s = redis.call('HMGET', P .. ':stats', 'hits', 'misses', 'evictions', 'expirations', 'saved_ms')
return {enabled, ttl, max_entries, max_bytes, redis.call('ZCARD', P .. ':lru'),
        redis.call('HGET', P .. ':meta', 'bytes') or '0',
        s[1] or '0', s[2] or '0', s[3] or '0', s[4] or '0', s[5] or '0'}
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class SharedResponseCache(ResponseCache):
    """The response cache in Redis, the same for every replica; recordings on this host.

    Entries, the LRU order, the caps, the configuration and the counters (hits,
    misses, evictions, expirations, saved time) are shared by all replicas and
    outlive restarts; ``stats()`` reports them for all replicas together
    (``CacheStats.shared``). A clear or configure on one replica is seen by every
    other at its next lookup. ``persistent`` and ``replay_only`` are this process's,
    and their recordings this host's (``ResponseCache``); in replay-only mode
    lookups read the recordings only, and count in the shared counters.

    Args:
        url: The Redis URL (``Settings.redis_url``).
        enabled / ttl_s / max_entries / max_bytes: Seeds of the shared configuration,
            used when Redis holds none yet (see ``ResponseCache`` for their meaning).
        timer: Clock of ``CacheEntry.created`` (seconds).
        persist_dir / persistent / replay_only: This host's recordings, as in ``ResponseCache``.
        prefix: Key prefix in Redis.

    Raises:
        ValueError: a value out of range, persistence without ``persist_dir``, or a
            URL redis-py does not accept.
        OSError: the recording folder cannot be opened.
    """

    def __init__(self, url: str, *, enabled: bool = True, ttl_s: float = 3600.0, max_entries: int = 512,
                 max_bytes: int = 256 * 1024 * 1024, timer: Callable[[], float] = time.monotonic,
                 persist_dir: Path | str | None = None, persistent: bool = False, replay_only: bool = False,
                 prefix: str = PREFIX) -> None:
        _check(ttl_s, max_entries, max_bytes)
        # Set before ResponseCache.__init__, which may call configure() (and so stats()).
        self._client = connect(url)
        self._args = [f"{prefix}:cache", "1" if enabled else "0", str(_ms(ttl_s)), str(max_entries),
                      str(max_bytes)]
        self._get_lua, self._put_lua, self._clear_lua, self._configure_lua, self._stats_lua = (
            self._client.register_script(s) for s in (_GET, _PUT, _CLEAR, _CONFIGURE, _STATS))
        self._outage = Outage(url, "the shared response cache",
                              "every lookup misses and nothing is cached until it answers again")
        self._ttl_read_s = float(ttl_s)
        self._last = CacheStats(enabled=enabled, entries=0, max_entries=max_entries, ttl_s=float(ttl_s), hits=0,
                                misses=0, hit_rate=0.0, evictions=0, expirations=0, bytes=0, saved_ms=0.0,
                                max_bytes=max_bytes, shared=True)
        # The in-process memory stays off: ResponseCache only keeps the recordings here.
        super().__init__(enabled=False, ttl_s=ttl_s, max_entries=max_entries, max_bytes=max_bytes, timer=timer,
                         persist_dir=persist_dir, persistent=persistent, replay_only=replay_only)

    def _run(self, script: Any, *args: str | bytes) -> Any:
        """Run one script; raises what redis-py raises (callers decide what an outage means)."""
        reply = script(args=[*self._args, *args])
        self._outage.recovered()
        return reply

    def _count(self, entry: CacheEntry | None) -> None:
        """Count a lookup made outside the get script (recordings) in the shared counters."""
        try:
            pipe = self._client.pipeline(transaction=False)
            stats = f"{self._args[0]}:stats"
            pipe.hincrby(stats, "misses" if entry is None else "hits", 1)
            if entry is not None:
                pipe.hincrbyfloat(stats, "saved_ms", entry.latency_ms)
            pipe.execute()
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)

    def get(self, key: str) -> CacheEntry | None:
        """Look ``key`` up in Redis (and in this host's recordings when ``persistent``).

        Returns:
            The entry (``created`` on this process's timer, its age kept), or None:
            absent, past the TTL, the shared cache disabled, Redis unreachable, or
            an entry ``decode`` refuses (logged, dropped, counted as a miss).
        """
        if self.replay_only:
            entry = super().get(key)  # the recordings, of any age and backend (ResponseCache's rules)
            self._count(entry)
            return entry
        persistent = self.persistent
        try:
            reply = self._run(self._get_lua, str(key), "0" if persistent else "1")
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            reply = None
        if reply is not None:
            status = int(reply[0])
            self._ttl_read_s = int(reply[1]) / 1000
            if status == 0:
                return None
            if status == 2:
                try:
                    value = decode(reply[2])
                except CodecError as exc:
                    log.warning("shared cache entry %s is unreadable, dropped: %s", str(key)[:12], exc)
                    self._forget(str(key))
                else:
                    return CacheEntry(value, int(reply[5]), float(reply[3]), self._timer() - int(reply[4]) / 1000)
        if not persistent:
            return None
        entry = self._recorded(key)
        self._count(entry)
        if entry is not None and reply is not None:
            self._share(str(key), entry.value, entry.nbytes, entry.latency_ms)  # shared from now on
        return entry

    def _recorded(self, key: str) -> CacheEntry | None:
        store = self.recordings(create=False)
        rec = store.get(key, max_age_s=self._ttl_read_s) if store is not None else None
        if rec is None:
            return None
        age_s = max(0.0, time.time() - rec.created)
        return CacheEntry(rec.value, rec.nbytes, rec.latency_ms, self._timer() - age_s, recorded=True)

    def _forget(self, key: str) -> None:
        """Drop an unreadable entry and turn the hit the script counted into a miss."""
        try:
            stats = f"{self._args[0]}:stats"
            self._client.pipeline(transaction=False).delete(f"{self._args[0]}:e:{key}").hincrby(
                stats, "hits", -1).hincrby(stats, "misses", 1).execute()
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)

    def _share(self, key: str, value: Any, nbytes: int, latency_ms: float) -> None:
        try:
            data = encode(value)
        except TypeError as exc:
            log.warning("not cached in Redis: %s", exc)
            return
        try:
            self._run(self._put_lua, key, data, str(max(1, int(nbytes))), f"{float(latency_ms):.3f}")
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)

    def put(self, key: str, value: Any, *, nbytes: int, latency_ms: float) -> None:
        """Store an answer in Redis for every replica (and record it here when ``persistent``).

        Not stored: the shared cache disabled, ``nbytes`` above ``max_bytes``, or
        Redis unreachable (logged; never raised: the answer itself is good).
        """
        super().put(key, value, nbytes=nbytes, latency_ms=latency_ms)  # records only: the memory is off
        self._share(str(key), value, nbytes, latency_ms)

    def clear(self) -> int:
        """Drop every shared entry, for all replicas; counters and recordings are kept.

        Returns:
            How many entries were removed.

        Raises:
            SharedStateUnavailable: Redis did not answer (nothing was removed).
        """
        try:
            return int(self._run(self._clear_lua))
        except REDIS_ERRORS as exc:
            raise self._outage.failed(exc) from None

    def configure(self, *, enabled: bool | None = None, ttl_s: float | None = None,
                  max_entries: int | None = None, max_bytes: int | None = None, persistent: bool | None = None,
                  replay_only: bool | None = None) -> CacheStats:
        """Change the cache: ``enabled``/``ttl_s``/``max_entries``/``max_bytes`` for every
        replica (one atomic step in Redis), ``persistent``/``replay_only`` for this process.

        The rules are ``ResponseCache.configure``'s: a shorter TTL expires older
        entries at once, lower caps evict the least recently used (both counted).
        The two groups are applied one after the other (replay first).

        Returns:
            The stats after the change.

        Raises:
            ValueError: a value out of range (then nothing changed), or a replay
                switch ``ResponseCache.configure`` refuses.
            OSError: the recording folder cannot be opened.
            SharedStateUnavailable: Redis did not answer (the shared values did not change).
        """
        _check(ttl_s, max_entries, max_bytes)
        if persistent is not None or replay_only is not None:
            super().configure(persistent=persistent, replay_only=replay_only)
        new = ["" if enabled is None else ("1" if enabled else "0"), "" if ttl_s is None else str(_ms(ttl_s)),
               "" if max_entries is None else str(int(max_entries)), "" if max_bytes is None else str(int(max_bytes))]
        if any(new):
            try:
                self._run(self._configure_lua, *new)
            except REDIS_ERRORS as exc:
                raise self._outage.failed(exc) from None
        return self.stats()

    def stats(self) -> CacheStats:
        """Every replica's figures together (this host's recordings); never raises.

        While Redis does not answer: the last figures read, with the reason in
        ``CacheStats.unavailable``.
        """
        store = self.recordings(create=False)
        disk_entries, disk_bytes = (store.count(), store.volume()) if store is not None else (0, 0)
        local = {"persistent": self.persistent, "replay_only": self.replay_only,
                 "persistent_entries": disk_entries, "persistent_bytes": disk_bytes}
        try:
            r = self._run(self._stats_lua)
        except REDIS_ERRORS as exc:
            return dataclasses.replace(self._last, unavailable=self._outage.failed(exc).message, **local)
        hits, misses = int(r[6]), int(r[7])
        self._ttl_read_s = int(r[1]) / 1000
        self._last = CacheStats(
            enabled=bool(int(r[0])), entries=int(r[4]), max_entries=int(r[2]), ttl_s=self._ttl_read_s, hits=hits,
            misses=misses, hit_rate=hits / (hits + misses) if hits + misses else 0.0, evictions=int(r[8]),
            expirations=int(r[9]), bytes=int(r[5]), saved_ms=float(r[10]), max_bytes=int(r[3]), shared=True,
            **local)
        return self._last

    def close(self) -> None:
        """Close the connections to Redis."""
        self._client.close()


def _check(ttl_s: float | None, max_entries: int | None, max_bytes: int | None) -> None:
    if ttl_s is not None and ttl_s <= 0:
        raise ValueError("ttl_s must be > 0 seconds")
    if max_entries is not None and max_entries < 1:
        raise ValueError("max_entries must be at least 1")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError("max_bytes must be at least 1")


__all__ = ["CODEC_VERSION", "CodecError", "SharedResponseCache", "decode", "encode"]
