"""Model facts from our own history: success rate and p50 latency per model, with their counts."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from helpers import make_service

from blossom_dash.errors import DashError, InvalidRequest
from blossom_dash.telemetry.model_facts import ModelFacts, model_facts


class TestModelFactsSummary:
    def test_summary_names_rate_latency_and_count(self) -> None:
        """The caption reads like '98 % ok · p50 640 ms (212 requests, 24 h)'."""
        facts = ModelFacts("openai", ok=208, errors=4, p50_latency_ms=640.2)
        assert facts.summary() == "98 % ok · p50 640 ms (212 requests, 24 h)"

    def test_one_failure_never_reads_as_perfect(self) -> None:
        """999 of 1000 is 99 %, not a rounded 100 %; 1 of 1000 is '<1 %'."""
        assert ModelFacts("m", 999, 1, 10.0).summary().startswith("99 % ok")
        assert ModelFacts("m", 1, 999, None).summary() == "<1 % ok (1,000 requests, 24 h)"

    def test_no_attempts_is_no_summary(self) -> None:
        """Without requests there is no rate to show."""
        assert ModelFacts("m", 0, 0, None).success_rate is None
        assert ModelFacts("m", 0, 0, None).summary() == ""


class TestServiceModelFacts:
    def test_counts_answers_and_failures_per_model(self, tmp_path: Path) -> None:
        """3 answers and 1 backend failure on one model, 1 answer on another; cache hits count for neither."""
        with make_service(tmp_path) as svc:
            for i in range(3):
                svc.generate_text(f"facts prompt {i}", model="demo-swift")
            svc.generate_text("facts prompt 0", model="demo-swift")  # a cache hit
            assert "".join(svc.stream_text("facts stream", model="demo-balanced"))
            httpx.post(f"{svc.backend.base_url}/_demo/faults", timeout=5,
                       json={"fault": "500", "count": 1, "routes": ["chat"]}).raise_for_status()
            with pytest.raises(DashError):
                svc.generate_text("facts failing", model="demo-swift")
            svc.flush_events()
            facts = svc.model_facts("text")
            assert facts["demo-swift"].ok == 3 and facts["demo-swift"].errors == 1
            assert facts["demo-swift"].attempts == 4 and facts["demo-swift"].success_rate == 0.75
            assert facts["demo-swift"].p50_latency_ms is not None and facts["demo-swift"].p50_latency_ms >= 0
            assert facts["demo-balanced"].ok == 1 and facts["demo-balanced"].errors == 0  # a stream is a text request
            assert svc.model_facts("image") == {}

    def test_shared_for_thirty_seconds(self, tmp_path: Path) -> None:
        """A second read within the interval is the same result (no new computation)."""
        with make_service(tmp_path) as svc:
            first = svc.model_facts("text")
            svc.generate_text("after the first read", model="demo-swift")
            svc.flush_events()
            assert svc.model_facts("text") is first
            assert model_facts(svc.store, "text")["demo-swift"].ok == 1  # the store itself has it
            assert model_facts(svc.store, "text", backend="demo")["demo-swift"].ok == 1
            assert model_facts(svc.store, "text", backend="pollinations") == {}  # another backend's history

    def test_unknown_kind_is_a_message(self, tmp_path: Path) -> None:
        """A kind that is not text, image or audio is refused in words."""
        with make_service(tmp_path) as svc, pytest.raises(InvalidRequest, match="not a model kind"):
            svc.model_facts("video")
