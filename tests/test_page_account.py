"""The server key's account on Controls and in the sidebar (AppTest), from a loopback Pollinations stand-in."""

from __future__ import annotations

from pages_helpers import app, queue_fault, texts
from streamlit.testing.v1 import AppTest
from test_account import FAKE_KEY, _Pollinations, pollinations  # noqa: F401 - the fixture, used by name

from blossom_dash import ui


def _sidebar_only() -> None:
    from blossom_dash import ui

    ui.sidebar(ui.session_handle())


def _switch(url: str) -> None:
    ui.get_service().switch_backend(url, api_key=FAKE_KEY)


class TestAccount:
    def test_controls_shows_key_type_and_balance(self, pollinations: str) -> None:  # noqa: F811
        """Controls names the key type in words and the balance; Refresh asks again."""
        at = app("app_pages/controls.py").run()
        _switch(pollinations)
        at.run()
        assert not at.exception
        body = " ".join(str(m.value) for m in at.markdown)
        assert "secret key (sk_): spends the balance, no rate limit" in body and "`team key`" in body
        assert "**Balance:** 12.5 pollen." in body
        _Pollinations.balance_body = {"balance": "0.75"}
        at.button(key="controls_account_refresh").click().run()
        assert "**Balance:** 0.75 pollen." in " ".join(str(m.value) for m in at.markdown)

    def test_sidebar_line(self, pollinations: str) -> None:  # noqa: F811
        """The sidebar says which kind of key the server uses and its balance."""
        at = AppTest.from_function(_sidebar_only, default_timeout=30).run()
        _switch(pollinations)
        at.run()
        assert not at.exception
        assert "🔑 Server key: secret key (sk_) · balance 12.5 pollen" in texts(at.sidebar, "caption")

    def test_a_session_key_shows_its_own_account(self, pollinations: str) -> None:  # noqa: F811
        """With a key typed for this session, the sidebar says 'Your key' and Controls shows both accounts."""
        at = app("app_pages/controls.py").run()
        _switch(pollinations)
        at.text_input(key="controls_session_key").set_value("pk_session_key_0123456789")
        next(b for b in at.button if b.label == "Use this key").click().run()
        assert not at.exception
        body = " ".join(str(m.value) for m in at.markdown)
        assert "**Your session key's account**" in body and "publishable key (pk_)" in body
        assert "secret key (sk_)" in body  # the server key's, above it

    def test_demo_has_no_account(self) -> None:
        """On the demo backend (no key) Controls says there is no account to show; the sidebar draws none."""
        at = app("app_pages/controls.py").run()
        assert not at.exception
        assert any("No account to show" in c for c in texts(at, "caption"))
        side = AppTest.from_function(_sidebar_only, default_timeout=30).run()
        assert not any("Server key:" in c for c in texts(side.sidebar, "caption"))


class TestPaymentRequired:
    def test_playground_402_names_cost_and_balance(self) -> None:
        """The demo's 402 (Pollinations' wording) reads on the Playground as what the model costs and what is left."""
        at = app("app_pages/playground.py").run()
        queue_fault(at, "402")
        at.chat_input(key="playground_prompt").set_value("an expensive question").run()
        assert not at.exception
        errors = texts(at, "error")
        assert any("costs about 0.0136 pollen per request" in e and "balance is 0.0000 pollen" in e
                   for e in errors), errors


class TestLine:
    def test_sidebar_line_names_whose_key(self) -> None:
        """A session's own key reads 'Your key'; a key the backend calls invalid is flagged."""
        from decimal import Decimal

        from blossom_dash.sdk.account import Account
        from blossom_dash.ui.account import account_line

        assert account_line(Account(key_type="pk", balance=Decimal("1.50")), whose="Your key") == \
            "🔑 Your key: publishable key (pk_) · balance 1.5 pollen"
        assert account_line(Account(valid=False)).endswith("balance not given · ⚠️ the backend says the key is "
                                                           "**not valid**")
