"""Who may do what in ``BlossomService``: roles, the audit log, and whose usage a caller reads.

A base class of ``service_features.FeatureMethods`` (and so of ``BlossomService``): every
team-wide action calls ``_admin`` first; admin actions are recorded with ``_audit``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

import pandas as pd

from .errors import DashError, InvalidRequest, PermissionDenied, StorageUnavailable
from .gateway import Caller
from .policies.cache import ResponseCache
from .settings import Settings
from .telemetry import analytics, spend
from .telemetry.alerts import AlertSender, ErrorRateWatch, budget_listener, circuit_listener
from .telemetry.audit import AuditLog
from .telemetry.collector import MetricsCollector, StorageStatus
from .telemetry.model_facts import PICKER_KINDS, ModelFacts, model_facts
from .telemetry.shared import SharedResults
from .telemetry.store import UsageStore, mask_url

log = logging.getLogger("blossom_dash")
#: The read-only ``telemetry.analytics`` functions pages may run (``BlossomService.monitor``).
MONITOR_QUERIES = ("snapshot", "headline", "request_log", "request_detail", "filter_options", "count_older_than",
                   "export_log", "kpis", "spend", "conversation")
#: The Monitor reads one result of which may serve every viewer of the process for a
#: refresh interval (``monitor(..., every_s=...)``): the team's aggregates, which are the
#: same whoever asks (counts per user, model and outcome; no prompt, no request id).
SHARED_QUERIES = ("snapshot", "headline", "kpis", "spend")
#: Monitor queries outside ``telemetry.analytics``, by name.
_QUERY_FUNCTIONS: dict[str, Any] = {"spend": spend.spend}
#: How long the pickers' model facts (``model_facts``) are shared before they are read again, seconds.
FACTS_EVERY_S = 30.0
#: Shared Monitor results kept at most (one per query, range, filters and interval).
SHARED_MAX_ENTRIES = 256


class AccessMethods:
    """Roles, audit and Monitor reads; mixed into ``BlossomService``."""

    settings: Settings
    cache: ResponseCache
    metrics: MetricsCollector
    store: UsageStore
    #: Why the usage database could not be used at start (history off), or None.
    history_off: StorageUnavailable | None = None
    _lock: threading.RLock
    _closed: bool

    def backend_info(self) -> dict[str, Any]:  # provided by BlossomService
        raise NotImplementedError

    # ----- who may do what --------------------------------------------------------------------

    def role_for(self, identity: str) -> str | None:
        """The role of a signed-in identity, or None when it may not use the app.

        ``local`` (local mode's one user) is an admin; an e-mail in ``admins`` is an
        admin; anyone else is a member when ``allowed_emails`` and ``allowed_domains``
        are both empty or one of them lists the e-mail or its domain; else None.
        """
        who = identity.strip().lower()
        if who == "local" or who in self.settings.admins:
            return "admin"
        s = self.settings
        if not s.allowed_emails and not s.allowed_domains:
            return "member"
        domain = who.rsplit("@", 1)[-1] if "@" in who else ""
        return "member" if who in s.allowed_emails or (domain and domain in s.allowed_domains) else None

    @staticmethod
    def _admin(caller: Caller | None, what: str) -> Caller:
        """``caller`` (the process's owner when None) if it is an admin.

        Raises:
            PermissionDenied: it is not.
        """
        caller = caller or Caller("local")
        if not caller.is_admin:
            raise PermissionDenied(f"Only an admin may {what}; you are signed in as a {caller.role}.",
                                   "Ask an admin of this dashboard (BLOSSOM_DASH_ADMINS) to do it.")
        return caller

    def _audit(self, caller: Caller, action: str, old: Any = None, new: Any = None) -> None:
        """Record an admin action; a failed write is logged, never raised (the action is done)."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            self._audit_log().record(caller.user, action, old, new)
        except SQLAlchemyError:
            log.exception("could not write the audit entry for %s by %s", action, caller.user)

    def _audit_log(self) -> AuditLog:
        with self._lock:
            audit = getattr(self, "_audit_store", None)
            if audit is None:
                audit = self._audit_store = AuditLog(self.store.engine)
            return audit

    def audit_entries(self, *, limit: int = 1000, caller: Caller | None = None) -> pd.DataFrame:
        """The newest admin actions (``telemetry.audit.COLUMNS``), newest first.

        Raises:
            PermissionDenied: the caller is not an admin.
        """
        self._admin(caller, "read the audit log")
        return self._audit_log().frame(limit)

    # ----- alerts (telemetry.alerts) --------------------------------------------------------------

    def _start_alerts(self) -> AlertSender:
        """The webhook sender, the error-rate check every ``alerts.CHECK_S``, the breaker
        listener and the budget ledger's ``on_crossing``; with Redis, each crossing is
        claimed there first (``SET NX``), so one replica sends it. Called once by
        ``__init__`` after the gateway is made."""
        s = self.settings
        claim = None
        if s.redis_url is not None:
            from .policies.shared import PREFIX, connect

            client = self._alert_redis = connect(s.redis_url.get_secret_value())

            def claim(key: str) -> bool:  # kept 40 days: longer than any budget period
                return bool(client.set(f"{PREFIX}:alert:{key}", "1", nx=True, ex=40 * 86400))

        url = s.alert_webhook.get_secret_value() if s.alert_webhook else None
        sender = self._alert_sender = AlertSender(url, attempts=s.alert_attempts, claim=claim)
        watch = ErrorRateWatch(lambda: self.metrics.recent(self.settings.metrics_window), sender,
                               threshold=s.alert_error_rate, min_requests=s.alert_min_requests)
        sender.every(watch.check)
        self._error_watch = watch
        if (gateway := getattr(self, "gateway", None)) is not None:
            gateway.breaker_listener = circuit_listener(sender)
            if (ledger := getattr(gateway, "budget", None)) is not None:  # policies.budget.BudgetLedger
                ledger.on_crossing = budget_listener(sender)
        return sender

    def alerts(self, caller: Caller | None = None) -> dict[str, Any]:
        """The last 50 alerts and where the webhook stands (Controls).

        Returns:
            ``{"webhook": masked URL or "", "alerts": [AlertRecord, ...] newest first}``.

        Raises:
            PermissionDenied: the caller is not an admin.
        """
        self._admin(caller, "read the alerts")
        sender: AlertSender | None = getattr(self, "_alert_sender", None)
        if sender is None:
            return {"webhook": "", "alerts": []}
        return {"webhook": sender.shown_url, "alerts": sender.recent()}

    def send_test_alert(self, caller: Caller | None = None) -> bool:
        """Send one "test" alert to the webhook now (an admin action, audited), to check
        the receiver; its delivery shows in ``alerts()``.

        Returns:
            Whether it was queued (False: no webhook is set, or the queue is full).

        Raises:
            PermissionDenied: the caller is not an admin.
        """
        caller = self._admin(caller, "send a test alert")
        sender: AlertSender | None = getattr(self, "_alert_sender", None)
        if sender is None or sender.url is None:
            return False
        at = time.time()
        queued = sender.send("test", ("test", caller.user, f"{at:.6f}"),
                             f"Test alert from blossom-dash, sent by {caller.user}.", {"by": caller.user})
        self._audit(caller, "send_test_alert", None, sender.shown_url)
        return queued

    def _stop_alerts(self) -> None:
        if (sender := getattr(self, "_alert_sender", None)) is not None:
            sender.close()
        if (client := getattr(self, "_alert_redis", None)) is not None:
            client.close()


    # ----- usage history (the Monitor page; SQL in telemetry.analytics) ----------------------

    def flush_events(self) -> int:
        """Move journaled events into the usage store now; returns how many."""
        return self.metrics.flush()

    def storage_status(self) -> StorageStatus:
        """Whether request history is being written, for the banner on every page.

        Returns:
            ``MetricsCollector.status()`` (``history`` ``"paused"`` while the store
            refuses writes, e.g. a full disk: requests are still answered and the events
            wait), or ``history="off"`` when the usage database could not be used at
            start (``history_off``: damaged, empty or read-only), with its reason and
            what to do; the service then keeps this run's history in a temporary
            database (``telemetry.temporary_store``).
        """
        status = self.metrics.status()
        if (off := self.history_off) is None:
            return status
        return dataclasses.replace(status, history="off", reason=off.message, hint=(
            f"{off.hint} Until then the app works without its history: this run's requests, chats, comparisons "
            "and batch jobs are kept in a temporary database that is deleted when the app stops."))

    @property
    def store_url(self) -> str:
        """The usage store's URL without its password (identifies it in page caches)."""
        return mask_url(self.store.url)

    def monitor(self, query: str, *args: Any, caller: Caller | None = None, every_s: float | None = None,
                **kwargs: Any) -> Any:
        """Run one read-only Monitor query of ``telemetry.analytics`` over the usage store.

        Everyone reads the team's aggregates; only an admin reads other people's
        requests: for anyone else the request log and its export hold their own
        requests only, another person's request detail is not found, and the
        ``spend`` per user holds their own row (``Spend.only_user``; the team's
        totals and per-model costs stay whole).

        With ``every_s``, one of ``SHARED_QUERIES`` is computed once per range,
        filters and interval for every caller of this process (``SharedResults``):
        the range is first moved forward to end on a multiple of ``every_s``
        (``MonitorQuery.rounded``), so viewers a moment apart ask the same thing, and
        the result is reused for ``every_s`` seconds from the moment its computation
        began, never longer; callers arriving during the computation wait for it.
        The result's ``query`` is the rounded one. A ``snapshot`` read this way takes
        its KPIs from the shared ``headline`` of the same query (the KPI row a page
        drew first). ``monitor_stats()`` counts the computations.

        Args:
            query: One of ``MONITOR_QUERIES`` (``snapshot``, ``headline``,
                ``request_log``, ``request_detail``, ``filter_options``,
                ``count_older_than``, ``export_log``, ``kpis``, ``conversation``
                (a context's requests: a member gets their own only); ``spend`` from
                ``telemetry.spend``).
            *args / **kwargs: That function's arguments after the store (a
                ``MonitorQuery`` first for all but ``request_detail`` and ``conversation``).
            caller: Who asks (None: the process's owner, an admin).
            every_s: The viewer's refresh interval in seconds, to share the result
                for; None (or a query outside ``SHARED_QUERIES``): read now, for this
                caller alone.

        Raises:
            InvalidRequest: ``query`` is not one of them.
        """
        if query not in MONITOR_QUERIES:
            raise InvalidRequest(f"{query!r} is not a Monitor query.", f"Use one of {', '.join(MONITOR_QUERIES)}.")
        caller = caller or Caller("local")
        if every_s and every_s > 0 and query in SHARED_QUERIES and args:
            result = self._shared_monitor(query, args[0].rounded(every_s), args[1:], kwargs, every_s)
            return result.only_user(caller.user) if query == "spend" and not caller.is_admin else result
        if not caller.is_admin and query in ("request_log", "export_log") and args:
            q = args[0]
            args = (dataclasses.replace(q, users=(caller.user,)), *args[1:])  # their own requests only
        if not caller.is_admin and query == "conversation":
            kwargs = {**kwargs, "user": caller.user}
        result = (_QUERY_FUNCTIONS.get(query) or getattr(analytics, query))(self.store, *args, **kwargs)
        if query == "spend" and not caller.is_admin:
            return result.only_user(caller.user)
        if query == "request_detail" and result is not None and not caller.is_admin and \
                result.get("user") != caller.user:
            return None  # another person's request: as if unknown
        return result

    def _shared_monitor(self, query: str, q: analytics.MonitorQuery, rest: tuple[Any, ...], kwargs: dict[str, Any],
                        every_s: float) -> Any:
        """``analytics.<query>(store, q, *rest, **kwargs)`` through the process's ``SharedResults``.

        The key holds no caller: ``SHARED_QUERIES`` read the same for everyone. A
        query that ever depends on who asks must not be in that list (or must put the
        caller's visibility in this key).
        """
        key = (query, q, rest, tuple(sorted(kwargs.items())), every_s)
        fn = _QUERY_FUNCTIONS.get(query) or getattr(analytics, query)
        if query == "snapshot" and "headline" not in kwargs:
            def compute() -> Any:
                head = self._shared_monitor("headline", q, (), {}, every_s)
                return fn(self.store, q, *rest, headline=head, **kwargs)
        else:
            def compute() -> Any:
                return fn(self.store, q, *rest, **kwargs)
        return self._monitor_results().get(key, every_s, compute, kind=query)

    def _monitor_results(self) -> SharedResults:
        with self._lock:
            shared = getattr(self, "_shared_results", None)
            if shared is None:
                shared = self._shared_results = SharedResults(SHARED_MAX_ENTRIES)
            return shared

    def monitor_stats(self) -> dict[str, Any]:
        """How the shared Monitor reads went since the service started (``SharedResults.stats``):
        ``computations`` by query (``snapshot``, ``headline``, ``kpis``), ``hits``,
        ``joined`` (callers that waited for another's computation) and ``entries``."""
        return self._monitor_results().stats()

    def model_facts(self, kind: str) -> dict[str, ModelFacts]:
        """Each model's success rate and p50 latency on the live backend over the last 24 h, for the pickers.

        From the usage store (every replica's requests; ``telemetry.model_facts``),
        computed once per kind for every caller of this process and kept
        ``FACTS_EVERY_S`` (30 s): a figure is at most that much behind. The same for
        everyone who asks (team-wide counts per model, no user).

        Args:
            kind: ``"text"`` (plain and streamed answers), ``"image"`` or ``"audio"``.

        Returns:
            ``{model: ModelFacts}`` for the models with an answered or failed request in
            the window; ``{}`` when the store cannot be read (the pickers then show no
            history; it is logged).

        Raises:
            InvalidRequest: ``kind`` is not one of them.
        """
        from sqlalchemy.exc import SQLAlchemyError

        if kind not in PICKER_KINDS:
            raise InvalidRequest(f"{kind!r} is not a model kind.", f"Use one of {', '.join(PICKER_KINDS)}.")
        with self._lock:
            shared = getattr(self, "_facts_results", None)
            if shared is None:
                shared = self._facts_results = SharedResults(4 * len(PICKER_KINDS))
        backend = str(self.backend_info()["name"])
        try:
            return shared.get((kind, backend), FACTS_EVERY_S, lambda: model_facts(self.store, kind, backend=backend),
                              kind=kind)
        except SQLAlchemyError:
            log.exception("could not read the model facts of %s models", kind)
            return {}

    def delete_events_older_than(self, cutoff_ts: float, *, caller: Caller | None = None) -> int:
        """Delete usage history before ``cutoff_ts`` (epoch s), rollups kept exact; returns how many
        (admin, audited).

        Raises:
            PermissionDenied: the caller is not an admin.
            DashError: the database refused the delete.
        """
        from sqlalchemy.exc import SQLAlchemyError

        caller = self._admin(caller, "delete usage history")
        self.metrics.flush()
        try:
            deleted = self.store.delete_older_than(cutoff_ts)
        except SQLAlchemyError as exc:
            raise DashError("Old history could not be deleted: the usage database refused.",
                            "Try again; if it repeats, check the database.") from exc
        self._monitor_results().clear()  # the next read counts without the deleted events
        self._audit(caller, "delete_history", {"before_ts": cutoff_ts}, {"events_deleted": deleted})
        return deleted

    def _owner_or_admin(self, caller: Caller | None, what: str, item_id: str, owner: str) -> None:
        """Let the owner through; an admin too, audited; raise ``PermissionDenied`` for anyone else."""
        caller = caller or Caller("local")
        if owner != caller.user:
            self._admin(caller, f"delete someone else's {what}")
            self._audit(caller, f"delete_{what.split()[-1]}", {"id": item_id, "owner": owner}, None)

