"""The Playground chat in a real browser: the answer streams in view, Stop keeps it, marked.

Headless Chromium at a presenter's 1440×900 against ``streamlit run app.py`` on the demo
backend with its simulated latency (``demo-deep`` takes ~15 s an answer), reusing
``tests/test_browser.py``'s server and browser set-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, _keep, _serve

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1440, "height": 900}


@pytest.fixture(scope="module")
def chat_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on the demo backend with simulated latency, its own data dir."""
    yield from _serve({"BLOSSOM_DASH_BACKEND": "demo", "BLOSSOM_DASH_DEMO_LATENCY": "true",
                       "BLOSSOM_DASH_DEMO_FAULTS": "true",  # the test mode: GET /_demo/last-chat
                       "BLOSSOM_DASH_DATA_DIR": str(tmp_path_factory.mktemp("chat-browser"))})


def _in_view(page: object, locator: object) -> bool:
    """Whether some of ``locator``'s box lies inside the viewport."""
    box = locator.bounding_box()  # type: ignore[attr-defined]
    height = page.viewport_size["height"]  # type: ignore[attr-defined]
    return box is not None and box["y"] < height and box["y"] + box["height"] > 0


def _ask(page: object, text: str) -> None:
    box = page.get_by_placeholder("Ask a model…")  # type: ignore[attr-defined]
    box.fill(text)
    box.press("Enter")


def _pick_model(page: object, name: str) -> None:
    """Open the model popover and choose ``name`` in its picker."""
    from playwright.sync_api import expect

    for _ in range(3):  # a rerun that lands while the popover opens redraws it: try again
        page.get_by_role("button", name=re.compile(r"^(Model:|Model and parameters)")).click()  # type: ignore[attr-defined]
        picker = page.get_by_test_id("stPopoverBody").get_by_test_id("stSelectbox").first  # type: ignore[attr-defined]
        try:
            expect(picker).to_be_visible(timeout=10_000)
            picker.click()
            page.keyboard.type(name)  # type: ignore[attr-defined]
            page.get_by_role("option", name=name, exact=True).first.click(timeout=5_000)  # type: ignore[attr-defined]
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError or an assertion: close and retry
            page.keyboard.press("Escape")  # type: ignore[attr-defined]
            page.wait_for_timeout(1000)  # type: ignore[attr-defined]
    expect(page.get_by_role("button", name=f"Model: {name}")).to_be_visible(timeout=15_000)  # type: ignore[attr-defined]
    page.keyboard.press("Escape")  # type: ignore[attr-defined]


def test_the_streaming_answer_stays_in_view_and_stop_keeps_it(chat_url: str, tmp_path: Path) -> None:
    """Two turns fill the screen; while the third (long) answer streams, it and the input are in
    the viewport; Stop ends it, the partial text stays, marked stopped, and stops growing."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(chat_url)
        expect(page.get_by_placeholder("Ask a model…")).to_be_visible(timeout=30_000)
        messages = page.get_by_test_id("stChatMessage")
        for n, question in enumerate(["What is a moving window?", "And what is a fencing token?"], start=1):
            _ask(page, question)
            expect(messages).to_have_count(2 * n, timeout=30_000)
            expect(messages.nth(2 * n - 1)).to_contain_text("TTFT", timeout=30_000)  # this answer is done
            expect(messages.nth(2 * n - 1).get_by_role("button", name="Regenerate")).to_be_visible(timeout=30_000)
        _pick_model(page, "demo-deep")
        _ask(page, "Explain p95 latency at length")
        streaming = messages.nth(5)
        expect(streaming).to_contain_text("▌", timeout=30_000)
        page.wait_for_timeout(3000)  # well into the answer: it has grown past its first lines
        assert "▌" in streaming.inner_text(), "the answer is still streaming"
        assert _in_view(page, streaming.get_by_test_id("stMarkdown").last), "the newest answer is off screen"
        assert _in_view(page, page.get_by_placeholder("Ask a model…")), "the chat input is off screen"
        _keep(page, tmp_path, "chat-streaming.png")

        page.get_by_test_id("stChatInputStopButton").click()
        stopped = messages.nth(5)
        expect(stopped).to_contain_text("Stopped", timeout=15_000)
        kept = stopped.inner_text()
        assert "▌" not in kept and "Demo backend" in kept
        assert "stopped early" in kept, "the figures are the stopped stream's (its partial usage)"
        page.wait_for_timeout(2000)
        assert messages.nth(5).inner_text() == kept, "a stopped answer does not grow"
        expect(page.get_by_role("button", name="Regenerate")).to_be_visible()
        _keep(page, tmp_path, "chat-stopped.png")
        assert page.get_by_text("Traceback").count() == 0
        browser.close()


def test_a_saved_chat_reopens_after_a_reload(chat_url: str, tmp_path: Path) -> None:
    """A chat is saved as it goes and the URL names it (?chat=<id>): a reload shows it again,
    and it is listed under Your chats in the sidebar."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(chat_url)
        expect(page.get_by_placeholder("Ask a model…")).to_be_visible(timeout=30_000)
        _ask(page, "Remember the word heliotrope")
        expect(page.get_by_test_id("stChatMessage").nth(1)).to_contain_text("TTFT", timeout=30_000)
        page.wait_for_url(re.compile(r"[?&]chat=[A-Za-z0-9_-]+"), timeout=15_000)
        page.reload()
        messages = page.get_by_test_id("stChatMessage")
        expect(messages.first).to_contain_text("Remember the word heliotrope", timeout=30_000)
        expect(messages).to_have_count(2)
        expect(page.get_by_test_id("stSidebar")).to_contain_text("Remember the word heliotrope")
        _keep(page, tmp_path, "chat-reloaded.png")
        browser.close()


def test_an_attached_image_reaches_the_backend_as_an_image_url_part(chat_url: str, tmp_path: Path) -> None:
    """Attach a PNG, ask demo-vision: the backend got an image_url part holding a data: URL of
    exactly those bytes after the text part, and the answer describes the image."""
    import base64

    import httpx
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    picture = tmp_path / "blue.png"
    Image.new("RGB", (320, 240), (0x33, 0x66, 0xCC)).save(picture, "PNG")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(chat_url)
        expect(page.get_by_placeholder("Ask a model…")).to_be_visible(timeout=30_000)
        demo = re.search(r"http://127\.0\.0\.1:\d+", page.get_by_text("DEMO BACKEND").first.inner_text()
                         + page.inner_text("body"))
        assert demo, "the badge names the demo backend's URL"
        _pick_model(page, "demo-vision")
        page.get_by_test_id("stChatInput").locator("input[type=file]").set_input_files(str(picture))
        expect(page.get_by_test_id("stChatInput")).to_contain_text("blue.png", timeout=15_000)
        box = page.get_by_placeholder("Ask a model…")
        box.fill("What is in this picture?")
        send = page.get_by_role("button", name="Send message")
        for _ in range(20):  # a send pressed while the file is still uploading is ignored by the widget
            if not box.input_value():
                break  # sent: the input clears
            if send.count() and send.is_enabled():
                send.click()
            page.wait_for_timeout(500)
        answer = page.get_by_test_id("stChatMessage").nth(1)
        expect(answer).to_contain_text("I received 1 image: PNG 320×240", timeout=30_000)
        expect(answer).to_contain_text(re.compile(r"mostly blue #"))
        expect(page.get_by_test_id("stChatMessage").first.get_by_role("img")).to_have_count(1)
        body = httpx.get(f"{demo.group(0)}/_demo/last-chat", timeout=5).json()["body"]
        content = body["messages"][-1]["content"]
        assert content[0] == {"type": "text", "text": "What is in this picture?"}
        assert content[1]["type"] == "image_url"
        sent = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()
        assert content[1]["image_url"]["url"] == sent
        _keep(page, tmp_path, "chat-image.png")
        assert page.get_by_text("Traceback").count() == 0
        browser.close()
