"""The Monitor page's widgets: range and filter controls, KPIs, downloads, retention, tables."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from ..errors import DashError
from ..gateway import Caller
from ..service import BlossomService
from ..telemetry import analytics
from . import charts
from .feedback import show_error
from .request_view import render_request_detail  # noqa: F401 - ui.render_request_detail lives there
from .times import local_series, local_time, viewer_tz, zone_label

log = logging.getLogger("blossom_dash.ui")


#: Filter widgets of the Monitor: ``MonitorQuery`` field -> label.
MONITOR_FILTERS = {"models": "Model", "users": "User", "kinds": "Kind", "outcomes": "Outcome",
                   "backends": "Backend"}


@dataclass(frozen=True)
class MonitorControls:
    """What the Monitor's controls ask for.

    Attributes:
        label: The range's name ("1 h", "Custom", ...).
        window_s: Length of a relative range (it ends now), None for a custom one.
        fixed: ``(since_ts, until_ts)`` of a custom range, epoch seconds.
        filters: ``MonitorQuery`` filter fields -> selected values.
        run_every: Seconds between live refreshes, None when paused or the range is past.
        note: How the page refreshes, in words.
        every_s: The refresh interval the figures are shared for (``monitor(...,
            every_s=...)``): ``run_every``, or the one picked while paused or past.
    """

    label: str
    window_s: int | None
    fixed: tuple[float, float] | None
    filters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    run_every: int | None = None
    note: str = ""
    every_s: int = 5

    def query(self, now: float | None = None) -> analytics.MonitorQuery:
        """The query at ``now``: a relative range moves with the clock, a custom one does not."""
        if self.fixed is not None:
            return analytics.MonitorQuery(*self.fixed, **self.filters)
        return analytics.MonitorQuery.last(self.window_s or 3600, now=now, **self.filters)


@st.cache_data(ttl=120, max_entries=64, show_spinner=False)
def load_filter_options(_service: BlossomService, store_url: str, since_ts: int) -> dict[str, list[str]]:
    """Distinct filter values since ``since_ts`` (cached two minutes per store and start).

    The caller rounds ``since_ts`` down to the range's bucket, so a relative range
    reuses one entry while it moves (a few more values than the range holds is
    harmless in a filter list; a 30-day scan per refresh is not).
    """
    return _service.monitor("filter_options", float(since_ts))


def _epoch(value: dt.datetime, tz: Any) -> float:
    """A custom range's wall time, read in the viewer's zone (``ui.times``), as epoch seconds."""
    return value.replace(tzinfo=tz).timestamp()


def filters_label(label: str, state: Any = None) -> str:
    """The filter expander's label: the range and what the filters keep, e.g.
    ``"Filters · 1 h · all models"`` or ``"Filters · 24 h · 2 models · user ann"``.

    Args:
        label: The time range's name.
        state: Where the filter widgets keep their values (``st.session_state``).
    """
    state = st.session_state if state is None else state
    parts = []
    for name, title in MONITOR_FILTERS.items():
        chosen = list(state.get(f"monitor_filter_{name}") or [])
        if len(chosen) == 1:
            parts.append(f"{title.lower()} {chosen[0]}")
        elif chosen:
            parts.append(f"{len(chosen)} {title.lower()}s")
    if state.get("monitor_paused"):
        parts.append("paused")
    return " · ".join(["Filters", label if label == "Custom" else f"last {label}", *(parts or ["all models"])])


def monitor_controls_ui(service: BlossomService) -> MonitorControls:
    """The Monitor's range, refresh and filter widgets (keys ``monitor_*``).

    The range stays on top; the refresh controls and the filters fold into an expander
    whose label says what they are set to (``filters_label``), so a phone reaches the
    first figure without scrolling past them. A custom range is entered in the viewer's
    time zone (``ui.times``).
    """
    label = st.segmented_control("Time range", [*analytics.RANGES, "Custom"], default="1 h", key="monitor_range",
                                 required=True) or "1 h"
    tz = viewer_tz()
    zone = zone_label(tz)
    now = time.time()
    fixed = None
    box = st.expander(filters_label(label), icon=":material/filter_list:", key="monitor_filters_box")
    if label == "Custom":
        end = dt.datetime.fromtimestamp(now // 60 * 60 + 60, tz).replace(tzinfo=None)
        st.session_state.setdefault("monitor_custom_since", end - dt.timedelta(days=1))
        st.session_state.setdefault("monitor_custom_until", end)
        a, b = st.columns(2)
        since = a.datetime_input(f"From ({zone})", key="monitor_custom_since", step=60)
        until = b.datetime_input(f"To ({zone})", key="monitor_custom_until", step=60)
        if since is None or until is None or until <= since:
            st.warning("Pick a custom range whose end comes after its start.", icon="📅")
            st.stop()
        fixed = (_epoch(since, tz), _epoch(until, tz))
    c2, c3 = box.columns([2, 1.4], vertical_alignment="bottom")
    paused = c2.toggle("Pause live refresh", key="monitor_paused")
    refresh_s = c3.selectbox("Refresh every", [2, 5, 10, 30, 60], index=1, key="monitor_refresh_s",
                             format_func=lambda s: f"{s} s", disabled=paused)
    span = fixed[1] - fixed[0] if fixed else analytics.RANGES[label]
    since_ts = fixed[0] if fixed else now - span
    step = max(60, analytics.bucket_seconds(span))
    options = load_filter_options(service, service.store_url, int(since_ts // step * step))
    filters: dict[str, tuple[str, ...]] = {}
    for col, (name, title) in zip(box.columns(len(MONITOR_FILTERS)), MONITOR_FILTERS.items(), strict=True):
        chosen = st.session_state.get(f"monitor_filter_{name}", [])
        known = analytics.OUTCOMES if name == "outcomes" else options[name]
        picked = col.multiselect(title, sorted({*known, *chosen}), key=f"monitor_filter_{name}", placeholder="All")
        if picked:
            filters[name] = tuple(picked)
    floor = analytics.min_refresh_s(span)
    every_s = max(refresh_s, floor)
    if paused:
        run_every, note = None, "paused"
    elif fixed and fixed[1] < now:
        run_every, note = None, "a past range: nothing new to refresh"
    else:
        run_every = every_s
        note = f"refreshes every {run_every} s" + (f" (at least {floor} s for a {label} range)"
                                                   if floor > refresh_s else "")
    return MonitorControls(label, None if fixed else int(span), fixed, filters, run_every, note, every_s)


def format_ms(value: float | None) -> str:
    """A latency for people: ``"850 ms"``, ``"2.40 s"``, or ``"—"`` when there is none."""
    if value is None:
        return "—"
    return f"{value:,.0f} ms" if value < 1000 else f"{value / 1000:,.2f} s"


def format_duration(seconds: float) -> str:
    """A duration for people: ``"15 min"``, ``"1 h"``, ``"3 d 4 h"``."""
    minutes = round(seconds / 60)
    days, rem = divmod(minutes, 1440)
    hours, mins = divmod(rem, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{mins} min" if mins else ""]
    return " ".join(p for p in parts if p) or f"{seconds:.0f} s"


def format_count(value: int | float) -> str:
    """A count for a KPI column: exact below a million (``"998,714"``), then
    ``"409.9 M"`` / ``"1.2 B"``, so it fits a sixth of the page (the help gives it exactly)."""
    size = abs(value)
    if size < 1_000_000:
        return f"{value:,.0f}"
    return f"{value / 1e9:,.1f} B" if size >= 1_000_000_000 else f"{value / 1e6:,.1f} M"


def format_saved(ms: float) -> str:
    """Time saved, compact for a KPI column: ``"850 ms"``, ``"42.0 s"``, ``"12 min"``,
    ``"22.2 h"``, ``"3.4 d"``; ``"—"`` for none."""
    if not ms:
        return "—"
    s = ms / 1000
    if s < 60:
        return format_ms(ms)
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h" if s < 86_400 else f"{s / 86_400:,.1f} d"


def _delta(cur: Any, prev: Any, kind: str) -> str | int | None:
    if cur is None or prev is None:
        return None
    diff = cur - prev
    shown = {"count": 0.5, "rate": 0.0005, "ms": 0.5}[kind]  # below what the text can show: no change
    if abs(diff) < shown:
        return 0  # a number: st.metric greys a zero delta out
    if kind == "count":
        return ("+" if diff > 0 else "-") + format_count(abs(diff))
    if kind == "rate":
        return f"{diff * 100:+.1f} pp"
    return ("+" if diff > 0 else "-") + format_ms(abs(diff))


#: Width of one KPI metric, px: two fit a 390 px phone (358 px of content), six the ~980 px beside
#: the sidebar at 1440 px (the two rows of six the page had).
KPI_WIDTH_PX = 140


def kpi_row(current: dict[str, Any], previous: dict[str, Any], *, vs: str, saved_ms: float | None = 0.0,
            unpriced_hits: int = 0) -> DeltaGenerator:
    """The Monitor's KPIs, each with its change against the previous period.

    One wrapping row of ``KPI_WIDTH_PX``-wide metrics: the counts and rates (requests,
    error rate, rejected, rate-limited, cache hit rate, time saved by the cache), then
    latency, TTFT and tokens. A rise in the error rate, a latency, the TTFT or the rejected or
    rate-limited count reads as bad (``delta_color="inverse"``). Without requests in
    the previous period, no change is shown rather than an infinite one. The figures'
    definitions are ``analytics.kpis``'s.

    Args:
        saved_ms: Time saved by the cache (``CacheSavings.saved_ms``); None while it
            is being computed: the metric reads "…" until ``time_saved_metric`` fills
            the slot this returns.

    Returns:
        The slot of the "Cache time saved" metric.
    """
    has_prev = previous["requests"] > 0
    estimate = (f"Estimated from a log-spaced histogram: within {analytics.LATENCY_BIN_ERROR:.1%} of the exact "
                "value.")
    served = f"Served requests only. {estimate}"
    specs: list[tuple[str, str, str, str, str]] = [
        ("Requests", format_count(current["requests"]), "requests", "count",
         f"{current['requests']:,} requests, {current['rpm']:,.2f} per minute"),
        ("Error rate", f"{current['error_rate']:.1%}", "error_rate", "rate",
         f"{current['errors']:,} errors (backend and system failures) over all requests. Rejected and "
         "rate-limited requests are not errors."),
        ("Rejected", f"{current['rejected']:,}", "rejected", "count",
         "The users' own invalid requests, refused before sending, and replay-only refusals."),
        ("Rate-limited", f"{current['rate_limited']:,}", "rate_limited", "count",
         "Refused by the dashboard's own rate limits."),
        ("Cache hit rate", f"{current['cache_hit_rate']:.0%}", "cache_hit_rate", "rate",
         f"{current['cache_hits']:,} hits over the requests the dashboard would serve (all but rate-limited and "
         "rejected ones)."),
        ("p50 latency", format_ms(current["p50_latency_ms"]), "p50_latency_ms", "ms", served),
        ("p95 latency", format_ms(current["p95_latency_ms"]), "p95_latency_ms", "ms", served),
        ("p99 latency", format_ms(current["p99_latency_ms"]), "p99_latency_ms", "ms", served),
        ("p50 TTFT (streams)", format_ms(current["p50_ttft_ms"]), "p50_ttft_ms", "ms",
         f"Time to first token of served streamed answers; other kinds have no first token to time. {estimate}"),
        ("Tokens", format_count(current["tokens"]), "tokens", "count",
         f"{current['tokens']:,} tokens: {current['prompt_tokens']:,} prompt + {current['completion_tokens']:,} "
         "completion (served requests)"),
    ]
    bad_when_up = {"error_rate", "rejected", "rate_limited", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms",
                   "p50_ttft_ms"}
    # One wrapping row of fixed-width metrics, not st.columns: columns stack one metric a
    # line below 640 px (eleven lines on a phone before the first chart); these wrap two
    # a line on a 390 px phone and six a line at 1440 px.
    row = st.container(horizontal=True, gap="small", key="monitor_kpis")
    slot: Any = None
    for i, (label, value, key, kind, help_text) in enumerate(specs):
        if i == 5:
            slot = row.container(width=KPI_WIDTH_PX).empty()
        row.metric(label, value, _delta(current[key], previous[key], kind) if has_prev else None,
                   delta_color="inverse" if key in bad_when_up else "normal",
                   delta_description=vs if has_prev else None, help=help_text, width=KPI_WIDTH_PX)
    if saved_ms is None:
        slot.metric("Cache time saved", "…", help="Being computed with the charts.")
    else:
        time_saved_metric(slot, saved_ms, unpriced_hits)
    return slot


def time_saved_metric(slot: DeltaGenerator, saved_ms: float, unpriced_hits: int = 0) -> None:
    """The "Cache time saved" KPI (``CacheSavings.saved_ms``, ms) in ``slot``."""
    exact = f"{format_duration(saved_ms / 1000)} in all. " if saved_ms >= 60_000 else ""
    slot.metric("Cache time saved", format_saved(saved_ms),
                help=exact + "Each hit is priced at the median latency of served requests of the same model in this "
                     "range (an estimate)." + (f" {unpriced_hits:,} hits had no such reference." if unpriced_hits
                                               else ""))


#: The Monitor's charts in the grid, two per row, in order (the per-user chart, ``limited``,
#: sits by the Users table).
GRID_CHARTS = ("rpm", "latency", "tokens", "distribution", "cache", "errors")
#: Chart height in pixels (``charts._layout``), kept by the placeholders.
CHART_HEIGHT = 300


def chart_slots(*, loading: bool) -> dict[str, Any]:
    """The chart grid's slots, two per row (``GRID_CHARTS``), for ``st.plotly_chart`` later.

    Args:
        loading: Show a chart-sized skeleton in each slot until its chart is drawn
            (when the charts are not on screen yet). A live refresh passes False: a
            skeleton would replace the chart already there and lose its zoom.

    Returns:
        Chart name -> a single-element slot (``st.empty()``, or ``st.skeleton``'s
        placeholder, which is not a ``DeltaGenerator`` but takes ``plotly_chart``).
    """
    slots: dict[str, Any] = {}
    for i in range(0, len(GRID_CHARTS), 2):
        for col, name in zip(st.columns(2), GRID_CHARTS[i:i + 2], strict=False):
            slots[name] = col.skeleton(height=CHART_HEIGHT) if loading else col.empty()
    return slots


_FIGURES: weakref.WeakKeyDictionary[analytics.MonitorSnapshot, _Figures] = weakref.WeakKeyDictionary()
_FIGURES_LOCK = threading.Lock()
#: Figure sets built since the process started (tests read it).
figure_builds = 0


@dataclass
class _Figures:
    lock: threading.Lock = field(default_factory=threading.Lock)
    figures: dict[str, dict[str, go.Figure]] = field(default_factory=dict)  # by time zone


def monitor_figures(snap: analytics.MonitorSnapshot, tz: str = "UTC") -> dict[str, go.Figure]:
    """The Monitor's seven figures for ``snap`` (``GRID_CHARTS`` and ``limited``), built once per
    snapshot and time zone (``tz``: the viewer's IANA zone, the time axes read in it).

    A shared snapshot (``monitor(..., every_s=...)``) serves every viewer of the
    process, so its figures do too: building them costs more CPU than reading the
    snapshot (about 0.12 s against 0.07 s on a small store), and each viewer's
    ``st.plotly_chart`` only serialises them. Callers arriving while they are built
    wait for that one build. The figures live as long as the snapshot does (a weak
    reference) and are read-only: ``st.plotly_chart`` copies a figure, never changes it.
    """
    global figure_builds
    with _FIGURES_LOCK:
        entry = _FIGURES.get(snap)
        if entry is None:
            entry = _FIGURES[snap] = _Figures()
    with entry.lock:
        if tz not in entry.figures:
            q, b = snap.query, snap.series.bucket_s
            span = (q.since_ts, q.until_ts)
            entry.figures[tz] = {
                "rpm": charts.rpm_by_outcome(snap.series.requests, bucket_s=b, span=span, tz=tz),
                "latency": charts.latency_over_time(snap.latency, bucket_s=b, span=span, tz=tz),
                "tokens": charts.tokens_by_model(snap.series.tokens, bucket_s=b, span=span, tz=tz),
                "distribution": charts.latency_distribution(analytics.model_latency_summary(snap.latency_hist)),
                "cache": charts.cache_over_time(snap.cache.over_time, bucket_s=b, span=span, tz=tz),
                "errors": charts.errors_by_type(snap.errors),
                "limited": charts.rate_limited_by_user(snap.rate_limited),
            }
            with _FIGURES_LOCK:
                figure_builds += 1
        return entry.figures[tz]


def download_buttons(name: str, *, csv: Callable[[], bytes], json: Callable[[], bytes], key: str,
                     label: str = "") -> None:
    """CSV and JSON download buttons whose files are built only when clicked.

    Args:
        name: File name without extension.
        csv / json: Callables returning the file's bytes (deferred: the export costs
            nothing until a user asks for it, even on a live page).
        key: Widget key prefix (``<key>_csv``, ``<key>_json``).
        label: What is exported, shown on the buttons.
    """
    a, b = st.columns(2)
    a.download_button(f"{label} CSV".strip(), data=csv, file_name=f"{name}.csv", mime="text/csv",
                      key=f"{key}_csv", on_click="ignore", icon=":material/download:", width="stretch")
    b.download_button(f"{label} JSON".strip(), data=json, file_name=f"{name}.json", mime="application/json",
                      key=f"{key}_json", on_click="ignore", icon=":material/download:", width="stretch")


def _delete_old_events(service: BlossomService, days: float, caller: Caller | None = None) -> None:
    """Callback of the retention button: delete, then reset the confirmation.

    A refused delete is kept for ``retention_ui`` to show: a callback runs before the
    page, outside its ``guard``.
    """
    cutoff = analytics.retention_cutoff(days)
    st.session_state["monitor_retention_confirm"] = False
    try:
        deleted = service.delete_events_older_than(cutoff, caller=caller)
    except DashError as err:
        st.session_state["monitor_retention_error"] = err
        return
    log.warning("retention: deleted %d events older than %s days on request", deleted, days)
    st.session_state["monitor_retention_done"] = deleted
    load_filter_options.clear()


def retention_ui(service: BlossomService, caller: Caller | None = None) -> None:
    """How much history is older than ``settings.retention_days``, and an explicit,
    confirmed button to delete it. Nothing is ever deleted without that click."""
    days = service.settings.retention_days
    if not days:
        st.caption("Retention: all history is kept. Set `BLOSSOM_DASH_RETENTION_DAYS` to be offered deleting "
                   "old events here.")
        return
    cutoff = analytics.retention_cutoff(days)
    old = service.monitor("count_older_than", cutoff)
    when = local_time(cutoff)
    st.markdown(f"**{old:,} events** are older than the retention period of {days:g} days (before {when}).")
    if (err := st.session_state.pop("monitor_retention_error", None)) is not None:
        show_error(err)
    if (done := st.session_state.pop("monitor_retention_done", None)) is not None:
        st.success(f"Deleted {done:,} events older than {days:g} days.", icon="🗑️")
    confirm = st.checkbox("I understand: deleted events cannot be recovered", key="monitor_retention_confirm",
                          disabled=old == 0)
    st.button(f"Delete events older than {days:g} days", key="monitor_retention_delete", type="primary",
              disabled=old == 0 or not confirm, on_click=_delete_old_events, args=(service, days, caller))


def format_time(ts: float) -> str:
    """Epoch seconds as ``YYYY-MM-DD HH:MM`` (UTC)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def render_users(users: Any) -> None:
    """The per-user table of ``analytics.per_user`` (busiest first)."""
    if users.empty:
        st.info("No requests in this range.", icon="👤")
        return
    num = st.column_config.NumberColumn
    tz = viewer_tz()
    if "last_seen" in users:
        users = users.assign(last_seen=local_series(users["last_seen"], tz=tz))
    st.dataframe(users, key="monitor_users_table", hide_index=True, height=min(420, 38 + 35 * len(users)),
                 placeholder="—",
                 column_order=("user", "requests", "tokens", "errors", "rejected", "rate_limited", "cache_hits",
                               "last_seen"),
                 column_config={"user": "User", "requests": num("Requests", format="localized"),
                                "tokens": num("Tokens", format="localized", help="Served requests"),
                                "errors": num("Errors", help="Backend and system failures"),
                                "rejected": num("Rejected", help="Invalid requests and replay-only refusals"),
                                "rate_limited": num("Rate-limited"),
                                "cache_hits": num("Cache hits"),
                                "last_seen": st.column_config.DatetimeColumn(f"Last seen ({zone_label(tz)})",
                                                                             format="YYYY-MM-DD HH:mm:ss")})


def render_request_table(frame: Any) -> None:
    """One page of ``analytics.request_log``."""
    if frame.empty:
        st.info("No request matches this range, these filters and this search.", icon="🔎")
        return
    num, text = st.column_config.NumberColumn, st.column_config.TextColumn
    tz = viewer_tz()
    frame = frame.assign(ts=local_series(frame["ts"], tz=tz))
    st.dataframe(frame, key="monitor_log_table", hide_index=True, placeholder="—",
                 column_order=("ts", "request_id", "user", "model", "outcome", "latency_ms", "ttft_ms", "prompt_tokens",
                               "completion_tokens", "error_type", "status_code", "kind", "prompt"),
                 column_config={"ts": st.column_config.DatetimeColumn(f"Time ({zone_label(tz)})",
                                                                      format="YYYY-MM-DD HH:mm:ss"),
                                "request_id": text("Request id"), "user": text("User"), "model": text("Model"),
                                "outcome": text("Outcome"), "latency_ms": num("Latency (ms)", format="%.1f"),
                                "ttft_ms": num("TTFT (ms)", format="%.1f"), "prompt_tokens": num("Prompt tok."),
                                "completion_tokens": num("Compl. tok."), "error_type": text("Error"),
                                "status_code": num("Status", format="%d"), "kind": text("Kind"),
                                "prompt": text("Prompt", width="large")})
