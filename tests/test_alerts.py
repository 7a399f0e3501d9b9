"""Alerts by webhook (``telemetry.alerts``) against a real receiver on 127.0.0.1.

The receiver is ``http.server`` on a loopback port; it answers the statuses a test
queues (200 otherwise) and keeps every JSON body it was sent. "Down" is a port nobody
listens on, then the receiver started on that same port.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pages_helpers import app, texts

from blossom_dash import BlossomService, Settings
from blossom_dash.telemetry.alerts import AlertSender, ErrorRateWatch, budget_listener, circuit_listener, shown_url
from blossom_dash.telemetry.collector import Event


class Receiver:
    """A webhook receiver on 127.0.0.1: ``answers`` (status, headers) are used first, then 200."""

    def __init__(self, port: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, headers = receiver.answers.pop(0) if receiver.answers else (200, {})
                if status == 200:
                    receiver.bodies.append(body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "14")
                self.end_headers()
                self.wfile.write(b"secret details")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T000/B000/token123"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def sender_for(url: str | None, **kw: Any) -> AlertSender:
    kw.setdefault("backoff_s", 0.01)
    return AlertSender(url, **kw)


class TestDelivery:
    def test_payload_is_slack_text_plus_fields(self, receiver: Receiver) -> None:
        """One POST: Slack's ``text`` and the structured ``kind``, ``key``, ``at``, ``details``."""
        sender = sender_for(receiver.url)
        try:
            assert sender.send("budget", ("budget", "user:alice", "day", "2026-12-01", "80%"),
                               "alice has used 80 % of her daily budget.", {"spent": "0.8", "budget": "1"})
            assert sender.wait_idle()
        finally:
            sender.close()
        [body] = receiver.bodies
        assert body["text"] == "alice has used 80 % of her daily budget."
        assert body["kind"] == "budget" and body["key"] == "budget|user:alice|day|2026-12-01|80%"
        assert body["details"] == {"spent": "0.8", "budget": "1"} and body["at"].endswith("Z")
        [record] = sender.recent()
        assert (record.status, record.attempts, record.reason) == ("sent", 1, "")

    def test_one_crossing_is_sent_once(self, receiver: Receiver) -> None:
        """The same crossing key raised again (by 50 threads at once) is one POST; another key is another."""
        sender = sender_for(receiver.url)
        key = ("budget", "team", "month", "2026-12", "100%")
        results: list[bool] = []
        threads = [threading.Thread(target=lambda: results.append(sender.send("budget", key, "team at 100 %")))
                   for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sender.send("budget", ("budget", "team", "month", "2026-12", "80%"), "team at 80 %")
        assert sender.wait_idle()
        sender.close()
        assert results.count(True) == 1
        assert sorted(b["text"] for b in receiver.bodies) == ["team at 100 %", "team at 80 %"]

    def test_receiver_down_then_back(self) -> None:
        """Connection refused: the alert is retried (status ``retrying``) and delivered once the receiver is up."""
        port = free_port()
        sender = sender_for(f"http://127.0.0.1:{port}/hook", attempts=20, backoff_s=0.05)
        try:
            sender.send("circuit", "circuit|demo|open|1", "demo is failing")
            wait_for(lambda: sender.recent()[0].status == "retrying")
            assert "could not connect" in sender.recent()[0].reason
            receiver = Receiver(port)
            try:
                assert sender.wait_idle(30)
            finally:
                receiver.close()
        finally:
            sender.close()
        [record] = sender.recent()
        assert record.status == "sent" and record.attempts > 1
        assert [b["text"] for b in receiver.bodies] == ["demo is failing"]

    def test_receiver_down_for_good_is_failed_after_n_attempts(self) -> None:
        """Nobody listening: ``attempts`` POSTs, then ``failed`` with the reason and the count."""
        sender = sender_for(f"http://127.0.0.1:{free_port()}/hook", attempts=3)
        sender.send("circuit", "k", "demo is failing")
        assert sender.wait_idle()
        sender.close()
        [record] = sender.recent()
        assert record.status == "failed" and record.attempts == 3
        assert "could not connect" in record.reason and "after 3 attempts" in record.reason

    def test_429_and_5xx_are_retried_honouring_retry_after(self, receiver: Receiver) -> None:
        """A 429 with Retry-After and a 503 are retried; the third POST delivers."""
        receiver.answers = [(429, {"Retry-After": "0"}), (503, {})]
        sender = sender_for(receiver.url)
        sender.send("error_rate", "k", "errors")
        assert sender.wait_idle()
        sender.close()
        [record] = sender.recent()
        assert (record.status, record.attempts) == ("sent", 3)
        assert len(receiver.bodies) == 1

    def test_a_4xx_fails_at_once_without_quoting_the_body(self, receiver: Receiver) -> None:
        """A 404 (wrong URL or token) is not retried; the reason names the status, never the body."""
        receiver.answers = [(404, {})]
        sender = sender_for(receiver.url)
        sender.send("error_rate", "k", "errors")
        assert sender.wait_idle()
        sender.close()
        [record] = sender.recent()
        assert record.status == "failed" and record.attempts == 1
        assert "404" in record.reason and "secret details" not in record.reason

    def test_without_a_webhook_alerts_are_listed_not_sent(self) -> None:
        """No URL: the alert is listed as ``not sent`` with why."""
        sender = sender_for(None)
        sender.send("circuit", "k", "demo is failing")
        sender.close()
        [record] = sender.recent()
        assert record.status == "not sent" and "BLOSSOM_DASH_ALERT_WEBHOOK" in record.reason

    def test_claimed_elsewhere_is_not_sent(self, receiver: Receiver) -> None:
        """A crossing another replica claimed first (``claim`` returns False) is not POSTed."""
        sender = sender_for(receiver.url, claim=lambda key: False)
        sender.send("budget", "k", "team at 80 %")
        assert sender.wait_idle()
        sender.close()
        assert receiver.bodies == []
        assert sender.recent()[0].reason == "another replica sent it"

    def test_the_url_is_masked(self) -> None:
        """The webhook's path (its token) is never shown."""
        assert shown_url("https://hooks.slack.com/services/T0/B0/XYZ") == "https://hooks.slack.com/…"
        assert shown_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"


def event(ts: float, outcome: str) -> Event:
    return Event(ts, "r", "u", "s", "text", "m", "demo", outcome)


class TestErrorRate:
    def test_up_once_then_recovered_once(self, receiver: Receiver) -> None:
        """Over the threshold with enough requests: one alert however often checked; one "recovered" after."""
        now = [1000.0]
        events = [event(900.0, "error")] * 5 + [event(900.0, "ok")] * 5 + [event(900.0, "rate_limited")] * 50
        sender = sender_for(receiver.url)
        watch = ErrorRateWatch(lambda: events, sender, threshold=0.3, min_requests=10, clock=lambda: now[0])
        assert watch.rate() == (5, 10)
        assert watch.check() == "up"
        assert watch.check() is None
        events += [event(950.0, "ok")] * 20
        assert watch.check() == "recovered"
        assert watch.check() is None
        assert sender.wait_idle()
        sender.close()
        texts_sent = [b["text"] for b in receiver.bodies]
        assert len(texts_sent) == 2
        assert texts_sent[0].startswith("Error rate 50% over the last 5 minutes: 5 of 10 requests failed")
        assert texts_sent[1].startswith("Error rate recovered")

    def test_too_few_requests_or_old_ones_raise_nothing(self) -> None:
        """Under ``min_requests``, or errors older than 5 minutes: no alert."""
        sender = sender_for(None)
        few = ErrorRateWatch(lambda: [event(999.0, "error")] * 3, sender, min_requests=10, clock=lambda: 1000.0)
        old = ErrorRateWatch(lambda: [event(600.0, "error")] * 30, sender, min_requests=10, clock=lambda: 1000.0)
        assert few.check() is None and old.check() is None
        sender.close()

    def test_through_the_service(self, receiver: Receiver, tmp_path: Path) -> None:
        """Failed requests on the demo backend cross the service's threshold: one error-rate alert."""
        svc = BlossomService(Settings(backend="demo", demo_latency=False, demo_faults=True, data_dir=tmp_path,
                                      retries=0, alert_webhook=receiver.url, alert_min_requests=4,
                                      alert_error_rate=0.5, breaker_failures=100))
        try:
            httpx.post(f"{svc.backend.base_url}/_demo/faults", json={"fault": "500", "count": 3}).raise_for_status()
            for i in range(4):
                try:
                    svc.generate_text(f"prompt {i}")
                except Exception:  # noqa: BLE001 - three of them fail, on purpose
                    pass
            assert svc._error_watch.check() == "up"  # the ticker would do this within 30 s
            assert svc._alert_sender.wait_idle()
        finally:
            svc.close()
        [body] = receiver.bodies
        assert body["kind"] == "error_rate" and body["details"]["errors"] == 3


class TestBudget:
    def test_ledger_crossings_are_one_alert_each(self, receiver: Receiver) -> None:
        """A user's daily budget of 1 pollen crossed at 80 % and at 100 % (and the team's at 80 %): one POST each,
        however many requests settle past them; the text says what was spent, the budget and when it resets."""
        from decimal import Decimal

        from blossom_dash.policies.budget import BudgetLedger, Budgets

        now = 1796083200.0 + 3600  # 2026-12-01 01:00 UTC
        sender = sender_for(receiver.url)
        ledger = BudgetLedger(Budgets(user_day=Decimal("1"), team_day=Decimal("2")), clock=lambda: now,
                              on_crossing=budget_listener(sender, clock=lambda: now))
        for _ in range(5):  # 0.3 each: 0.9 (80 %), then refused at 1.2 > 1
            try:
                ledger.settle(ledger.reserve("alice", Decimal("0.3")), Decimal("0.3"))
            except Exception:  # noqa: BLE001 - BudgetExceeded once the next one would pass it
                break
        ledger.settle(ledger.reserve("alice", Decimal("0.1")), Decimal("0.1"))  # exactly 1.0: used up
        for _ in range(3):
            ledger.settle(ledger.reserve("bob", Decimal("0.2")), Decimal("0.2"))  # team 1.6 of 2: 80 %
        assert sender.wait_idle()
        sender.close()
        keys = sorted(b["key"] for b in receiver.bodies)
        assert keys == ["budget|team:all|day|2026-12-01|80%", "budget|user:alice|day|2026-12-01|100%",
                        "budget|user:alice|day|2026-12-01|80%"]
        full = next(b for b in receiver.bodies if b["key"].endswith("alice|day|2026-12-01|100%"))
        assert full["text"] == ("Budget: alice has used up their daily budget (1 of 1 pollen); it resets at "
                                "2026-12-02T00:00Z. alice's requests are refused until then.")
        assert full["details"]["spent"] == "1" and full["details"]["unit"] == "pollen"


    def test_a_user_hits_their_daily_budget_through_the_service(self, receiver: Receiver, tmp_path: Path) -> None:
        """On the demo backend at 0.0136 pollen a request and a daily budget of 5 requests' worth: the 4th
        request sends the 80 % alert, the 5th the 100 % one, the 6th is refused and sends nothing more."""
        from decimal import Decimal

        from blossom_dash.errors import BudgetExceeded
        from blossom_dash.pricing import Price

        price = Decimal("0.0136")
        svc = BlossomService(Settings(backend="demo", demo_latency=False, data_dir=tmp_path,
                                      alert_webhook=receiver.url, budget_user_day=price * 5))
        try:
            svc.gateway.prices = lambda kind, model: Price((("perRequest", price),))
            for i in range(5):
                svc.generate_text(f"question {i}", user="alice")
            with pytest.raises(BudgetExceeded):
                svc.generate_text("one too many", user="alice")
            assert svc._alert_sender.wait_idle()
            listed = svc.alerts()["alerts"]
        finally:
            svc.close()
        assert [b["details"]["threshold"] for b in receiver.bodies] == ["80%", "100%"]
        assert all(b["key"].startswith("budget|user:alice|day|") for b in receiver.bodies)
        assert receiver.bodies[1]["details"]["spent"] == "0.068" and receiver.bodies[1]["details"]["budget"] == "0.068"
        assert [a.status for a in listed] == ["sent", "sent"]


class TestCircuit:
    def test_listener_open_and_closed(self) -> None:
        """closed -> open and back to closed are two alerts; open <-> half-open probes raise nothing."""
        sender = sender_for(None)
        listen = circuit_listener(sender)
        for old, new in [("closed", "open"), ("open", "half-open"), ("half-open", "open"),
                         ("open", "half-open"), ("half-open", "closed")]:
            listen("demo", old, new)
        sender.close()
        assert [a.text.split(":")[0] for a in sender.recent()][::-1] == [
            "Circuit breaker open", "Circuit breaker closed"]

    def test_demo_backend_faults_open_then_close_the_circuit(self, receiver: Receiver, tmp_path: Path) -> None:
        """Two 500s open the breaker (one alert), the probe after ``breaker_reset_s`` closes it (another)."""
        svc = BlossomService(Settings(backend="demo", demo_latency=False, demo_faults=True, data_dir=tmp_path,
                                      retries=0, alert_webhook=receiver.url, breaker_failures=2,
                                      breaker_reset_s=0.2))
        try:
            httpx.post(f"{svc.backend.base_url}/_demo/faults", json={"fault": "500", "count": 2}).raise_for_status()
            for i in range(2):
                with pytest.raises(Exception):  # noqa: B017 - an UpstreamError, then the circuit opens
                    svc.generate_text(f"fail {i}")
            time.sleep(0.3)  # past breaker_reset_s: the next request is the half-open probe
            svc.generate_text("the probe")
            assert svc._alert_sender.wait_idle()
        finally:
            svc.close()
        assert [(b["kind"], b["details"]["circuit"]) for b in receiver.bodies] == [
            ("circuit", "open"), ("circuit", "closed")]


class TestRedisDedupe:
    def test_two_replicas_send_a_crossing_once(self, receiver: Receiver, redis_url: str, tmp_path: Path) -> None:
        """Two services on one Redis raise the same crossing: the receiver gets one POST."""
        services = [BlossomService(Settings(backend="demo", demo_latency=False, data_dir=tmp_path / str(i),
                                            redis_url=redis_url, alert_webhook=receiver.url)) for i in range(2)]
        try:
            key = ("budget", "team", "day", "2026-12-01", "80%")
            for svc in services:
                svc._alert_sender.send("budget", key, "team at 80 %")
            for svc in services:
                assert svc._alert_sender.wait_idle()
        finally:
            for svc in services:
                svc.close()
        assert len(receiver.bodies) == 1


class TestAccess:
    def test_only_an_admin_reads_the_alerts(self, demo_service: BlossomService) -> None:
        """A member asking for the alert list is refused in words; an admin gets it, the URL masked."""
        from blossom_dash.errors import PermissionDenied
        from blossom_dash.gateway import Caller

        with pytest.raises(PermissionDenied, match="Only an admin may read the alerts"):
            demo_service.alerts(caller=Caller("bob@team.org", role="member"))
        assert demo_service.alerts(caller=Caller("local"))["webhook"] == ""


class TestControlsPage:
    def test_alerts_listed_with_their_status(self, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
        """The circuit opening on the demo backend is listed on Controls as sent, the URL masked."""
        from blossom_dash import ui

        monkeypatch.setenv("BLOSSOM_DASH_ALERT_WEBHOOK", receiver.url)
        monkeypatch.setenv("BLOSSOM_DASH_BREAKER_FAILURES", "1")
        monkeypatch.setenv("BLOSSOM_DASH_RETRIES", "0")
        at = app("app_pages/controls.py").run()
        assert any("No alert since this process started" in i for i in texts(at, "info"))
        service = ui.get_service()
        httpx.post(f"{service.backend.base_url}/_demo/faults", json={"fault": "500", "count": 1}).raise_for_status()
        with pytest.raises(Exception):  # noqa: B017 - the 500 opens the circuit
            service.generate_text("fail")
        assert service._alert_sender.wait_idle()
        at = app("app_pages/controls.py").run()
        assert not at.exception
        table = next(d.value for d in at.dataframe if "attempts" in d.value.columns)
        row = table[table["kind"] == "circuit"].iloc[0]
        assert row["status"] == "✅ sent" and row["alert"].startswith("Circuit breaker open")
        shown = " ".join(texts(at, "caption"))
        assert "http://127.0.0.1:" in shown and "token123" not in shown

    def test_a_failed_delivery_is_listed_with_its_reason(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A webhook nobody listens on, one attempt: the alert reads failed, with why, on Controls."""
        from blossom_dash import ui

        monkeypatch.setenv("BLOSSOM_DASH_ALERT_WEBHOOK", f"http://127.0.0.1:{free_port()}/hook")
        monkeypatch.setenv("BLOSSOM_DASH_ALERT_ATTEMPTS", "1")
        monkeypatch.setenv("BLOSSOM_DASH_BREAKER_FAILURES", "1")
        monkeypatch.setenv("BLOSSOM_DASH_RETRIES", "0")
        app("app_pages/controls.py").run()
        service = ui.get_service()
        httpx.post(f"{service.backend.base_url}/_demo/faults", json={"fault": "500", "count": 1}).raise_for_status()
        with pytest.raises(Exception):  # noqa: B017 - the 500 opens the circuit
            service.generate_text("fail")
        assert service._alert_sender.wait_idle()
        at = app("app_pages/controls.py").run()
        assert not at.exception
        table = next(d.value for d in at.dataframe if "attempts" in d.value.columns)
        row = table.iloc[0]
        assert row["status"] == "❌ failed" and "could not connect" in row["reason"] and row["attempts"] == 1

    def test_a_test_alert_reaches_the_receiver(self, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
        """The admin's "Send a test alert" button POSTs one alert, listed on Controls, and is audited."""
        from blossom_dash import ui

        monkeypatch.setenv("BLOSSOM_DASH_ALERT_WEBHOOK", receiver.url)
        at = app("app_pages/controls.py").run()
        at.button(key="controls_alerts_test").click().run()
        assert not at.exception
        service = ui.get_service()
        assert service._alert_sender.wait_idle()
        assert [b["kind"] for b in receiver.bodies] == ["test"]
        assert receiver.bodies[0]["text"] == "Test alert from blossom-dash, sent by local."
        at = app("app_pages/controls.py").run()
        table = next(d.value for d in at.dataframe if "attempts" in d.value.columns)
        assert table.iloc[0]["status"] == "✅ sent"
        assert "send_test_alert" in set(service.audit_entries()["action"])
