"""Model facts beside the pickers (Playground, Compare, Batch): price, our success rate and p50 latency."""

from __future__ import annotations

import re
from decimal import Decimal

import httpx
import pytest
from pages_helpers import app, texts
from streamlit.testing.v1 import AppTest

from blossom_dash import ui
from blossom_dash.errors import DashError
from blossom_dash.pricing import Price
from blossom_dash.telemetry.model_facts import ModelFacts
from blossom_dash.ui.model_facts import facts_help, facts_line, price_text


def _seed_history() -> None:
    """Two answers and one backend failure on demo-swift, before the page first reads the facts."""
    service = ui.get_service()
    service.generate_text("facts one", model="demo-swift")
    service.generate_text("facts two", model="demo-swift")
    httpx.post(f"{service.backend.base_url}/_demo/faults", timeout=5,
               json={"fault": "500", "count": 1, "routes": ["chat"]}).raise_for_status()
    with pytest.raises(DashError):
        service.generate_text("facts three", model="demo-swift")
    service.flush_events()


def _facts_captions(at: AppTest) -> list[str]:
    return [c for c in texts(at, "caption") if "`demo-swift`" in c]


class TestLines:
    def test_price_in_words(self) -> None:
        """Per 1k tokens, per image, unpriced; never a 0 for a model without a price."""
        text = Price((("promptTextTokens", Decimal("0.00015")), ("completionTextTokens", Decimal("0.0006"))))
        assert price_text(text) == "0.15 / 0.6 pollen per 1k tokens (prompt / completion)"
        assert price_text(Price((("completionImageTokens", Decimal("0.0125")),))) == "0.0125 pollen per image"
        assert price_text(None) == "unpriced"
        speech = Price((("promptTextTokens", Decimal("0.0000002")), ("completionAudioTokens", Decimal("0.000008"))))
        assert price_text(speech) == ("0.0002 / 0 pollen per 1k tokens (prompt / completion) + "
                                      "0.008 pollen per 1k audio tokens (completion)")
        assert price_text(Price((("completionVideoSeconds", Decimal("0.05")),))) == \
            "0.05 pollen per video second (completion)"
        assert price_text(Price(())) == "free"  # a pricing map with every unit omitted (all zero)

    def test_line_holds_every_fact(self) -> None:
        """Price, paid-only, the backend's health and our history on one line."""
        class Info:
            price = Price((("completionImageTokens", Decimal("0.01")),), source="demo")
            paid_only = True
            health = "ok"

        line = facts_line("flux", ModelFacts("flux", 49, 1, 640.0), Info())
        assert line == ("`flux` · 0.01 pollen per image (demo prices) · paid only · backend health: ok · "
                        "98 % ok · p50 640 ms (50 requests, 24 h)")
        assert facts_line("new", None) == "`new` · unpriced · no requests here in 24 h"

    def test_help_gives_the_counts_behind_each_figure(self) -> None:
        """The tooltip says how many answered and failed requests each figure rests on."""
        text = facts_help([ModelFacts("flux", 49, 1, 640.0)])
        assert text.startswith("flux: 49 answered of 50 (1 failed); p50 over the 49 answered.")
        assert "cache hits, rate-limited and rejected" in text


class TestPickers:
    def test_playground_picker_shows_history(self) -> None:
        """After 2 answers and 1 failure, the Playground's picker reads '66 % ok · p50 … (3 requests, 24 h)'."""
        _seed_history()
        at = app("app_pages/playground.py").run()
        at.selectbox(key="playground_model").set_value("demo-swift").run()
        assert not at.exception
        (caption,) = _facts_captions(at)
        assert re.search(r"66 % ok · p50 [\d,]+ ms \(3 requests, 24 h\)", caption), caption
        # The demo backend's /text/models prices demo-swift (made up, and labelled so).
        assert "pollen per 1k tokens (prompt / completion) (demo prices)" in caption, caption

    def test_compare_picker_shows_each_chosen_model(self) -> None:
        """Each chosen model has its line under the Compare picker; a model without requests says so."""
        _seed_history()
        at = app("app_pages/compare.py").run()
        at.multiselect(key="compare_models").set_value(["demo-swift", "demo-deep"])
        next(b for b in at.button if b.label == "Compare").click().run()
        assert not at.exception
        (caption,) = _facts_captions(at)
        assert "(3 requests, 24 h)" in caption and "`demo-deep`" in caption and "no requests here" in caption

    def test_batch_preview_shows_the_job_models(self) -> None:
        """The Batch preview lists the facts of the models its rows will use."""
        _seed_history()
        at = app("app_pages/batch.py").run()
        at = at.file_uploader(key="batch_file").set_value(("p.csv", b"prompt,model\nhi,demo-swift\n", "text/csv")).run()
        assert not at.exception
        (caption,) = _facts_captions(at)
        assert "(3 requests, 24 h)" in caption
