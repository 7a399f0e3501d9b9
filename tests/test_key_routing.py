"""Where the server's key goes: Pollinations only; backends only from the allow-list.

A loopback server that records every ``Authorization`` header it receives stands in
for a visitor's logging server (issue 8's exfiltration experiment).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from blossom_dash import BlossomService, Caller, Settings
from blossom_dash.errors import PermissionDenied, UpstreamError

SERVER_KEY = "sk_server_secret_0123456789"
MEMBER = Caller("mo@team.org", role="member")
ADMIN = Caller("ada@team.org", role="admin")


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str] = []

    def _answer(self) -> None:
        _Recorder.seen.append(self.headers.get("Authorization") or "")
        body = b"<html><body>internal admin page: db_password=hunter2</body></html>"
        self.send_response(500)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture()
def recorder() -> Iterator[str]:
    """The URL of a loopback server that records the Authorization headers it gets."""
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def service(tmp_path: Path, **over: object) -> BlossomService:
    opts: dict[str, object] = {"backend": "demo", "demo_latency": False, "data_dir": tmp_path, "retries": 0,
                               "api_key": SERVER_KEY, "allow_custom_backend": False}
    opts.update(over)
    return BlossomService(Settings(**opts))


class TestTheServersKey:
    def test_a_member_cannot_point_the_app_anywhere(self, tmp_path: Path, recorder: str) -> None:
        """A member switching to a URL is refused; the server receives nothing."""
        with service(tmp_path) as svc:
            with pytest.raises(PermissionDenied):
                svc.switch_backend(recorder, caller=MEMBER)
            assert _Recorder.seen == [] and svc.backend_info()["name"] == "demo"

    def test_typed_urls_are_off_by_default_even_for_admins(self, tmp_path: Path, recorder: str) -> None:
        """Without BLOSSOM_DASH_ALLOW_CUSTOM_BACKEND an admin cannot type a URL either."""
        with service(tmp_path) as svc:
            with pytest.raises(PermissionDenied) as info:
                svc.switch_backend(recorder, caller=ADMIN)
            assert "allow-listed" in info.value.message and "BLOSSOM_DASH_BACKENDS" in info.value.hint
            assert _Recorder.seen == []

    def test_an_allow_listed_backend_gets_no_server_key(self, tmp_path: Path, recorder: str) -> None:
        """An admin picks an allow-listed backend without a key of its own: the server's
        Pollinations key never reaches it, and a user's request carries no key either."""
        with service(tmp_path, backends=f"team={recorder}") as svc:
            svc.switch_backend("team", caller=ADMIN)
            with pytest.raises(UpstreamError):
                svc.generate_text("hello", model="m", caller=MEMBER)
            assert _Recorder.seen, "the backend was really called"
            assert all(SERVER_KEY not in h for h in _Recorder.seen), _Recorder.seen
            assert all(h == "" for h in _Recorder.seen)

    def test_a_custom_url_gets_no_key_and_is_never_quoted(self, tmp_path: Path, recorder: str) -> None:
        """With custom URLs allowed, an admin's typed URL receives no key, and what it answers
        (here an internal page) is not pasted into anyone's error message."""
        with service(tmp_path, allow_custom_backend=True) as svc:
            svc.switch_backend(recorder, caller=ADMIN)
            with pytest.raises(UpstreamError) as info:
                svc.generate_text("hello", model="m", caller=MEMBER)
            assert "hunter2" not in info.value.message and "internal" not in info.value.message
            assert info.value.status_code == 500
            assert all(SERVER_KEY not in h for h in _Recorder.seen)

    def test_an_allow_listed_backend_gets_its_own_key(self, tmp_path: Path, recorder: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
        """BLOSSOM_DASH_BACKEND_<NAME>_KEY is sent to that backend, and only that key."""
        monkeypatch.setenv("BLOSSOM_DASH_BACKEND_TEAM_VLLM_KEY", "team-key-12345678")
        with service(tmp_path, backends=f"team-vllm={recorder}") as svc:
            svc.switch_backend("team-vllm", caller=ADMIN)
            with pytest.raises(UpstreamError):
                svc.generate_text("hello", model="m", caller=MEMBER)
            assert _Recorder.seen and all(h == "Bearer team-key-12345678" for h in _Recorder.seen)

    def test_url_credentials_are_never_shown(self, tmp_path: Path, recorder: str) -> None:
        """``user:password@`` in a backend URL appears in no label, info or health."""
        with service(tmp_path, backends=f"team={recorder.replace('http://', 'http://bob:s3cret@')}") as svc:
            svc.switch_backend("team", caller=ADMIN)
            shown = f"{svc.backend_info()} {svc.health()}"
            assert "s3cret" not in shown and "bob" not in shown
