"""The cost of every request: on its event, its result, a cache hit's saving; through the demo backend."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import make_service

from blossom_dash import BlossomService
from blossom_dash.demo_backend.catalog import DEMO_PRICES
from blossom_dash.errors import DashError
from blossom_dash.pricing import Price


def price(model: str, unit: str) -> Decimal:
    return Decimal(DEMO_PRICES[model][unit])


def events(svc: object) -> dict[str, dict[str, object]]:
    svc.flush_events()  # type: ignore[attr-defined]
    frame = svc.store.frame()  # type: ignore[attr-defined]
    return {r["request_id"]: r for r in frame.to_dict("records")}


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[BlossomService]:
    with make_service(tmp_path) as service:
        yield service


class TestCostPerEvent:
    def test_text_is_prompt_plus_completion_tokens(self, svc: object) -> None:
        """A text answer costs its prompt and completion tokens at the model's demo price, exactly."""
        result = svc.generate_text("What does a circuit breaker do?", model="demo-balanced")  # type: ignore[attr-defined]
        expected = (result.usage.prompt_tokens * price("demo-balanced", "promptTextTokens")
                    + result.usage.completion_tokens * price("demo-balanced", "completionTextTokens"))
        assert result.cost == expected and result.cost > 0
        event = events(svc)[result.request_id]
        assert event["cost"] == expected and isinstance(event["cost"], Decimal)

    def test_stream(self, svc: object) -> None:
        """A streamed answer costs its reported usage, on the result and the event."""
        stream = svc.stream_text("Tell me about rate limits", model="demo-swift")  # type: ignore[attr-defined]
        for _ in stream:
            pass
        result = stream.result
        assert result is not None and result.cost is not None
        expected = (result.usage.prompt_tokens * price("demo-swift", "promptTextTokens")
                    + result.usage.completion_tokens * price("demo-swift", "completionTextTokens"))
        assert result.cost == expected == events(svc)[result.request_id]["cost"]

    def test_image_is_its_per_image_price(self, svc: object) -> None:
        """An image costs one unit of completionImageTokens."""
        image = svc.generate_image("a fox", model="demo-mosaic", width=64, height=64)  # type: ignore[attr-defined]
        assert image.cost == price("demo-mosaic", "completionImageTokens")
        assert events(svc)[image.request_id]["cost"] == image.cost

    def test_speech_counts_audio_tokens(self, svc: object) -> None:
        """A clip costs its prompt at the text price and its completion at the audio-token price."""
        clip = svc.generate_speech("Hello there, team.", voice="alloy")  # type: ignore[attr-defined]
        event = events(svc)[clip.request_id]
        expected = (event["prompt_tokens"] * price("demo-voice", "promptTextTokens")
                    + event["completion_tokens"] * price("demo-voice", "completionAudioTokens"))
        assert clip.cost == expected == event["cost"] and expected > 0

    def test_cache_hit_records_what_it_saved(self, svc: object) -> None:
        """A cache hit's event and result carry the cost of the answer it did not pay again."""
        first = svc.generate_text("same question", model="demo-coder")  # type: ignore[attr-defined]
        again = svc.generate_text("same question", model="demo-coder")  # type: ignore[attr-defined]
        assert again.cached and again.cost == first.cost is not None
        seen = events(svc)
        assert seen[again.request_id]["outcome"] == "cache_hit" and seen[again.request_id]["cost"] == first.cost

    def test_unpriced_is_null_never_zero(self, svc: object) -> None:
        """A model without a price: cost None on the result and NULL on the event; errors carry none."""
        svc.gateway.prices = lambda kind, model: None  # type: ignore[attr-defined]
        result = svc.generate_text("hello", model="demo-swift")  # type: ignore[attr-defined]
        assert result.cost is None
        with pytest.raises(DashError):
            svc.generate_text("x", model="fault-500")  # type: ignore[attr-defined]
        seen = events(svc)
        assert seen[result.request_id]["cost"] is None
        assert all(e["cost"] is None for e in seen.values() if e["outcome"] == "error")

    def test_settings_file_prices_a_model(self, tmp_path: Path) -> None:
        """BLOSSOM_DASH_PRICES prices what the backend does not: its perRequest unit is charged."""
        f = tmp_path / "prices.csv"
        f.write_text("model,unit,price,currency\nlocal-model,perRequest,0.25,pollen\n")
        with make_service(tmp_path / "s", prices=f) as service:
            info = service.gateway.model_info("text", "local-model")
            assert info is not None and info.price == Price((("perRequest", Decimal("0.25")),), source="settings")


class TestCostInCaches:
    def test_shared_cache_codec_keeps_the_exact_cost(self) -> None:
        """A cached answer's cost survives the shared cache's format exactly (and None stays None)."""
        from blossom_dash.policies.shared_cache import decode, encode
        from blossom_dash.results import TextResult, Usage

        value = TextResult("hi", "m", "demo", 1.0, None, Usage(1, 2, 3), False, "r", cost=Decimal("0.000000000123"))
        assert decode(encode(value)).cost == Decimal("0.000000000123")
        assert decode(encode(TextResult("hi", "m", "demo", 1.0, None, Usage(), False, "r"))).cost is None

    def test_persistent_cache_replays_the_cost(self, tmp_path: Path) -> None:
        """With the persistent cache, a hit after a restart still records what it saved."""
        with make_service(tmp_path, persistent_cache=True) as first:
            paid = first.generate_text("kept across restarts", model="demo-deep")
        with make_service(tmp_path, persistent_cache=True) as second:
            hit = second.generate_text("kept across restarts", model="demo-deep")
            assert hit.cached and hit.cost == paid.cost is not None
            assert events(second)[hit.request_id]["cost"] == paid.cost


class TestServiceModelInfo:
    def test_demo_facts_through_the_facade(self, svc: object) -> None:
        """``model_info`` gives the demo backend's labelled prices; an unknown model is None."""
        info = svc.model_info("image", "demo-sketch")  # type: ignore[attr-defined]
        assert info is not None and info.price is not None and info.price.source == "demo"
        assert info.price.per_image == price("demo-sketch", "completionImageTokens")
        assert svc.model_info("text", "nobody-serves-this") is None  # type: ignore[attr-defined]


class TestCaption:
    def test_under_each_answer(self) -> None:
        """The caption says the cost, what a cached answer saved, or 'unpriced'; nothing when unknown."""
        from blossom_dash import ui
        from blossom_dash.features.compare_panels import Panel
        from blossom_dash.results import TextResult, Usage

        paid = TextResult("a", "m", "demo", 5.0, None, Usage(1, 2, 3), False, "r1", cost=Decimal("0.000136000000"))
        assert "0.000136 pollen" in ui.result_caption(paid)
        hit = TextResult("a", "m", "demo", 1.0, None, Usage(1, 2, 3), True, "r2", cost=Decimal("0.000136"))
        assert "saved 0.000136 pollen" in ui.result_caption(hit)
        assert "unpriced" in ui.result_caption(TextResult("a", "m", "demo", 1.0, None, Usage(), False, "r3"))
        assert "pollen" not in ui.result_caption(Panel(0, "m", text="saved", latency_ms=3.0))
        assert ui.cost_text(Panel(0, "m", cost=Decimal("0.5"), cost_known=True)) == "0.5 pollen"


class TestComparePanels:
    def test_each_panel_has_its_cost(self, svc: BlossomService) -> None:
        """A text and an image comparison: each panel carries its own request's cost."""
        comp = svc.compare_text("Explain caching", ["demo-swift", "demo-deep"])
        for _ in comp.updates():
            pass
        texts = {p.model: p for p in comp.finish().panels}
        seen = events(svc)
        for panel in texts.values():
            assert panel.cost_known and panel.cost is not None and panel.cost == seen[panel.request_id]["cost"]
        images = svc.compare_images("a lake", ["demo-sketch", "demo-gradient"], width=64, height=64)
        assert [p.cost for p in images.panels] == [price("demo-sketch", "completionImageTokens"),
                                                   price("demo-gradient", "completionImageTokens")]


class TestBatchRows:
    def test_each_row_has_its_cost_in_the_table_and_downloads(self, svc: BlossomService) -> None:
        """A finished job's rows carry their cost (the event's), exact in CSV and JSONL."""
        import io
        import json
        import time

        import pandas as pd

        from blossom_dash.features.batch import results_csv, results_jsonl

        job = svc.submit_batch([{"prompt": "first"}, {"prompt": "second", "model": "demo-deep"}], user="ana")
        deadline = time.monotonic() + 60
        while svc.batch_status(job).active and time.monotonic() < deadline:
            time.sleep(0.05)
        df = svc.batch_results(job, user="ana")
        seen = events(svc)
        assert (df["status"] == "ok").all()
        for _, r in df.iterrows():
            assert r["cost"] is not None and r["cost"] == seen[r["request_id"]]["cost"]
        csv = pd.read_csv(io.BytesIO(results_csv(df)), dtype={"cost": str}, encoding="utf-8-sig")
        assert [Decimal(c) for c in csv["cost"]] == list(df["cost"])
        lines = [json.loads(line) for line in results_jsonl(df).decode().splitlines()]
        assert [Decimal(x["cost"]) for x in lines] == list(df["cost"])
