"""Controls page: cache and limits change the live service; backend switch; session key."""

from __future__ import annotations

import time

import pytest
from pages_helpers import app, texts
from streamlit.testing.v1 import AppTest


def _submit(at: AppTest, label: str) -> AppTest:
    return next(b for b in at.button if b.label == label).click().run()


def _metric(at: AppTest, label: str) -> str:
    return next(str(m.value) for m in at.metric if m.label == label)


class TestCacheControls:
    def test_turning_the_cache_off_takes_effect(self) -> None:
        """With the cache off, a repeated prompt is answered again, not from the cache."""
        at = app("app_pages/controls.py").run()
        at.toggle(key="controls_cache_enabled").set_value(False)
        _submit(at, "Apply cache settings")
        assert not at.exception
        assert any("**off**" in c for c in texts(at, "caption"))
        chat = app("app_pages/playground.py").run()
        for _ in range(2):
            chat.chat_input(key="playground_prompt").set_value("same again").run()
        assert not any("from cache" in c for c in texts(chat, "caption"))

    def test_ttl_max_entries_and_clear(self) -> None:
        """TTL and capacity apply at once; Clear empties the cache."""
        chat = app("app_pages/playground.py").run()
        chat.chat_input(key="playground_prompt").set_value("to be cached").run()
        at = app("app_pages/controls.py").run()
        assert _metric(at, "Entries") == "1 / 512"
        at.number_input(key="controls_cache_max").set_value(5)
        at.number_input(key="controls_cache_ttl").set_value(120)
        _submit(at, "Apply cache settings")
        assert _metric(at, "Entries") == "1 / 5"
        at.button(key="controls_cache_clear").click().run()
        assert _metric(at, "Entries") == "0 / 5"


class TestLimitControls:
    def test_lowering_the_user_limit_refuses_the_next_request(self) -> None:
        """A per-user limit of 1 RPM lets one prompt through and refuses the next with a wait time."""
        at = app("app_pages/controls.py").run()
        at.number_input(key="controls_user_rpm").set_value(1)
        _submit(at, "Apply limits")
        assert _metric(at, "Your remaining") == "1 / 1"
        chat = app("app_pages/playground.py").run()
        chat.chat_input(key="playground_prompt").set_value("one").run()
        chat.chat_input(key="playground_prompt").set_value("two").run()
        assert not chat.exception
        warnings = texts(chat, "warning")
        assert any("limit of 1 requests per minute" in w for w in warnings), warnings
        assert str(chat.button(key="playground_retry_wait").label).startswith("Retry in "), "the wait counts down"


    def test_the_batch_share_is_stated_and_what_a_batch_holds(self) -> None:
        """The per-user limit says what share a batch may take; a batch that ran says how much it holds."""
        from blossom_dash import ui

        at = app("app_pages/controls.py").run()
        assert "A user's batch may take 50% of it" in at.number_input(key="controls_user_rpm").help
        ui.get_service().submit_batch([{"prompt": "held"}], user="local", name="one.csv")
        deadline = time.monotonic() + 60  # a guard against hanging, not a timing claim
        while not any(c.startswith("Your batch is using") for c in texts(at.run(), "caption")):
            assert time.monotonic() < deadline, "the batch row never showed in the quota"
            time.sleep(0.05)
        assert any("Your batch is using 1 of your 30 requests/min (its share is 50%: at most 15" in c
                   for c in texts(at, "caption")), texts(at, "caption")

class TestBackendControls:
    def test_health_is_shown(self) -> None:
        """The live backend and its health are on the page."""
        at = app("app_pages/controls.py").run()
        assert any("demo" in m and "circuit breaker **closed**" in m for m in texts(at, "markdown"))

    def test_bad_url_is_a_message(self) -> None:
        """Switching to something that is not a URL says what to type instead."""
        at = app("app_pages/controls.py").run()
        at.radio(key="controls_backend_choice").set_value("custom URL")
        at.text_input(key="controls_backend_url").set_value("not a url")
        _submit(at, "Switch backend")
        assert not at.exception
        assert any("is not a backend" in e for e in texts(at, "error"))

    def test_switch_to_a_refusing_url_then_back(self) -> None:
        """A backend that refuses connections shows as unhealthy; prompts fail with words."""
        at = app("app_pages/controls.py").run()
        at.radio(key="controls_backend_choice").set_value("custom URL")
        at.text_input(key="controls_backend_url").set_value("http://127.0.0.1:9")
        _submit(at, "Switch backend")
        assert not at.exception
        # The switch's own model-list check failed: amber at once.
        assert any("🟠" in m and "failed" in m for m in texts(at, "markdown")), texts(at, "markdown")
        chat = app("app_pages/playground.py").run()
        chat.chat_input(key="playground_prompt").set_value("anyone there?").run()
        assert not chat.exception
        # No model could be listed, so none is guessed: the words say why.
        assert any("did not list its text models" in e and "connection failed" in e for e in texts(chat, "error"))
        at.radio(key="controls_backend_choice").set_value("demo")
        _submit(at, "Switch backend")
        assert any("🟢" in m for m in texts(at, "markdown"))

    def test_badge_goes_red_when_the_circuit_opens(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """After ``breaker_failures`` failed calls every page's badge and the sidebar say the
        backend is failing, and a prompt fails fast with when it will be tried again."""
        monkeypatch.setenv("BLOSSOM_DASH_BREAKER_FAILURES", "2")
        at = app("app_pages/controls.py").run()
        at.radio(key="controls_backend_choice").set_value("custom URL")
        at.text_input(key="controls_backend_url").set_value("http://127.0.0.1:9")
        _submit(at, "Switch backend")  # its check is failure 1
        chat = app("app_pages/playground.py").run()
        chat.chat_input(key="playground_prompt").set_value("anyone there?").run()  # failure 2: open
        chat.chat_input(key="playground_prompt").set_value("and now?").run()
        assert not chat.exception
        assert any("circuit breaker open" in e and "tried again in" in e for e in texts(chat, "error"))
        for page in ("app_pages/playground.py", "app_pages/monitor.py", "app_pages/controls.py"):
            shown = app(page).run()
            assert any(":red-badge[CUSTOM · failing" in c for c in texts(shown, "caption")), page
        assert any("🔴" in m and "circuit breaker open after 2 failed calls" in m
                   for m in texts(app("app_pages/controls.py").run(), "markdown"))


class TestSessionKey:
    def test_key_is_used_but_never_echoed(self) -> None:
        """A session key is acknowledged without being shown, and can be forgotten."""
        secret = "sk_test_0123456789abcdef"
        at = app("app_pages/controls.py").run()
        at.text_input(key="controls_session_key").set_value(secret)
        _submit(at, "Use this key")
        assert not at.exception
        shown = " ".join(texts(at, "markdown") + texts(at, "caption"))
        assert "Your session key is set" in shown and secret not in shown
        assert at.session_state["controls_session_key"] == "", "the field is cleared after use"
        _submit(at, "Forget my key")
        assert "Your session key is set" not in " ".join(texts(at, "markdown"))


class TestReplayControls:
    """The Replay section: record, replay only, export, import, clear."""

    def _record(self, prompt: str) -> None:
        chat = app("app_pages/playground.py").run()
        chat.chat_input(key="playground_prompt").set_value(prompt).run()
        assert not chat.exception

    def test_record_then_replay_only_refuses_unrecorded_prompts(self) -> None:
        """Recording counts answers; replay only serves them and refuses the rest in words."""
        at = app("app_pages/controls.py").run()
        assert _metric(at, "Recorded answers") == "0"
        assert at.download_button(key="controls_replay_export").proto.disabled, "nothing to export yet"
        at.toggle(key="controls_replay_persistent").set_value(True)
        _submit(at, "Apply replay settings")
        self._record("recorded for the demo")
        at = app("app_pages/controls.py").run()
        assert _metric(at, "Recorded answers") == "1"
        assert not at.download_button(key="controls_replay_export").proto.disabled
        at.toggle(key="controls_replay_only").set_value(True)
        _submit(at, "Apply replay settings")
        assert any("Replay only is on" in w for w in texts(at, "warning"))
        chat = app("app_pages/playground.py").run()
        assert any("REPLAY ONLY" in c for c in texts(chat, "caption")), "the presenter sees the mode"
        chat.chat_input(key="playground_prompt").set_value("never recorded").run()
        assert any("not recorded for replay" in e for e in texts(chat, "error"))
        chat.chat_input(key="playground_prompt").set_value("recorded for the demo").run()
        assert any("from cache" in c for c in texts(chat, "caption"))

    def test_import_reports_what_it_added_and_rejects_junk(self) -> None:
        """An exported .zip imports with a count; a file that is not one is refused in words."""
        from blossom_dash import ui

        at = app("app_pages/controls.py").run()
        at.toggle(key="controls_replay_persistent").set_value(True)
        _submit(at, "Apply replay settings")
        self._record("first recorded prompt")
        self._record("second recorded prompt")
        service = ui.get_service()
        exported = service.export_recordings()
        assert service.clear_recordings() == 2
        at = app("app_pages/controls.py").run()
        assert _metric(at, "Recorded answers") == "0"
        at.file_uploader(key="controls_replay_upload").set_value(("demo.zip", b"junk", "application/zip")).run()
        at.button(key="controls_replay_import").click().run()
        assert not at.exception
        assert any("not a zip" in e for e in texts(at, "error"))
        at.file_uploader(key="controls_replay_upload").set_value(("demo.zip", exported, "application/zip")).run()
        at.button(key="controls_replay_import").click().run()
        assert any("Added 2 of 2 recordings" in s for s in texts(at, "success"))
        assert _metric(at, "Recorded answers") == "2"

    def test_clear_recordings_asks_first_then_deletes(self) -> None:
        """Deleting recordings sits behind a confirmation; afterwards the count is zero."""
        at = app("app_pages/controls.py").run()
        at.toggle(key="controls_replay_persistent").set_value(True)
        _submit(at, "Apply replay settings")
        self._record("to be deleted")
        at = app("app_pages/controls.py").run()
        assert _metric(at, "Recorded answers") == "1"
        at.button(key="controls_replay_clear").click().run()
        assert not at.exception
        assert _metric(at, "Recorded answers") == "0"


class TestAuditLog:
    def test_a_change_appears_in_the_audit_log(self) -> None:
        """Applying limits as the local admin adds a row: who, what, before and after."""
        at = app("app_pages/controls.py").run()
        assert any("No admin action yet" in i for i in texts(at, "info"))
        at.number_input(key="controls_user_rpm").set_value(9)
        _submit(at, "Apply limits")
        at.run()
        assert not at.exception
        frame = next(d.value for d in at.dataframe if "action" in d.value.columns)
        assert list(frame["action"]) == ["configure_limits"] and list(frame["user"]) == ["local"]
        assert '"per_user_rpm":9' in frame["new"].iloc[0]
