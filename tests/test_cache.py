"""Tests for the response cache: ``ResponseCache`` and ``request_key`` alone, then through the service."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import demo_stats, make_service

from blossom_dash import BlossomService, RateLimited
from blossom_dash.policies.cache import ResponseCache, request_key

KEY_A = "sk_testkey_AAAA1111aaaa"
KEY_B = "sk_testkey_BBBB2222bbbb"


class FakeClock:
    """A settable clock in seconds, for TTLs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now




def filled(clock: FakeClock | None = None, **kwargs: Any) -> ResponseCache:
    """A cache on a fake clock."""
    return ResponseCache(timer=clock or FakeClock(), **kwargs)


class TestRequestKey:
    def test_is_a_sha256_hex_digest(self) -> None:
        """The key is 64 lowercase hex characters."""
        assert re.fullmatch(r"[0-9a-f]{64}", request_key(model="m", prompt="p"))

    def test_order_of_parts_does_not_matter(self) -> None:
        """The same parts in another order give the same key."""
        assert request_key(a=1, b=[1, 2], c={"x": 1, "y": 2}) == request_key(c={"y": 2, "x": 1}, b=[1, 2], a=1)

    @pytest.mark.parametrize("change", [{"seed": 2}, {"seed": None}, {"model": "n"}, {"temperature": 0.5},
                                        {"messages": [{"role": "user", "content": "q?"}]}, {"extra": 1}])
    def test_any_change_is_another_key(self, change: dict[str, Any]) -> None:
        """Changing, nulling or adding any part changes the key."""
        base = {"model": "m", "seed": 1, "messages": [{"role": "user", "content": "q"}]}
        assert request_key(**{**base, **change}) != request_key(**base)


class TestGetPut:
    def test_miss_then_hit(self) -> None:
        """A stored entry is returned with its size and cost; counters follow."""
        c = filled()
        assert c.get("k") is None
        c.put("k", "value", nbytes=5, latency_ms=120.0)
        entry = c.get("k")
        assert entry is not None and entry.value == "value" and entry.nbytes == 5
        s = c.stats()
        assert (s.hits, s.misses, s.hit_rate, s.entries, s.bytes, s.saved_ms) == (1, 1, 0.5, 1, 5, 120.0)

    def test_hit_rate_before_any_lookup(self) -> None:
        """With no lookups the hit rate is 0.0, not a division error."""
        assert filled().stats().hit_rate == 0.0

    def test_bytes_and_saved_ms_add_up(self) -> None:
        """bytes sums the stored sizes; saved_ms sums the cost of every hit."""
        c = filled()
        c.put("a", 1, nbytes=10, latency_ms=100.0)
        c.put("b", 2, nbytes=32, latency_ms=40.0)
        for key in ("a", "a", "b"):
            c.get(key)
        s = c.stats()
        assert s.bytes == 42
        assert s.saved_ms == 240.0
        assert (s.hits, s.misses) == (3, 0)

    def test_overwrite_keeps_one_entry(self) -> None:
        """Putting a key again replaces its entry."""
        c = filled()
        c.put("k", 1, nbytes=3, latency_ms=1)
        c.put("k", 2, nbytes=7, latency_ms=1)
        assert c.get("k").value == 2  # type: ignore[union-attr]
        assert (c.stats().entries, c.stats().bytes) == (1, 7)

    def test_counters_are_exact_under_threads(self) -> None:
        """8 threads x 500 lookups: hits + misses equals the lookups made."""
        c = filled(max_entries=64)
        for i in range(32):
            c.put(f"k{i}", i, nbytes=1, latency_ms=1)

        def worker(k: int) -> None:
            for i in range(500):
                c.get(f"k{(i * 7 + k) % 48}")

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        s = c.stats()
        assert s.hits + s.misses == 4000
        assert s.hits == sum(1 for k in range(8) for i in range(500) if (i * 7 + k) % 48 < 32)


class TestDisabled:
    def test_disabled_cache_stores_and_counts_nothing(self) -> None:
        """While disabled, get misses without counting and put is a no-op."""
        c = filled(enabled=False)
        c.put("k", 1, nbytes=1, latency_ms=1)
        assert c.get("k") is None
        s = c.stats()
        assert (s.enabled, s.entries, s.hits, s.misses) == (False, 0, 0, 0)

    def test_entries_survive_being_switched_off_and_on(self) -> None:
        """Disabling keeps entries; re-enabling serves them again."""
        c = filled()
        c.put("k", 1, nbytes=1, latency_ms=1)
        c.configure(enabled=False)
        assert c.get("k") is None
        c.configure(enabled=True)
        assert c.get("k") is not None
        assert (c.stats().hits, c.stats().misses) == (1, 0)


class TestTtl:
    def test_entry_expires_at_its_ttl(self) -> None:
        """An entry is served until its TTL has passed, then missed."""
        clock = FakeClock()
        c = filled(clock, ttl_s=10)
        c.put("k", 1, nbytes=1, latency_ms=1)
        clock.now = 9.5
        assert c.get("k") is not None
        clock.now = 10.5
        assert c.get("k") is None
        s = c.stats()
        assert (s.entries, s.bytes, s.hits, s.misses) == (0, 0, 1, 1)

    def test_natural_expiry_is_counted(self) -> None:
        """An entry that outlives its TTL counts one expiration."""
        clock = FakeClock()
        c = filled(clock, ttl_s=10)
        c.put("k", 1, nbytes=1, latency_ms=1)
        clock.now = 11
        assert c.get("k") is None
        assert c.stats().expirations == 1

    def test_shortening_the_ttl_expires_old_entries(self) -> None:
        """configure(ttl_s=...) drops entries already older than the new TTL, and counts them."""
        clock = FakeClock()
        c = filled(clock, ttl_s=100)
        c.put("old", 1, nbytes=3, latency_ms=1)
        clock.now = 25
        c.put("young", 2, nbytes=4, latency_ms=1)
        clock.now = 30
        s = c.configure(ttl_s=20)
        assert (s.ttl_s, s.entries, s.bytes, s.expirations) == (20.0, 1, 4, 1)
        assert c.get("old") is None
        assert c.get("young") is not None
        clock.now = 45.5
        assert c.get("young") is None

    def test_lengthening_the_ttl_keeps_entries(self) -> None:
        """A longer TTL keeps entries alive past the old one."""
        clock = FakeClock()
        c = filled(clock, ttl_s=10)
        c.put("k", 1, nbytes=1, latency_ms=1)
        c.configure(ttl_s=100)
        clock.now = 50
        assert c.get("k") is not None

    def test_stats_after_resize_do_not_count_expired_entries(self) -> None:
        """After a resize, an entry past its TTL is not counted in entries or bytes."""
        clock = FakeClock()
        c = filled(clock, ttl_s=10)
        c.put("k", 1, nbytes=5, latency_ms=1)
        clock.now = 5
        c.configure(max_entries=8)
        clock.now = 12
        s = c.stats()
        assert (s.entries, s.bytes) == (0, 0)


class TestCapacity:
    def test_put_beyond_capacity_evicts_lru(self) -> None:
        """A full cache evicts its least recently used entry and counts it."""
        c = filled(max_entries=2)
        c.put("a", 1, nbytes=1, latency_ms=1)
        c.put("b", 2, nbytes=1, latency_ms=1)
        c.get("a")
        c.put("c", 3, nbytes=1, latency_ms=1)
        assert c.get("b") is None
        assert c.get("a") is not None and c.get("c") is not None
        assert c.stats().evictions == 1

    def test_shrinking_counts_evictions(self) -> None:
        """Shrinking max_entries keeps that many entries and counts the rest as evictions."""
        c = filled(max_entries=5)
        for k in "abcde":
            c.put(k, k, nbytes=1, latency_ms=1)
        s = c.configure(max_entries=2)
        assert (s.max_entries, s.entries, s.evictions, s.bytes) == (2, 2, 3, 2)

    def test_shrinking_evicts_the_least_recently_used(self) -> None:
        """Shrinking keeps the most recently used entries."""
        c = filled(max_entries=3)
        for k in "abc":
            c.put(k, k, nbytes=1, latency_ms=1)
        c.get("a")  # recency now b < c < a
        c.configure(max_entries=2)
        assert c.get("b") is None
        assert c.get("a") is not None and c.get("c") is not None

    @pytest.mark.parametrize("kwargs", [{"ttl_s": 0}, {"ttl_s": -1}, {"max_entries": 0}])
    def test_bad_configuration(self, kwargs: dict[str, Any]) -> None:
        """A TTL <= 0 or a capacity < 1 is a ValueError and changes nothing."""
        c = filled(ttl_s=10, max_entries=4)
        with pytest.raises(ValueError):
            c.configure(**kwargs)
        s = c.stats()
        assert (s.ttl_s, s.max_entries) == (10.0, 4)


class TestClear:
    def test_clear_drops_entries_keeps_counters(self) -> None:
        """clear() returns how many entries it dropped; counters stay."""
        c = filled()
        for k in "abc":
            c.put(k, k, nbytes=2, latency_ms=1)
        c.get("a")
        assert c.clear() == 3
        assert c.get("a") is None
        s = c.stats()
        assert (s.entries, s.bytes, s.hits, s.misses) == (0, 0, 1, 1)


class TestServiceCache:
    def test_repeat_is_cached_without_a_backend_call(self, demo_service: BlossomService) -> None:
        """The same request again is cached=True, same text, nothing sent to the backend."""
        first = demo_service.generate_text("Cache me once", seed=3)
        before = demo_stats(demo_service)
        again = demo_service.generate_text("Cache me once", seed=3)
        assert (first.cached, again.cached) == (False, True)
        assert again.text == first.text and again.usage == first.usage
        assert again.request_id != first.request_id
        assert demo_stats(demo_service) == before
        df = demo_service.metrics.frame()
        ev = df[df["request_id"] == again.request_id].iloc[0]
        assert ev["outcome"] == "cache_hit"

    def test_hit_spends_no_rate_limit_slot(self, tmp_path: Path) -> None:
        """With per_user_rpm=1 a repeat still succeeds from the cache; a new prompt is refused."""
        with make_service(tmp_path, per_user_rpm=1) as svc:
            svc.generate_text("Only one allowed")
            assert svc.generate_text("Only one allowed").cached is True
            assert svc.generate_text("Only one allowed").cached is True
            assert svc.limiter.status("anonymous").user.remaining == 0
            with pytest.raises(RateLimited):
                svc.generate_text("A second, different prompt")

    @pytest.mark.parametrize("change", [{"seed": 8}, {"temperature": 0.3}, {"system": "Be terse."},
                                        {"model": "demo-balanced"}, {"max_tokens": 77}])
    def test_any_parameter_change_is_a_miss(self, demo_service: BlossomService, change: dict[str, Any]) -> None:
        """A different seed, temperature, system prompt, model or max_tokens is a miss."""
        prompt = f"Parameter sensitivity {sorted(change)}"
        base: dict[str, Any] = {"seed": 7, "model": "demo-swift", "max_tokens": 64}
        assert demo_service.generate_text(prompt, **base).cached is False
        assert demo_service.generate_text(prompt, **base).cached is True
        before = demo_stats(demo_service)["chat"]
        assert demo_service.generate_text(prompt, **{**base, **change}).cached is False
        assert demo_stats(demo_service)["chat"] == before + 1

    def test_keys_never_hold_the_api_key(self, tmp_path: Path, demo_service: BlossomService) -> None:
        """Two services with different keys make identical cache keys, and no key text anywhere."""
        url = demo_service.backend.base_url
        keys: list[set[str]] = []
        for i, secret in enumerate((KEY_A, KEY_B)):
            with make_service(tmp_path / f"s{i}", backend=url, api_key=secret) as svc:
                svc.generate_text("Key-free caching", model="demo-swift", seed=1)
                handle = svc.session("dave")
                handle.set_api_key("sk_session_key_CCCC3333")
                assert handle.generate_text("Key-free caching", model="demo-swift", seed=1).cached is True
                handle.generate_text("Another prompt with a session key", model="demo-swift")
                keys.append(set(svc.cache._data.keys()))
                internals = str(list(svc.cache._data.items())) + str(svc.cache.__dict__) + str(svc.metrics.recent())
                for secret_text in (secret, "sk_session_key_CCCC3333"):
                    assert secret_text not in internals
                    assert secret_text not in "".join(keys[-1])
            db = (tmp_path / f"s{i}" / "usage.db").read_bytes()
            wal = tmp_path / f"s{i}" / "usage.db-wal"
            db += wal.read_bytes() if wal.exists() else b""
            assert secret.encode() not in db and b"sk_session_key_CCCC3333" not in db
        assert keys[0] == keys[1] and len(keys[0]) == 2

    def test_stats_count_hits_misses_and_bytes(self, tmp_path: Path) -> None:
        """Two misses and two hits: hit rate 0.5 and bytes of the two stored answers."""
        with make_service(tmp_path) as svc:
            a = svc.generate_text("Stats prompt A")
            svc.generate_text("Stats prompt A")
            b = svc.generate_text("Stats prompt B")
            svc.generate_text("Stats prompt A")
            s = svc.cache.stats()
            assert (s.hits, s.misses, s.hit_rate, s.entries) == (2, 2, 0.5, 2)
            assert s.bytes == len(a.text.encode()) + len(b.text.encode())
            assert s.saved_ms > 0

    def test_disabled_cache_misses_and_counts_nothing(self, tmp_path: Path) -> None:
        """configure(enabled=False): repeats go to the backend and counters stay still."""
        with make_service(tmp_path) as svc:
            svc.generate_text("Toggle me")
            svc.cache.configure(enabled=False)
            before_stats = svc.cache.stats()
            before = demo_stats(svc)["chat"]
            assert svc.generate_text("Toggle me").cached is False
            assert svc.generate_text("Toggle me").cached is False
            assert demo_stats(svc)["chat"] == before + 2
            after = svc.cache.stats()
            assert (after.hits, after.misses) == (before_stats.hits, before_stats.misses)
            svc.cache.configure(enabled=True)
            assert svc.generate_text("Toggle me").cached is True

    def test_clear_makes_repeats_miss(self, tmp_path: Path) -> None:
        """After clear() the same request goes to the backend again."""
        with make_service(tmp_path) as svc:
            svc.generate_text("Clear me")
            assert svc.cache.clear() == 1
            assert svc.generate_text("Clear me").cached is False

    def test_ttl_expiry_in_the_service(self, tmp_path: Path) -> None:
        """With a fake clock, an answer older than the TTL is fetched again."""
        clock = FakeClock()
        with make_service(tmp_path) as svc:
            svc.cache = svc.gateway._cache = ResponseCache(ttl_s=60, timer=clock)  # a cache on the fake clock
            svc.generate_text("Expire me")
            clock.now = 59
            assert svc.generate_text("Expire me").cached is True
            clock.now = 61
            assert svc.generate_text("Expire me").cached is False

    def test_shrinking_capacity_in_the_service(self, tmp_path: Path) -> None:
        """Shrinking max_entries to 1 keeps one answer and counts the evictions."""
        with make_service(tmp_path) as svc:
            for i in range(3):
                svc.generate_text(f"Capacity prompt {i}")
            s = svc.cache.configure(max_entries=1)
            assert (s.entries, s.evictions) == (1, 2)
            hits = [svc.generate_text(f"Capacity prompt {i}").cached for i in range(3)]
            assert hits.count(True) <= 1

    def test_completed_stream_is_cached(self, tmp_path: Path) -> None:
        """A stream read to the end is cached: generate_text and a new stream replay it."""
        with make_service(tmp_path) as svc:
            stream = svc.stream_text("Stream then reuse", max_tokens=60)
            text = "".join(stream)
            before = demo_stats(svc)
            hit = svc.generate_text("Stream then reuse", max_tokens=60)
            assert hit.cached is True and hit.text == text
            replay = svc.stream_text("Stream then reuse", max_tokens=60)
            assert "".join(replay) == text
            assert replay.result is not None and replay.result.cached is True
            assert demo_stats(svc) == before
            df = svc.metrics.frame()
            assert list(df["outcome"]) == ["ok", "cache_hit", "cache_hit"]
            assert list(df["kind"]) == ["stream", "text", "stream"]

    def test_image_cache_is_keyed_on_seed(self, tmp_path: Path) -> None:
        """Same seed: a hit; another seed: a miss with other bytes."""
        with make_service(tmp_path) as svc:
            a = svc.generate_image("Seeded mountains", width=64, height=64, seed=1)
            before = demo_stats(svc)["image"]
            b = svc.generate_image("Seeded mountains", width=64, height=64, seed=1)
            c = svc.generate_image("Seeded mountains", width=64, height=64, seed=2)
            assert (a.cached, b.cached, c.cached) == (False, True, False)
            assert b.data == a.data and c.data != a.data
            assert demo_stats(svc)["image"] == before + 1


class TestByteCap:
    """The cache is capped in bytes as well as entries (``cache_max_bytes``)."""

    def test_least_recently_used_go_first_past_the_byte_cap(self) -> None:
        """Three 40-byte answers in a 100-byte cache: the oldest is evicted and counted."""
        cache = ResponseCache(max_entries=10, max_bytes=100)
        for name in ("a", "b", "c"):
            cache.put(name, name, nbytes=40, latency_ms=1.0)
        assert cache.get("a") is None and cache.get("b") and cache.get("c")
        stats = cache.stats()
        assert stats.bytes == 80 and stats.max_bytes == 100 and stats.evictions == 1

    def test_an_answer_larger_than_the_cache_is_not_kept(self) -> None:
        """A single answer over max_bytes is served but never stored."""
        cache = ResponseCache(max_entries=10, max_bytes=100)
        cache.put("big", "x", nbytes=101, latency_ms=1.0)
        assert cache.get("big") is None and cache.stats().entries == 0

    def test_shrinking_the_byte_cap_evicts(self) -> None:
        """configure(max_bytes=...) keeps the most recently used answers that fit."""
        cache = ResponseCache(max_entries=10, max_bytes=1000)
        for name in ("a", "b", "c"):
            cache.put(name, name, nbytes=40, latency_ms=1.0)
        stats = cache.configure(max_bytes=90)
        assert stats.max_bytes == 90 and stats.entries == 2 and stats.bytes == 80
        assert cache.get("a") is None
        with pytest.raises(ValueError):
            cache.configure(max_bytes=0)

    def test_a_response_over_max_response_bytes_is_refused_and_not_cached(self, tmp_path: Path) -> None:
        """A 2,000-token answer against a 1 KiB cap: ResponseTooLarge in words, and asked again next time."""
        from blossom_dash.errors import ResponseTooLarge

        with make_service(tmp_path, max_response_bytes=1024) as svc:
            for _ in range(2):
                with pytest.raises(ResponseTooLarge) as info:
                    svc.generate_text("Write at length", model="demo-deep", max_tokens=2000)
                assert "larger than" in info.value.message and info.value.hint
            assert demo_stats(svc)["chat"] == 2 and svc.cache.stats().entries == 0
            assert svc.generate_text("Short", max_tokens=5).text  # the service still answers
