"""What an event records beyond its figures (schema 6): context, parameters, answer; and
the conversation view that reads one context's requests. Through a live service on the
demo backend and its real SQLite store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import make_service

from blossom_dash.errors import InvalidRequest
from blossom_dash.gateway.event_detail import parse_context
from blossom_dash.telemetry import requests_log

SESSION_KEY = "sk_session_secret_5e6f7a8b"


def detail(svc, request_id: str) -> dict:
    """The stored event of one request (journal flushed first)."""
    svc.metrics.flush()
    found = requests_log.request_detail(svc.store, request_id)
    assert found is not None
    return found


def only_event(svc) -> dict:
    """The one stored event of a service that served one request."""
    svc.metrics.flush()
    frame = svc.store.frame(columns=("ts", "request_id"))
    assert len(frame) == 1
    return detail(svc, frame["request_id"].iloc[0])


class TestRecordedDetail:
    def test_text_keeps_context_params_and_answer(self, tmp_path: Path) -> None:
        """A text answer records its context, its parameters as sent, and its answer cut like the prompt."""
        with make_service(tmp_path, prompt_chars=40) as svc:
            handle = svc.session("ann")
            handle.set_api_key(SESSION_KEY)
            r = handle.generate_text("Tell me about tulips", temperature=0.5, seed=7, max_tokens=64,
                                     system="Be brief.", context="chat:abc123")
            d = detail(svc, r.request_id)
        assert d["context"] == "chat:abc123"
        assert json.loads(d["params"]) == {"model": r.model, "max_tokens": 64, "temperature": 0.5, "seed": 7,
                                           "system_prompt": True}
        assert d["answer"] == r.text[:40] and d["prompt"] == "Tell me about tulips"
        assert SESSION_KEY not in d["params"] and SESSION_KEY not in json.dumps(d, default=str)

    def test_nothing_of_the_answer_when_prompts_are_not_stored(self, tmp_path: Path) -> None:
        """store_prompts off: neither the prompt nor the answer is kept; the parameters are."""
        with make_service(tmp_path, store_prompts=False) as svc:
            r = svc.generate_text("Secret question", seed=3)
            d = detail(svc, r.request_id)
        assert d["prompt"] is None and d["answer"] is None
        assert json.loads(d["params"])["seed"] == 3

    def test_stream_and_its_replay_keep_the_answer(self, tmp_path: Path) -> None:
        """A streamed answer, and the same answer replayed from the cache, record the text and the context."""
        with make_service(tmp_path) as svc:
            ids = []
            for _ in range(2):
                stream = svc.stream_text("Stream me", context="chat:s1")
                text = "".join(stream)
                ids.append(stream.result.request_id)
            first, second = (detail(svc, i) for i in ids)
        assert first["answer"] == text[:200] == second["answer"]
        assert (first["outcome"], second["outcome"]) == ("ok", "cache_hit")
        assert first["context"] == second["context"] == "chat:s1"

    def test_a_stopped_stream_says_so(self, tmp_path: Path) -> None:
        """A stream closed after its first delta records "stopped" in its parameters and its partial answer;
        one read to the end does not."""
        with make_service(tmp_path) as svc:
            stream = svc.stream_text("Stop me early", max_tokens=400, context="chat:stop")
            first = next(iter(stream))
            stream.close()
            whole = svc.stream_text("Read me whole")
            "".join(whole)
            svc.metrics.flush()
            frame = requests_log.conversation(svc.store, "chat:stop")
            stopped = detail(svc, frame["request_id"].iloc[0])
            done = detail(svc, whole.result.request_id)
        assert json.loads(stopped["params"])["stopped"] is True and stopped["answer"].startswith(first)
        assert "stopped" not in json.loads(done["params"])

    def test_image_params_hold_the_drawn_seed(self, tmp_path: Path) -> None:
        """An image records its size and the seed it drew; an image has no answer text."""
        with make_service(tmp_path) as svc:
            r = svc.generate_image("A red tulip", width=256, height=128, context="comparison:c9")
            d = detail(svc, r.request_id)
        params = json.loads(d["params"])
        assert (params["width"], params["height"], params["seed"]) == (256, 128, r.seed)
        assert d["answer"] is None and d["context"] == "comparison:c9"

    def test_a_refused_request_keeps_its_context(self, tmp_path: Path) -> None:
        """An invalid request is recorded with its context (no parameters: nothing was prepared)."""
        with make_service(tmp_path) as svc:
            with pytest.raises(InvalidRequest):
                svc.generate_text("x", temperature=9, context="chat:bad")
            d = only_event(svc)
        assert (d["outcome"], d["context"], d["params"]) == ("rejected", "chat:bad", None)

    def test_a_batch_row_carries_its_job(self, tmp_path: Path) -> None:
        """Every row of a batch job records ``batch:<job_id>``."""
        with make_service(tmp_path) as svc:
            job = svc.submit_batch([{"prompt": "one"}, {"prompt": "two"}], user="ann")
            deadline = time.monotonic() + 60  # a guard, not a timing claim
            while svc.batch_status(job).active:
                assert time.monotonic() < deadline, "the job did not finish"
                time.sleep(0.02)
            svc.metrics.flush()
            frame = requests_log.conversation(svc.store, f"batch:{job}")
        assert len(frame) == 2 and set(frame["user"]) == {"ann"}


class TestConversation:
    def test_one_chat_in_order_and_members_see_their_own(self, tmp_path: Path) -> None:
        """The conversation view lists one context's requests oldest first; a member sees only theirs."""
        with make_service(tmp_path) as svc:
            ann, bob = svc.session("ann"), svc.session("bob")
            first = ann.generate_text("First turn", context="chat:c1")
            ann.generate_text("Elsewhere", context="chat:other")
            second = ann.generate_text("Second turn", context="chat:c1")
            bob.generate_text("Bob's turn", context="chat:c1")
            svc.metrics.flush()
            everyone = svc.monitor("conversation", "chat:c1")
            own = svc.monitor("conversation", "chat:c1", caller=bob.caller)
            empty = svc.monitor("conversation", "")
        assert list(everyone["request_id"][:2]) == [first.request_id, second.request_id]
        assert len(everyone) == 3 and list(own["user"]) == ["bob"]
        assert list(everyone.columns) == list(requests_log.CONVERSATION_COLUMNS) and empty.empty


class TestParseContext:
    def test_known_kinds(self) -> None:
        """'<kind>:<id>' for chat, comparison and batch; anything else is no link."""
        assert parse_context("chat:abc") == ("chat", "abc")
        assert parse_context("batch:j:1") == ("batch", "j:1")
        assert parse_context("") is None and parse_context("chat:") is None and parse_context("x:1") is None
