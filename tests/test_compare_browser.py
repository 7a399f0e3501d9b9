"""A blind vote in a real browser: headless Chromium on the running app (demo backend).

Across several blind comparisons the columns leave the picker's order at least once,
no model name is anywhere in the page's text before the vote, and the vote reveals
every name with the letter it had. Reuses ``tests/test_browser.py``'s server and
Chromium (Debian's ``chromium``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, _keep, _serve

pytestmark = pytest.mark.browser

RUNS = 4  # 3 models: all 4 in the picker's order by chance is 1 in 1,296
REVEALED = re.compile(r"was Model ([A-D]) in the blind vote")


@pytest.fixture(scope="module")
def compare_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on the demo backend without simulated latency (the order, not the speed, is tested)."""
    yield from _serve({"BLOSSOM_DASH_BACKEND": "demo", "BLOSSOM_DASH_DEMO_LATENCY": "false",
                       "BLOSSOM_DASH_DATA_DIR": str(tmp_path_factory.mktemp("compare-browser"))})


def test_blind_vote_hides_names_and_shuffles(compare_url: str, tmp_path: Path) -> None:
    """Blind: no model name in the page before the vote; the shown order differs from the picker's."""
    from playwright.sync_api import expect, sync_playwright

    orders = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(f"{compare_url}/compare")
        expect(page.get_by_text("Blind vote")).to_be_visible(timeout=30_000)
        picker = page.get_by_test_id("stMultiSelect").first
        expect(picker).to_be_visible(timeout=30_000)
        picked = [t.strip() for t in picker.locator("[data-tag]").all_inner_texts()]
        assert len(picked) == 3, picked
        page.get_by_text("Blind vote").click()
        for run in range(RUNS):
            prompt = page.get_by_label("Prompt")
            expect(prompt).to_be_visible(timeout=30_000)
            prompt.fill(f"Explain p95 latency, take {run}")
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.get_by_role("button", name="🤝 Tie")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Model C", exact=True).first).to_be_visible()
            body = page.inner_text("body")
            for model in picked:
                assert model not in body, f"run {run}: {model} is on the page before the vote"
            if run == 0:
                _keep(page, tmp_path, "compare_blind.png")
            page.get_by_role("button", name="🤝 Tie").click()
            expect(page.get_by_text("was Model A in the blind vote")).to_be_visible(timeout=30_000)
            panels = page.get_by_test_id("stColumn").filter(has_text="in the blind vote").all_inner_texts()
            letters = {REVEALED.search(text).group(1): text.split()[0] for text in panels}  # type: ignore[union-attr]
            order = [letters[letter] for letter in sorted(letters)]
            assert sorted(order) == sorted(picked), (order, picked)
            orders.append(order)
            page.get_by_role("button", name="Next comparison").click()
        assert page.get_by_text("Traceback").count() == 0
        browser.close()
    assert any(order != picked for order in orders), f"every run kept the picker's order {picked}: {orders}"
