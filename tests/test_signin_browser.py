"""Real sign-in in Chromium against an offline OIDC provider on loopback (team mode).

``oidc-provider-mock``'s WSGI app is served on 127.0.0.1 in a thread; the app runs
with ``--secrets.files`` pointing at an ``[auth]`` section for it, admins
``admin@team.test`` and allowed domain ``team.test``. The mock asks for a subject and
gives it as the e-mail claim. Needs Debian's ``chromium``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:  # keep the test output readable
        pass


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """The mock OIDC provider on 127.0.0.1 (never ``localhost``, which may be ``::1``)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run should have installed Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    oidc_provider_mock = pytest.importorskip("oidc_provider_mock")
    os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback
    server = make_server("127.0.0.1", 0, oidc_provider_mock.app(), server_class=_ThreadingServer,
                         handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def app_url(provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app in team mode, served by ``streamlit run`` on loopback."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    work = tmp_path_factory.mktemp("signin")
    secrets = work / "secrets.toml"
    secrets.write_text(f'[auth]\nredirect_uri = "{url}/oauth2callback"\ncookie_secret = "browser-test-secret"\n'
                       f'client_id = "blossom-dash"\nclient_secret = "not-a-secret"\n'
                       f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n')
    env = {**os.environ, "BLOSSOM_DASH_BACKEND": "demo", "BLOSSOM_DASH_DATA_DIR": str(work / "data"),
           "BLOSSOM_DASH_ADMINS": "admin@team.test", "BLOSSOM_DASH_ALLOWED_DOMAINS": "team.test",
           "AUTHLIB_INSECURE_TRANSPORT": "1"}
    env.pop("POLLINATIONS_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--secrets.files", str(secrets)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("streamlit did not become healthy within 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _sign_in(page: object, app_url: str, email: str) -> None:
    """Open the app, press "Sign in", give the mock provider ``email`` as the subject."""
    from playwright.sync_api import expect

    page.goto(app_url)
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Sign in").click()
    page.locator("input[name=sub]").first.fill(email)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{app_url}/**", timeout=30_000)


def _controls(page: object, app_url: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{app_url}/controls")
    expect(page.get_by_role("heading", name="Controls")).to_be_visible(timeout=30_000)


def test_admin_member_outsider_and_sign_out(app_url: str, tmp_path: Path) -> None:
    """Admin: Controls enabled. Member: no admin control, the info box. Sign-out returns to sign-in.
    Outside the allowed domain: "not allowed" and nothing of the app."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            admin = browser.new_context().new_page()
            _sign_in(admin, app_url, "admin@team.test")
            expect(admin.get_by_text("Signed in as admin@team.test · admin")).to_be_visible(timeout=30_000)
            _controls(admin, app_url)
            expect(admin.get_by_role("button", name="Apply cache settings")).to_be_enabled()
            admin.get_by_role("button", name="Sign out").click()
            # Streamlit drops its cookie, then ends the provider's session (the mock asks to confirm).
            admin.get_by_role("button", name="End session").click(timeout=30_000)
            admin.wait_for_url(f"{app_url}/**", timeout=30_000)
            admin.goto(app_url)
            expect(admin.get_by_role("heading", name="Sign in")).to_be_visible(timeout=30_000)
            expect(admin.get_by_text("Signed in as")).to_have_count(0)

            member = browser.new_context().new_page()
            _sign_in(member, app_url, "mia@team.test")
            _controls(member, app_url)
            expect(member.get_by_text("Signed in as mia@team.test · member")).to_be_visible()
            expect(member.get_by_text("You are signed in as a member")).to_be_visible()
            expect(member.get_by_role("button", name="Apply cache settings")).to_have_count(0)
            expect(member.get_by_role("button", name="Clear cache")).to_have_count(0)
            expect(member.get_by_role("button", name="Switch backend")).to_have_count(0)
            expect(member.get_by_role("button", name="Use this key")).to_be_visible()

            outsider = browser.new_context().new_page()
            _sign_in(outsider, app_url, "eve@elsewhere.test")
            expect(outsider.get_by_role("heading", name="Not allowed")).to_be_visible(timeout=30_000)
            expect(outsider.get_by_text("eve@elsewhere.test")).to_be_visible()
            expect(outsider.get_by_role("button", name="Sign out")).to_be_visible()
            _controls_heading = outsider.get_by_role("heading", name="Controls")
            outsider.goto(f"{app_url}/controls")
            expect(outsider.get_by_role("heading", name="Not allowed")).to_be_visible(timeout=30_000)
            expect(_controls_heading).to_have_count(0)
        except Exception:
            for i, ctx in enumerate(browser.contexts):
                for j, pg in enumerate(ctx.pages):
                    pg.screenshot(path=str(tmp_path / f"signin-{i}-{j}.png"), full_page=True)
            raise
        finally:
            browser.close()


def test_a_forged_cookie_is_no_one(app_url: str, tmp_path: Path) -> None:
    """A hand-made ``_streamlit_user`` cookie naming the admin signs nobody in: Streamlit's
    identity cookie is signed with ``cookie_secret``, so the app shows only the sign-in page."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            forged = '{"email": "admin@team.test", "is_logged_in": true, "sub": "admin@team.test"}'
            context.add_cookies([{"name": "_streamlit_user", "value": forged, "url": app_url}])
            page = context.new_page()
            page.goto(f"{app_url}/controls")
            expect(page.get_by_role("heading", name="Sign in")).to_be_visible(timeout=30_000)
            expect(page.get_by_text("Signed in as")).to_have_count(0)
            expect(page.get_by_role("button", name="Apply cache settings")).to_have_count(0)
        except Exception:
            for i, ctx in enumerate(browser.contexts):
                for j, pg in enumerate(ctx.pages):
                    pg.screenshot(path=str(tmp_path / f"forged-{i}-{j}.png"), full_page=True)
            raise
        finally:
            browser.close()
