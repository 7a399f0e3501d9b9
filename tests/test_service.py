"""Tests for ``BlossomService``: text, streams, images, models, backends, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from blossom_ai.core.models import DEFAULT_IMAGE_MODELS
from helpers import demo_stats, make_service, run_in_threads
from PIL import Image

from blossom_dash import (
    BackendUnavailable,
    BlossomService,
    ImageResult,
    InvalidRequest,
    TextResult,
    TextStream,
)
from blossom_dash.demo_backend import IMAGE_MODELS, TEXT_MODELS, DemoServer, count_tokens
from blossom_dash.telemetry import sinks as observability


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def second_demo() -> Iterator[str]:
    """Base URL of a second demo backend, on its own event loop thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = DemoServer(latency=False)
    url = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(10)
    yield url
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


class TestStability:
    def test_sequential_and_threaded_calls_all_succeed_and_are_recorded(self, tmp_path: Path) -> None:
        """200 sequential plus 8x25 threaded calls all succeed, each recorded once as ok."""
        with make_service(tmp_path) as svc:
            results: list[TextResult] = [svc.generate_text(f"sequential prompt {i}") for i in range(200)]
            lock = threading.Lock()

            def worker(k: int) -> None:
                for i in range(25):
                    r = svc.generate_text(f"threaded prompt {k}-{i}", user=f"user{k}")
                    with lock:
                        results.append(r)

            errors = run_in_threads(worker, 8)
            assert errors == []
            assert len(results) == 400
            assert all(r.text.strip() and not r.cached for r in results)
            df = svc.metrics.frame()
            assert len(df) == 400
            assert df["request_id"].is_unique
            assert set(df["request_id"]) == {r.request_id for r in results}
            assert set(df["outcome"]) == {"ok"}
            assert set(df["kind"]) == {"text"}


class TestGenerateText:
    def test_result_fields(self, demo_service: BlossomService) -> None:
        """A fresh answer carries text, model, backend, usage and a hex request id."""
        r = demo_service.generate_text("Describe a moving window", model="demo-balanced", max_tokens=50)
        assert r.text.strip()
        assert r.model == "demo-balanced"
        assert r.backend == "demo"
        assert r.cached is False
        assert re.fullmatch(r"[0-9a-f]{12,32}", r.request_id)
        assert r.usage.completion_tokens == count_tokens(r.text) <= 50
        assert r.usage.prompt_tokens == count_tokens("Describe a moving window")
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert r.latency_ms >= 0 and r.ttft_ms is None  # TTFT is a stream's figure

    def test_default_model_is_the_first_listed(self, demo_service: BlossomService) -> None:
        """Without a model, the backend's first listed text model answers."""
        r = demo_service.generate_text("Which model are you?")
        assert r.model == next(iter(TEXT_MODELS))

    def test_event_recorded(self, demo_service: BlossomService) -> None:
        """One ok text event with the user, session, tokens and status 200 is stored."""
        handle = demo_service.session("carol", "sess-1")
        r = handle.generate_text("Record me please")
        df = demo_service.metrics.frame()
        row = df[df["request_id"] == r.request_id]
        assert len(row) == 1
        ev = row.iloc[0]
        assert (ev["user"], ev["session"], ev["kind"], ev["outcome"]) == ("carol", "sess-1", "text", "ok")
        assert ev["status_code"] == 200
        assert ev["prompt_tokens"] == r.usage.prompt_tokens
        assert ev["completion_tokens"] == r.usage.completion_tokens
        assert ev["error_type"] == ""

    def test_history_is_trimmed_to_the_request_cap(self, demo_service: BlossomService) -> None:
        """A 12,000-character history is trimmed to the newest turns that fit 5,000 chars."""
        turn = ("word " * 80).strip()  # 399 characters, 80 tokens
        history = [{"role": "user" if i % 2 == 0 else "assistant", "content": turn} for i in range(30)]
        prompt = "final question"
        r = demo_service.generate_text(prompt, messages=history)
        kept = (5000 - len(prompt)) // len(turn)
        assert kept == 12
        assert r.usage.prompt_tokens == kept * 80 + count_tokens(prompt)

    def test_short_history_is_sent_whole(self, demo_service: BlossomService) -> None:
        """A history that fits is sent in full (its tokens count in the prompt)."""
        history = [{"role": "user", "content": "alpha beta"}, {"role": "assistant", "content": "gamma"}]
        r = demo_service.generate_text("delta epsilon", messages=history)
        assert r.usage.prompt_tokens == 5


class TestStreamText:
    def test_deltas_join_to_the_result(self, demo_service: BlossomService) -> None:
        """Several deltas arrive and join to result.text; ttft <= latency."""
        stream = demo_service.stream_text("Stream me a story", max_tokens=60)
        assert isinstance(stream, TextStream)
        deltas = list(stream)
        assert len(deltas) > 1
        assert all(isinstance(d, str) and d for d in deltas)
        result = stream.result
        assert result is not None and stream.error is None
        assert "".join(deltas) == result.text
        assert result.ttft_ms is not None and result.ttft_ms <= result.latency_ms
        assert result.cached is False and result.stopped_early is False
        assert result.finish_reason in ("stop", "length")

    def test_event_has_kind_stream_and_usage(self, demo_service: BlossomService) -> None:
        """The stream's event has kind stream, outcome ok, ttft and the backend's usage."""
        stream = demo_service.stream_text("Stream with usage", max_tokens=40)
        text = "".join(stream)
        r = stream.result
        assert r is not None
        assert r.usage.completion_tokens == count_tokens(text)
        assert r.usage.prompt_tokens == count_tokens("Stream with usage")
        df = demo_service.metrics.frame()
        ev = df[df["request_id"] == r.request_id].iloc[0]
        assert (ev["kind"], ev["outcome"]) == ("stream", "ok")
        assert ev["ttft_ms"] > 0
        assert ev["prompt_tokens"] == r.usage.prompt_tokens
        assert ev["completion_tokens"] == r.usage.completion_tokens

    def test_stream_is_incremental(self, tmp_path: Path) -> None:
        """With simulated latency the first delta arrives well before the last one."""
        profile = TEXT_MODELS["demo-swift"]
        with make_service(tmp_path, demo_latency=True) as svc:
            stream = svc.stream_text("Pace these tokens", model=profile.name, max_tokens=60)
            arrivals: list[float] = []
            for _ in stream:
                arrivals.append(time.perf_counter())
            assert stream.result is not None
            assert len(arrivals) > 5
            generation_s = stream.result.usage.completion_tokens / profile.tokens_per_s
            # A stream joined before delivery would hand every delta over at once.
            assert arrivals[-1] - arrivals[0] >= 0.5 * generation_s

    def test_early_stop_records_one_event(self, tmp_path: Path) -> None:
        """close() after the first delta records one ok event with ttft and completion tokens."""
        with make_service(tmp_path) as svc:
            stream = svc.stream_text("Stop me early", max_tokens=200)
            first = next(stream)
            stream.close()
            r = stream.result
            assert r is not None
            assert r.stopped_early is True
            assert r.text == first
            assert r.ttft_ms is not None
            assert r.usage.completion_tokens == count_tokens(first) > 0
            df = svc.metrics.frame()
            assert len(df) == 1
            ev = df.iloc[0]
            assert (ev["kind"], ev["outcome"], ev["request_id"]) == ("stream", "ok", r.request_id)
            assert ev["ttft_ms"] > 0
            assert ev["completion_tokens"] == r.usage.completion_tokens

    def test_dropped_stream_records_one_event(self, tmp_path: Path) -> None:
        """A stream dropped (garbage-collected) after one delta records one stopped-early event
        (on the stream finaliser thread, within moments)."""
        with make_service(tmp_path) as svc:
            stream = svc.stream_text("Drop me on the floor", max_tokens=200)
            next(stream)
            del stream
            gc.collect()
            deadline = time.monotonic() + 5
            while svc.metrics.frame().empty and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.1)  # and no second event follows
            df = svc.metrics.frame()
            assert list(df["outcome"]) == ["ok"]
            assert df["ttft_ms"].iloc[0] > 0

    def test_concurrent_streams(self, demo_service: BlossomService) -> None:
        """Six threads streaming at once each get their own complete answer."""
        outcomes: dict[int, tuple[str, str]] = {}

        def worker(k: int) -> None:
            for i in range(4):
                stream = demo_service.stream_text(f"Concurrent stream {k}-{i}", max_tokens=40)
                text = "".join(stream)
                assert stream.result is not None
                outcomes[k * 10 + i] = (text, stream.result.text)

        assert run_in_threads(worker, 6) == []
        assert len(outcomes) == 24
        assert all(text == result and text for text, result in outcomes.values())
        prompts = {text.split("“")[1].split("”")[0] for text, _ in outcomes.values()}
        assert len(prompts) == 24, "every stream carries its own prompt's answer"

    def test_early_stop_usage_total_is_the_sum(self, tmp_path: Path) -> None:
        """An early-stopped stream's estimated usage has total = prompt + completion tokens."""
        with make_service(tmp_path) as svc:
            stream = svc.stream_text("Stop me early for totals", max_tokens=200)
            next(stream)
            stream.close()
            u = stream.result.usage  # type: ignore[union-attr]
            assert u.total_tokens == u.prompt_tokens + u.completion_tokens

    def test_early_stopped_stream_is_not_cached(self, tmp_path: Path) -> None:
        """A stream stopped early stores nothing; the same request later goes to the backend."""
        with make_service(tmp_path) as svc:
            stream = svc.stream_text("Do not cache a partial answer", max_tokens=200)
            next(stream)
            stream.close()
            assert svc.cache.stats().entries == 0
            again = svc.generate_text("Do not cache a partial answer", max_tokens=200)
            assert again.cached is False
            assert again.text.startswith(stream.result.text)  # type: ignore[union-attr]

    def test_stream_closed_before_reading_is_recorded(self, tmp_path: Path) -> None:
        """A stream closed before any delta was read still records its one event."""
        with make_service(tmp_path) as svc:
            stream = svc.stream_text("Never read me")
            stream.close()
            assert len(svc.metrics.frame()) == 1


class TestGenerateImage:
    def test_png_at_requested_size(self, demo_service: BlossomService) -> None:
        """The bytes are a PNG that Pillow opens at the requested size."""
        r = demo_service.generate_image("A lighthouse at dusk", width=96, height=80, seed=5)
        assert isinstance(r, ImageResult)
        with Image.open(io.BytesIO(r.data)) as img:
            img.load()
            assert img.format == "PNG"
            assert img.size == (96, 80)
        assert (r.width, r.height, r.content_type) == (96, 80, "image/png")
        assert r.model == next(iter(IMAGE_MODELS)) and r.seed == 5 and r.cached is False

    def test_image_event_recorded(self, demo_service: BlossomService) -> None:
        """An image call records one ok image event with its byte size."""
        r = demo_service.generate_image("A recorded image", width=64, height=64, seed=11, model="demo-mosaic")
        df = demo_service.metrics.frame()
        ev = df[df["request_id"] == r.request_id].iloc[0]
        assert (ev["kind"], ev["outcome"], ev["model"]) == ("image", "ok", "demo-mosaic")
        assert ev["bytes"] == len(r.data)

    def test_random_seed_when_none(self, demo_service: BlossomService) -> None:
        """seed=None picks a random seed, returned in the result; two calls differ."""
        a = demo_service.generate_image("A random sky", width=64, height=64)
        b = demo_service.generate_image("A random sky", width=64, height=64)
        assert 0 <= a.seed <= 2**31 - 1 and 0 <= b.seed <= 2**31 - 1
        assert a.seed != b.seed
        assert a.data != b.data
        assert not a.cached and not b.cached

    def test_same_seed_is_a_cache_hit(self, demo_service: BlossomService) -> None:
        """The same prompt, size and seed twice: the second is cached, nothing sent."""
        a = demo_service.generate_image("A seeded forest", width=64, height=64, seed=1234)
        before = demo_stats(demo_service)
        b = demo_service.generate_image("A seeded forest", width=64, height=64, seed=1234)
        assert b.cached is True and b.data == a.data and b.seed == 1234
        assert b.request_id != a.request_id
        assert demo_stats(demo_service) == before

    def test_prompt_with_an_ellipsis(self, demo_service: BlossomService) -> None:
        """An image prompt containing '...' is drawn like any other."""
        r = demo_service.generate_image("A cat... and a dog", width=64, height=64, seed=1)
        assert r.width == 64

    def test_long_prompt_is_drawn_or_refused_in_words(self, demo_service: BlossomService) -> None:
        """A 2,500-character image prompt (under the limit) is drawn, or refused as InvalidRequest."""
        before = demo_stats(demo_service)
        try:
            demo_service.generate_image("tree " * 500, width=64, height=64, seed=1)
        except InvalidRequest:
            assert demo_stats(demo_service) == before

    def test_image_timeout_is_the_image_deadline(self, tmp_path: Path) -> None:
        """An image that takes longer than request_timeout_s but less than image_timeout_s succeeds."""
        with make_service(tmp_path, request_timeout_s=1, image_timeout_s=10) as svc:
            httpx.post(f"{svc.backend.base_url}/_demo/faults", timeout=5,
                       json={"fault": "timeout", "count": 1, "routes": ["image"], "delay_s": 2})
            r = svc.generate_image("A slow painting", width=64, height=64, seed=1)
            assert r.width == 64


class TestSdkStaysQuiet:
    def test_no_output_and_no_root_log_records(self, demo_service: BlossomService,
                                               capfd: pytest.CaptureFixture[str],
                                               caplog: pytest.LogCaptureFixture) -> None:
        """A call with temperature 0.5 and a stream print nothing but our JSON request log."""
        observability.flush_logs()
        capfd.readouterr()  # drop log lines of earlier tests on this module's shared service
        caplog.set_level(logging.DEBUG)
        r = demo_service.generate_text("Quiet please, secret prompt 81723", temperature=0.5)
        assert not r.cached
        stream = demo_service.stream_text("Quiet stream, secret prompt 99120", temperature=0.5)
        assert "".join(stream)
        observability.flush_logs()
        out, err = capfd.readouterr()
        assert out == ""
        # stderr carries only our own JSON request log: one line per request, no prompt.
        assert [json.loads(line)["outcome"] for line in err.splitlines()] == ["ok", "ok"]
        assert "81723" not in err and "99120" not in err
        noisy = [rec for rec in caplog.records if rec.name.startswith(("blossom_ai", "blossom_dash.sdk"))]
        assert noisy == []
        assert "81723" not in caplog.text and "99120" not in caplog.text


class TestListModels:
    def test_demo_model_names(self, demo_service: BlossomService) -> None:
        """The demo backend's text and image model names are listed, in order."""
        assert demo_service.list_models("text") == list(TEXT_MODELS)
        assert demo_service.list_models("image") == list(IMAGE_MODELS)

    def test_unknown_kind(self, demo_service: BlossomService) -> None:
        """An unknown kind is an InvalidRequest with a hint."""
        with pytest.raises(InvalidRequest) as info:
            demo_service.list_models("video")  # "audio" is a kind since text-to-speech
        assert info.value.message and info.value.hint

    def test_a_dead_custom_backend_shows_no_borrowed_names(self, tmp_path: Path) -> None:
        """A custom backend that refuses connections lists nothing, says why, and never
        shows Pollinations' names as its own."""
        with make_service(tmp_path, backend=f"http://127.0.0.1:{closed_port()}") as svc:
            models = svc.model_list("text")
            assert models.fallback and models.names == () and "did not list" in models.detail
            assert not set(svc.list_models("image")) & set(DEFAULT_IMAGE_MODELS)
            with pytest.raises(BackendUnavailable) as info:
                svc.generate_text("Which model?")  # no model given and none listed: words, not a guess
            assert "model" in info.value.message.lower() and info.value.hint

    def test_a_fallback_is_not_cached_as_the_backends_list(self, tmp_path: Path) -> None:
        """A failed listing is asked again after ``retry_s``: a backend that comes up
        later is listed at once, not after the 5-minute TTL of a real list."""
        port = closed_port()
        with make_service(tmp_path, backend=f"http://127.0.0.1:{port}") as svc:
            svc.gateway._models.retry_s = 0.2
            assert svc.model_list("text").fallback
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, daemon=True)
            thread.start()
            server = DemoServer(latency=False)
            asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", port), loop).result(10)
            try:
                time.sleep(0.3)
                models = svc.model_list("text")
                assert models.source == "backend" and models.names == tuple(TEXT_MODELS)
                assert svc.generate_text("Now it answers").model == list(TEXT_MODELS)[0]
            finally:
                asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
                loop.call_soon_threadsafe(loop.stop)
                thread.join(5)


class TestSwitchBackend:
    def test_switch_to_a_second_demo_server(self, tmp_path: Path, second_demo: str) -> None:
        """After switching, requests go to the new URL and its answers are not the old cache's."""
        with make_service(tmp_path) as svc:
            old = svc.generate_text("Same prompt on two backends")
            info = svc.switch_backend(second_demo)
            assert info["base_url"] == second_demo and info["name"] == "custom" and not info["is_demo"]
            assert svc.backend.base_url == second_demo
            before = httpx.get(f"{second_demo}/_demo/stats", timeout=5).json()["chat"]
            new = svc.generate_text("Same prompt on two backends")
            assert new.cached is False and new.backend == "custom"
            assert new.text == old.text  # the same deterministic demo answer, fetched anew
            assert httpx.get(f"{second_demo}/_demo/stats", timeout=5).json()["chat"] == before + 1
            assert svc.health()["ok"] is True

    @pytest.mark.parametrize("spec", ["ftp://example.org", "nonsense", "http://"])
    def test_invalid_spec(self, demo_service: BlossomService, spec: str) -> None:
        """An invalid spec raises InvalidRequest and leaves the backend as it was."""
        before = demo_service.backend_info()
        with pytest.raises(InvalidRequest) as info:
            demo_service.switch_backend(spec)
        assert info.value.message and info.value.hint
        assert demo_service.backend_info() == before


class TestHealth:
    def test_demo_is_ok(self, demo_service: BlossomService) -> None:
        """The demo backend reports ok, with its label and a detail."""
        h = demo_service.health(max_age_s=0)
        assert h["ok"] is True and h["is_demo"] is True and h["name"] == "demo"
        assert h["detail"] and h["latency_ms"] >= 0

    def test_closed_port_is_not_ok(self, tmp_path: Path) -> None:
        """A backend URL nobody listens on reports not ok with a message."""
        with make_service(tmp_path, backend=f"http://127.0.0.1:{closed_port()}") as svc:
            h = svc.health(max_age_s=0)
            assert h["ok"] is False
            assert isinstance(h["detail"], str) and len(h["detail"]) > 10


class TestConnectionRefused:
    def test_text_stream_and_image(self, tmp_path: Path) -> None:
        """A refused connection is BackendUnavailable for text, stream and image."""
        with make_service(tmp_path, backend=f"http://127.0.0.1:{closed_port()}") as svc:
            with pytest.raises(BackendUnavailable):
                svc.generate_text("Anyone there?", model="demo-swift")
            stream = svc.stream_text("Anyone streaming?", model="demo-swift")
            with pytest.raises(BackendUnavailable):
                list(stream)
            assert isinstance(stream.error, BackendUnavailable)
            with pytest.raises(BackendUnavailable):
                svc.generate_image("Anyone drawing?", model="demo-sketch", width=64, height=64, seed=1)
            df = svc.metrics.frame()
            assert list(df["outcome"]) == ["error"] * 3
            assert set(df["error_type"]) == {"BackendUnavailable"}


class TestLifecycle:
    def test_closed_service_refuses_in_words(self, tmp_path: Path) -> None:
        """A call after close() raises BackendUnavailable, not a raw error."""
        svc = make_service(tmp_path)
        svc.close()
        with pytest.raises(BackendUnavailable) as info:
            svc.generate_text("Too late", model="demo-swift")
        assert info.value.message and info.value.hint
