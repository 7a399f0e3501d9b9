"""Batch's view of one job's state: progress, counts, ETA and what it is waiting for."""

from __future__ import annotations

import streamlit as st

from ..features.batch import BatchStatus
from ..features.batch_cost import BatchEstimate
from ..policies.ratelimit import LimitStatus
from ..pricing import format_cost


def _duration(seconds: float | None) -> str:
    """``87 s``, ``12 min``, ``1.6 h``; ``—`` when unknown."""
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def batch_quota_text(status: LimitStatus) -> str:
    """How much of the user's per-user window their batch rows hold, in words; "" when none.

    Args:
        status: ``SessionHandle.rate_status()`` (its ``batch`` window and ``batch_share``).

    Returns:
        e.g. "Your batch is using 12 of your 30 requests/min (its share is 50%: at most 15;
        the rest is kept for your chats)."; "" when no batch row was sent in the last
        minute, or the windows could not be read.
    """
    if status.unavailable or status.batch is None or status.batch.used <= 0:
        return ""
    rest = "; the rest is kept for your chats" if status.batch.limit < status.user.limit else ""
    return (f"Your batch is using {status.batch.used:,} of your {status.user.limit:,} requests/min (its share is "
            f"{status.batch_share:.0%}: at most {status.batch.limit:,}{rest}).")


def render_estimate(estimate: BatchEstimate) -> None:
    """The job's estimated cost before it runs, how it was made, and the unpriced rows."""
    if estimate.priced_rows == 0 and estimate.unpriced_rows == 0:
        return
    models = ", ".join(estimate.unpriced_models[:5]) + ("…" if len(estimate.unpriced_models) > 5 else "")
    if estimate.priced_rows == 0:
        st.markdown(f"**Estimated cost: unpriced**: no price is known for {models} "
                    f"({estimate.unpriced_rows:,} rows).")
        return
    text = f"**Estimated cost: up to {format_cost(estimate.total)}** for {estimate.priced_rows:,} priced rows"
    if estimate.unpriced_rows:
        text += f"; {estimate.unpriced_rows:,} rows unpriced (no price for {models}), not in the estimate"
    st.markdown(text + ".")
    if estimate.typical_total is not None:
        st.markdown(f"Typically about **{format_cost(estimate.typical_total)}**: answers at each model's mean "
                    f"length over the last 7 days here ({estimate.typical_rows:,} of {estimate.priced_rows:,} "
                    "priced rows; the others at their max_tokens).")
    st.caption(estimate.method)


def render_status(status: BatchStatus, limits: LimitStatus | None = None) -> None:
    """The job's progress bar, Done/Failed/Remaining/ETA, a line on why it waits or how it ended, and
    (given the user's ``limits``) how much of their quota their batch holds."""
    settled = status.done + status.failed
    st.progress(settled / status.total if status.total else 1.0,
                text=f"{settled:,} of {status.total:,} rows" + (f" · {status.running} running" if status.running
                                                                 else ""))
    k = st.columns(4)
    k[0].metric("Done", f"{status.done:,}")
    k[1].metric("Failed", f"{status.failed:,}")
    k[2].metric("Remaining", f"{status.remaining:,}")
    paced = status.active and status.eta_paced and status.eta_s is not None
    pace = f"at most {status.pace_rpm:,} rows a minute for this batch" if status.pace_rpm else "the rate limit"
    k[3].metric("ETA", ("about " if paced else "") + _duration(status.eta_s) if status.active else "—",
                help=f"Paced by the rate limit: {pace}." if paced else
                "From the pace of the last rows (smoothed), never faster than the rate limit allows.")
    if status.waiting_s > 0:
        rest = (f"; about {_duration(status.eta_s)} for the {status.remaining:,} rows left"
                if status.eta_s is not None and status.remaining else "")
        st.info(f"Waiting for {status.wait_reason}: next row in {_duration(status.waiting_s)}{rest}. Rows wait "
                "for the window instead of failing; an admin can raise the limit on the Controls page.", icon="⏳")
    elif paced:
        st.caption(f"Paced by the rate limit ({pace}): about {_duration(status.eta_s)} left.")
    elif status.status == "finished":
        st.success(f"Finished: {status.done:,} answered, {status.failed:,} failed.", icon="✅")
    elif status.status == "interrupted":
        st.warning(f"Interrupted: the server holding your session's API key for this job stopped (the key is "
                   f"never stored, so no other server can carry it on). {settled:,} finished rows are kept; "
                   f"resume runs the other {status.remaining + status.cancelled:,}.", icon="⏸️")
    elif status.status == "cancelled":
        st.warning(f"Cancelled: {status.cancelled:,} rows were not run.", icon="⏹️")
    if limits is not None and (held := batch_quota_text(limits)):
        st.caption(held)
