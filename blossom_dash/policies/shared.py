"""The Redis that every replica shares: one client per component, short timeouts, errors as words.

Used by ``shared_limits`` (rate limits through ``limits``' own ``RedisStorage``) and
``shared_cache`` (the response cache) when ``Settings.redis_url`` is set. A standalone
Redis (or one behind Sentinel) is assumed: the cache's Lua scripts touch keys they
compute, which Redis Cluster does not allow across slots.

Timeouts are short on purpose: a request waits at most about ``TIMEOUT_S`` (plus one
quick retry) for Redis before it is refused with ``SharedStateUnavailable``, instead
of redis-py's default of 5 s and three retries with growing waits.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..errors import SharedStateUnavailable

log = logging.getLogger("blossom_dash.shared")

#: Prefix of every key blossom-dash writes in Redis. Give each deployment a Redis
#: database of its own (the ``/<db>`` of the URL) rather than sharing one.
PREFIX = "blossom-dash"
#: Seconds to connect to Redis, and to wait for one answer.
TIMEOUT_S = 2.0
#: What a broken Redis raises: redis-py's own errors, and the socket's.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
#: Seconds between two log lines about the same unreachable Redis (an outage must not
#: write one line per request).
_LOG_EVERY_S = 30.0


def client_options() -> dict[str, object]:
    """The redis-py options of every shared client: ``TIMEOUT_S`` and one retry after 20-200 ms."""
    return {"socket_timeout": TIMEOUT_S, "socket_connect_timeout": TIMEOUT_S,
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1), "health_check_interval": 30}


def connect(url: str) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://``); connects lazily.

    Raises:
        ValueError: the URL is not a Redis URL (redis-py's message).
    """
    return redis.Redis.from_url(url, **client_options())  # type: ignore[arg-type]


def redact(url: str) -> str:
    """``url`` without its user, password and query: ``redis://host:port/db`` (safe to show or log)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a Redis URL that does not parse)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


class Outage:
    """What a shared component knows about its Redis being unreachable (thread-safe).

    ``failed()`` turns a redis-py error into the ``SharedStateUnavailable`` to raise
    or to show, logs it at most every 30 s, and remembers it until ``recovered()``.

    Args:
        url: The Redis URL (kept only to scrub its password from driver messages).
        what: The store in words, e.g. "the shared rate-limit store".
        consequence: What the outage means for requests, e.g. "requests are refused
            until it answers again".
    """

    def __init__(self, url: str, what: str, consequence: str) -> None:
        self._url = redact(url)
        self._secret = unquote(urlsplit(url).password or "") if "@" in url else ""
        self._what = what
        self._consequence = consequence
        self._lock = threading.Lock()
        self._logged = 0.0
        #: The current outage in words, "" while Redis answers.
        self.message = ""

    def failed(self, exc: BaseException) -> SharedStateUnavailable:
        """The error for ``exc`` (remembered in ``message``; logged at most every 30 s)."""
        detail = str(exc) or type(exc).__name__
        if self._secret:
            detail = detail.replace(self._secret, "***")
        err = SharedStateUnavailable(
            f"{self._what[:1].upper()}{self._what[1:]} (Redis at {self._url}) is unreachable: {detail.rstrip('.')}.",
            f"Check that Redis is running and that BLOSSOM_DASH_REDIS_URL points at it; {self._consequence}.")
        now = time.monotonic()
        with self._lock:
            self.message = err.message
            if now - self._logged >= _LOG_EVERY_S:
                self._logged = now
                log.warning("%s", err.message)
        return err

    def recovered(self) -> None:
        """Redis answered again."""
        if self.message:
            with self._lock:
                if self.message:
                    log.info("%s (Redis at %s) answers again", self._what, self._url)
                self.message = ""
                self._logged = 0.0


__all__ = ["PREFIX", "REDIS_ERRORS", "TIMEOUT_S", "Outage", "client_options", "connect", "redact"]
