"""Whether a comparison's N requests can all be admitted now, before any is sent.

A comparison is N requests at once (one per model). Sending them into a window that
holds fewer than N slots spends the slots left on answers that cannot be compared,
shows the same refusal in every other column and stores an empty comparison. So the
service asks first, from the windows' and budgets' state (read only: no slot and no
pollen is taken), and refuses the whole comparison with one message when it cannot be
covered. The gateway still admits each request on its own (another tab may take a
slot between the check and the send); this is the check a person sees.
"""

from __future__ import annotations

from ..errors import BudgetExceeded, DashError, RateLimited
from ..policies.budget import BudgetStatus
from ..policies.ratelimit import LimitStatus

#: A full window frees its last slot at most this long after the request that took it.
WINDOW_S = 60.0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def quota_refusal(needed: int, status: LimitStatus, *, kiosk_rpm: int | None = None,
                  budget: BudgetStatus | None = None) -> DashError | None:
    """The refusal of a comparison that needs ``needed`` requests now, or None when they fit.

    Args:
        needed: Requests the comparison sends (one per model).
        status: The caller's and the global rate-limit windows (``RateLimiter.status``).
        kiosk_rpm: The caller's own lower limit (a kiosk visitor), None for a member.
        budget: The caller's budgets (``BudgetLedger.status``); None or no lines when no
            budget is set.

    Returns:
        None when every request fits; else a ``RateLimited`` (scope ``"user"`` or
        ``"global"``; ``retry_after_s``: until the window's next slot frees, which is
        when to look again; the message says how many are needed and how many are left,
        or that the limit itself is below ``needed``)
        or a ``BudgetExceeded`` (a request budget with fewer than ``needed`` left, or a
        pollen budget used up; ``retry_after_s``: until it resets, UTC).
    """
    if status.unavailable:
        return RateLimited(f"The rate-limit windows cannot be read: {status.unavailable}",
                           "Nothing was sent. Try again in a moment.", retry_after_s=max(status.user.reset_in_s, 1.0),
                           scope="user", status_code=None)
    user_left = status.user.remaining
    limit = status.user.limit
    if kiosk_rpm is not None and kiosk_rpm < limit:
        limit = kiosk_rpm
        user_left = min(user_left, max(0, kiosk_rpm - status.user.used))
    for left, window, scope, who in ((status.global_.remaining, status.global_, "global", "all users together have"),
                                     (user_left, status.user, "user", "you have")):
        if left >= needed:
            continue
        per_minute = limit if scope == "user" else window.limit
        if needed > per_minute:
            return RateLimited(
                f"This comparison needs {_plural(needed, 'request')} (one per model); the limit is {per_minute} "
                "per minute, so it can never be sent at once. Nothing was sent.",
                f"Compare at most {per_minute} models, or raise the limit on the Controls page.",
                retry_after_s=WINDOW_S, scope=scope, status_code=None)
        wait = window.reset_in_s if window.reset_in_s > 0 else WINDOW_S
        return RateLimited(
            f"This comparison needs {_plural(needed, 'request')} (one per model); {who} {left} of {per_minute} "
            "per minute left. Nothing was sent.",
            f"The next slot frees in {wait:.0f} s; all {needed} are free within {WINDOW_S:.0f} s. "
            "Or compare fewer models.",
            retry_after_s=wait, scope=scope, status_code=None)
    for line in budget.lines if budget is not None else ():
        whose = "your" if line.scope == "user" else "the team's"
        span = "daily" if line.period == "day" else "monthly"
        if line.request_budget is not None and line.requests + needed > line.request_budget:
            left = max(0, line.request_budget - line.requests)
            return BudgetExceeded(
                f"This comparison needs {_plural(needed, 'request')}; {whose} {span} budget has {left} of "
                f"{line.request_budget} left. Nothing was sent.",
                "Compare fewer models, or wait until the budget resets (UTC).",
                scope=line.scope, period=line.period, retry_after_s=line.resets_in_s)
        if line.budget is not None and line.spent + line.reserved >= line.budget:
            return BudgetExceeded(
                f"{whose.capitalize()} {span} budget of {line.budget} pollen is used up. Nothing was sent.",
                "Wait until the budget resets (UTC), or ask an admin to raise it.",
                scope=line.scope, period=line.period, retry_after_s=line.resets_in_s)
    return None


__all__ = ["WINDOW_S", "quota_refusal"]
