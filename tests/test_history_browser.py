"""Saved chats in a real browser: a vote survives a reload, and the sidebar reopens a chat in a new tab.

Headless Chromium at 1440×900 against ``streamlit run app.py`` on the demo backend
(latency off: this is about what is kept, not about streaming), reusing
``tests/test_browser.py``'s server and browser set-up (``test_chat_browser.py`` checks that a
reload shows the chat again).
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
def history_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on the demo backend without simulated latency, its own data dir."""
    yield from _serve({"BLOSSOM_DASH_BACKEND": "demo", "BLOSSOM_DASH_DEMO_LATENCY": "false",
                       "BLOSSOM_DASH_DATA_DIR": str(tmp_path_factory.mktemp("history-browser"))})


def test_the_vote_survives_a_reload_and_the_sidebar_reopens_the_chat(history_url: str, tmp_path: Path) -> None:
    """Ask and vote 👍; a reload (a new browser session) brings the chat back with its vote
    (``?chat=``); a new tab on the bare address starts empty, and the sidebar lists the chat by
    its first prompt: clicking it brings back both turns."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(history_url)
        box = page.get_by_placeholder("Ask a model…")
        expect(box).to_be_visible(timeout=30_000)
        box.fill("What is a fencing token?")
        box.press("Enter")
        messages = page.get_by_test_id("stChatMessage")
        expect(messages).to_have_count(2, timeout=30_000)
        expect(page.get_by_role("button", name="Regenerate")).to_be_visible(timeout=30_000)
        messages.nth(1).get_by_role("radio", name="Thumbs up").click()
        expect(page.get_by_role("button", name=re.compile("Add a comment"))).to_be_visible(timeout=15_000)
        expect(page).to_have_url(re.compile(r"[?&]chat="), timeout=15_000)
        page.reload()  # a reload is a new browser session: the chat comes back from the database
        expect(messages).to_have_count(2, timeout=30_000)
        expect(messages.nth(1).get_by_role("radio", name="Thumbs up")).to_have_attribute(
            "aria-checked", "true", timeout=15_000)  # with its vote
        fresh = browser.new_page(viewport=VIEWPORT)  # a new tab on the bare address: an empty chat
        fresh.goto(history_url)
        expect(fresh.get_by_placeholder("Ask a model…")).to_be_visible(timeout=30_000)
        again = fresh.get_by_test_id("stChatMessage")
        expect(again).to_have_count(0, timeout=15_000)
        saved = fresh.get_by_test_id("stSidebar").get_by_role("button", name=re.compile("What is a fencing token"))
        expect(saved).to_be_visible(timeout=15_000)
        saved.click()
        expect(again).to_have_count(2, timeout=15_000)
        expect(again.nth(0)).to_contain_text("What is a fencing token?")
        page = fresh
        _keep(page, tmp_path, "chat-reopened.png")
        browser.close()
