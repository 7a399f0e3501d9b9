"""Monitor's request detail and conversation view: one request in labelled fields, and the
requests of the chat, comparison or batch job it belongs to.

Times follow the one time rule (``ui.times``: the viewer's zone, shown); latencies are
milliseconds at a precision a person reads (``format_latency_ms``); costs are pollen
(``pricing.format_cost``: exact, "unpriced" when there is none, never a 0 that pretends).
"""
from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
import pandas as pd
import streamlit as st

from ..gateway import Caller
from ..gateway.event_detail import parse_context
from ..pricing import format_cost
from ..service import BlossomService
from .times import local_series, local_time, utc_iso, viewer_tz, zone_label

__all__ = ["CONTEXT_PAGES", "PARAM_LABELS", "app_link", "close_conversation", "context_link", "conversation_query",
           "format_latency_ms", "render_conversation", "render_request_detail"]

#: Labels of the parameters an event records (``gateway.event_detail.event_params``).
PARAM_LABELS = {"model": "Model", "max_tokens": "Max tokens", "temperature": "Temperature", "seed": "Seed",
                "history_turns": "Earlier turns sent", "system_prompt": "System prompt", "images": "Images attached",
                "width": "Width (px)", "height": "Height (px)", "voice": "Voice", "format": "Audio format",
                "stopped": "Stopped before the end"}
_KIND_LABELS = {"text": "Text", "stream": "Text (streamed)", "image": "Image", "audio": "Speech"}
_OUTCOME_LABELS = {"ok": "Served", "cache_hit": "Cache hit", "rate_limited": "Rate-limited", "rejected": "Rejected",
                   "error": "Error"}
#: Where each kind of context opens: (page URL path, query parameter, link text).
#: The Playground is the default page (path ""), Compare's permalink is ``compare?comparison=``.
CONTEXT_PAGES = {"chat": ("", "chat", "Open the chat in the Playground"),
                 "comparison": ("compare", "comparison", "Open the comparison"),
                 "batch": ("batch", "job", "Open the batch job")}
_CONTEXT_NOUNS = {"chat": "Chat", "comparison": "Comparison", "batch": "Batch job"}


def format_latency_ms(value: float | None) -> str:
    """A duration in milliseconds at a readable precision: ``"1,234 ms"``, ``"12.3 ms"``,
    ``"0.42 ms"``; "" when there is none (blank, never "None")."""
    if value is None or value != value:
        return ""
    if value >= 100:
        return f"{value:,.0f} ms"
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def _app_root(url: str | None) -> tuple[str, str, str]:
    """``(scheme, netloc, root path)`` of the app from the current page's URL.

    ``st.context.url`` is the page's URL (``http://host:8501/monitor``); the app's pages
    are one path segment below its root, so the last segment is dropped.
    """
    parts = urlsplit(url or "")
    path = parts.path.rstrip("/")
    root = path.rsplit("/", 1)[0] if "/" in path else ""
    return parts.scheme, parts.netloc, root


def app_link(page_path: str, query: Mapping[str, str], *, url: str | None = None) -> str:
    """A link to another page of the app with ``query``, built from the current URL.

    Args:
        page_path: The page's URL path ("" for the default page, ``"compare"``, ``"batch"``).
        query: Its query parameters.
        url: The current page's URL; ``st.context.url`` when None. Without one, the link
            is root-relative (``/compare?comparison=<id>``).
    """
    scheme, netloc, root = _app_root(url if url is not None else _context_url())
    path = f"{root}/{page_path}" if page_path else f"{root}/"
    return urlunsplit((scheme, netloc, path, urlencode(dict(query)), ""))


def _context_url() -> str | None:
    try:
        return st.context.url
    except Exception:  # noqa: BLE001 - outside a script run there is no context
        return None


def context_link(context: str | None, *, url: str | None = None) -> tuple[str, str] | None:
    """``(link text, URL)`` of the page a request's context opens, or None (no context).

    ``chat:<id>`` -> ``/?chat=<id>`` (the Playground opens that saved chat),
    ``comparison:<id>`` -> ``/compare?comparison=<id>`` (Compare's permalink),
    ``batch:<job_id>`` -> ``/batch?job=<job_id>``.
    """
    parsed = parse_context(context)
    if parsed is None:
        return None
    kind, ident = parsed
    page, param, text = CONTEXT_PAGES[kind]
    return text, app_link(page, {param: ident}, url=url)


def _context_label(context: str | None) -> str:
    parsed = parse_context(context)
    if parsed is None:
        return "—"
    return f"{_CONTEXT_NOUNS[parsed[0]]} {parsed[1]}"


def _int(value: Any) -> str:
    return "" if value is None or value != value else f"{int(value):,}"


def _params(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_request_detail(detail: dict[str, Any], *, key: str = "monitor_log_detail") -> str | None:
    """One request in labelled fields, its parameters, prompt, answer and links.

    Args:
        detail: ``analytics.request_detail``'s dict (``store.ROW_COLUMNS`` + ``time``).
        key: Widget key prefix.

    Returns:
        The request's context (``"chat:<id>"`` ...), "" or None: the caller may show
        that conversation (``render_conversation``).
    """
    tz = viewer_tz()
    ts = detail.get("ts")
    cost = detail.get("cost")
    rows = [
        ("Time", f"{local_time(ts, seconds=True, tz=tz)} (UTC {utc_iso(ts)})" if ts is not None else ""),
        ("Request id", detail.get("request_id") or ""),
        ("User", detail.get("user") or ""),
        ("Session", detail.get("session") or ""),
        ("Kind", _KIND_LABELS.get(detail.get("kind") or "", detail.get("kind") or "")),
        ("Model", detail.get("model") or ""),
        ("Backend", detail.get("backend") or ""),
        ("Outcome", _OUTCOME_LABELS.get(detail.get("outcome") or "", detail.get("outcome") or "")
         + (" (stopped before the end: partial answer and usage)" if _params(detail.get("params")).get("stopped")
            else "")),
        ("Error", detail.get("error_type") or "—"),
        ("HTTP status", "—" if detail.get("status_code") is None else str(detail["status_code"])),
        ("Latency", format_latency_ms(detail.get("latency_ms")) or "—"),
        ("Time to first token (TTFT)", format_latency_ms(detail.get("ttft_ms")) or "—"),
        ("Prompt tokens", _int(detail.get("prompt_tokens")) or "—"),
        ("Completion tokens", _int(detail.get("completion_tokens")) or "—"),
        ("Response size", "—" if detail.get("bytes") is None else f"{int(detail['bytes']):,} bytes"),
        ("Cost" if detail.get("outcome") != "cache_hit" else "Cost saved (cache hit)",
         format_cost(cost if isinstance(cost, Decimal) or cost is None else Decimal(str(cost)))),
        ("Belongs to", _context_label(detail.get("context"))),
    ]
    st.dataframe(pd.DataFrame(rows, columns=["Field", "Value"]), key=f"{key}_table", hide_index=True,
                 width="stretch", height=38 + 35 * len(rows),
                 column_config={"Field": st.column_config.TextColumn("Field", width="medium"),
                                "Value": st.column_config.TextColumn("Value", width="large")})
    params = _params(detail.get("params"))
    if params:
        st.markdown("**Parameters**")
        st.dataframe(pd.DataFrame([(PARAM_LABELS.get(k, k), _param_value(v)) for k, v in params.items()],
                                  columns=["Parameter", "Value"]),
                     key=f"{key}_params", hide_index=True, width="stretch")
    else:
        st.caption("Parameters: not recorded (requests before schema 6, or refused before they were prepared).")
    prompt, answer = detail.get("prompt"), detail.get("answer")
    st.markdown("**Prompt**")
    if prompt:
        st.code(prompt, language=None, wrap_lines=True)
    else:
        st.caption("Not stored (this server keeps no prompts, or the request had none).")
    if detail.get("kind") in ("text", "stream"):
        st.markdown("**Answer**")
        if answer:
            st.code(answer, language=None, wrap_lines=True)
            st.caption("Kept up to BLOSSOM_DASH_PROMPT_CHARS characters, like the prompt.")
        else:
            st.caption("Not stored: answers are kept only when prompts are (BLOSSOM_DASH_STORE_PROMPTS), "
                       "and only for requests that were answered.")
    context = detail.get("context") or ""
    if (link := context_link(context)) is not None:
        st.markdown(f"[{link[0]}]({link[1]}) · {_context_label(context)}")
    return context


def conversation_query(params: Mapping[str, Any]) -> str | None:
    """The context a Monitor URL asks to show: ``?chat=<id>``, ``?comparison=<id>`` or
    ``?batch=<job_id>`` -> ``"chat:<id>"`` ...; None when there is none."""
    for kind in ("chat", "comparison", "batch"):
        value = params.get(kind)
        if isinstance(value, str) and value.strip():
            return f"{kind}:{value.strip()}"
    return None


def close_conversation() -> None:
    """Drop ``?chat=``/``?comparison=``/``?batch=`` from the Monitor's URL (a button's callback)."""
    for kind in CONTEXT_PAGES:
        if kind in st.query_params:
            del st.query_params[kind]


def render_conversation(service: BlossomService, caller: Caller, context: str, *,
                        key: str = "monitor_conversation") -> None:
    """One chat's (comparison's, batch job's) requests in order, with tokens, latency and
    cost, and their totals (``monitor("conversation", ...)``; a member sees their own)."""
    frame = service.monitor("conversation", context, caller=caller)
    title = _context_label(context)
    if frame.empty:
        st.info(f"{title}: no recorded requests (or none of yours).", icon="🔎")
        return
    tz = viewer_tz()
    shown = pd.DataFrame({
        "Time": local_series(frame["ts"], tz=tz),
        "Request id": frame["request_id"], "User": frame["user"], "Model": frame["model"],
        "Outcome": frame["outcome"].map(lambda o: _OUTCOME_LABELS.get(o, o)),
        "Latency": frame["latency_ms"].map(format_latency_ms),
        "TTFT": frame["ttft_ms"].map(format_latency_ms),
        "Prompt tok.": frame["prompt_tokens"], "Compl. tok.": frame["completion_tokens"],
        "Cost": [format_cost(c) if c is not None or o == "ok" else "" for c, o in zip(frame["cost"], frame["outcome"],
                                                                                       strict=True)],
        "Prompt": frame["prompt"].fillna(""), "Answer": frame["answer"].fillna(""),
    })
    zone = zone_label(tz)
    st.dataframe(shown, key=f"{key}_table", hide_index=True, width="stretch",
                 column_config={"Time": st.column_config.DatetimeColumn(f"Time ({zone})",
                                                                        format="YYYY-MM-DD HH:mm:ss"),
                                "Prompt": st.column_config.TextColumn("Prompt", width="medium"),
                                "Answer": st.column_config.TextColumn("Answer", width="large")})
    served = frame[frame["outcome"] == "ok"]
    costs = [c for c in served["cost"] if c is not None]
    tokens = int(served["prompt_tokens"].fillna(0).sum() + served["completion_tokens"].fillna(0).sum())
    spent = format_cost(sum(costs, Decimal(0))) if costs else "unpriced"
    note = f" ({len(served) - len(costs)} unpriced)" if costs and len(costs) < len(served) else ""
    st.caption(f"{title} · {len(frame):,} requests, {len(served):,} served · {tokens:,} tokens · "
               f"{spent}{note} · times in {zone}")
    if (link := context_link(context)) is not None:
        st.markdown(f"[{link[0]}]({link[1]})")
