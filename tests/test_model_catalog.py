"""Model facts and prices from the backend's model endpoints (the demo backend over loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from blossom_dash.demo_backend import DemoServer
from blossom_dash.gateway.models import ModelCatalog, model_info
from blossom_dash.pricing import Price, load_prices_file
from blossom_dash.sdk.backend import Backend
from blossom_dash.sdk.loop import LoopThread
from blossom_dash.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[LoopThread, Backend, DemoServer]]:
    loop = LoopThread()
    server = DemoServer(latency=False)
    url = loop.run(server.start(), timeout=10)
    backend = Backend(name="demo", base_url=url, api_key=None, timeout_s=5)
    yield loop, backend, server
    loop.run(backend.close(), timeout=5)
    loop.run(server.stop(), timeout=5)
    loop.stop()


class TestInfo:
    def test_text_image_and_audio_facts(self, demo: tuple[LoopThread, Backend, DemoServer]) -> None:
        """Price (labelled demo), paid-only, health and modalities from /text, /image and /audio/models."""
        loop, backend, _ = demo
        catalog = ModelCatalog(loop)
        text = catalog.info(backend, "text", "demo-balanced")
        assert text is not None and text.price is not None and text.price.source == "demo"
        assert text.price.get("promptTextTokens") == Decimal("0.00000015")
        assert text.paid_only is False and text.health == "ok" and text.output_modalities == ("text",)
        image = catalog.info(backend, "image", "demo-gradient")
        assert image is not None and image.paid_only is True and image.price is not None
        assert image.price.per_image == Decimal("0.0005")
        voice = catalog.info(backend, "audio", "demo-voice")
        assert voice is not None and "audio" in voice.output_modalities and "alloy" in voice.voices
        assert catalog.info(backend, "text", "no-such-model") is None

    def test_cached_with_the_lists_ttl(self, demo: tuple[LoopThread, Backend, DemoServer]) -> None:
        """Facts are asked once per TTL, then again."""
        loop, backend, _ = demo
        clock = Clock()
        catalog = ModelCatalog(loop, ttl_s=60, clock=clock)
        catalog.info(backend, "text", "demo-swift")
        first = stats(backend, loop)
        catalog.info(backend, "text", "demo-deep")
        assert stats(backend, loop) == first
        clock.now = 61
        catalog.info(backend, "text", "demo-deep")
        assert stats(backend, loop) == first + 1

    def test_settings_prices_fill_in(self, demo: tuple[LoopThread, Backend, DemoServer]) -> None:
        """A model the backend does not know, or does not price, takes the settings file's price."""
        loop, backend, _ = demo
        own = Price((("perRequest", Decimal("0.01")),), source="settings")
        catalog = ModelCatalog(loop, prices={"local-llama": own, "demo-swift": own})
        info = catalog.info(backend, "text", "local-llama")
        assert info is not None and info.price == own and info.paid_only is None
        assert catalog.info(backend, "text", "demo-swift").price.source == "demo"  # the backend's own wins

    def test_backend_down_is_no_facts_not_an_error(self) -> None:
        """A backend that does not answer gives the settings file's facts alone."""
        loop = LoopThread()
        try:
            backend = Backend(name="custom", base_url="http://127.0.0.1:9", api_key=None, timeout_s=1)
            catalog = ModelCatalog(loop, prices={"m": Price(source="settings")})
            assert catalog.info(backend, "text", "x", timeout_s=1) is None
            assert catalog.info(backend, "text", "m", timeout_s=1).price == Price(source="settings")
            loop.run(backend.close(), timeout=5)
        finally:
            loop.stop()


def stats(backend: Backend, loop: LoopThread) -> int:
    """How many model-list requests the demo backend has seen."""
    async def get() -> int:
        resp = await backend.http.get(backend.base_url + "/_demo/stats")
        return int(resp.json()["models"])

    return loop.run(get(), timeout=5)


class TestModelInfoEntry:
    def test_old_shape_and_aliases(self) -> None:
        """An older entry with numeric prices; aliases and missing fields."""
        info = model_info({"name": "flux", "aliases": ["flux-dev"], "image_price": 0.00012}, "image")
        assert info.price is not None and info.price.per_image == Decimal("0.00012")
        assert info.aliases == ("flux-dev",) and info.paid_only is None and info.health == ""

    def test_unpriced_entry(self) -> None:
        """No pricing: no price, never 0."""
        assert model_info({"name": "x", "pricing": {}}, "text").price is None


class TestPricesSetting:
    def test_a_good_file_is_accepted(self, tmp_path: Path) -> None:
        """BLOSSOM_DASH_PRICES points at a readable prices file."""
        f = tmp_path / "p.toml"
        f.write_text('[m]\npromptTextTokens = "0.1"\n')
        assert Settings(prices=f).prices == f
        assert load_prices_file(f)["m"].get("promptTextTokens") == Decimal("0.1")

    def test_a_bad_file_is_refused_in_words(self, tmp_path: Path) -> None:
        """A bad prices file is refused at start, naming the line and field."""
        f = tmp_path / "p.csv"
        f.write_text("model,unit,price\nm,promptTextTokens,cheap\n")
        with pytest.raises(ValueError, match="line 2 price"):
            Settings(prices=f)
        assert Settings(prices="").prices is None


class TestRefresh:
    def test_missing_endpoint_is_kept_slow_failure_is_retried(self) -> None:
        """A 404 is the backend's answer (asked again after the TTL); a 503 is asked again after retry_s."""
        from aiohttp import web

        hits: list[str] = []
        status = {"code": 404}

        async def models(request: web.Request) -> web.Response:
            hits.append(request.path)
            return web.json_response({"error": "no"}, status=status["code"])

        async def start() -> tuple[web.AppRunner, str]:
            app = web.Application()
            app.router.add_get("/text/models", models)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            return runner, f"http://127.0.0.1:{port}"

        loop = LoopThread()
        runner, url = loop.run(start(), timeout=10)
        backend = Backend(name="custom", base_url=url, api_key=None, timeout_s=5)
        try:
            clock = Clock()
            catalog = ModelCatalog(loop, ttl_s=300, retry_s=10, clock=clock)
            assert catalog.info(backend, "text", "m") is None and len(hits) == 1
            clock.now = 11
            assert catalog.info(backend, "text", "m") is None and len(hits) == 1  # a 404 holds for the TTL
            clock.now = 301
            status["code"] = 503
            catalog.info(backend, "text", "m")
            clock.now = 312
            catalog.info(backend, "text", "m")
            assert len(hits) == 3  # a 5xx is asked again after retry_s
        finally:
            loop.run(backend.close(), timeout=5)
            loop.run(runner.cleanup(), timeout=5)
            loop.stop()

    def test_a_fresh_list_refreshes_the_facts(self, demo: tuple[LoopThread, Backend, DemoServer]) -> None:
        """Fetching a model list again (its TTL passed) drops the cached facts, which are read with it."""
        loop, backend, _ = demo
        clock = Clock()
        catalog = ModelCatalog(loop, ttl_s=60, clock=clock)
        catalog.info(backend, "text", "demo-swift")
        before = stats(backend, loop)
        catalog.get(backend, "text")  # no list cached yet: fetched, and the facts with it next time
        catalog.info(backend, "text", "demo-swift")
        assert stats(backend, loop) == before + 2
