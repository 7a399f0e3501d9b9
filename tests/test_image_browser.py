"""An image attached in the Playground's chat input reaches the backend as an ``image_url`` part.

Headless Chromium at 1440×900 against ``streamlit run app.py`` pointed at a demo backend of
this test's own (faults enabled, so its ``GET /_demo/last-chat`` shows the body it got).
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from test_browser import CHROMIUM, CHROMIUM_ARGS, _keep, _serve

from blossom_dash.demo_backend import DemoServer

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    """A demo backend on its own loop thread, latency off, test hooks on."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = DemoServer(latency=False, faults=True)
    url = asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    yield url
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def app_url(demo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve({"BLOSSOM_DASH_BACKEND": demo_url, "BLOSSOM_DASH_ALLOW_CUSTOM_BACKEND": "true",
                       "BLOSSOM_DASH_DATA_DIR": str(tmp_path_factory.mktemp("image-browser"))})


def test_an_attached_image_reaches_the_backend_as_an_image_url_part(app_url: str, demo_url: str,
                                                                     tmp_path: Path) -> None:
    """Attach a PNG, ask demo-vision: the backend got a data: URL of those bytes; the answer describes it."""
    from playwright.sync_api import expect, sync_playwright
    from test_chat_browser import _pick_model

    png_path = tmp_path / "blue.png"
    Image.new("RGB", (320, 240), (0x33, 0x66, 0xCC)).save(png_path, "PNG")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(app_url)
        box = page.get_by_placeholder("Ask a model…")
        expect(box).to_be_visible(timeout=30_000)
        _pick_model(page, "demo-vision")
        page.get_by_test_id("stChatInput").locator("input[type=file]").set_input_files(str(png_path))
        expect(page.get_by_test_id("stChatInput")).to_contain_text("blue.png", timeout=15_000)
        box.fill("What is in this picture?")
        box.press("Enter")
        answer = page.get_by_test_id("stChatMessage").nth(1)
        expect(answer).to_contain_text("I received 1 image: PNG 320×240", timeout=30_000)
        expect(answer).to_contain_text(re.compile(r"mostly blue #"))
        _keep(page, tmp_path, "chat-image.png")
        body = httpx.get(f"{demo_url}/_demo/last-chat", timeout=5).json()["body"]
        content = body["messages"][-1]["content"]
        assert content[0] == {"type": "text", "text": "What is in this picture?"}
        assert content[1]["type"] == "image_url"
        sent = "data:image/png;base64," + base64.b64encode(png_path.read_bytes()).decode()
        assert content[1]["image_url"]["url"] == sent
        assert page.get_by_text("Traceback").count() == 0
        browser.close()
