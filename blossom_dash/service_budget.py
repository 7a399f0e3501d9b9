"""Spending budgets in ``BlossomService``: build the ledger, restore it at start, and the
methods Controls and the sidebar call (``configure_budgets``, ``budget_status``).

The rules are ``policies.budget``'s; the gateway reserves and settles (``Gateway._admit``).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import replace
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .errors import DashError, InvalidRequest, PermissionDenied
from .gateway import Caller
from .policies.budget import BudgetLedger, Budgets, BudgetStatus, period_end
from .settings import Settings
from .telemetry.budget_usage import spent_by_user
from .telemetry.store import UsageStore

log = logging.getLogger("blossom_dash")


def make_ledger(s: Settings) -> BudgetLedger:
    """The budget ledger of ``s``: in Redis, shared by every replica, when ``redis_url`` is
    set (``policies.shared_budget``); in this process otherwise. Redis need not be up."""
    budgets = Budgets.from_settings(s)
    if s.redis_url is None:
        return BudgetLedger(budgets)
    from .policies.shared_budget import SharedBudgetLedger

    return SharedBudgetLedger(s.redis_url.get_secret_value(), budgets)


def restore_ledger(ledger: BudgetLedger, store: UsageStore, *, now: float | None = None,
                   replace: bool = False) -> None:
    """Give the ledger what the usage store says was spent this UTC day and month: at start
    for an in-process ledger (a restart keeps the counters), and with ``replace`` when
    budgets are set, for either (nothing is counted while no budget is set; the store lags
    the requests by at most a quarter second). Logged, not raised, when the store cannot be
    read or Redis does not answer: the counters then stay as they were."""
    if ledger.shared and not replace:
        return
    now = time.time() if now is None else now
    day_start = period_end("day", now) - 86400
    month_start = _month_start(now)
    try:
        rows = [(u, "day", spent, n) for u, spent, n in spent_by_user(store, day_start)]
        rows += [(u, "month", spent, n) for u, spent, n in spent_by_user(store, month_start)]
        ledger.restore(rows, replace=replace)
    except (SQLAlchemyError, DashError, OSError):
        log.exception("this period's spending could not be read from the usage store into the budgets")


def _month_start(now: float) -> float:
    d = dt.datetime.fromtimestamp(now, dt.UTC)
    return d.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


class BudgetMethods:
    """Budgets; mixed into ``BlossomService`` (which provides ``gateway`` and ``_audit``)."""

    gateway: Any
    store: UsageStore

    def _audit(self, caller: Caller, action: str, old: Any = None, new: Any = None) -> None:  # AccessMethods
        raise NotImplementedError

    @staticmethod
    def _admin(caller: Caller | None, what: str) -> Caller:  # AccessMethods
        raise NotImplementedError

    def flush_events(self) -> int:  # AccessMethods
        raise NotImplementedError

    @property
    def _ledger(self) -> BudgetLedger:
        ledger: BudgetLedger = self.gateway.budget
        return ledger

    def budgets(self) -> Budgets:
        """The budgets in force (pollen per UTC day / month, per user and team; ``None``: none)."""
        return self._ledger.budgets

    def configure_budgets(self, caller: Caller | None = None, **changes: Any) -> Budgets:
        """Change the budgets for everyone (admin, audited); spending so far this period counts.

        Args:
            caller: Who asks (the process's owner when None).
            **changes: ``Budgets`` fields to change (``user_day=Decimal("1")``,
                ``team_month_requests=500``); ``None`` removes that budget; fields not
                given keep their value.

        Setting budgets where none was counts this UTC day's and month's spending
        so far (read from the usage store: nothing is counted while no budget is set).

        Returns:
            The budgets now in force.

        Raises:
            PermissionDenied: the caller is not an admin.
            InvalidRequest: an unknown field or a value that is not an amount >= 0.
            SharedStateUnavailable: with Redis, it did not answer; nothing changed.
        """
        caller = self._admin(caller, "change the budgets")
        old = self._ledger.budgets
        try:
            new = replace(old, **changes)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"Budgets not applied: {exc}.",
                                 "Give pollen as a number of at least 0 (e.g. 0.5), requests as a whole number, "
                                 "or leave a budget empty for none.") from None
        self._ledger.configure(new)
        if new.any and not old.any:  # nothing is counted while no budget is set: take the store's spending
            self.flush_events()
            restore_ledger(self._ledger, self.store, replace=True)
        self._audit(caller, "configure_budgets", old.as_dict(), new.as_dict())
        return self._ledger.budgets

    def budget_status(self, user: str, *, caller: Caller | None = None) -> BudgetStatus:
        """The budgets set that apply to ``user`` (theirs and the team's) with what is spent.

        A member or viewer reads only their own; an admin anyone's.

        Raises:
            PermissionDenied: a non-admin asked about someone else.
        """
        if caller is not None and not caller.is_admin and caller.user != user:
            raise PermissionDenied("Only an admin may read another user's budget.",
                                   "Your own budget is in the sidebar.")
        return self._ledger.status(user)


__all__ = ["BudgetMethods", "make_ledger", "restore_ledger"]
