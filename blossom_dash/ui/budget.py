"""Spending budgets on screen: the sidebar's line per budget (a warning from 80 %), and
Controls' budget table and form (admins change them; everyone sees theirs).

The rules are ``policies.budget``'s; the service refuses a non-admin whatever this draws.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import pandas as pd
import streamlit as st

from ..gateway import Caller
from ..policies.budget import BudgetLine, BudgetStatus, pollen
from ..service import BlossomService
from .feedback import guard

#: The form's fields: (Budgets field, label).
_FIELDS = (("user_day", "Per user, per day"), ("user_month", "Per user, per month"),
           ("team_day", "Team, per day"), ("team_month", "Team, per month"))


def line_words(line: BudgetLine) -> str:
    """``"Your daily budget: 0.8 of 1 pollen (80 %), resets in 4 h 30 min"``."""
    whose = "Your" if line.scope == "user" else "The team's"
    span = "daily" if line.period == "day" else "monthly"
    used = []
    if line.budget is not None:
        used.append(f"{pollen(line.spent + line.reserved)} of {pollen(line.budget)} pollen")
    if line.request_budget is not None:
        used.append(f"{line.requests:,} of {line.request_budget:,} requests")
    hours = line.resets_in_s / 3600
    resets = f"{hours:.0f} h" if hours >= 1 else f"{line.resets_in_s / 60:.0f} min"
    return f"{whose} {span} budget: {' · '.join(used)} ({line.fraction:.0%}), resets in {resets} (UTC)"


def render_budget_status(status: BudgetStatus, *, quiet: bool = False) -> None:
    """One line per budget: an error at 100 %, a warning from 80 %, else a caption (none when ``quiet``)."""
    if status.unavailable:
        st.warning(f"{status.unavailable} Budgets cannot be read; requests are refused until it answers.", icon="🔌")
        return
    for line in status.lines:
        if line.fraction >= 1:
            st.error(line_words(line) + ". Requests are refused until it resets.", icon="⛔")
        elif line.warn:
            st.warning(line_words(line) + ".", icon="💸")
        elif not quiet:
            st.caption(line_words(line))


def render_budget_sidebar(service: BlossomService, caller: Caller) -> None:
    """The sidebar's budget lines for ``caller`` (theirs and the team's); nothing when none is set."""
    with guard("reading your budget"):
        render_budget_status(service.budget_status(caller.user, caller=caller))


def render_batch_headroom(service: BlossomService, caller: Caller, total: Decimal | None) -> None:
    """Beside a batch's estimated cost (``total`` pollen; None: unpriced): the tightest pollen
    budget's room left, and that a job over it pauses rather than fails. Nothing without one."""
    with guard("reading your budget"):
        room = [(line.budget - line.spent - line.reserved, line)
                for line in service.budget_status(caller.user, caller=caller).lines if line.budget is not None]
        if not room or total is None:
            return
        left, line = min(room, key=lambda item: item[0])
        whose = "your" if line.scope == "user" else "the team's"
        span = "daily" if line.period == "day" else "monthly"
        if total > left:
            st.warning(f"The estimate is more than {whose} {span} budget has left ({pollen(max(left, Decimal(0)))} "
                       "pollen): the job pauses when the budget runs out and goes on when it resets or an admin "
                       "raises it; no row fails on it.", icon="💸")
        else:
            st.caption(f"Within {whose} {span} budget: {pollen(left)} pollen left.")


def _parse(text: str, *, whole: bool, label: str) -> Decimal | int | None:
    """An input box's value: None when empty; ValueError in words when not a number >= 0."""
    text = text.strip().replace(",", "")
    if not text:
        return None
    try:
        value = int(text) if whole else Decimal(text)
    except (ValueError, InvalidOperation):
        raise ValueError(f"{label}: {text!r} is not a {'whole number' if whole else 'number'}") from None
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"{label}: {text!r} is not a number")
    if value < 0:
        raise ValueError(f"{label}: {text!r} must be at least 0")
    return value


def budgets_ui(service: BlossomService, caller: Caller) -> None:
    """Controls' budgets: the caller's status, the budgets in force, and for admins the form."""
    st.subheader("Budgets")
    st.caption("Spending limits in pollen (and optionally in requests), per UTC calendar day and month. A request "
               "reserves its estimated cost before it is sent and settles at its real cost; over budget it is "
               "refused, and a batch waits. Unpriced models count no pollen.")
    budgets = service.budgets()
    render_budget_status(service.budget_status(caller.user, caller=caller))
    rows = [{"budget": label, "pollen": "—" if (p := getattr(budgets, name)) is None else pollen(p),
             "requests": "—" if (r := getattr(budgets, f"{name}_requests")) is None else f"{r:,}"}
            for name, label in _FIELDS]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="controls_budgets_table",
                 column_config={"budget": "Budget", "pollen": "Pollen", "requests": "Requests"})
    if not caller.is_admin:
        st.caption("An admin sets the budgets.")
        return
    with st.form("controls_budgets_form"):
        st.caption("Leave a box empty for no budget.")
        values: dict[str, str] = {}
        for name, label in _FIELDS:
            c1, c2 = st.columns(2)
            p, r = getattr(budgets, name), getattr(budgets, f"{name}_requests")
            values[name] = c1.text_input(f"{label} (pollen)", "" if p is None else pollen(p),
                                         key=f"controls_budget_{name}")
            values[f"{name}_requests"] = c2.text_input(f"{label} (requests)", "" if r is None else str(r),
                                                       key=f"controls_budget_{name}_requests")
        if st.form_submit_button("Apply budgets", type="primary"):
            try:
                changes = {k: _parse(v, whole=k.endswith("_requests"), label=k.replace("_", " ")) for k, v in
                           values.items()}
            except ValueError as exc:
                st.error(f"Budgets not applied: {exc}.", icon="⚠️")
                st.caption("Give pollen as a number such as 0.5, requests as a whole number, or leave it empty.")
                return
            applied = False
            with guard("applying the budgets"):
                service.configure_budgets(caller, **changes)
                applied = True
            if applied:
                st.toast("Budgets applied. What was spent this period still counts.", icon="✅")
                st.rerun()


__all__ = ["budgets_ui", "line_words", "render_batch_headroom", "render_budget_sidebar", "render_budget_status"]
