"""Alerts by webhook: budget crossings, a high error rate, the circuit opening and closing.

``AlertSender`` posts one JSON document per alert to the operator's webhook
(``Settings.alert_webhook``, ``BLOSSOM_DASH_ALERT_WEBHOOK``)::

    {"text": "Budget: user:alice has used 80 % of its daily budget ...",   # Slack's field
     "kind": "budget", "key": "budget|user:alice|day|2026-12-01|80%",
     "at": "2026-12-01T14:05:09Z", "details": {...}}

``text`` is what Slack's incoming webhooks show (Slack, "Sending messages using
incoming webhooks": a JSON body with a ``text`` field); Discord's ``/slack`` endpoint
and Mattermost read it too, and other receivers get the structured fields beside it.

Rules:
- Off the request path: ``send`` only checks the crossing key and puts the alert on a
  bounded queue (``QUEUE_SIZE``; a full queue drops the alert, listed as failed); one
  daemon thread posts them in order.
- Retried with exponential backoff (tenacity) on connection errors, timeouts, 5xx and
  429, honouring a 429's or 503's ``Retry-After`` (seconds, capped at ``MAX_WAIT_S``),
  at most ``attempts`` tries, then marked failed with the reason. Any other answer
  (a 4xx: wrong URL or token) fails at once: retrying would not help. The receiver's
  body is never shown or logged, only its status code.
- Never duplicated for the same crossing: a crossing has a key (for example
  ``("budget", "user:alice", "day", "2026-12-01", "80%")``) sent at most once per
  process; with ``claim`` (the service passes a Redis ``SET NX`` when
  ``BLOSSOM_DASH_REDIS_URL`` is set) at most once across replicas too.
- The webhook URL comes from the operator's settings only (it often carries a token:
  ``shown_url`` masks its path); posts have a short timeout and follow no redirect.

``ErrorRateWatch`` turns the collector's recent events into "error rate over the
threshold in the last 5 minutes" and "recovered" alerts; ``circuit_listener`` turns
``policies.breaker.CircuitBreaker`` transitions into "circuit open" and "closed" alerts.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from .collector import Event

log = logging.getLogger("blossom_dash.alerts")

#: Alerts waiting to be posted at most; more are dropped (and listed as failed).
QUEUE_SIZE = 200
#: Alerts kept for ``recent`` (Controls lists the last 50).
HISTORY = 50
#: Crossing keys remembered per process for the dedupe (oldest forgotten first).
MAX_KEYS = 100_000
#: Longest wait between two attempts, seconds (a larger Retry-After is capped to it).
MAX_WAIT_S = 60.0
#: The error-rate window, seconds (issue 10: "error rate over a threshold in 5 minutes").
ERROR_WINDOW_S = 300.0
#: How often the error rate is evaluated, seconds.
CHECK_S = 30.0

QUEUED, RETRYING, SENT, FAILED, NOT_SENT = "queued", "retrying", "sent", "failed", "not sent"


@dataclass(frozen=True)
class AlertRecord:
    """One alert and where its delivery stands (a snapshot).

    Attributes:
        at: When it was raised, unix epoch seconds.
        kind: ``budget``, ``error_rate``, ``circuit`` or ``test`` (sent from Controls).
        key: The crossing key, its parts joined with ``|``.
        text: The human sentence (the payload's ``text``).
        details: The structured fields of the payload.
        status: ``queued``, ``retrying``, ``sent``, ``failed``, or ``not sent`` (no
            webhook configured, or another replica sent it).
        attempts: POSTs made so far.
        reason: Why it is retrying, failed or not sent; "" once sent.
    """

    at: float
    kind: str
    key: str
    text: str
    details: dict[str, Any] = field(default_factory=dict)
    status: str = QUEUED
    attempts: int = 0
    reason: str = ""


class _Undelivered(Exception):
    """One POST that did not deliver; ``retry`` says whether another attempt may help."""

    def __init__(self, reason: str, *, retry: bool, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry, self.retry_after_s = reason, retry, retry_after_s


def shown_url(url: str) -> str:
    """``url`` safe to show or log: scheme and host, the path masked (it may carry a token)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…" if parts.path.strip("/") or parts.query else f"{parts.scheme}://{host}{port}"


def _retry_after(value: str | None) -> float | None:
    """A Retry-After header (seconds or an HTTP date, RFC 9110 §10.2.3) in seconds, or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class AlertSender:
    """Posts alerts to one webhook from a background thread, each crossing once.

    Args:
        url: The webhook (``http(s)://``); None records alerts as ``not sent``.
        attempts: Most POSTs per alert (>= 1).
        timeout_s: Timeout of one POST, connect and read, seconds.
        backoff_s: First wait between attempts, seconds; doubled each time up to
            ``MAX_WAIT_S``.
        claim: ``claim(key) -> bool``, True when this process is the first to claim the
            crossing (a Redis ``SET NX``); None dedupes in this process only. Called on
            the sender's thread, never on the request path; an exception is logged and
            the alert sent anyway (a duplicate rather than a lost alert).
        transport: An ``httpx`` transport (tests); None uses the network.

    Example:
        >>> sender = AlertSender("https://hooks.slack.com/services/T/B/X")
        >>> sender.send("circuit", ("circuit", "demo", "open", "1"), "The demo backend is failing.")
        True
    """

    def __init__(self, url: str | None, *, attempts: int = 5, timeout_s: float = 5.0, backoff_s: float = 1.0,
                 claim: Callable[[str], bool] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url
        self.attempts = max(1, int(attempts))
        self.backoff_s = max(0.0, float(backoff_s))
        self._claim = claim
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._history: deque[AlertRecord] = deque(maxlen=HISTORY)
        self._queue: queue.Queue[AlertRecord | None] = queue.Queue(QUEUE_SIZE)
        self._busy = 0  # alerts queued or being posted
        self._idle = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._checks: list[Callable[[], object]] = []
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False, transport=transport,
                                    headers={"User-Agent": "blossom-dash alerts"})
        self._thread = threading.Thread(target=self._run, name="blossom-dash-alerts", daemon=True)
        self._thread.start()
        self._ticker: threading.Thread | None = None

    @property
    def shown_url(self) -> str:
        """The webhook with its path masked, or "" when none is set."""
        return shown_url(self.url) if self.url else ""

    # ----- raising alerts ----------------------------------------------------------------------

    def send(self, kind: str, key: Sequence[str] | str, text: str, details: dict[str, Any] | None = None) -> bool:
        """Queue one alert unless its crossing was already raised; returns whether it was queued.

        Args:
            kind: ``budget``, ``error_rate``, ``circuit`` or ``test`` (sent from Controls).
            key: The crossing key (its parts, or already joined with ``|``).
            text: One sentence for people (Slack's ``text``).
            details: JSON-serialisable fields sent beside it.

        Never raises and never blocks: a full queue drops the alert (listed as failed).
        """
        joined = key if isinstance(key, str) else "|".join(str(k) for k in key)
        record = AlertRecord(time.time(), kind, joined, text, dict(details or {}))
        with self._lock:
            if joined in self._seen:
                return False
            self._seen[joined] = None
            while len(self._seen) > MAX_KEYS:
                self._seen.popitem(last=False)
            if self.url is None or self._stop.is_set():
                why = "no webhook is set (BLOSSOM_DASH_ALERT_WEBHOOK)" if self.url is None else "the service stopped"
                self._history.append(replace(record, status=NOT_SENT, reason=why))
                return True
            self._history.append(record)
            self._busy += 1
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._update(record, status=FAILED, reason=f"dropped: {QUEUE_SIZE} alerts were already waiting")
            self._done()
            return False
        return True

    def recent(self, n: int = HISTORY) -> list[AlertRecord]:
        """The last ``n`` alerts (at most ``HISTORY``), newest first."""
        with self._lock:
            return list(self._history)[::-1][:n]

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued alert is sent or failed; returns False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # ----- periodic checks (the error rate) --------------------------------------------------------

    def every(self, check: Callable[[], object], interval_s: float = CHECK_S) -> None:
        """Run ``check()`` every ``interval_s`` seconds on one ticker thread (its errors are logged)."""
        with self._lock:
            self._checks.append(check)
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, args=(interval_s,),
                                                name="blossom-dash-alert-checks", daemon=True)
                self._ticker.start()

    def _tick(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            for check in list(self._checks):
                try:
                    check()
                except Exception:
                    log.exception("an alert check failed")

    # ----- delivery -----------------------------------------------------------------------------

    def _update(self, record: AlertRecord, **changes: Any) -> AlertRecord:
        new = replace(record, **changes)
        with self._lock:
            for i, old in enumerate(self._history):
                if old.key == record.key and old.at == record.at:
                    self._history[i] = new
                    break
        return new

    def _done(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            try:
                if self._stop.is_set():
                    self._update(record, status=FAILED, reason="the service stopped before it was sent")
                else:
                    self._deliver(record)
            except Exception:  # never let one alert stop the thread
                log.exception("alert %s could not be delivered", record.key)
                self._update(record, status=FAILED, reason="an internal error (see the log)")
            finally:
                self._done()

    def _claimed(self, record: AlertRecord) -> bool:
        if self._claim is None:
            return True
        try:
            return bool(self._claim(record.key))
        except Exception as exc:  # noqa: BLE001 - a Redis failure: send, a duplicate beats a lost alert
            log.warning("alert dedupe across replicas failed (%s); sending %s anyway", type(exc).__name__, record.key)
            return True

    def _post(self, record: AlertRecord) -> None:
        """One POST; raises ``_Undelivered`` unless the receiver answered 2xx."""
        assert self.url is not None
        payload = {"text": record.text, "kind": record.kind, "key": record.key, "at": _iso(record.at),
                   "details": record.details}
        try:
            response = self._client.post(self.url, json=payload)
        except httpx.TimeoutException as exc:
            raise _Undelivered(f"no answer within {self._client.timeout.read} s", retry=True) from exc
        except httpx.HTTPError as exc:
            raise _Undelivered(f"could not connect ({type(exc).__name__})", retry=True) from exc
        code = response.status_code
        if 200 <= code < 300:
            return
        wait = _retry_after(response.headers.get("Retry-After"))
        if code == 429 or code >= 500:
            raise _Undelivered(f"the webhook answered {code}", retry=True, retry_after_s=wait)
        raise _Undelivered(f"the webhook answered {code}: check the URL and its token", retry=False)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Undelivered) and exc.retry_after_s is not None:
            return min(exc.retry_after_s, MAX_WAIT_S)
        return float(wait_exponential(multiplier=self.backoff_s, max=MAX_WAIT_S)(state))

    def _deliver(self, record: AlertRecord) -> None:
        if not self._claimed(record):
            self._update(record, status=NOT_SENT, reason="another replica sent it")
            return
        current = [record]

        def attempt() -> None:
            current[0] = self._update(current[0], attempts=current[0].attempts + 1)
            self._post(current[0])

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            current[0] = self._update(current[0], status=RETRYING, reason=getattr(exc, "reason", str(exc)))

        retrying = Retrying(stop=stop_after_attempt(self.attempts), wait=self._wait,
                            retry=retry_if_exception(lambda e: isinstance(e, _Undelivered) and e.retry),
                            before_sleep=before_sleep, sleep=self._sleep, reraise=True)
        try:
            retrying(attempt)
        except _Undelivered as exc:
            tries = current[0].attempts
            self._update(current[0], status=FAILED, reason=f"{exc.reason} (after {tries} attempt{'s' * (tries > 1)})")
            log.warning("alert %s not delivered to %s: %s", record.key, self.shown_url, exc.reason)
            return
        self._update(current[0], status=SENT, reason="")

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Undelivered("the service stopped before it was sent", retry=False)

    def close(self) -> None:
        """Stop the threads; alerts still waiting are marked failed."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=5)
        self._client.close()


# ----- triggers ------------------------------------------------------------------------------------


class ErrorRateWatch:
    """"Error rate over the threshold in the last 5 minutes", raised once per crossing.

    The rate is ``error`` events over all requests in the window but those refused by our
    own rules (``rate_limited``, ``rejected``), as the Monitor's KPI counts it
    (``analytics.kpis``). Up: at least ``min_requests`` requests and a rate at or over
    ``threshold``; then one ``recovered`` alert once the rate is under it again (an
    empty window is a rate of 0). Read from the collector's in-memory window
    (``metrics_window`` events): per process, and over fewer than 5 minutes when more
    events than that arrived in them.

    Args:
        events: Returns the recent events (``MetricsCollector.recent``).
        sender: Where the alerts go.
        threshold: A fraction in (0, 1].
        min_requests: Fewest requests in the window for an "up" alert.
        window_s: The window, seconds.
        clock: Wall clock, unix seconds (inject a fake one in tests).
    """

    def __init__(self, events: Callable[[], Sequence[Event]], sender: AlertSender, *, threshold: float = 0.2,
                 min_requests: int = 20, window_s: float = ERROR_WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._events, self._sender = events, sender
        self.threshold, self.min_requests, self.window_s = threshold, max(1, min_requests), window_s
        self._clock = clock
        self._since: float | None = None  # when the current crossing began
        self._lock = threading.Lock()

    def rate(self) -> tuple[int, int]:
        """``(errors, requests)`` in the window."""
        start = self._clock() - self.window_s
        errors = requests = 0
        for event in self._events():
            if event.ts >= start and event.outcome not in ("rate_limited", "rejected"):
                requests += 1
                errors += event.outcome == "error"
        return errors, requests

    def check(self) -> str | None:
        """Evaluate now; returns ``"up"`` or ``"recovered"`` when it raised that alert, else None."""
        errors, requests = self.rate()
        rate = errors / requests if requests else 0.0
        minutes = f"{self.window_s / 60:g} minutes"
        details = {"errors": errors, "requests": requests, "error_rate": round(rate, 4),
                   "threshold": self.threshold, "window_s": self.window_s}
        with self._lock:
            if self._since is None and requests >= self.min_requests and rate >= self.threshold:
                self._since = self._clock()
                key = ("error_rate", f"{self.window_s:g}s", f"{self.threshold:g}", _iso(self._since))
                self._sender.send("error_rate", key, (
                    f"Error rate {rate:.0%} over the last {minutes}: {errors} of {requests} requests failed "
                    f"(alert threshold {self.threshold:.0%})."), details)
                return "up"
            if self._since is not None and rate < self.threshold:
                key = ("error_rate", f"{self.window_s:g}s", f"{self.threshold:g}", _iso(self._since), "recovered")
                self._since = None
                self._sender.send("error_rate", key, (
                    f"Error rate recovered: {rate:.0%} over the last {minutes} ({errors} of {requests} requests "
                    f"failed; threshold {self.threshold:.0%})."), details)
                return "recovered"
        return None


def _amount(value: Decimal | int) -> str:
    """Pollen up to 6 decimals (trailing zeros dropped), or a request count."""
    if isinstance(value, int):
        return str(value)
    text = f"{value.quantize(Decimal('0.000001')):f}" if abs(value) >= Decimal("0.000001") else f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _period_bounds(period: str, ts: float) -> tuple[str, str]:
    """The UTC calendar period holding ``ts`` (``2026-12-01`` / ``2026-12``, as
    ``policies.budget.period_key``) and when it ends, ISO 8601 UTC."""
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    if period == "day":
        end = d.replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
        return d.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%dT%H:%MZ")
    nxt = d.replace(year=d.year + 1, month=1) if d.month == 12 else d.replace(month=d.month + 1)
    end = nxt.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return d.strftime("%Y-%m"), end.strftime("%Y-%m-%dT%H:%MZ")


def budget_listener(sender: AlertSender, *, clock: Callable[[], float] = time.time
                    ) -> Callable[[str, str, str, float, Decimal | int, Decimal | int], None]:
    """A ``policies.budget.BudgetLedger.on_crossing`` hook raising "budget 80 % / 100 %" alerts.

    Returns:
        ``hook(scope, who, period, fraction, spent, budget)`` (the ledger's
        ``OnCrossing``: ``scope`` "user" or "team", ``period`` "day" or "month",
        ``fraction`` 0.8 or 1.0, ``spent`` and ``budget`` in pollen as ``Decimal`` or in
        requests as ``int``). The crossing key is ``budget|<scope>:<who>|<period>|
        <UTC period>|<80%|100%>``, the same on every replica, so with Redis one
        replica sends it.
    """

    def hook(scope: str, who: str, period: str, fraction: float, spent: Decimal | int,
             budget: Decimal | int) -> None:
        pkey, resets = _period_bounds(period, clock())
        pct = f"{round(fraction * 100)}%"
        unit = "requests" if isinstance(budget, int) else "pollen"
        whose = "the team" if scope == "team" else who
        daily = "daily" if period == "day" else "monthly"
        state = "has used up" if fraction >= 1 else f"has used {round(fraction * 100)} % of"
        text = (f"Budget: {whose} {state} {'its' if scope == 'team' else 'their'} {daily} budget "
                f"({_amount(spent)} of {_amount(budget)} {unit}); it resets at {resets}.")
        if fraction >= 1:
            text += " Requests are refused until then." if scope == "team" else \
                f" {who}'s requests are refused until then."
        sender.send("budget", ("budget", f"{scope}:{who}", period, pkey, pct), text, {
            "scope": scope, "who": who, "period": period, "period_key": pkey, "threshold": pct,
            "spent": _amount(spent), "budget": _amount(budget), "unit": unit, "resets_at": resets})

    return hook


def circuit_listener(sender: AlertSender) -> Callable[[str, str, str], None]:
    """A ``CircuitBreaker`` transition listener raising "open" and "closed" alerts.

    Returns:
        ``listener(where, old, new)``: closed -> open raises "circuit open"; a return to
        closed raises "closed". Open <-> half-open (probes) raise nothing. The crossing
        key carries the time the circuit opened: each replica has its own breaker, so
        each replica's opening is its own alert.
    """
    opened: dict[str, float] = {}
    count: dict[str, int] = {}
    lock = threading.Lock()

    def listener(where: str, old: str, new: str) -> None:
        with lock:
            if new == "open" and old == "closed":
                at = opened[where] = time.time()
                count[where] = n = count.get(where, 0) + 1
                sender.send("circuit", ("circuit", where, "open", _iso(at), str(n)),
                            f"Circuit breaker open: {where} is failing, requests to it are paused.",
                            {"backend": where, "circuit": "open"})
            elif new == "closed" and old != "closed":
                at = opened.pop(where, time.time())
                sender.send("circuit", ("circuit", where, "closed", _iso(at), str(count.get(where, 0))),
                            f"Circuit breaker closed: {where} answers again.",
                            {"backend": where, "circuit": "closed", "open_s": round(time.time() - at, 1)})

    return listener


__all__ = [
    "CHECK_S",
    "ERROR_WINDOW_S",
    "FAILED",
    "HISTORY",
    "NOT_SENT",
    "QUEUED",
    "RETRYING",
    "SENT",
    "AlertRecord",
    "AlertSender",
    "ErrorRateWatch",
    "budget_listener",
    "circuit_listener",
    "shown_url",
]
