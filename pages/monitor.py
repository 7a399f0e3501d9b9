"""Monitor: live usage of the service — requests, latency, tokens, errors, cache, limits."""

import time

import pandas as pd
import streamlit as st

from blossom_dash import charts, ui
from blossom_dash.metrics import summarize

handle = ui.session_handle()
service = handle.service
st.title("Monitor")
ui.backend_badge(service)

WINDOWS = {"15 min": 15 * 60, "1 h": 3600, "24 h": 86400}
c1, c2, c3 = st.columns([3, 2, 2])
window_label = c1.segmented_control("Window", list(WINDOWS), default="1 h", key="monitor_window") or "1 h"
paused = c2.toggle("Pause live refresh", key="monitor_paused")
refresh_s = c3.selectbox("Refresh every", [2, 5, 10, 30], index=1, key="monitor_refresh_s",
                         format_func=lambda s: f"{s} s", disabled=paused)


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f} ms" if value < 1000 else f"{value / 1000:,.2f} s"


@st.fragment(run_every=None if paused else refresh_s)
def live(window_s: int) -> None:
    """KPIs and charts for the last ``window_s`` seconds; reruns on its own."""
    now = time.time()
    df = service.metrics.frame(since=now - window_s)
    span = (pd.Timestamp(int(now - window_s), unit="s", tz="UTC"), pd.Timestamp(int(now) + 1, unit="s", tz="UTC"))
    s = summarize(df)
    k = st.columns(7)
    k[0].metric("Requests", f"{s['requests']:,}")
    k[1].metric("Error rate", f"{s['error_rate']:.1%}", help=f"{s['errors']} errors")
    k[2].metric("p50 latency", _ms(s["p50_latency_ms"]))
    k[3].metric("p95 latency", _ms(s["p95_latency_ms"]))
    k[4].metric("Tokens", f"{s['tokens']:,}", help=f"{s['prompt_tokens']:,} prompt + {s['completion_tokens']:,} "
                                                   "completion")
    k[5].metric("Cache hit rate", f"{s['cache_hit_rate']:.0%}", help=f"{s['cache_hits']} hits")
    k[6].metric("Rate-limited", f"{s['rate_limited']:,}")
    freq = charts.bucket_for(window_s)
    left, right = st.columns(2)
    left.plotly_chart(charts.requests_per_minute(df, freq=freq, window=span), key="monitor_rpm")
    right.plotly_chart(charts.latency_percentiles(df, freq=freq, window=span), key="monitor_latency")
    left.plotly_chart(charts.tokens_per_minute(df, freq=freq, window=span), key="monitor_tokens")
    right.plotly_chart(charts.model_breakdown(df), key="monitor_models")
    errors = df[df["outcome"] == "error"] if not df.empty else df
    if not errors.empty:
        st.caption("Errors by type: " + ", ".join(f"{t} × {n}" for t, n in errors["error_type"].value_counts().items()))
    st.caption(f"Last {window_label} · {len(df):,} events · updated {time.strftime('%H:%M:%S')}"
               + (" · paused" if paused else f" · refreshes every {refresh_s} s"))


live(WINDOWS[window_label])
