"""Batch's view of one job's state: progress, counts, ETA and what it is waiting for."""

from __future__ import annotations

import streamlit as st

from ..features.batch import BatchStatus
from ..features.batch_cost import BatchEstimate
from ..pricing import format_cost


def _duration(seconds: float | None) -> str:
    """``87 s``, ``12 min``, ``1.6 h``; ``—`` when unknown."""
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


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


def render_status(status: BatchStatus) -> None:
    """The job's progress bar, Done/Failed/Remaining/ETA, and a line on why it waits or how it ended."""
    settled = status.done + status.failed
    st.progress(settled / status.total if status.total else 1.0,
                text=f"{settled:,} of {status.total:,} rows" + (f" · {status.running} running" if status.running
                                                                 else ""))
    k = st.columns(4)
    k[0].metric("Done", f"{status.done:,}")
    k[1].metric("Failed", f"{status.failed:,}")
    k[2].metric("Remaining", f"{status.remaining:,}")
    k[3].metric("ETA", _duration(status.eta_s) if status.active else "—")
    if status.waiting_s > 0:
        st.info(f"Waiting for {status.wait_reason}: next row in {_duration(status.waiting_s)}. Rows wait for the "
                "window instead of failing; an admin can raise the limit on the Controls page.", icon="⏳")
    elif status.status == "finished":
        st.success(f"Finished: {status.done:,} answered, {status.failed:,} failed.", icon="✅")
    elif status.status == "interrupted":
        st.warning(f"Interrupted: the server holding your session's API key for this job stopped (the key is "
                   f"never stored, so no other server can carry it on). {settled:,} finished rows are kept; "
                   f"resume runs the other {status.remaining + status.cancelled:,}.", icon="⏸️")
    elif status.status == "cancelled":
        st.warning(f"Cancelled: {status.cancelled:,} rows were not run.", icon="⏹️")
