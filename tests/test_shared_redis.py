"""Shared state on Redis: two service instances on one real Redis behave as one.

Library level: two ``BlossomService`` instances in this process (each with its own
data folder and SQLite file) on the ``redis_url`` fixture's real ``redis-server`` and
on ONE demo backend, so their cache keys match and the backend's own counter shows
which requests reached it. The cross-process tests (two OS processes) are in
``test_replicas.py``.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from helpers import make_service, run_in_threads
from services import _wait_port, start_redis

from blossom_dash import BlossomService, RateLimited
from blossom_dash.demo_backend import DemoServer
from blossom_dash.errors import SharedStateUnavailable
from blossom_dash.policies.cache import request_key
from blossom_dash.policies.shared_cache import CODEC_VERSION, CodecError, SharedResponseCache, decode, encode
from blossom_dash.policies.shared_limits import SharedRateLimiter
from blossom_dash.results import AudioResult, ImageResult, TextResult, Usage

#: ``replicas(**settings)`` -> services A and B.
Pair = Callable[..., tuple[BlossomService, BlossomService]]


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    """Base URL of one demo backend (latency off) both services call."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = DemoServer(latency=False)
    url = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(10)
    yield url
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _served(backend: str) -> int:
    """Chat requests the shared demo backend has answered so far."""
    return int(httpx.get(f"{backend}/_demo/stats", timeout=5).json()["chat"])


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str, backend: str) -> Iterator[Pair]:
    """``replicas(**settings)``: services A and B on the same Redis and backend (closed after the test)."""
    made: list[BlossomService] = []

    def make(**settings: Any) -> tuple[BlossomService, BlossomService]:
        for name in ("a", "b"):
            made.append(make_service(tmp_path / name, backend=backend, redis_url=redis_url, **settings))
        return made[-2], made[-1]

    yield make
    for svc in made:
        svc.close()


@pytest.fixture
def pair(replicas: Pair) -> tuple[BlossomService, BlossomService]:
    """A and B with make_service's defaults (limits out of the way)."""
    return replicas()


def _text(svc: BlossomService, prompt: str, user: str = "alice") -> TextResult:
    return svc.generate_text(prompt, user=user)


class TestSharedLimits:
    """Rate limits through ``limits``' RedisStorage, exact across replicas and restarts."""

    def test_fifty_threads_over_two_replicas_admit_exactly_the_user_limit(
            self, replicas: Pair) -> None:
        """A per-user limit of 7 with 50 threads spread over A and B admits exactly 7; the rest get a Retry-After."""
        a, b = replicas(per_user_rpm=7)
        admitted: list[TextResult] = []
        refused: list[RateLimited] = []
        lock = threading.Lock()

        def worker(k: int) -> None:
            try:
                result = _text(a if k % 2 else b, f"limit prompt {k}")
                with lock:
                    admitted.append(result)
            except RateLimited as exc:
                with lock:
                    refused.append(exc)

        assert run_in_threads(worker, 50) == []
        assert len(admitted) == 7
        assert len(refused) == 43
        assert all(exc.scope == "user" and 0 < exc.retry_after_s <= 60 for exc in refused)
        assert "limit of 7 requests per minute" in refused[0].message
        for svc in (a, b):
            status = svc.limit_status("alice")
            assert (status.user.used, status.user.remaining, status.unavailable) == (7, 0, "")

    def test_the_global_limit_counts_every_user_on_every_replica(
            self, replicas: Pair) -> None:
        """Ten users over both replicas under a global limit of 5: exactly 5 admitted, refused as "global"."""
        a, b = replicas(global_rpm=5)
        outcomes: list[str] = []

        def worker(k: int) -> None:
            try:
                _text(a if k % 2 else b, f"global prompt {k}", user=f"user{k}")
                outcomes.append("ok")
            except RateLimited as exc:
                outcomes.append(exc.scope)

        assert run_in_threads(worker, 10) == []
        assert sorted(outcomes) == ["global"] * 5 + ["ok"] * 5

    def test_used_slots_survive_a_restart_of_both_replicas(self, replicas: Pair, tmp_path: Path, redis_url: str,
                                                          backend: str) -> None:
        """Slots taken before both replicas restart still count afterwards."""
        a, b = replicas(per_user_rpm=5)
        for k in range(3):
            _text(a if k % 2 else b, f"before restart {k}")
        a.close()
        b.close()
        with make_service(tmp_path / "c", backend=backend, redis_url=redis_url, per_user_rpm=5) as c:
            status = c.limit_status("alice").user
            assert (status.used, status.remaining) == (3, 2)
            assert 0 < status.reset_in_s <= 60
            _text(c, "after restart 1")
            _text(c, "after restart 2")
            with pytest.raises(RateLimited):
                _text(c, "after restart 3")

    def test_limits_configured_on_a_apply_on_b(self, pair: tuple[BlossomService, BlossomService]) -> None:
        """An admin's new limits on A are B's limits for its next request; an env seed does not override them."""
        a, b = pair
        a.configure_limits(per_user_rpm=2, global_rpm=50)
        assert b.rate_limits() == (2, 50)
        _text(b, "configured 1")
        _text(b, "configured 2")
        with pytest.raises(RateLimited) as refused:
            _text(b, "configured 3")
        assert refused.value.scope == "user"
        assert b.limit_status("alice").user.limit == 2

    def test_a_restart_keeps_controls_limits_and_a_changed_setting_replaces_them(
            self, redis_url: str) -> None:
        """Same settings at a restart: Controls' limits stay. A changed setting (a redeploy): it is in force."""
        first = SharedRateLimiter(redis_url, per_user_rpm=30, global_rpm=120)
        first.configure(per_user_rpm=3)
        same = SharedRateLimiter(redis_url, per_user_rpm=30, global_rpm=120)  # a restart, settings unchanged
        assert same.limits == (3, 120)
        redeployed = SharedRateLimiter(redis_url, per_user_rpm=12, global_rpm=120)  # a new BLOSSOM_DASH_PER_USER_RPM
        assert redeployed.limits == (12, 120)
        assert first.limits == (12, 120)  # the old replica's requests read it too, and do not put 30 back
        first.acquire("zoe")
        assert redeployed.limits == (12, 120)
        for limiter in (first, same, redeployed):
            limiter.close()

    def test_a_refusal_takes_no_global_slot(self, redis_url: str) -> None:
        """A user at their own limit is refused before the global window is touched."""
        limiter = SharedRateLimiter(redis_url, per_user_rpm=1, global_rpm=10)
        try:
            limiter.acquire("bob")
            for _ in range(3):
                with pytest.raises(RateLimited):
                    limiter.acquire("bob")
            assert limiter.status("carol").global_.used == 1
        finally:
            limiter.close()


class TestSharedCache:
    """The response cache in Redis: one set of entries, caps, config and counters for all replicas."""

    def test_a_miss_on_a_is_a_hit_on_b(self, pair: tuple[BlossomService, BlossomService], backend: str) -> None:
        """A's answer is B's cache hit: the backend is called once, and both see the shared counters."""
        a, b = pair
        before = _served(backend)
        first = _text(a, "shared cache prompt")
        second = _text(b, "shared cache prompt")
        assert not first.cached and second.cached
        assert second.text == first.text and second.usage == first.usage
        assert _served(backend) == before + 1
        stats = a.cache_stats()
        assert (stats.hits, stats.misses, stats.entries, stats.shared) == (1, 1, 1, True)
        assert stats.saved_ms == pytest.approx(first.latency_ms, abs=0.01)

    def test_images_and_audio_come_back_byte_for_byte(self, pair: tuple[BlossomService, BlossomService]) -> None:
        """An image and a clip cached by A are B's hits with the same bytes."""
        a, b = pair
        image = a.generate_image("a lighthouse", width=64, height=64, seed=3)
        again = b.generate_image("a lighthouse", width=64, height=64, seed=3)
        assert again.cached and again.data == image.data and (again.width, again.seed) == (64, 3)
        clip = a.generate_speech("hello there")
        clip_again = b.generate_speech("hello there")
        assert clip_again.cached and clip_again.data == clip.data

    def test_a_clear_on_a_is_seen_by_b_at_its_next_lookup(self, pair: tuple[BlossomService, BlossomService]) -> None:
        """After A clears, B's very next lookup misses (no local copy can outlive a clear)."""
        a, b = pair
        _text(a, "to be cleared")
        assert _text(b, "to be cleared").cached
        assert a.clear_cache() == 1
        assert not _text(b, "to be cleared").cached
        assert b.cache_stats().entries == 1  # B's fresh answer

    def test_an_entry_expires_after_its_ttl_on_every_replica(
            self, replicas: Pair) -> None:
        """An entry is a hit within its TTL and a miss (counted as expired) after it."""
        a, b = replicas(cache_ttl_s=2.0)
        _text(a, "short lived")
        assert _text(b, "short lived").cached
        time.sleep(2.3)
        assert not _text(b, "short lived").cached
        stats = a.cache_stats()
        assert stats.expirations == 1 and stats.entries == 1

    def test_cache_settings_configured_on_a_apply_on_b(self, pair: tuple[BlossomService, BlossomService]) -> None:
        """TTL, caps and the on/off switch set on A are B's at once."""
        a, b = pair
        a.configure_cache(ttl_s=120, max_entries=7, max_bytes=4096, enabled=False)
        stats = b.cache_stats()
        assert (stats.ttl_s, stats.max_entries, stats.max_bytes, stats.enabled) == (120, 7, 4096, False)
        assert not _text(b, "cache off").cached
        assert not _text(b, "cache off").cached
        a.configure_cache(enabled=True)
        _text(b, "cache on")
        assert _text(a, "cache on").cached

    def test_lowering_the_entry_cap_on_a_evicts_everywhere(self, pair: tuple[BlossomService, BlossomService]) -> None:
        """A lower max_entries evicts the least recently used entries for every replica (counted)."""
        a, b = pair
        for k in range(4):
            _text(a, f"entry {k}")
        assert _text(b, "entry 0").cached  # now the most recently used
        a.configure_cache(max_entries=2)
        stats = b.cache_stats()
        assert (stats.entries, stats.evictions) == (2, 2)
        assert _text(b, "entry 0").cached and _text(b, "entry 3").cached
        assert not _text(b, "entry 1").cached


class TestByteCap:
    """Entry and byte caps, on the cache classes directly (sizes chosen by the test)."""

    @staticmethod
    def _result(k: int) -> TextResult:
        return TextResult(f"answer {k}", "m", "demo", 10.0, None, Usage(1, 2, 3), False, f"r{k}")

    def test_the_byte_cap_evicts_the_least_recently_used(self, redis_url: str) -> None:
        """Three 400-byte answers under a 1000-byte cap: the one used least recently goes, on both replicas."""
        a = SharedResponseCache(redis_url, max_bytes=1000)
        b = SharedResponseCache(redis_url, max_bytes=1000)
        keys = [request_key(prompt=f"p{k}") for k in range(3)]
        try:
            a.put(keys[0], self._result(0), nbytes=400, latency_ms=10)
            a.put(keys[1], self._result(1), nbytes=400, latency_ms=10)
            assert b.get(keys[0]) is not None  # keys[1] is now the least recently used
            b.put(keys[2], self._result(2), nbytes=400, latency_ms=10)
            assert a.get(keys[1]) is None
            assert a.get(keys[0]).value == self._result(0)  # type: ignore[union-attr]
            assert a.get(keys[2]) is not None
            stats = b.stats()
            assert (stats.entries, stats.bytes, stats.evictions) == (2, 800, 1)
        finally:
            a.close()
            b.close()

    def test_an_answer_larger_than_the_cap_is_not_kept(self, redis_url: str) -> None:
        """An answer above max_bytes is not stored, and evicts nothing."""
        cache = SharedResponseCache(redis_url, max_bytes=1000)
        try:
            cache.put(request_key(prompt="small"), self._result(0), nbytes=10, latency_ms=1)
            cache.put(request_key(prompt="huge"), self._result(1), nbytes=1001, latency_ms=1)
            assert cache.get(request_key(prompt="huge")) is None
            stats = cache.stats()
            assert (stats.entries, stats.bytes, stats.evictions) == (1, 10, 0)
        finally:
            cache.close()


class TestCodec:
    """Answers in Redis are an explicit format that rebuilds only the result types."""

    def test_every_result_type_round_trips(self) -> None:
        """Text, image and audio results (bytes, None, nested Usage) come back equal."""
        values = [
            TextResult("hi", "m", "demo", 1.5, 0.5, Usage(1, 2, 3), False, "r1", "stop", True),
            ImageResult(b"\x89PNG\r\n\x1a\n...", "image/png", 64, 32, "flux", "demo", 7, 9.0, False, "r2"),
            AudioResult(b"RIFF....WAVE", "audio/wav", "alloy", "wav", None, 3.0, False, "r3", "tts", "demo"),
        ]
        for value in values:
            assert decode(encode(value)) == value

    def test_a_crafted_entry_is_refused_not_built(self) -> None:
        """A header naming another class, a pickle, a newer version or a truncation is a CodecError."""
        good = encode(TextResult("hi", "m", "demo", 1.5, None, Usage(), False, "r"))
        crafted = good.replace(b'"TextResult"', b'"Settings"')
        crafted = crafted[:4] + len(crafted[8:]).to_bytes(4, "big") + crafted[8:]
        newer = good[:3] + bytes([CODEC_VERSION + 1]) + good[4:]
        pickled = b"\x80\x04\x95" + b"cos\nsystem\n(S'echo owned'\ntR."
        for data in (crafted, newer, pickled, good[:-3]):
            with pytest.raises(CodecError):
                decode(data)
        with pytest.raises(TypeError):
            encode({"not": "a result"})  # type: ignore[arg-type]

    def test_an_unreadable_entry_in_redis_is_a_miss_and_is_dropped(self, redis_url: str) -> None:
        """Bytes someone else wrote under a cache key are never unpickled: a miss, and the entry goes."""
        cache = SharedResponseCache(redis_url)
        key = request_key(prompt="tampered")
        try:
            cache.put(key, TextResult("hi", "m", "demo", 1.5, None, Usage(), False, "r"), nbytes=2, latency_ms=1)
            client = redis.Redis.from_url(redis_url)
            client.set(f"blossom-dash:cache:e:{key}", b"\x80\x04\x95 not a result", keepttl=True)
            assert cache.get(key) is None
            assert not client.exists(f"blossom-dash:cache:e:{key}")
            stats = cache.stats()
            assert (stats.hits, stats.misses) == (0, 1)
            client.close()
        finally:
            cache.close()


def _restart_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """``redis-server`` again on ``port`` (empty, as after a crash without persistence)."""
    proc = subprocess.Popen(
        [str(shutil.which("redis-server")), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "no", "--requirepass", "s3cret-pw"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_port(port, 15), "redis-server did not come back"
    return proc


class TestRedisDown:
    """Redis stops answering (a server of this test's own, not the shared one)."""

    def test_a_request_is_refused_in_words_and_the_app_keeps_working(self, tmp_path: Path, backend: str) -> None:
        """Limits fail closed with a clear message (no password, no traceback); stats and history still
        answer; once Redis is back, requests are admitted again."""
        try:
            server = start_redis()
        except RuntimeError as exc:
            pytest.skip(f"needs Redis: {exc}")
        restarted = None
        try:
            redis.Redis.from_url(server.url).config_set("requirepass", "s3cret-pw")
            url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
            with make_service(tmp_path / "down", backend=backend, redis_url=url, per_user_rpm=10) as svc:
                assert not _text(svc, "before the outage").cached
                assert svc.cache_stats().entries == 1
                server.process.terminate()
                server.process.wait(10)
                with pytest.raises(SharedStateUnavailable) as refused:
                    _text(svc, "during the outage")
                message = str(refused.value)
                assert "shared rate-limit store (Redis at redis://127.0.0.1:" in message
                assert "unreachable" in message and "BLOSSOM_DASH_REDIS_URL" in message
                assert "s3cret-pw" not in message
                status = svc.limit_status("alice")
                assert status.unavailable and status.user.remaining == 0 and status.user.limit == 10
                stats = svc.cache_stats()
                assert stats.unavailable and "s3cret-pw" not in stats.unavailable
                assert stats.entries == 1  # the last figures read
                with pytest.raises(SharedStateUnavailable):
                    svc.clear_cache()
                assert svc.rate_limits() == (10, 100_000)  # the last limits read
                svc.metrics.flush()
                events = svc.metrics.recent(5)
                assert events[0].outcome == "error" and events[0].error_type == "SharedStateUnavailable"

                restarted = _restart_redis(server.port, server.directory)
                result = _text(svc, "after the outage")
                assert not result.cached
                assert svc.limit_status("alice").unavailable == ""
                assert _text(svc, "after the outage").cached
        finally:
            if restarted is not None:
                restarted.terminate()
                restarted.wait(10)
            server.stop()


class TestPagesWhileRedisIsDown:
    """The pages say Redis is unreachable instead of failing."""

    def test_controls_and_the_sidebar_show_the_outage_in_words(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With BLOSSOM_DASH_REDIS_URL pointing at nothing, Controls and the sidebar warn; no exception."""
        from pages_helpers import app, texts
        from services import free_port

        monkeypatch.setenv("BLOSSOM_DASH_REDIS_URL", f"redis://:pw-not-shown@127.0.0.1:{free_port()}/0")
        at = app("app.py").run()
        assert not at.exception
        assert any("shared rate-limit store" in w and "unreachable" in w for w in texts(at.sidebar, "warning"))
        at.switch_page("app_pages/controls.py").run()
        assert not at.exception
        warnings = texts(at, "warning")
        assert any("shared response cache" in w and "Nothing is cached meanwhile" in w for w in warnings), warnings
        assert not any("pw-not-shown" in w for w in warnings)
        # No count that pretends: not "0 / 30" nor "at your limit" while the limits cannot be read.
        assert any("rate limits cannot be read" in w for w in warnings), warnings
        assert not any("at your limit" in w for w in warnings)
        remaining = {m.proto.label: m.proto.body for m in at.get("metric")}
        assert remaining["Your remaining"] == remaining["Global remaining"] == "—"
        assert not any("Your quota" in (p.proto.text or "") for p in at.sidebar.get("progress"))
