"""The response cache and the rate limiter a service runs with, from its settings."""

from __future__ import annotations

from typing import Any

from ..settings import Settings
from .cache import ResponseCache
from .ratelimit import RateLimiter


def cache_and_limiter(s: Settings) -> tuple[ResponseCache, RateLimiter]:
    """The response cache and the rate limiter: in Redis, shared by every replica, when
    ``redis_url`` is set (``SharedResponseCache``, ``SharedRateLimiter``); in this
    process otherwise. Redis need not be up yet: both say so on use.

    Raises:
        ValueError: a Redis URL redis-py does not accept.
    """
    cache_opts: dict[str, Any] = {
        "enabled": s.cache_enabled, "ttl_s": s.cache_ttl_s, "max_entries": s.cache_max_entries,
        "max_bytes": s.cache_max_bytes, "persist_dir": s.data_dir / "replay", "persistent": s.persistent_cache,
        "replay_only": s.replay_only}
    if s.redis_url is None:
        return ResponseCache(**cache_opts), RateLimiter(per_user_rpm=s.per_user_rpm, global_rpm=s.global_rpm,
                                                        batch_share=s.batch_share)
    from .shared_cache import SharedResponseCache
    from .shared_limits import SharedRateLimiter

    url = s.redis_url.get_secret_value()
    return (SharedResponseCache(url, **cache_opts),
            SharedRateLimiter(url, per_user_rpm=s.per_user_rpm, global_rpm=s.global_rpm, batch_share=s.batch_share))


__all__ = ["cache_and_limiter"]
