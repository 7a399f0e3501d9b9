"""Monitor: usage over a time range, against the previous period: KPIs, charts, users, request log, export."""

import time

import streamlit as st

from blossom_dash import ui
from blossom_dash.telemetry import analytics
from blossom_dash.ui import request_view
from blossom_dash.ui import spend as spend_view
from blossom_dash.ui.times import local_time, viewer_tz

PAGE_SIZE = 50

handle = ui.session_handle()
service = handle.service
st.title("Monitor")
ui.backend_badge(service)
controls = ui.monitor_controls_ui(service)


@st.fragment(run_every=controls.run_every)
def live() -> None:
    """KPIs first, then the charts (skeletons until drawn), the per-user table and the aggregate
    exports; reruns on its own. Every viewer of this process shares one computation per query and
    refresh interval (``every_s``), figures included."""
    service.flush_events()  # journaled events first: the page sees every recorded request
    loading = st.session_state.pop("monitor_charts_pending", False)  # set by a full run, below
    with ui.guard("computing the usage figures"):
        head = service.monitor("headline", controls.query(), every_s=controls.every_s)
        q = head.query  # the range moved forward to the refresh interval it is shared for
        saved = ui.kpi_row(head.kpis, head.previous_kpis, vs=f"vs prior {ui.format_duration(q.span_s)}",
                           saved_ms=None)
        slots = ui.chart_slots(loading=loading)
        snap = service.monitor("snapshot", q, every_s=controls.every_s)
        ui.time_saved_metric(saved, snap.cache.saved_ms, snap.cache.unpriced_hits)
        figures = ui.monitor_figures(snap, tz=str(viewer_tz()))
        for name, slot in slots.items():
            slot.plotly_chart(figures[name], key=f"monitor_chart_{name}")
        spend_view.spend_panel(service, handle.caller, q, every_s=controls.every_s)
        st.subheader("Users")
        left, right = st.columns([3, 2])
        with left:
            ui.render_users(snap.users)
        right.plotly_chart(figures["limited"], key="monitor_chart_limited")
        t1, t2 = st.columns([2, 3], vertical_alignment="bottom")
        table = t1.selectbox("Aggregate table to export as CSV (JSON has them all)", analytics.AGGREGATES,
                             index=1, key="monitor_export_table", format_func=lambda t: t.replace("_", " "))
        with t2:
            ui.download_buttons("blossom-aggregates", key="monitor_export_aggregates", label="Aggregates",
                                csv=lambda: analytics.export_aggregates(snap, "csv", table),
                                json=lambda: analytics.export_aggregates(snap, "json"))
        filters = "; ".join(f"{k}: {', '.join(v)}" for k, v in q.filters().items()) or "no filters"
        st.caption(f"{controls.label} · {local_time(q.since_ts)} → {local_time(q.until_ts)} · "
                   f"{ui.format_duration(snap.series.bucket_s)} buckets · {filters} · {snap.kpis['requests']:,} "
                   f"events · as of {local_time(snap.as_of_ts, seconds=True)} · computed in "
                   f"{head.elapsed_s + snap.elapsed_s:.2f} s, once per {controls.every_s} s for every viewer of "
                   f"this server · {controls.note}")


def _first_page() -> None:
    st.session_state["monitor_log_page"] = 1


@st.fragment
def request_log() -> None:
    """The filtered events, searchable, sortable and paged in SQL, with one request's details."""
    st.subheader("Request log")
    q = controls.query()
    row = st.columns([4, 2, 1.4, 1], vertical_alignment="bottom")
    search = row[0].text_input("Search", key="monitor_log_search", on_change=_first_page,
                               placeholder="Request id, prompt, model, user or error type")
    sort_by = row[1].selectbox("Sort by", analytics.SORTABLE, key="monitor_log_sort", on_change=_first_page,
                               format_func=lambda c: "time" if c == "ts" else c.replace("_", " "))
    descending = row[2].toggle("Descending", value=True, key="monitor_log_desc", on_change=_first_page)
    with ui.guard("reading the request log"):
        frame, total = service.monitor("request_log", q, search, sort_by, descending,
                                       st.session_state.get("monitor_log_page", 1), PAGE_SIZE, caller=handle.caller)
        pages = max(1, -(-total // PAGE_SIZE))
        st.session_state["monitor_log_page"] = min(max(1, st.session_state.get("monitor_log_page", 1)), pages)
        page = row[3].number_input("Page", min_value=1, max_value=pages, step=1, key="monitor_log_page")
        ui.render_request_table(frame)
        st.caption(f"{total:,} matching events · page {page} of {pages} · {PAGE_SIZE} per page · "
                   f"as of {local_time(time.time(), seconds=True)} (changing a control here re-reads the log)")
        ids = frame["request_id"].tolist()
        labels = {r.request_id: f"{r.request_id} · {local_time(r.ts.timestamp(), seconds=True)} · {r.model} · "
                                f"{r.outcome}" for r in frame.itertuples()}
        picked = st.selectbox("Show every field of one request", ids, index=None, key="monitor_log_detail",
                              format_func=lambda i: labels.get(i, i), placeholder="Pick a request on this page")
        if picked and (detail := service.monitor("request_detail", picked, caller=handle.caller)):
            if context := request_view.render_request_detail(detail):
                with st.expander("Its conversation: every request of it, in order", icon="🧵"):
                    request_view.render_conversation(service, handle.caller, context)
        ui.download_buttons("blossom-requests", key="monitor_export_log",
                            label=f"Log ({min(total, analytics.EXPORT_MAX_ROWS):,} rows)",
                            csv=lambda: service.monitor("export_log", q, search, "csv", caller=handle.caller),
                            json=lambda: service.monitor("export_log", q, search, "json", caller=handle.caller))


if opened := request_view.conversation_query(st.query_params):  # ?chat=<id> (or comparison, batch)
    st.subheader("Conversation")
    with ui.guard("reading the conversation"):
        request_view.render_conversation(service, handle.caller, opened)
    st.button("Close the conversation", key="monitor_conversation_close", on_click=request_view.close_conversation)
st.session_state["monitor_charts_pending"] = True  # a full run: the charts are not drawn yet
live()
request_log()
st.subheader("Retention")
if handle.caller.is_admin:  # the service refuses anyone else too
    with ui.guard("checking the retention period"):
        ui.retention_ui(service, handle.caller)
