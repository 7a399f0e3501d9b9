"""The Monitor's spend panel: the Spend KPI against the previous period, the cache's saving,
cost over time by model, cost by user, and the per-model table (``telemetry.spend``).

Amounts are pollen (``Decimal``, summed exactly in SQL and ``telemetry.spend``); floats
appear only in the charts' bar heights. Unpriced requests (their model has no price)
are counted and named, never drawn or summed as 0.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from ..errors import DashError
from ..telemetry.spend import SPEND_TABLES, Spend, export_spend
from . import charts
from .history import render_feedback_table
from .model_facts import price_text
from .monitor import download_buttons, format_duration
from .times import viewer_tz


def format_pollen(value: Decimal | None, *, unit: bool = True) -> str:
    """Pollen for people: ``"1.2345 pollen"``, ``"0.000136 pollen"``, ``"12,345 pollen"``;
    ``"unpriced"`` for None. ``unit=False`` leaves out " pollen" (a KPI whose label says it).

    Four decimals from 1 pollen up (whole pollen from 10,000 up), else four significant
    digits; never exponent notation, trailing zeros dropped below 1.
    """
    if value is None:
        return "unpriced"
    suffix = " pollen" if unit else ""
    if value == 0:
        return f"0{suffix}"
    size = abs(value)
    if size >= 10_000:
        return f"{value:,.0f}{suffix}"
    if size >= 1:
        return f"{value:,.4f}{suffix}"
    step = Decimal(1).scaleb(size.adjusted() - 3)  # four significant digits
    text = format(value.quantize(step).normalize(), "f")
    return f"{text}{suffix}"


def _kpi_pollen(total: Any) -> str:
    """A spend total (``telemetry.spend.Total``) for a KPI labelled in pollen: "0" when it
    counts no request at all (nothing was spent), "unpriced" when none of them had a price."""
    if total.cost is None and not total.priced and not total.unpriced:
        return "0"
    return format_pollen(total.cost, unit=False)


def _delta(current: Decimal | None, previous: Decimal | None) -> str | int | None:
    if current is None or previous is None:
        return None
    diff = current - previous
    if diff == 0:
        return 0
    return ("+" if diff > 0 else "-") + format_pollen(abs(diff))


def _unpriced_note(n: int, what: str) -> str:
    return f"{n:,} {what} unpriced (their model has no price): not in the figure." if n else ""


def spend_kpis(s: Spend, *, vs: str) -> None:
    """Spend (with its change against the previous period), the cache's saving, and the
    priced/unpriced counts behind them, in one row of four metrics."""
    cols = st.columns(4)
    prev = s.previous
    cols[0].metric("Spend (pollen)", _kpi_pollen(s.spend),
                   _delta(s.spend.cost, prev.cost) if prev.priced else None, delta_color="inverse",
                   delta_description=vs if prev.priced else None,
                   help=f"Cost of served requests: {s.spend.priced:,} priced. Prior period: "
                        f"{format_pollen(prev.cost)}. {_unpriced_note(s.spend.unpriced, 'served requests')}")
    cols[1].metric("Saved by cache (pollen)", _kpi_pollen(s.cache_saved),
                   help=f"What {s.cache_saved.priced:,} cache hits would have cost from the backend. "
                        f"{_unpriced_note(s.cache_saved.unpriced, 'hits')}")
    per = (s.spend.cost / s.spend.priced) if s.spend.cost is not None and s.spend.priced else None
    cols[2].metric("Per served request (pollen)", "—" if per is None and not s.spend.unpriced
                   else format_pollen(per, unit=False), help="Spend over the priced served requests.")
    cols[3].metric("Unpriced", f"{s.spend.unpriced:,}",
                   help="Served requests whose model has no price: counted here, never summed as 0.")
    if s.spend.unpriced:
        st.caption(f"{s.spend.unpriced:,} served requests unpriced: their models publish no price (set "
                   f"BLOSSOM_DASH_PRICES for them); the spend covers the other {s.spend.priced:,}.")


def price_labels(service: Any) -> Callable[[str], str]:
    """Model -> its price in words (``model_facts.price_text``, demo prices labelled)
    from the catalog (``service.model_info``, text, then image, then audio models);
    ``"unpriced"`` when no catalog knows a price for it."""

    def label(model: str) -> str:
        for kind in ("text", "image", "audio"):
            try:
                info = service.model_info(kind, model)
            except DashError:
                info = None
            if info is not None:
                demo = " (demo prices)" if getattr(info.price, "source", "") == "demo" else ""
                return price_text(info.price) + demo
        return "unpriced"

    return label


def feedback_labels(service: Any) -> dict[str, str]:
    """Model -> its blind-vote record on Compare (``leaderboard``, text and image, all
    time): ``"60 % won (6 of 10 votes)"``. The only per-model feedback the dashboard
    records; models never voted on are absent, and an unreadable board gives none."""
    out: dict[str, str] = {}
    for kind in ("text", "image"):
        try:
            board = service.leaderboard(kind)
        except DashError:
            continue
        for row in board.itertuples():
            if row.votes and row.model not in out:
                out[row.model] = f"{row.wins / row.votes:.0%} won ({row.wins:,} of {row.votes:,} votes)"
    return out


def _words(frame: Any, column: str) -> Any:
    """Costs as ``format_pollen`` text: a float column would show 1e-10 pollen as 0.000000."""
    return frame[column].map(format_pollen)


_FIGURES: weakref.WeakKeyDictionary[Spend, dict[str, dict[str, go.Figure]]] = weakref.WeakKeyDictionary()
_FIGURES_LOCK = threading.Lock()


def spend_figures(s: Spend, *, own_only: bool = False, tz: str = "UTC") -> dict[str, go.Figure]:
    """The panel's two figures (``cost``, ``cost_users``) for ``s``, built once per result
    and time zone (``tz``: the viewer's IANA zone, which the cost chart's time axis reads in).

    A shared ``spend`` read serves every admin viewer of the process, so its figures do
    too (as ``monitor.monitor_figures``); a member's copy (``Spend.only_user``) is its own
    result with its own figures. Read-only: ``st.plotly_chart`` copies a figure.
    """
    with _FIGURES_LOCK:
        by_zone = _FIGURES.setdefault(s, {})
        if (built := by_zone.get(tz)) is not None:
            return built
        q = s.query
        users = charts.cost_by_user(s.by_user)
        if own_only:
            users.update_layout(title_text="Your cost (members see their own)")
        built = by_zone[tz] = {
            "cost": charts.cost_by_model(s.over_time, bucket_s=s.bucket_s, span=(q.since_ts, q.until_ts), tz=tz),
            "cost_users": users}
        return built


def render_spend(s: Spend, *, vs: str, own_only: bool, price_of: Callable[[str], str] | None = None,
                 feedback: dict[str, str] | None = None) -> None:
    """The whole spend panel for ``s`` (``BlossomService.monitor("spend", ...)``).

    Args:
        s: The spend result.
        vs: The previous period's label, as the KPI row's ("vs prior 1 h").
        own_only: The caller is a member: the per-user chart holds their own row only.
        price_of: Model -> its price in words (the catalog's), for the table's price column.
        feedback: Model -> its Compare vote record (``feedback_labels``), where present.
    """
    st.subheader("Spend")
    spend_kpis(s, vs=vs)
    figures = spend_figures(s, own_only=own_only, tz=str(viewer_tz()))
    left, right = st.columns(2)
    left.plotly_chart(figures["cost"], key="monitor_chart_cost")
    right.plotly_chart(figures["cost_users"], key="monitor_chart_cost_users")
    table = s.by_model
    if table.empty:
        st.info("No requests in this range.", icon="🪙")
        return
    feedback = feedback or {}
    table = table.assign(price=[price_of(m) if price_of else "" for m in table["model"]],
                         feedback=[feedback.get(m, "no votes") for m in table["model"]],
                         cost=_words(table, "cost"), cache_saved=_words(table, "cache_saved"))
    num = st.column_config.NumberColumn
    st.dataframe(table, key="monitor_spend_models", hide_index=True, placeholder="unpriced",
                 height=min(420, 38 + 35 * len(table)),
                 column_order=("model", "price", "requests", "tokens", "cost", "unpriced", "p50_ms", "error_rate",
                               "cache_saved", "feedback"),
                 column_config={"model": "Model", "price": st.column_config.TextColumn("Price", width="medium"),
                                "requests": num("Requests", format="localized", help="Every outcome"),
                                "tokens": num("Tokens", format="localized", help="Served requests"),
                                "cost": st.column_config.TextColumn(
                                    "Cost", help="Served requests with a price (exact figures in the export); "
                                    "unpriced when none had one"),
                                "unpriced": num("Unpriced", help="Served requests without a price"),
                                "p50_ms": num("p50 latency", format="%.0f ms", help="Served requests"),
                                "error_rate": num("Error rate", format="percent", help="Errors over requests"),
                                "cache_saved": st.column_config.TextColumn("Saved by cache"),
                                "feedback": st.column_config.TextColumn(
                                    "Compare votes", help="Blind votes on the Compare page, all time: the share "
                                    "of voted comparisons the model won")})
    if not feedback:
        st.caption("Compare votes: none recorded yet (vote on the Compare page to rate models).")
    t1, t2 = st.columns([2, 3], vertical_alignment="bottom")
    which = t1.selectbox("Spend table to export as CSV (JSON has them all)", SPEND_TABLES, index=1,
                         key="monitor_spend_export_table", format_func=lambda t: t.replace("_", " "))
    with t2:
        download_buttons("blossom-spend", key="monitor_export_spend", label="Spend",
                         csv=lambda: export_spend(s, "csv", which), json=lambda: export_spend(s, "json"))


def spend_panel(service: Any, caller: Any, q: Any, *, every_s: float | None) -> None:
    """The Monitor's spend panel for ``q`` as ``caller`` sees it: the shared ``spend``
    read (a member's per-user rows are their own), the catalog's prices and the
    Compare votes per model; then the 👍/👎 on answers per model since the range's start
    (``history.render_feedback_table``)."""
    s = service.monitor("spend", q, caller=caller, every_s=every_s)
    render_spend(s, vs=f"vs prior {format_duration(s.query.span_s)}", own_only=not caller.is_admin,
                 price_of=price_labels(service), feedback=feedback_labels(service))
    render_feedback_table(service, caller, since_s=max(0.0, time.time() - q.since_ts))  # 👍/👎 on answers


__all__ = ["feedback_labels", "format_pollen", "price_labels", "render_spend", "spend_figures", "spend_kpis",
           "spend_panel"]
