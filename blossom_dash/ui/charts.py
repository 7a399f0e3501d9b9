"""Plotly chart builders for the Monitor page: pure ``DataFrame -> Figure`` functions.

Each builder takes one of the small SQL aggregates of ``analytics`` (never raw
events). Every figure sets ``uirevision`` (a constant per chart) so a live refresh
keeps the user's zoom; the time buckets come with the aggregate (``bucket_s``), which
keeps a chart within a few hundred points. The time charts take ``tz`` (an IANA zone
name, the viewer's: ``ui.times``) and draw their axis in it; the aggregates stay UTC.
"""

from __future__ import annotations

import math
import zlib

import pandas as pd
import plotly.graph_objects as go

#: Fixed colours per outcome, so a colour means the same thing on every chart (and the
#: stacking order: served first, failures on top). Rejected is a neutral grey: the
#: user's own invalid request or a replay-only refusal, not a failure of the service.
OUTCOME_COLORS = {"ok": "#2e7d32", "cache_hit": "#0288d1", "rate_limited": "#f9a825", "rejected": "#757575",
                  "error": "#c62828"}
OUTCOME_LABELS = {"ok": "OK", "cache_hit": "Cache hit", "rate_limited": "Rate-limited", "rejected": "Rejected",
                  "error": "Error"}


def _layout(fig: go.Figure, title: str, y_title: str, *, revision: str) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "font": {"size": 15}},
        template="plotly_white", height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "y": -0.2, "x": 0}, uirevision=revision,
        yaxis_title=y_title, yaxis_rangemode="tozero", hovermode="x unified",
        # The toolbar stands on the right edge, not across the top where the title is
        # (on a 390 px phone a horizontal one covered the titles).
        modebar={"orientation": "v"},
    )
    return fig


def _empty(title: str, revision: str, text: str = "No requests in this window yet") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, font={"size": 14, "color": "#777"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, "", revision=revision)


#: A stable colour per model name (the same model has the same colour on every chart).
_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#9c755f", "#76b7b2", "#e15759", "#d4a017",
            "#ff9da7", "#6b6b6b")
_SPAN = tuple[float, float]


def model_color(model: str) -> str:
    """The colour of ``model``: stable across charts, reruns and processes."""
    return _PALETTE[zlib.crc32(model.encode()) % len(_PALETTE)]


def _span_axis(fig: go.Figure, bucket_s: int, span: _SPAN | None, tz: str = "UTC") -> go.Figure:
    """Bars one bucket wide starting at their bucket; the x axis spans the whole range."""
    fig.update_traces(width=bucket_s * 1000 * 0.9, offset=0, selector={"type": "bar"})
    if span is not None:
        fig.update_xaxes(range=[pd.Timestamp(int(t * 1000), unit="ms", tz="UTC").tz_convert(tz) for t in span])
    return fig


def _in_zone(frame: pd.DataFrame, tz: str) -> pd.DataFrame:
    """``frame`` with its ``ts`` (UTC) in the zone ``tz``: Plotly draws a zone-aware time
    at its wall-clock time there, so the axis reads in the viewer's zone (``ui.times``)."""
    if tz == "UTC" or frame.empty or "ts" not in frame:
        return frame
    return frame.assign(ts=pd.to_datetime(frame["ts"], utc=True).dt.tz_convert(tz))


def _rev(name: str, revision: str) -> str:
    return f"{revision}:{name}"


def _per(bucket_s: int) -> str:
    return f"{bucket_s} s" if bucket_s < 60 else f"{bucket_s // 60} min" if bucket_s < 3600 else f"{bucket_s // 3600} h"


def rpm_by_outcome(requests: pd.DataFrame, *, bucket_s: int, span: _SPAN | None = None,
                   revision: str = "monitor", tz: str = "UTC") -> go.Figure:
    """Requests per minute, stacked by outcome.

    Args:
        requests: ``analytics.Timeseries.requests`` (``ts``, ``outcome``, ``rpm``).
        bucket_s: Bucket width in seconds (rates are averaged over it).
        span: ``(since_ts, until_ts)`` epoch seconds the x axis spans.
        revision: Plotly ``uirevision`` prefix: constant, so a refresh keeps the zoom.
    """
    requests = _in_zone(requests, tz)
    title = f"Requests per minute by outcome ({_per(bucket_s)} buckets)"
    if requests.empty:
        return _empty(title, _rev("rpm", revision))
    fig = go.Figure()
    for outcome, color in OUTCOME_COLORS.items():
        part = requests[requests["outcome"] == outcome]
        if not part.empty:
            fig.add_bar(x=part["ts"], y=part["rpm"], name=OUTCOME_LABELS[outcome], marker_color=color,
                        customdata=part["requests"], hovertemplate="%{y:,.2f} RPM (%{customdata:,} requests)")
    fig.update_layout(barmode="stack")
    return _layout(_span_axis(fig, bucket_s, span, tz), title, "RPM", revision=_rev("rpm", revision))


def latency_over_time(latency: pd.DataFrame, *, bucket_s: int, span: _SPAN | None = None,
                      revision: str = "monitor", tz: str = "UTC") -> go.Figure:
    """p50/p95/p99 latency of served requests and p50 TTFT of served streams per bucket (ms),
    from ``analytics.latency_percentiles``."""
    latency = _in_zone(latency, tz)
    title = "Latency percentiles and TTFT"  # short: a title does not wrap on a phone
    if latency.empty:
        return _empty(title, _rev("latency", revision))
    fig = go.Figure()
    for col, name, color, dash in (("p50_ms", "p50 latency", "#1e88e5", "solid"),
                                   ("p95_ms", "p95 latency", "#fb8c00", "solid"),
                                   ("p99_ms", "p99 latency", "#e53935", "solid"),
                                   ("ttft_p50_ms", "p50 TTFT (streams)", "#43a047", "dot")):
        fig.add_scatter(x=latency["ts"], y=latency[col], name=name, mode="lines+markers", connectgaps=False,
                        line={"color": color, "dash": dash, "width": 2}, marker={"size": 4},
                        hovertemplate="%{y:,.0f} ms")
    return _layout(_span_axis(fig, bucket_s, span, tz), title, "ms", revision=_rev("latency", revision))


def latency_distribution(summary: pd.DataFrame, *, revision: str = "monitor") -> go.Figure:
    """Latency distribution per model as boxes: whiskers p5–p95, box p25–p75, line p50.

    Args:
        summary: ``analytics.model_latency_summary`` (``model``, ``served``, ``p5_ms`` …
            ``p99_ms``), computed from SQL histograms.
    """
    title = "Latency distribution per model (p5 · p25 · p50 · p75 · p95)"
    if summary.empty:
        return _empty(title, _rev("distribution", revision))
    fig = go.Figure()
    for row in summary.sort_values("p50_ms").itertuples():
        fig.add_box(y=[row.model], q1=[row.p25_ms], median=[row.p50_ms], q3=[row.p75_ms], lowerfence=[row.p5_ms],
                    upperfence=[row.p95_ms], name=row.model, orientation="h", marker_color=model_color(row.model),
                    hoverinfo="x", showlegend=False)
    ticks = _log_ticks(float(summary["p5_ms"].min()), float(summary["p95_ms"].max()))
    fig.update_xaxes(type="log", title_text="latency (log scale)", tickvals=ticks,
                     ticktext=[_ms_label(t) for t in ticks])
    fig.update_layout(hovermode="closest")
    fig = _layout(fig, title, "", revision=_rev("distribution", revision))
    fig.update_layout(yaxis_rangemode="normal", height=max(220, 90 + 40 * len(summary)))
    return fig


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 steps covering ``[lo, hi]`` (ms), for a readable log axis."""
    lo, hi = max(lo, 0.1), max(hi, lo * 1.01, 0.2)
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)]
    inside = [t for t in ticks if lo / 1.5 <= t <= hi * 1.5]
    return inside or [lo, hi]


def _ms_label(ms: float) -> str:
    return f"{ms:g} ms" if ms < 1000 else f"{ms / 1000:g} s"


def tokens_by_model(tokens: pd.DataFrame, *, bucket_s: int, span: _SPAN | None = None,
                    revision: str = "monitor", tz: str = "UTC") -> go.Figure:
    """Tokens per minute (prompt + completion, served requests), stacked by model.

    Args:
        tokens: ``analytics.Timeseries.tokens`` (``ts``, ``model``, ``tpm``, ...).
    """
    tokens = _in_zone(tokens, tz)
    title = "Tokens per minute by model"
    if tokens.empty or tokens["tokens"].sum() == 0:
        return _empty(title, _rev("tokens", revision))
    fig = go.Figure()
    for model, part in tokens.groupby("model", sort=True):
        fig.add_bar(x=part["ts"], y=part["tpm"], name=str(model), marker_color=model_color(str(model)),
                    customdata=part[["prompt_tokens", "completion_tokens"]].to_numpy(),
                    hovertemplate="%{y:,.0f} tokens/min (%{customdata[0]:,} prompt + %{customdata[1]:,} completion)")
    fig.update_layout(barmode="stack")
    return _layout(_span_axis(fig, bucket_s, span, tz), title, "tokens / min", revision=_rev("tokens", revision))


def errors_by_type(errors: pd.DataFrame, *, revision: str = "monitor") -> go.Figure:
    """Failed requests per error type (horizontal bars), the HTTP statuses in the hover.

    Args:
        errors: ``analytics.errors_by_type`` (``error_type``, ``status_code``, ``errors``).
    """
    title = "Errors by type"
    if errors.empty:
        return _empty(title, _rev("errors", revision), text="No errors in this range")
    codes = errors.assign(code=errors["status_code"].astype("string").fillna("no response"))
    per_type = (codes.groupby("error_type")
                .agg(errors=("errors", "sum"),
                     statuses=("code", lambda c: ", ".join(sorted(set(c)))))
                .sort_values("errors"))
    fig = go.Figure(go.Bar(y=per_type.index, x=per_type["errors"], orientation="h",
                           marker_color=OUTCOME_COLORS["error"], customdata=per_type["statuses"],
                           hovertemplate="%{x:,} errors · status %{customdata}"))
    fig = _layout(fig, title, "", revision=_rev("errors", revision))
    fig.update_layout(hovermode="closest", showlegend=False, yaxis_rangemode="normal",
                      height=max(220, 90 + 36 * len(per_type)))
    return fig


def cache_over_time(over_time: pd.DataFrame, *, bucket_s: int, span: _SPAN | None = None,
                    revision: str = "monitor", tz: str = "UTC") -> go.Figure:
    """Time saved by the cache per bucket (bars, seconds) and its hit rate (line, %).

    Args:
        over_time: ``analytics.CacheSavings.over_time`` (``ts``, ``hits``, ``hit_rate``,
            ``saved_ms``).
    """
    over_time = _in_zone(over_time, tz)
    title = "Cache: hit rate and time saved"
    if over_time.empty or over_time["looked_up"].sum() == 0:
        return _empty(title, _rev("cache", revision))
    fig = go.Figure()
    fig.add_bar(x=over_time["ts"], y=over_time["saved_ms"] / 1000, name="Time saved (s)",
                marker_color="#81d4fa", customdata=over_time["hits"],
                hovertemplate="%{y:,.1f} s saved by %{customdata:,} hits")
    fig.add_scatter(x=over_time["ts"], y=over_time["hit_rate"] * 100, name="Hit rate (%)", yaxis="y2",
                    mode="lines+markers", line={"color": OUTCOME_COLORS["cache_hit"], "width": 2}, marker={"size": 4},
                    hovertemplate="%{y:.0f}% hit rate")
    fig = _layout(_span_axis(fig, bucket_s, span, tz), title, "seconds saved", revision=_rev("cache", revision))
    fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "range": [0, 100], "title": "hit rate",
                              "showgrid": False, "tickmode": "array", "tickvals": [0, 25, 50, 75, 100],
                              "ticksuffix": "%"})
    return fig


def rate_limited_by_user(limited: pd.DataFrame, *, revision: str = "monitor") -> go.Figure:
    """Rate-limited requests per user (horizontal bars), the share of their requests in the hover.

    Args:
        limited: ``analytics.rate_limited_by_user`` (``user``, ``rate_limited``, ``share``).
    """
    title = "Rate-limited requests per user"
    if limited.empty:
        return _empty(title, _rev("limited", revision), text="Nobody was rate-limited in this range")
    data = limited.sort_values("rate_limited")
    fig = go.Figure(go.Bar(y=data["user"], x=data["rate_limited"], orientation="h",
                           marker_color=OUTCOME_COLORS["rate_limited"], customdata=data["share"] * 100,
                           hovertemplate="%{x:,} rate-limited (%{customdata:.0f}% of their requests)"))
    fig = _layout(fig, title, "", revision=_rev("limited", revision))
    fig.update_layout(hovermode="closest", showlegend=False, yaxis_rangemode="normal",
                      height=max(220, 90 + 28 * len(data)))
    return fig


def _pollen(values: pd.Series) -> pd.Series:
    """Costs (``Decimal`` or None) as floats for plotting only: the sums were made exactly."""
    return pd.to_numeric(values.map(lambda v: None if v is None else float(v)), errors="coerce").fillna(0.0)


def cost_by_model(cost: pd.DataFrame, *, bucket_s: int, span: _SPAN | None = None,
                  revision: str = "monitor", tz: str = "UTC") -> go.Figure:
    """Spend per bucket (pollen, served requests with a price), stacked by model.

    Args:
        cost: ``spend.Spend.over_time`` (``ts``, ``model``, ``cost`` as ``Decimal``,
            ``priced``: how many requests the bucket's cost covers).
        bucket_s: Bucket width in seconds.
        span: ``(since_ts, until_ts)`` epoch seconds the x axis spans.
    """
    cost = _in_zone(cost, tz)
    title = f"Cost over time by model ({_per(bucket_s)} buckets)"
    if cost.empty or int(cost["priced"].sum()) == 0:
        return _empty(title, _rev("cost", revision), text="No requests with a price in this range")
    fig = go.Figure()
    for model, part in cost.groupby("model", sort=True):
        fig.add_bar(x=part["ts"], y=_pollen(part["cost"]), name=str(model), marker_color=model_color(str(model)),
                    customdata=part["priced"], hovertemplate="%{y:,.4f} pollen (%{customdata:,} priced requests)")
    fig.update_layout(barmode="stack")
    return _layout(_span_axis(fig, bucket_s, span, tz), title, "pollen", revision=_rev("cost", revision))


def cost_by_user(users: pd.DataFrame, *, revision: str = "monitor", limit: int = 25) -> go.Figure:
    """Spend per user (horizontal bars, pollen), the priced and unpriced requests in the hover.

    Args:
        users: ``spend.Spend.by_user`` (``user``, ``cost`` as ``Decimal``, ``priced``,
            ``unpriced``); the ``limit`` biggest spenders are drawn.
    """
    title = "Cost by user"
    if users.empty or int(users["priced"].sum()) == 0:
        return _empty(title, _rev("cost_users", revision), text="No requests with a price in this range")
    data = users.assign(pollen=_pollen(users["cost"]))
    data = data.sort_values(["pollen", "user"], ascending=[False, True]).head(limit).iloc[::-1]
    fig = go.Figure(go.Bar(y=data["user"], x=data["pollen"], orientation="h", marker_color="#6a1b9a",
                           customdata=data[["priced", "unpriced"]].to_numpy(),
                           hovertemplate="%{x:,.4f} pollen · %{customdata[0]:,} priced, "
                                         "%{customdata[1]:,} unpriced requests"))
    fig = _layout(fig, title, "", revision=_rev("cost_users", revision))
    fig.update_layout(hovermode="closest", showlegend=False, yaxis_rangemode="normal",
                      height=max(220, 90 + 28 * len(data)))
    return fig
