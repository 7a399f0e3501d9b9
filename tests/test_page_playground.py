"""Playground page: chat with streamed answers, errors as words, images."""

from __future__ import annotations

import re
import time

from pages_helpers import app, queue_fault, texts

from blossom_dash.ui.chat import history_for


def _chat(prompt: str) -> object:
    at = app("app_pages/playground.py").run()
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
        at = app("app_pages/playground.py").run()
        queue_fault(at, "503", count=5)
        at.chat_input(key="playground_prompt").set_value("hello").run()
        assert not at.exception
        errors = texts(at, "error")
        assert any("HTTP 503" in e and "try again" in e.lower() for e in errors), errors


class TestImage:
    def test_generate_shows_a_downloadable_image(self) -> None:
        """Generating an image stores it and offers a download with its seed."""
        at = app("app_pages/image.py").run()
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
        at = app("app_pages/image.py").run()
        next(b for b in at.button if "Generate image" in str(b.label)).click().run()
        assert not at.exception
        assert any("image prompt is empty" in e for e in texts(at, "error"))

    def test_new_seed_changes_the_seed_and_the_image(self) -> None:
        """🎲 picks another seed and draws at once: the image shown is the new seed's, never the old one."""
        at = app("app_pages/image.py").run()
        at.text_area(key="playground_image_prompt").set_value("a lighthouse at dawn")
        at.number_input(key="playground_image_seed").set_value(7)
        next(b for b in at.button if "Generate image" in str(b.label)).click().run()
        first = at.session_state["playground_last_image"]
        at.button(key="playground_new_seed").click().run()
        assert not at.exception
        seed = at.session_state["playground_image_seed"]
        shown = at.session_state["playground_last_image"]
        assert seed != 7 and shown.seed == seed and shown.data != first.data
        assert any(f"seed={seed}" in c.value or f"SEED = {seed}" in c.value for c in at.code), "the code matches"


def _speak(text: str, **choices: str) -> object:
    at = app("app_pages/speech.py").run()
    at.text_area(key="playground_speech_text").set_value(text)
    for name, value in choices.items():
        at.selectbox(key=f"playground_speech_{name}").set_value(value)
    next(b for b in at.button if "Speak" in str(b.label)).click().run()
    return at


class TestSpeech:
    def test_speak_plays_a_wav_with_its_figures(self) -> None:
        """Speak renders an audio player, a download and a caption with voice, latency and request id."""
        import io
        import wave

        at = _speak("The hit rate is up this week.", voice="onyx")
        assert not at.exception and not at.error
        assert len(at.get("audio")) == 1, "the audio player is shown"
        clip = at.session_state["playground_last_speech"]
        with wave.open(io.BytesIO(clip.data)) as w:
            assert w.getnframes() > 0 and w.getframerate() == 16_000
        caption = next(c for c in texts(at, "caption") if clip.request_id in c)  # not the picker's facts
        assert "onyx" in caption and "WAV" in caption and " ms" in caption and clip.request_id in caption
        assert any(b.label == "Download" for b in at.get("download_button"))

    def test_repeat_comes_from_the_cache(self) -> None:
        """Speaking the same text again is served from the cache, and says so."""
        at = _speak("Say it twice")
        next(b for b in at.button if "Speak" in str(b.label)).click().run()
        assert any("from cache" in c for c in texts(at, "caption"))

    def test_mp3_on_the_demo_says_it_is_wav(self) -> None:
        """MP3 on the demo backend plays a WAV and says why."""
        at = _speak("In MP3 please", format="mp3")
        assert not at.exception
        assert any("WAV only" in i for i in texts(at, "info"))
        assert at.session_state["playground_last_speech"].content_type == "audio/wav"

    def test_empty_text_is_a_message(self) -> None:
        """Speak with no text says what is missing and plays nothing."""
        at = _speak("")
        assert not at.exception
        assert any("text to speak is empty" in e for e in texts(at, "error"))
        assert not at.get("audio")

    def test_backend_error_is_a_message(self) -> None:
        """A backend failure (HTTP 503) shows words and a hint, no traceback, no player."""
        at = app("app_pages/speech.py").run()
        queue_fault(at, "503", count=5)
        at.text_area(key="playground_speech_text").set_value("hello")
        next(b for b in at.button if "Speak" in str(b.label)).click().run()
        assert not at.exception
        assert any("HTTP 503" in e and "try again" in e.lower() for e in texts(at, "error"))
        assert not at.get("audio")


class TestImageGallery:
    def test_generated_images_join_the_session_gallery(self) -> None:
        """Each generated image is added to ``gallery_images``, newest first."""
        at = app("app_pages/image.py").run()
        at.text_area(key="playground_image_prompt").set_value("a red fox")
        for seed in (7, 8):
            at.number_input(key="playground_image_seed").set_value(seed)
            next(b for b in at.button if "Generate image" in str(b.label)).click().run()
        assert not at.exception
        assert [i.image.seed for i in at.session_state["gallery_images"]] == [8, 7]
        assert any("Gallery" in c for c in texts(at, "caption"))


class TestShareAndCode:
    """The 🔗 Share permalink (read-only reopening) and "Show code" under answers."""

    def test_share_then_open_the_link_read_only(self) -> None:
        """Share saves the chat and shows its link; the link reopens it read-only; a new chat clears it."""
        at = _chat("What is a moving window?")
        at.button(key="playground_share").click().run()
        assert not at.exception
        link = next(c.value for c in at.code if "?conversation=" in c.value)
        conv_id = link.split("?conversation=", 1)[1]
        shared = app("app_pages/playground.py")
        shared.query_params["conversation"] = conv_id
        shared.run()
        assert not shared.exception
        assert [s.value for s in shared.subheader] == ["What is a moving window?"]
        assert [m.name for m in shared.chat_message] == ["user", "assistant"]
        assert "moving window" in " ".join(str(md.value) for md in shared.chat_message[1].markdown)
        assert any("read-only" in c and "1 answer" in c for c in texts(shared, "caption"))
        assert not shared.chat_input, "a shared conversation takes no new prompts"
        shared.button(key="playground_new_chat").click().run()
        assert "conversation" not in shared.query_params
        assert shared.chat_input and not [m for m in shared.chat_message if m.name == "assistant"]

    def test_a_bad_link_is_a_message(self) -> None:
        """An unknown id says the link opens nothing, and offers a new chat instead of a traceback."""
        at = app("app_pages/playground.py")
        at.query_params["conversation"] = "nosuchconversation"
        at.run()
        assert not at.exception
        assert any("does not open anything" in e for e in texts(at, "error"))
        assert at.button(key="playground_new_chat")

    def test_share_needs_a_chat(self) -> None:
        """With nothing said yet there is no Share button."""
        at = app("app_pages/playground.py").run()
        assert not [b for b in at.button if b.key == "playground_share"]

    def test_each_answer_shows_its_code(self) -> None:
        """Under an answer, "Show code" holds the SDK script for that request, with no key in it."""
        at = app("app_pages/playground.py").run()
        at.number_input(key="playground_seed").set_value(42)
        at.chat_input(key="playground_prompt").set_value("Explain p95 latency").run()
        assert not at.exception
        assert any(e.label == "Show code" for e in at.expander)
        code = next(c for c in at.code if "client.text.chat" in c.value)
        assert code.language == "python"
        assert "'Explain p95 latency'" in code.value and "extra_params={'seed': 42}" in code.value
        assert 'os.environ["POLLINATIONS_API_KEY"]' in code.value
        compile(code.value, "shown.py", "exec")

    def test_the_image_shows_its_code(self) -> None:
        """Under a generated image, "Show code" holds the script that draws it with the same seed."""
        at = app("app_pages/image.py").run()
        at.text_area(key="playground_image_prompt").set_value("a lighthouse at dawn")
        at.number_input(key="playground_image_seed").set_value(7)
        next(b for b in at.button if "Generate image" in str(b.label)).click().run()
        code = next(c.value for c in at.code if "client.image.generate" in c.value)
        assert "PROMPT = 'a lighthouse at dawn'" in code and "SEED = 7" in code


class TestDeleteSharedChat:
    def test_the_owner_deletes_the_permalink(self) -> None:
        """On a shared chat its owner (here the local admin) gets Delete; afterwards the link opens nothing."""
        at = app("app_pages/playground.py").run()
        at.chat_input(key="playground_prompt").set_value("Share me").run()
        next(b for b in at.button if b.key == "playground_share").click().run()
        link = next(c.value for c in at.code if "?conversation=" in c.value)
        conv_id = link.split("?conversation=", 1)[1]
        shared = app("app_pages/playground.py")
        shared.query_params["conversation"] = conv_id
        shared.run()
        next(b for b in shared.button if b.key == "playground_delete_shared").click().run()
        assert not shared.exception
        again = app("app_pages/playground.py")
        again.query_params["conversation"] = conv_id
        again.run()
        assert any("does not open anything" in e for e in texts(again, "error"))


class TestChatActions:
    """Regenerate, edit and resend, copy, and a refused prompt kept with Retry and its countdown."""

    def test_regenerate_answers_again_with_a_new_seed(self) -> None:
        at = _chat("What is a lease?")
        first = at.session_state["playground_messages"][-1]
        at.button(key="playground_regenerate").click().run()
        assert not at.exception
        chat = at.session_state["playground_messages"]
        assert [m["role"] for m in chat] == ["user", "assistant"], "the answer is replaced, not added"
        assert chat[-1]["request_id"] != first["request_id"]
        assert "'seed':" in chat[-1]["code"], "a regenerated answer names the new seed it was asked with"

    def test_edit_and_resend_replaces_the_last_prompt(self) -> None:
        at = _chat("What is a lease?")
        at.text_area(key="playground_edit_text").set_value("What is a fencing token?")
        at.button(key="playground_edit_send").click().run()
        assert not at.exception
        chat = at.session_state["playground_messages"]
        assert [m["content"] for m in chat if m["role"] == "user"] == ["What is a fencing token?"]
        assert "fencing token" in chat[-1]["content"] and chat[-1]["status"] == "ok"

    def test_copy_offers_the_answer_as_text(self) -> None:
        at = _chat("What is a lease?")
        answer = at.session_state["playground_messages"][-1]["content"]
        assert any(c.value == answer and c.language == "markdown" for c in at.code)

    def test_a_refused_prompt_stays_with_a_countdown_then_retry(self, monkeypatch: object) -> None:
        monkeypatch.setenv("BLOSSOM_DASH_PER_USER_RPM", "1")  # type: ignore[attr-defined]
        at = _chat("first question")
        at.chat_input(key="playground_prompt").set_value("second question").run()
        assert not at.exception
        chat = at.session_state["playground_messages"]
        assert [m["content"] for m in chat if m["role"] == "user"] == ["first question", "second question"]
        refused = chat[-1]
        assert refused["status"] == "refused" and "limit of 1 requests per minute" in refused["error"]
        assert refused["retry_at"] > time.time()
        assert any("limit of 1 requests per minute" in w for w in texts(at, "warning"))
        wait = at.button(key="playground_retry_wait")
        assert wait.disabled and re.match(r"Retry in \d+ s", str(wait.label))
        assert not [b for b in at.button if b.key == "playground_retry"], "no Retry before the window allows"
        refused["retry_at"] = time.time() - 1  # as if the window had moved on
        at.run()
        at.button(key="playground_retry").click().run()  # still over the limit: refused again, in place
        chat = at.session_state["playground_messages"]
        assert len(chat) == 4 and chat[-1]["status"] == "refused" and chat[-2]["content"] == "second question"
        at.chat_input(key="playground_prompt").set_value("third question").run()
        assert [b for b in at.button if b.key == "playground_reask_3"], "an older refusal can be asked again"

    def test_refused_and_failed_turns_are_not_sent_as_history(self) -> None:
        chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "A", "status": "ok"},
                {"role": "user", "content": "b"}, {"role": "assistant", "content": "", "status": "refused"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "C…", "status": "stopped"},
                {"role": "user", "content": "d"}]
        assert history_for(chat) == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "A"},
                                     {"role": "user", "content": "c"}, {"role": "assistant", "content": "C…"}]

    def test_a_template_fills_and_sends_a_prompt_with_its_settings(self) -> None:
        """📚 Template: pick one, fill its variables, Send: the rendered prompt is the turn, and the
        template's system prompt and model apply to that turn (the code shows them)."""
        from blossom_dash import ui

        at = app("app_pages/playground.py").run()
        t = ui.get_service().session("local", "", role="admin").create_prompt(
            "explain", "Explain {topic} in one paragraph.", system="Be brief.", model="demo-swift")
        at.run()
        at.selectbox(key="playground_template_template").set_value(t.id).run()
        at.text_input(key=f"playground_template_{t.id}_topic").set_value("a moving window").run()
        at.button(key="playground_template_send").click().run()
        assert not at.exception
        chat = at.session_state["playground_messages"]
        assert chat[0]["content"] == "Explain a moving window in one paragraph."
        assert chat[1]["status"] == "ok" and "moving window" in chat[1]["content"]
        assert "Be brief." in chat[1]["code"] and "demo-swift" in chat[1]["code"]

    def test_an_unexpected_error_is_a_sentence_not_a_traceback(self, monkeypatch: object) -> None:
        """A bug while answering (here: the service raising a plain RuntimeError) leaves the prompt
        in the chat with one sentence and a Retry, and no traceback on the page."""
        from blossom_dash.session import SessionHandle

        def broken(self: object, prompt: str, **kwargs: object) -> object:
            raise RuntimeError("boom")

        monkeypatch.setattr(SessionHandle, "stream_text", broken)  # type: ignore[attr-defined]
        at = _chat("hello")
        assert not at.exception
        assert at.session_state["playground_messages"][-1]["status"] == "failed"
        assert any("Something went wrong while answering: RuntimeError" in e for e in texts(at, "error"))
        assert at.button(key="playground_retry")
