"""Sign-in and the three modes: team (OIDC via st.login), local (one admin, loopback only), kiosk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pages_helpers import ROOT, app, texts
from streamlit.testing.v1 import AppTest

from blossom_dash.ui import auth, launch

AUTH = {"redirect_uri": "http://127.0.0.1:8501/oauth2callback", "cookie_secret": "test-cookie-secret",
        "client_id": "dash", "client_secret": "s3cret",
        "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration"}


def _open(page: str = "app.py", *, at: AppTest | None = None) -> AppTest:
    """``page`` reached through app.py (its sidebar shows who is signed in)."""
    at = (app("app.py") if at is None else at).run()
    return at if page == "app.py" or at.title and at.title[0].value in ("Sign in", "Not allowed") else \
        at.switch_page(page).run()


def _team(page: str = "app.py", user: dict | None = None, auth_section: dict | None = None) -> AppTest:
    at = app("app.py")
    at.secrets["auth"] = auth_section or AUTH
    at.user = user if user is not None else {"is_logged_in": False}
    return _open(page, at=at)


def _signed_in_as(at: AppTest) -> str:
    return next(c for c in texts(at, "caption") if c.startswith("Signed in as"))


class TestLocalMode:
    def test_local_user_is_an_admin(self) -> None:
        """Without [auth] and kiosk, the one user is `local`, an admin, and Controls are enabled."""
        at = _open("app_pages/controls.py")
        assert not at.exception
        assert _signed_in_as(at).startswith("Signed in as `local` · **admin**")
        assert not next(b for b in at.button if b.label == "Apply cache settings").disabled

    def test_off_loopback_the_page_refuses(self) -> None:
        """Started on a wildcard address without sign-in, the page shows the refusal and nothing else."""
        at = app("app.py")
        at.run()
        from streamlit import config

        config.set_option("server.address", "0.0.0.0")
        try:
            at.run()
        finally:
            config.set_option("server.address", "127.0.0.1")
        assert any("refuses to serve on '0.0.0.0'" in e for e in texts(at, "error"))
        assert not at.title and not at.chat_input


class TestTeamMode:
    def test_not_signed_in_sees_only_the_sign_in_page(self) -> None:
        """One button per provider (the default and each named one), nothing of the app."""
        section = {**AUTH, "keycloak": {"client_id": "k", "client_secret": "s",
                                        "server_metadata_url": "http://127.0.0.1:9/x"}}
        at = _team(auth_section=section)
        assert not at.exception
        assert [t.value for t in at.title] == ["Sign in"]
        assert [b.label for b in at.button] == ["Sign in", "Sign in with Keycloak"]
        assert not at.chat_input and not any(c.startswith("Signed in as") for c in texts(at, "caption"))

    def test_deep_link_shows_sign_in_too(self) -> None:
        """A page opened directly also stops at sign-in."""
        at = _team("app_pages/monitor.py")
        assert [t.value for t in at.title] == ["Sign in"]

    def test_identity_is_the_lower_cased_email(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A signed-in admin e-mail becomes the admin identity; the sidebar offers sign-out."""
        monkeypatch.setenv("BLOSSOM_DASH_ADMINS", "admin@team.test")
        at = _team("app_pages/controls.py", {"is_logged_in": True, "email": "Admin@Team.test", "sub": "1"})
        assert not at.exception
        assert _signed_in_as(at).startswith("Signed in as `admin@team.test` · **admin**")
        assert any(b.label == "Sign out" for b in at.button)
        assert not next(b for b in at.button if b.label == "Apply cache settings").disabled

    def test_member_sees_no_admin_controls(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A member of the allowed domain is a member: Controls shows the settings, no admin control."""
        monkeypatch.setenv("BLOSSOM_DASH_ADMINS", "admin@team.test")
        monkeypatch.setenv("BLOSSOM_DASH_ALLOWED_DOMAINS", "team.test")
        at = _team("app_pages/controls.py", {"is_logged_in": True, "email": "mia@team.test"})
        assert _signed_in_as(at).startswith("Signed in as `mia@team.test` · **member**")
        labels = {b.label for b in at.button}
        assert not labels & {"Apply cache settings", "Clear cache", "Apply limits", "Switch backend",
                             "Apply replay settings", "Import", "Delete all recordings"}, labels
        assert "Use this key" in labels  # their own key, still

    def test_sub_when_no_email(self) -> None:
        """Without an e-mail claim the identity is the subject."""
        at = _team("app.py", {"is_logged_in": True, "sub": "user-42"})
        assert _signed_in_as(at).startswith("Signed in as `user-42`")

    def test_outsider_sees_not_allowed_only(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """role_for -> None: who you are, a sign-out, nothing of the app."""
        monkeypatch.setenv("BLOSSOM_DASH_ALLOWED_DOMAINS", "team.test")
        at = _team("app.py", {"is_logged_in": True, "email": "eve@elsewhere.test"})
        assert [t.value for t in at.title] == ["Not allowed"]
        assert any("eve@elsewhere.test" in e for e in texts(at, "error"))
        assert [b.label for b in at.button] == ["Sign out"]
        assert not at.chat_input

    def test_own_key_is_kept_for_the_identity_across_sessions(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A key set on Controls holds for a new session (reload, new tab) of the same identity only."""
        monkeypatch.setenv("BLOSSOM_DASH_ALLOWED_DOMAINS", "team.test")
        mia = {"is_logged_in": True, "email": "mia@team.test"}
        at = _team("app_pages/controls.py", mia)
        at.text_input(key="controls_session_key").set_value("sk_mine")
        next(b for b in at.button if b.label == "Use this key").click().run()
        assert any("your own key" in c for c in texts(at, "caption"))
        again = _team("app_pages/controls.py", mia)
        assert any("your own key" in c for c in texts(again, "caption"))
        assert not any("sk_mine" in str(e.value) for e in [*again.caption, *again.markdown])
        other = _team("app_pages/controls.py", {"is_logged_in": True, "email": "max@team.test"})
        assert any("the server's key" in c for c in texts(other, "caption"))


class TestKioskMode:
    def test_visitors_are_members_with_signed_random_ids(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each session is its own visitor, a member even if the admins list could match."""
        monkeypatch.setenv("BLOSSOM_DASH_ALLOW_ANONYMOUS", "true")
        first, second = _open("app_pages/controls.py"), _open("app_pages/controls.py")
        for at in (first, second):
            assert _signed_in_as(at).startswith("Signed in as a kiosk visitor · **member**")
            assert "Apply cache settings" not in {b.label for b in at.button}
        assert first.session_state["_kiosk_token"] != second.session_state["_kiosk_token"]

    def test_ids_are_128_bit_and_hmac_verified(self) -> None:
        ids = auth.KioskIds(b"k" * 32)
        tokens = {ids.issue() for _ in range(200)}
        assert len(tokens) == 200
        token = tokens.pop()
        raw, mac = token.split(".")
        assert len(bytes.fromhex(raw)) * 8 >= 128 and len(mac) == 64
        assert ids.verify(token) == "kiosk-" + raw
        assert auth.KioskIds(b"other" * 8).verify(token) is None  # another server's secret

    @pytest.mark.parametrize("tamper", ["id", "mac", "shape"])
    def test_tampered_id_is_refused(self, tamper: str) -> None:
        ids = auth.KioskIds(b"k" * 32)
        raw, mac = ids.issue().split(".")
        flip = {"0": "1"}.get(raw[0], "0")
        forged = {"id": f"{flip}{raw[1:]}.{mac}", "mac": f"{raw}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",
                  "shape": raw}[tamper]
        assert ids.verify(forged) is None

    def test_tampered_session_token_is_replaced(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A session whose token fails the check gets a new id, never the forged one."""
        monkeypatch.setenv("BLOSSOM_DASH_ALLOW_ANONYMOUS", "true")
        at = app("app.py")
        at.session_state["_kiosk_token"] = "0" * 32 + "." + "0" * 64
        at.run()
        assert not at.exception
        assert at.session_state["_kiosk_token"] != "0" * 32 + "." + "0" * 64


class TestPureRules:
    @pytest.mark.parametrize(("address", "loopback"), [
        ("127.0.0.1", True), ("127.8.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
        ("0.0.0.0", False), ("::", False), ("", False), (None, False), ("192.168.1.5", False),
        ("example.org", False)])
    def test_is_loopback(self, address: str | None, loopback: bool) -> None:
        assert auth.is_loopback(address) is loopback

    def test_providers(self) -> None:
        assert auth.providers(None) == []
        assert auth.providers({"redirect_uri": "x", "cookie_secret": "y"}) == []
        assert auth.providers(AUTH) == [None]
        assert auth.providers({"redirect_uri": "x", "google": {"client_id": "g"}, "kc": {"client_id": "k"}}) == [
            "google", "kc"]

    def test_identity_of(self) -> None:
        assert auth.identity_of({"is_logged_in": False, "email": "a@b.c"}) is None
        assert auth.identity_of({"is_logged_in": True, "email": " A@B.C "}) == "a@b.c"
        assert auth.identity_of({"is_logged_in": True, "sub": "abc"}) == "abc"
        assert auth.identity_of({"is_logged_in": True}) is None


class TestLauncher:
    def _run(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        import os

        base = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMLIT_", "BLOSSOM_DASH_ALLOW"))}
        return subprocess.run([sys.executable, "-m", "blossom_dash.ui.launch", *args], cwd=tmp_path,
                              env={**base, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), **(env or {})},
                              capture_output=True, text=True, timeout=60)

    def test_wildcard_without_auth_exits_with_the_message(self, tmp_path: Path) -> None:
        """`--server.address 0.0.0.0` and no [auth]: exit 2 and the reason on stderr; nothing listens."""
        done = self._run(tmp_path, "--server.address", "0.0.0.0", "--server.port", "1")
        assert done.returncode == 2
        assert "refuses to serve on '0.0.0.0'" in done.stderr
        assert "You can now view" not in done.stdout

    def test_address_from_env_and_config(self, tmp_path: Path) -> None:
        (tmp_path / ".streamlit").mkdir()
        (tmp_path / ".streamlit" / "config.toml").write_text('[server]\naddress = "0.0.0.0"\n')
        env, home = {}, tmp_path / "home"
        assert launch.refusal([], env, tmp_path, home) is not None
        assert launch.refusal([], {"STREAMLIT_SERVER_ADDRESS": "127.0.0.1"}, tmp_path, home) is None
        assert launch.refusal(["--server.address=127.0.0.1"], env, tmp_path, home) is None
        assert launch.refusal([], {}, tmp_path / "nowhere", home) is not None  # unset = every interface

    def test_loopback_starts(self, tmp_path: Path) -> None:
        assert launch.refusal(["--server.address", "127.0.0.1"], {}, tmp_path, tmp_path) is None
        assert launch.refusal(["--server.address", "::1"], {}, tmp_path, tmp_path) is None

    def test_team_and_kiosk_may_listen_anywhere(self, tmp_path: Path) -> None:
        secrets = tmp_path / "team.toml"
        secrets.write_text('[auth]\nredirect_uri = "x"\ncookie_secret = "y"\nclient_id = "z"\n')
        wide = ["--server.address", "0.0.0.0"]
        assert launch.refusal([*wide, "--secrets.files", str(secrets)], {}, tmp_path, tmp_path) is None
        assert launch.refusal(wide, {"BLOSSOM_DASH_ALLOW_ANONYMOUS": "true"}, tmp_path, tmp_path) is None
        assert launch.refusal(wide, {"BLOSSOM_DASH_ALLOW_ANONYMOUS": "nope"}, tmp_path, tmp_path) is not None
        (tmp_path / ".streamlit").mkdir()
        (tmp_path / ".streamlit" / "secrets.toml").write_text('POLLINATIONS_API_KEY = "sk_x"\n')
        assert launch.refusal(wide, {}, tmp_path, tmp_path) is not None  # secrets without [auth]
