"""The Pollinations account: key type and balance from /account/key and /account/balance; a 402 in words.

A loopback server speaks Pollinations' account endpoints and its 402 body; the service
is switched to it with a fake ``sk_`` key (as an admin gives a backend its own key).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import make_service

from blossom_dash.demo_backend.catalog import DEMO_BALANCE
from blossom_dash.errors import UpstreamError
from blossom_dash.gateway import Caller
from blossom_dash.gateway.account import AccountReader
from blossom_dash.gateway.requests import KIOSK_PREFIX
from blossom_dash.sdk.account import key_type_of, payment_required_figures
from blossom_dash.sdk.backend import Backend
from blossom_dash.sdk.loop import LoopThread

FAKE_KEY = "sk_fake_account_key_0123456789"
POLLINATIONS_402 = {"status": 402, "success": False, "error": {
    "code": "PAYMENT_REQUIRED",
    "message": "This model costs ~0.0136 pollen per request, but your available balance is 0.0000"}}


class _Pollinations(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []
    key_body: dict[str, object] | None = {"valid": True, "type": "secret", "name": "team key", "pollenBudget": None}
    balance_body: dict[str, object] | None = {"balance": 12.5}

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        _Pollinations.seen.append((self.path, self.headers.get("Authorization") or ""))
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "paid-model"}]})
        elif self.path == "/account/key":
            if self.key_body is None:
                self._send(403, {"error": "no"})
            else:  # the type of the key it was asked with, as Pollinations answers
                publishable = "pk_" in (self.headers.get("Authorization") or "")
                self._send(200, {**self.key_body, **({"type": "publishable"} if publishable else {})})
        elif self.path == "/account/balance":
            self._send(200, self.balance_body) if self.balance_body is not None else self._send(404, {})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        _Pollinations.seen.append((self.path, self.headers.get("Authorization") or ""))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._send(402, POLLINATIONS_402)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture()
def pollinations() -> Iterator[str]:
    """The URL of a loopback stand-in for gen.pollinations.ai's account endpoints."""
    _Pollinations.seen = []
    _Pollinations.key_body = {"valid": True, "type": "secret", "name": "team key", "pollenBudget": None}
    _Pollinations.balance_body = {"balance": 12.5}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pollinations)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class TestFigures:
    def test_402_figures_are_read(self) -> None:
        """Pollinations' 402 wording gives the cost per request and the balance, as Decimals."""
        assert payment_required_figures(json.dumps(POLLINATIONS_402)) == (Decimal("0.0136"), Decimal("0.0000"))
        assert payment_required_figures("Insufficient balance") == (None, None)
        assert payment_required_figures(None) == (None, None)

    def test_key_type_from_the_backend_or_the_prefix(self) -> None:
        """The backend's 'secret'/'publishable' wins; else the key's own sk_/pk_ prefix."""
        assert key_type_of("pk_x", "secret") == "sk"
        assert key_type_of("pk_abc", None) == "pk" and key_type_of("sk_abc", "weird") == "sk"
        assert key_type_of(None, None) is None
        assert key_type_of("plln_pk_abc") == "pk" and key_type_of("plln_sk_abc", "") == "sk"


class TestAccount:
    def test_key_type_and_balance_from_the_backend(self, tmp_path: Path, pollinations: str) -> None:
        """With its own sk_ key the backend is asked once; the answer is kept for the next reads."""
        with make_service(tmp_path) as svc:
            svc.switch_backend(pollinations, api_key=FAKE_KEY)
            account = svc.account()
            assert account is not None and account.key_type == "sk" and account.key_name == "team key"
            assert account.valid is True and account.balance == Decimal("12.5") and account.detail == ""
            assert "spends the balance" in account.key_words
            asked = [p for p, _ in _Pollinations.seen if p.startswith("/account")]
            assert asked == ["/account/key", "/account/balance"]
            assert all(auth == f"Bearer {FAKE_KEY}" for p, auth in _Pollinations.seen if p.startswith("/account"))
            assert svc.account() is account  # kept: no second request
            assert len([p for p, _ in _Pollinations.seen if p.startswith("/account")]) == 2
            _Pollinations.balance_body = {"balance": "3.25"}
            assert svc.account(refresh=True).balance == Decimal("3.25")

    def test_a_sessions_own_key_is_read_with_that_key(self, tmp_path: Path, pollinations: str) -> None:
        """A caller with a key of their own gets that key's account, asked with that key; others the server's."""
        member_key = "pk_member_own_key_0123456789"
        with make_service(tmp_path) as svc:
            svc.switch_backend(pollinations, api_key=FAKE_KEY)
            mine = svc.account(caller=Caller("mo@team.org", api_key=member_key, role="member"))
            assert mine is not None and mine.key_type == "pk"
            sent = [auth for p, auth in _Pollinations.seen if p.startswith("/account")]
            assert sent == [f"Bearer {member_key}"] * 2
            server = svc.account(caller=Caller("ada@team.org", role="member"))  # no key of her own
            assert server is not None and server.key_type == "sk" and server is not mine
            visitor = Caller(f"{KIOSK_PREFIX}a1b2c3", role="member")
            assert svc.account(caller=visitor) is None  # the server key's balance is not for anonymous visitors

    def test_what_could_not_be_read_is_said(self, tmp_path: Path, pollinations: str) -> None:
        """A key that may not read its details and a backend without a balance: None parts, and why."""
        _Pollinations.key_body = None
        _Pollinations.balance_body = None
        with make_service(tmp_path) as svc:
            svc.switch_backend(pollinations, api_key="pk_fake_account_key_0123456789")
            assert svc.account() is None  # not Pollinations and no account API answered: nothing to show
        _Pollinations.balance_body = {"balance": 1}
        with make_service(tmp_path / "again") as svc:
            svc.switch_backend(pollinations, api_key="pk_fake_account_key_0123456789")
            account = svc.account()
            assert account is not None and account.key_type == "pk" and account.balance == Decimal("1")
            assert "may not read its key's details (HTTP 403)" in account.detail

    def test_the_demo_backends_account_endpoints(self, tmp_path: Path) -> None:
        """The demo backend's own /account/key and /account/balance, reached as a URL with a fake key."""
        with make_service(tmp_path) as svc:
            demo_url = svc.backend.base_url
            svc.switch_backend(demo_url, api_key=FAKE_KEY)
            account = svc.account()
            assert account is not None and account.key_type == "sk" and account.key_name == "demo key"
            assert account.balance == Decimal(str(DEMO_BALANCE)) and account.pollen_budget is None
            svc.switch_backend(demo_url, api_key="pk_fake_account_key_0123456789")
            account = svc.account()
            assert account is not None and account.key_type == "pk" and account.pollen_budget == Decimal("10.0")
            assert "rate-limited" in account.key_words

    def test_no_key_no_account(self, tmp_path: Path) -> None:
        """The demo backend has no key and no account."""
        with make_service(tmp_path) as svc:
            assert svc.account() is None


class TestPaymentRequired:
    def test_402_says_cost_and_balance_in_words(self, tmp_path: Path, pollinations: str) -> None:
        """Pollinations' 402 becomes 'costs about 0.0136 pollen per request and the key's balance is 0.0000'."""
        with make_service(tmp_path) as svc:
            svc.switch_backend(pollinations, api_key=FAKE_KEY)
            with pytest.raises(UpstreamError) as info:
                svc.generate_text("hello", model="paid-model")
            message = info.value.message
            assert "'paid-model' costs about 0.0136 pollen per request" in message
            assert "the key's balance is 0.0000 pollen" in message and "HTTP 402" in message
            assert "Top up" in info.value.hint


class TestAccountReader:
    def test_kept_a_minute_and_not_asked_while_offline(self, pollinations: str) -> None:
        """One read per minute (fake clock); an open circuit gives the last answer, or None before any."""
        loop = LoopThread()
        backend = Backend(name="custom", base_url=pollinations, api_key=FAKE_KEY, timeout_s=5)
        now = [0.0]
        try:
            reader = AccountReader(loop, clock=lambda: now[0])
            assert reader.get(backend, offline=True) is None  # nothing kept yet, and not asked
            first = reader.get(backend)
            now[0] = 59.0
            assert reader.get(backend) is first and reader.get(backend, offline=True) is first
            asked = len([p for p, _ in _Pollinations.seen if p.startswith("/account")])
            assert asked == 2
            now[0] = 61.0
            assert reader.get(backend) is not first
            assert len([p for p, _ in _Pollinations.seen if p.startswith("/account")]) == 4
        finally:
            loop.run(backend.close(), timeout=5)
            loop.stop()
