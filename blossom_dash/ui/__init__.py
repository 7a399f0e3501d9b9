"""The one bridge to Streamlit: the cached service, per-session handles, shared widgets.

Pages import this module and ``blossom_dash``'s plain types; nothing else in the
package imports streamlit.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import streamlit as st
from pydantic import ValidationError

from ..errors import DashError
from ..gateway import Caller
from ..service import BlossomService, SessionHandle
from ..settings import Settings
from ..telemetry import analytics
from . import auth
from .safe import code_span

log = logging.getLogger("blossom_dash.ui")


def _secret_key() -> str | None:
    """``POLLINATIONS_API_KEY`` from ``.streamlit/secrets.toml``, if the file has it."""
    try:
        value = st.secrets.get("POLLINATIONS_API_KEY")
    except Exception:  # noqa: BLE001 - no secrets file is the normal case
        return None
    return str(value) if value else None


def load_settings() -> Settings:
    """Settings from the environment, with the key from secrets when the env has none.

    Raises:
        pydantic.ValidationError: a ``BLOSSOM_DASH_*`` variable has a bad value.
    """
    settings = Settings()
    if settings.api_key is None and (key := _secret_key()):
        settings = settings.model_copy(update={"api_key": Settings(api_key=key).api_key})
    return settings


def _close_service(service: BlossomService) -> None:
    service.close()


@st.cache_resource(show_spinner="Starting the Blossom service…", on_release=_close_service)
def get_service() -> BlossomService:
    """The process-wide service (one per Streamlit server), built on first use."""
    return BlossomService(load_settings())


def _auth_section() -> dict[str, Any] | None:
    """The ``[auth]`` secrets section (team mode), or None when there is none."""
    try:
        auth = st.secrets.get("auth")
    except Exception:  # noqa: BLE001 - no secrets file is the normal case
        return None
    return auth.to_dict() if hasattr(auth, "to_dict") else (dict(auth) if auth else None)


@st.cache_resource(show_spinner=False)
def _kiosk_ids() -> auth.KioskIds:
    """The process's kiosk id signer: ``BLOSSOM_DASH_KIOSK_SECRET``, else a random key."""
    secret = load_settings().kiosk_secret
    return auth.KioskIds(secret.get_secret_value().encode() if secret else None)


@st.cache_resource(show_spinner=False)
def _key_ring(service_id: int) -> auth.KeyRing:
    """Members' own keys per identity, for one service (one per server process)."""
    return auth.KeyRing()


def _kiosk_identity() -> str:
    """This browser session's kiosk identity, issuing a new signed id when it has none valid.

    The signed token lives in the session only, so a new tab is a new visitor; a
    token that fails its HMAC check is replaced, never trusted.
    """
    ids = _kiosk_ids()
    if (who := ids.verify(st.session_state.get("_kiosk_token"))) is not None:
        return who
    if "_kiosk_token" in st.session_state:
        log.warning("kiosk: a session's id failed its signature check; a new one is issued")
    st.session_state["_kiosk_token"] = ids.issue()
    return ids.verify(st.session_state["_kiosk_token"]) or "anonymous"


@dataclass(frozen=True)
class Access:
    """Who this run is, or why the page shows nothing of the app.

    Attributes:
        mode: ``"team"``, ``"local"`` or ``"kiosk"``.
        identity: The user identity, None when not signed in.
        role: ``"admin"``, ``"member"`` (or ``"viewer"``), None when not allowed.
        problem: ``"sign_in"``, ``"not_allowed"``, ``"not_loopback"``, or None when the app may run.
        providers: Team mode's sign-in providers (None is Streamlit's default one).
    """

    mode: str
    identity: str | None
    role: str | None
    problem: str | None = None
    providers: tuple[str | None, ...] = ()


def access(service: BlossomService) -> Access:
    """Decide this run's mode, identity and role (team, else kiosk, else local)."""
    section = _auth_section()
    if section is not None:
        names = tuple(auth.providers(section))
        who = auth.identity_of(st.user.to_dict())
        if who is None:
            return Access("team", None, None, "sign_in", names)
        role = service.role_for(who)
        return Access("team", who, role, None if role else "not_allowed", names)
    if service.settings.allow_anonymous:
        return Access("kiosk", _kiosk_identity(), "member")  # never an admin, whatever the lists say
    if not auth.is_loopback(st.get_option("server.address")):
        # Defence in depth behind the launcher: a plain `streamlit run --server.address 0.0.0.0`.
        return Access("local", auth.LOCAL_USER, None, "not_loopback")
    return Access("local", auth.LOCAL_USER, service.role_for(auth.LOCAL_USER))


def can_enter() -> bool:
    """Whether this run may see the app's pages (for ``app.py``'s navigation)."""
    try:
        return access(get_service()).problem is None
    except Exception:  # noqa: BLE001 - a service that cannot start: session_handle() says why
        return True


def _provider_label(name: str | None) -> str:
    return "Sign in" if name is None else f"Sign in with {name.replace('-', ' ').title()}"


def _stop_page(acc: Access) -> None:
    """The sign-in, "not allowed" or "loopback only" page instead of the app; then ``st.stop()``."""
    if acc.problem == "sign_in":
        st.title("Sign in")
        st.markdown("This blossom-dash belongs to a team: sign in to use it.")
        for name in acc.providers:
            if st.button(_provider_label(name), key=f"signin_{name or 'default'}", type="primary",
                         icon=":material/login:"):
                st.login() if name is None else st.login(name)
        if not acc.providers:
            st.error("Sign-in is on (`[auth]` in secrets) but names no provider with a `client_id`.")
    elif acc.problem == "not_allowed":
        st.title("Not allowed")
        st.error(f"You are signed in as `{acc.identity}`, who may not use this dashboard.", icon="🚫")
        st.caption("Ask an admin to add your e-mail or domain (BLOSSOM_DASH_ALLOWED_EMAILS / _ALLOWED_DOMAINS), "
                   "or sign in with another account.")
        if st.button("Sign out", key="signout_not_allowed", icon=":material/logout:"):
            st.logout()
    elif acc.problem == "not_loopback":
        st.error(auth.LOOPBACK_ONLY.format(address=st.get_option("server.address") or "every interface"),
                 icon="🔒")
    st.stop()


@st.cache_resource(scope="session", show_spinner=False)
def _handle(user: str, role: str, service_id: int, session_id: str) -> SessionHandle:
    service = get_service()
    return auth.KeyedHandle(service, _key_ring(service_id), user=user, session_id=session_id, role=role)


def service_or_stop() -> BlossomService:
    """``get_service()``, or a readable error and ``st.stop()`` if it cannot start."""
    try:
        return get_service()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first.get("loc", ("?",))[0]).upper()
        st.error(f"The setting BLOSSOM_DASH_{field} is invalid: {first.get('msg')}.")
        st.caption("Fix the environment variable (see the README's Settings table) and restart the app.")
    except DashError as exc:
        st.error(f"The service could not start: {exc.message}")
        st.caption(exc.hint)
    st.stop()
    raise AssertionError("unreachable")  # st.stop() raises


def session_handle() -> SessionHandle:
    """This browser session's handle: the signed-in identity, its role and its own key.

    Not signed in, not allowed, or local mode off loopback: shows that page instead
    and stops the script (``st.stop()``).
    """
    service = service_or_stop()
    acc = access(service)
    if acc.problem is not None or acc.identity is None or acc.role is None:
        _stop_page(acc)
    ctx = st.runtime.scriptrunner.get_script_run_ctx()
    session_id = ctx.session_id if ctx else "script"
    st.session_state["_access_mode"] = acc.mode
    return _handle(str(acc.identity), str(acc.role), id(service), session_id[:12])


#: The backend's health (``BlossomService.health()["status"]``) as an icon and a badge colour.
HEALTH_ICONS = {"ok": "🟢", "degraded": "🟠", "down": "🔴", "unknown": "⚪"}
HEALTH_COLORS = {"ok": "green", "degraded": "orange", "down": "red", "unknown": "gray"}
HEALTH_WORDS = {"ok": "answering", "degraded": "recent calls failed", "down": "failing, requests paused",
                "unknown": "not used yet"}


def backend_badge(service: BlossomService) -> None:
    """One line: which backend answers, how its live traffic is going, and that the demo is synthetic.

    Red while its circuit breaker is open, amber when recent calls failed, green only
    when calls succeed (``BlossomService.health``, judged from traffic, no probe).
    """
    health = service.health()
    status = health["status"]
    name = "DEMO BACKEND" if health["is_demo"] else health["name"].upper()
    badge = f":{HEALTH_COLORS[status]}-badge[{name} · {HEALTH_WORDS[status]}]"
    if status == "down":
        st.caption(f"{badge} `{health['base_url']}`: {health['detail']}.")
    elif health["is_demo"]:
        st.caption(f"{badge} Offline and synthetic: answers are generated locally at "
                   f"`{health['base_url']}`, not by a real model.")
    else:
        st.caption(f"{badge} Live backend `{health['base_url']}`" + (
            f": {health['detail']}." if status == "degraded" else "."))


def model_picker(service: BlossomService, kind: str, *, key: str, where: Any = None, label: str = "Model",
                 help: str | None = None) -> str | None:
    """A model ``selectbox`` over the live backend's list that also takes a typed name.

    When the backend could not list its models the picker says so (the names are the
    fallback, or none), so nobody mistakes them for the backend's own.

    Returns:
        The chosen or typed name, None when there is none.
    """
    where = where or st
    try:
        models = service.model_list(kind)
    except DashError as err:
        show_error(err)
        return None
    if models.fallback:
        where.caption(f"⚠️ {models.detail} Type a model name the backend serves.")
    elif models.source == "recorded":
        where.caption("Replay only: these are the models with recorded answers.")
    return where.selectbox(label, list(models.names), key=key, accept_new_options=True, help=help,
                           placeholder="Type a model name")


def show_error(err: DashError) -> None:
    """Render a service error as words: what happened, and what to do."""
    text = f"**{err.message}**" + (f"\n\n{err.hint}" if err.hint else "")
    if err.severity == "warning":
        st.warning(text, icon="⏳")
    else:
        st.error(text, icon="⚠️")


@contextmanager
def guard(what: str) -> Iterator[None]:
    """Turn any error inside the block into a message on the page, never a traceback.

    ``DashError`` shows its message and hint; anything else (a bug) is logged with
    its traceback on the server and shown as one sentence.
    """
    try:
        yield
    except DashError as err:
        show_error(err)
    except Exception as exc:
        log.exception("unexpected error while %s", what)
        st.error(f"Something went wrong while {what}: {type(exc).__name__}. The rest of the app still works; "
                 "try again, and report it if it repeats.", icon="⚠️")


def sidebar(handle: SessionHandle) -> None:
    """The shared sidebar: backend, who is signed in with which role and key, the quota, sign-out."""
    service = handle.service
    health = service.health()
    with st.sidebar:
        name = "demo (synthetic)" if health["is_demo"] else health["name"]
        st.markdown(f"**Backend:** {HEALTH_ICONS[health['status']]} {name} · {HEALTH_WORDS[health['status']]}",
                    help=f"{health['label']}: circuit breaker {health['circuit']}; {health['detail']}.")
        status = handle.rate_status()
        st.progress(status.user.remaining / status.user.limit,
                    text=f"Your quota: {status.user.remaining}/{status.user.limit} requests per minute")
        mode = st.session_state.get("_access_mode", "local")
        who = "a kiosk visitor" if mode == "kiosk" else f"`{handle.user}`"
        st.caption(f"Signed in as {who} · **{handle.role}**"
                   + (" (local mode)" if mode == "local" else ""))
        st.caption("🔑 Your requests use **your own key**." if handle.has_session_key
                   else "Your requests use **the server's key**.")
        if mode == "team" and st.button("Sign out", key="sidebar_signout", icon=":material/logout:"):
            st.logout()


def result_caption(result: object) -> str:
    """One line under an answer: model, latency, TTFT, tokens, cache, request id."""
    parts = [code_span(str(getattr(result, "model", "?"))), f"{getattr(result, 'latency_ms', 0):,.0f} ms"]
    ttft = getattr(result, "ttft_ms", None)
    if ttft is not None and getattr(result, "usage", None) is not None:
        parts.append(f"TTFT {ttft:,.0f} ms")
    usage = getattr(result, "usage", None)
    if usage is not None:
        parts.append(f"{usage.prompt_tokens:,} → {usage.completion_tokens:,} tokens")
    if getattr(result, "cached", False):
        parts.append("⚡ from cache")
    if getattr(result, "stopped_early", False):
        parts.append("stopped early")
    parts.append(f"id `{getattr(result, 'request_id', '')}`")
    return " · ".join(parts)


# ----- Monitor helpers ------------------------------------------------------------------

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
    """

    label: str
    window_s: int | None
    fixed: tuple[float, float] | None
    filters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    run_every: int | None = None
    note: str = ""

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


def _utc(value: dt.datetime) -> float:
    return value.replace(tzinfo=dt.UTC).timestamp()


def monitor_controls_ui(service: BlossomService) -> MonitorControls:
    """The Monitor's range, refresh and filter widgets (keys ``monitor_*``)."""
    c1, c2, c3 = st.columns([5, 2, 1.4], vertical_alignment="bottom")
    label = c1.segmented_control("Time range", [*analytics.RANGES, "Custom"], default="1 h", key="monitor_range",
                                 required=True) or "1 h"
    paused = c2.toggle("Pause live refresh", key="monitor_paused")
    refresh_s = c3.selectbox("Refresh every", [2, 5, 10, 30, 60], index=1, key="monitor_refresh_s",
                             format_func=lambda s: f"{s} s", disabled=paused)
    now = time.time()
    fixed = None
    if label == "Custom":
        end = dt.datetime.fromtimestamp(now // 60 * 60 + 60, dt.UTC).replace(tzinfo=None)
        st.session_state.setdefault("monitor_custom_since", end - dt.timedelta(days=1))
        st.session_state.setdefault("monitor_custom_until", end)
        a, b = st.columns(2)
        since = a.datetime_input("From (UTC)", key="monitor_custom_since", step=60)
        until = b.datetime_input("To (UTC)", key="monitor_custom_until", step=60)
        if since is None or until is None or until <= since:
            st.warning("Pick a custom range whose end comes after its start.", icon="📅")
            st.stop()
        fixed = (_utc(since), _utc(until))
    span = fixed[1] - fixed[0] if fixed else analytics.RANGES[label]
    since_ts = fixed[0] if fixed else now - span
    step = max(60, analytics.bucket_seconds(span))
    options = load_filter_options(service, service.store_url, int(since_ts // step * step))
    filters: dict[str, tuple[str, ...]] = {}
    for col, (name, title) in zip(st.columns(len(MONITOR_FILTERS)), MONITOR_FILTERS.items(), strict=True):
        chosen = st.session_state.get(f"monitor_filter_{name}", [])
        known = analytics.OUTCOMES if name == "outcomes" else options[name]
        picked = col.multiselect(title, sorted({*known, *chosen}), key=f"monitor_filter_{name}", placeholder="All")
        if picked:
            filters[name] = tuple(picked)
    floor = analytics.min_refresh_s(span)
    if paused:
        run_every, note = None, "paused"
    elif fixed and fixed[1] < now:
        run_every, note = None, "a past range: nothing new to refresh"
    else:
        run_every = max(refresh_s, floor)
        note = f"refreshes every {run_every} s" + (f" (at least {floor} s for a {label} range)"
                                                   if floor > refresh_s else "")
    return MonitorControls(label, None if fixed else int(span), fixed, filters, run_every, note)


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


def _delta(cur: Any, prev: Any, kind: str) -> str | int | None:
    if cur is None or prev is None:
        return None
    diff = cur - prev
    shown = {"count": 0.5, "rate": 0.0005, "ms": 0.5}[kind]  # below what the text can show: no change
    if abs(diff) < shown:
        return 0  # a number: st.metric greys a zero delta out
    if kind == "count":
        return f"{diff:+,}"
    if kind == "rate":
        return f"{diff * 100:+.1f} pp"
    return ("+" if diff > 0 else "-") + format_ms(abs(diff))


def kpi_row(current: dict[str, Any], previous: dict[str, Any], *, vs: str, saved_ms: float = 0.0,
            unpriced_hits: int = 0) -> None:
    """The Monitor's KPIs, each with its change against the previous period.

    Two rows of six: the counts and rates (requests, error rate, rejected,
    rate-limited, cache hit rate, time saved by the cache), then latency, TTFT and
    tokens. A rise in the error rate, a latency, the TTFT or the rejected or
    rate-limited count reads as bad (``delta_color="inverse"``). Without requests in
    the previous period, no change is shown rather than an infinite one. The figures'
    definitions are ``analytics.kpis``'s.
    """
    has_prev = previous["requests"] > 0
    estimate = (f"Estimated from a log-spaced histogram: within {analytics.LATENCY_BIN_ERROR:.1%} of the exact "
                "value.")
    served = f"Served requests only. {estimate}"
    specs: list[tuple[str, str, str, str, str]] = [
        ("Requests", f"{current['requests']:,}", "requests", "count", f"{current['rpm']:,.2f} requests per minute"),
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
        ("Tokens", f"{current['tokens']:,}", "tokens", "count",
         f"{current['prompt_tokens']:,} prompt + {current['completion_tokens']:,} completion (served requests)"),
    ]
    bad_when_up = {"error_rate", "rejected", "rate_limited", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms",
                   "p50_ttft_ms"}
    top, bottom = st.columns(6), st.columns(6)
    for col, (label, value, key, kind, help_text) in zip([*top[:5], *bottom[:5]], specs, strict=True):
        col.metric(label, value, _delta(current[key], previous[key], kind) if has_prev else None,
                   delta_color="inverse" if key in bad_when_up else "normal",
                   delta_description=vs if has_prev else None, help=help_text)
    saved = "—" if not saved_ms else format_ms(saved_ms) if saved_ms < 60_000 else format_duration(saved_ms / 1000)
    top[5].metric("Time saved by cache", saved,
                  help="Each hit is priced at the median latency of served requests of the same model in this "
                       "range (an estimate)." + (f" {unpriced_hits:,} hits had no such reference." if unpriced_hits
                                                 else ""))


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
    when = dt.datetime.fromtimestamp(cutoff, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
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
                                "last_seen": st.column_config.DatetimeColumn("Last seen (UTC)",
                                                                             format="YYYY-MM-DD HH:mm:ss")})


def render_request_table(frame: Any) -> None:
    """One page of ``analytics.request_log``."""
    if frame.empty:
        st.info("No request matches this range, these filters and this search.", icon="🔎")
        return
    num, text = st.column_config.NumberColumn, st.column_config.TextColumn
    st.dataframe(frame, key="monitor_log_table", hide_index=True, placeholder="—",
                 column_order=("ts", "request_id", "user", "model", "outcome", "latency_ms", "ttft_ms", "prompt_tokens",
                               "completion_tokens", "error_type", "status_code", "kind", "prompt"),
                 column_config={"ts": st.column_config.DatetimeColumn("Time (UTC)", format="YYYY-MM-DD HH:mm:ss"),
                                "request_id": text("Request id"), "user": text("User"), "model": text("Model"),
                                "outcome": text("Outcome"), "latency_ms": num("Latency (ms)", format="%.0f"),
                                "ttft_ms": num("TTFT (ms)", format="%.0f"), "prompt_tokens": num("Prompt tok."),
                                "completion_tokens": num("Compl. tok."), "error_type": text("Error"),
                                "status_code": num("Status", format="%d"), "kind": text("Kind"),
                                "prompt": text("Prompt", width="large")})


def render_request_detail(detail: dict[str, Any]) -> None:
    """Every stored field of one request, as a two-column table."""
    rows = [{"field": k, "value": "" if v is None else str(v)} for k, v in detail.items()]
    st.dataframe(rows, key="monitor_log_detail_table", hide_index=True, width="stretch", height=38 + 35 * len(rows),
                 column_config={"field": st.column_config.TextColumn("Field", width="small"),
                                "value": st.column_config.TextColumn("Value", width="large")})
