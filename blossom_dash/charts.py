"""Plotly chart builders for the Monitor page: pure ``DataFrame -> Figure`` functions.

Input frames have the event columns of ``store.EVENT_COLUMNS`` with ``ts`` as UTC
datetimes. Every figure sets ``uirevision`` so a live refresh keeps the user's zoom,
and time buckets adapt to the window so a chart stays within a few hundred points.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

#: Fixed colours per outcome, so a colour means the same thing on every chart.
OUTCOME_COLORS = {"ok": "#2e7d32", "cache_hit": "#0288d1", "rate_limited": "#f9a825", "error": "#c62828"}
OUTCOME_LABELS = {"ok": "OK", "cache_hit": "Cache hit", "rate_limited": "Rate-limited", "error": "Error"}

#: (window up to, bucket) pairs: at most ~120 buckets per chart.
_BUCKETS = ((15 * 60, "15s"), (3600, "1min"), (6 * 3600, "5min"), (86400, "15min"),
            (7 * 86400, "2h"), (31 * 86400, "6h"))


def bucket_for(window_s: float) -> str:
    """The pandas frequency for a time window (e.g. ``"1min"`` for one hour).

    Args:
        window_s: The window's length in seconds.
    """
    for limit, freq in _BUCKETS:
        if window_s <= limit:
            return freq
    return "1D"


def _layout(fig: go.Figure, title: str, y_title: str, *, revision: str) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "font": {"size": 15}},
        template="plotly_white", height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "y": -0.2, "x": 0}, uirevision=revision,
        yaxis_title=y_title, yaxis_rangemode="tozero", hovermode="x unified",
    )
    return fig


Window = tuple[pd.Timestamp, pd.Timestamp]


def _time_axis(fig: go.Figure, freq: str, window: Window | None) -> go.Figure:
    """Show the whole window (a lone bucket would otherwise fill the chart) and
    size bars to their bucket."""
    width_ms = pd.Timedelta(freq).total_seconds() * 1000 * 0.9
    fig.update_traces(width=width_ms, offset=0, selector={"type": "bar"})
    if window is not None:
        fig.update_xaxes(range=[window[0], window[1]])
    return fig


def _empty(title: str, revision: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text="No requests in this window yet", showarrow=False, font={"size": 14, "color": "#777"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, "", revision=revision)


def requests_per_minute(df: pd.DataFrame, *, freq: str = "1min", window: Window | None = None,
                        revision: str = "monitor") -> go.Figure:
    """Requests per minute, stacked by outcome.

    Args:
        df: Event frame.
        freq: Bucket size (pandas frequency); counts are scaled to per-minute rates.
        window: ``(start, end)`` UTC timestamps the x axis spans.
        revision: Plotly ``uirevision``: keep it constant to keep the user's zoom.
    """
    title = "Requests per minute by outcome"
    if df.empty:
        return _empty(title, revision)
    minutes = pd.Timedelta(freq).total_seconds() / 60
    counts = df.groupby([pd.Grouper(key="ts", freq=freq), "outcome"]).size().unstack(fill_value=0)
    fig = go.Figure()
    for outcome, color in OUTCOME_COLORS.items():
        if outcome in counts:
            fig.add_bar(x=counts.index, y=counts[outcome] / minutes, name=OUTCOME_LABELS[outcome],
                        marker_color=color)
    fig.update_layout(barmode="stack")
    return _layout(_time_axis(fig, freq, window), title, "RPM", revision=revision)


def latency_percentiles(df: pd.DataFrame, *, freq: str = "1min", window: Window | None = None,
                        revision: str = "monitor") -> go.Figure:
    """p50 and p95 latency and p50 TTFT over time (ms), served requests only."""
    title = "Latency percentiles (served requests)"
    served = df[df["outcome"] == "ok"] if not df.empty else df
    if served.empty:
        return _empty(title, revision)
    grouped = served.groupby(pd.Grouper(key="ts", freq=freq))
    series = {
        "p50 latency": grouped["latency_ms"].quantile(0.5),
        "p95 latency": grouped["latency_ms"].quantile(0.95),
        "p50 TTFT": grouped["ttft_ms"].quantile(0.5),
    }
    fig = go.Figure()
    for (name, values), dash in zip(series.items(), ("solid", "solid", "dot"), strict=True):
        values = values.dropna()
        fig.add_scatter(x=values.index, y=values.values, name=name, mode="lines+markers", line={"dash": dash})
    return _layout(_time_axis(fig, freq, window), title, "ms", revision=revision)


def tokens_per_minute(df: pd.DataFrame, *, freq: str = "1min", window: Window | None = None,
                      revision: str = "monitor") -> go.Figure:
    """Prompt and completion tokens per minute (served requests), stacked."""
    title = "Tokens per minute"
    served = df[df["outcome"] == "ok"] if not df.empty else df
    if served.empty or served[["prompt_tokens", "completion_tokens"]].fillna(0).to_numpy().sum() == 0:
        return _empty(title, revision)
    minutes = pd.Timedelta(freq).total_seconds() / 60
    sums = served.groupby(pd.Grouper(key="ts", freq=freq))[["prompt_tokens", "completion_tokens"]].sum()
    fig = go.Figure()
    fig.add_bar(x=sums.index, y=sums["prompt_tokens"] / minutes, name="Prompt", marker_color="#7e57c2")
    fig.add_bar(x=sums.index, y=sums["completion_tokens"] / minutes, name="Completion", marker_color="#26a69a")
    fig.update_layout(barmode="stack")
    return _layout(_time_axis(fig, freq, window), title, "tokens / min", revision=revision)


def model_breakdown(df: pd.DataFrame, *, revision: str = "monitor") -> go.Figure:
    """Requests per model stacked by outcome, with p95 latency in the hover."""
    title = "Requests per model"
    if df.empty:
        return _empty(title, revision)
    counts = df.groupby(["model", "outcome"]).size().unstack(fill_value=0)
    counts = counts.loc[counts.sum(axis=1).sort_values().index]
    p95 = df[df["outcome"] == "ok"].groupby("model")["latency_ms"].quantile(0.95).reindex(counts.index)
    hover = [f"p95 {v:,.0f} ms" if pd.notna(v) else "no served requests" for v in p95]
    fig = go.Figure()
    for outcome, color in OUTCOME_COLORS.items():
        if outcome in counts:
            fig.add_bar(y=counts.index, x=counts[outcome], name=OUTCOME_LABELS[outcome], orientation="h",
                        marker_color=color, customdata=hover, hovertemplate="%{x} requests · %{customdata}")
    fig.update_layout(barmode="stack", hovermode="closest")
    return _layout(fig, title, "", revision=revision)
