"""What each user spent since a moment, from the usage store: where in-process budgets
start again after a restart (``policies.budget.BudgetLedger.restore``).

Spend is the cost of answered requests (outcome ``ok``; a cache hit spends nothing and
an unpriced request adds 0), the same figure the Monitor calls spend.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select

from .schema import DAY_S, events, rollup_user_day
from .store import UsageStore


def spent_by_user(store: UsageStore, since_ts: float) -> list[tuple[str, Decimal, int]]:
    """``(user, pollen spent, requests answered)`` per user since ``since_ts``.

    Args:
        store: The usage store.
        since_ts: Epoch seconds; a UTC day's start reads the exact per-day rollup
            (``rollup_user_day``) when the store keeps rollups, anything else the events.

    Returns:
        One row per user with answered requests, pollen as ``Decimal`` (exact).
    """
    if store.rollups and since_ts % DAY_S == 0:
        t = rollup_user_day
        query = (select(t.c.user, func.coalesce(func.sum(t.c.cost), 0), func.coalesce(func.sum(t.c.requests), 0))
                 .where(t.c.outcome == "ok", t.c.day >= int(since_ts // DAY_S)).group_by(t.c.user))
    else:
        e = events
        query = (select(e.c.user, func.coalesce(func.sum(e.c.cost), 0), func.count())
                 .where(e.c.outcome == "ok", e.c.ts >= since_ts).group_by(e.c.user))
    with store.engine.connect() as conn:
        return [(str(user), Decimal(spent or 0), int(n)) for user, spent, n in conn.execute(query)]


__all__ = ["spent_by_user"]
