"""Playground page: chat with streamed answers, errors as words, images."""

from __future__ import annotations

from pages_helpers import app, queue_fault, texts


def _chat(prompt: str) -> object:
    at = app("pages/playground.py").run()
    at.chat_input(key="playground_prompt").set_value(prompt).run()
    return at


class TestChat:
    def test_answer_streams_with_its_figures(self) -> None:
        """A prompt gets a demo answer and a caption with latency, TTFT and tokens."""
        at = _chat("What is a moving window?")
        assert not at.exception
        assistant = [m for m in at.chat_message if m.name == "assistant"]
        assert len(assistant) == 1
        body = " ".join(str(md.value) for md in assistant[0].markdown)
        assert "Demo backend" in body and "moving window" in body
        caption = " ".join(texts(at, "caption"))
        assert "TTFT" in caption and "tokens" in caption and "ms" in caption

    def test_history_is_kept_and_repeat_comes_from_cache(self) -> None:
        """A second identical turn in a fresh chat is served from the cache."""
        at = _chat("Cache me")
        at.button(key="playground_clear").click().run()
        at.chat_input(key="playground_prompt").set_value("Cache me").run()
        assert not at.exception
        assert any("from cache" in c for c in texts(at, "caption"))
        assert len(at.session_state["playground_messages"]) == 2

    def test_blank_prompt_is_a_message(self) -> None:
        """A whitespace prompt shows what was wrong and keeps the page working."""
        at = _chat("   ")
        assert not at.exception
        assert any("prompt is empty" in e for e in texts(at, "error"))
        assert at.session_state["playground_messages"] == []

    def test_backend_error_is_a_message(self) -> None:
        """A backend failure (HTTP 503 from a fault model) shows words and a hint, no traceback."""
        at = app("pages/playground.py").run()
        queue_fault(at, "503", count=5)
        at.chat_input(key="playground_prompt").set_value("hello").run()
        assert not at.exception
        errors = texts(at, "error")
        assert any("HTTP 503" in e and "try again" in e.lower() for e in errors), errors


class TestImage:
    def test_generate_shows_a_downloadable_image(self) -> None:
        """Generating an image stores it and offers a download with its seed."""
        at = app("pages/playground.py").run()
        at.text_area(key="playground_image_prompt").set_value("a lighthouse at dawn")
        at.number_input(key="playground_image_seed").set_value(7)
        submit = next(b for b in at.button if "Generate image" in str(b.label))
        submit.click().run()
        assert not at.exception
        image = at.session_state["playground_last_image"]
        assert image.seed == 7 and image.data[:8] == b"\x89PNG\r\n\x1a\n"
        assert at.get("image"), "the image is shown"
        assert any(b.label == "Download" for b in at.get("download_button"))

    def test_empty_image_prompt_is_a_message(self) -> None:
        """Generating with no description says so."""
        at = app("pages/playground.py").run()
        next(b for b in at.button if "Generate image" in str(b.label)).click().run()
        assert not at.exception
        assert any("image prompt is empty" in e for e in texts(at, "error"))

    def test_new_seed_changes_the_seed(self) -> None:
        """The new-seed button picks another seed."""
        at = app("pages/playground.py").run()
        before = at.session_state["playground_image_seed"]
        at.button(key="playground_new_seed").click().run()
        assert at.session_state["playground_image_seed"] != before
