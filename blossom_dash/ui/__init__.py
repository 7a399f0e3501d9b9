"""The one bridge to Streamlit: the cached service, per-session handles, shared widgets.

Pages import this module and ``blossom_dash``'s plain types; nothing else in the
package imports streamlit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import streamlit as st
from pydantic import ValidationError

from ..errors import DashError
from ..pricing import format_cost
from ..service import BlossomService
from ..session import SessionHandle
from ..settings import Settings
from . import auth
from .account import render_account_sidebar
from .batch_view import batch_quota_text
from .budget import render_budget_sidebar
from .feedback import guard, history_banner, show_error
from .model_facts import render_model_facts
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
    except Exception as exc:  # a bug or an unforeseen failure: words on the page, the traceback in the log
        log.exception("the service could not start")
        st.error(f"The service could not start: {type(exc).__name__}. The server's log has the details.")
        st.caption("Fix the cause and reload the page; report it if it repeats.")
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
    st.session_state["_is_admin"] = acc.role == "admin"
    return _handle(str(acc.identity), str(acc.role), id(service), session_id[:12])


#: The backend's health (``BlossomService.health()["status"]``) as an icon and a badge colour.
HEALTH_ICONS = {"ok": "🟢", "degraded": "🟠", "down": "🔴", "unknown": "⚪"}
HEALTH_COLORS = {"ok": "green", "degraded": "orange", "down": "red", "unknown": "gray"}
HEALTH_WORDS = {"ok": "answering", "degraded": "recent calls failed", "down": "failing, requests paused",
                "unknown": "not used yet"}


def backend_badge(service: BlossomService) -> None:
    """One line: which backend answers, how its live traffic is going, and that the demo is synthetic;
    above it, when request history is paused or off, a banner that says why (``history_banner``).

    Red while its circuit breaker is open, amber when recent calls failed, green only
    when calls succeed (``BlossomService.health``, judged from traffic, no probe).
    """
    health = service.health()
    # Every page draws this badge, so every page says it; the server's paths only to an admin.
    history_banner(service.storage_status(), details=bool(st.session_state.get("_is_admin", False)))
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
    """A model ``selectbox`` over the live backend's list that also takes a typed name, with
    the chosen model's facts under it (``model_facts.render_model_facts``: price, paid-only,
    the backend's health, our own success rate and p50 latency).

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
    chosen = where.selectbox(label, list(models.names), key=key, accept_new_options=True, help=help,
                             placeholder="Type a model name")
    render_model_facts(service, kind, [chosen], where=where)
    return chosen


def sidebar(handle: SessionHandle) -> None:
    """The shared sidebar: backend, who is signed in with which role and key, that key's type and
    balance (``account.render_account_sidebar``), the quota, sign-out."""
    service = handle.service
    health = service.health()
    with st.sidebar:
        name = "demo (synthetic)" if health["is_demo"] else health["name"]
        st.markdown(f"**Backend:** {HEALTH_ICONS[health['status']]} {name} · {HEALTH_WORDS[health['status']]}",
                    help=f"{health['label']}: circuit breaker {health['circuit']}; {health['detail']}.")
        status = handle.rate_status()
        if status.unavailable:  # the shared Redis is down: the limits fail closed, no quota to show
            st.warning(f"{status.unavailable} Requests are refused until it answers again.", icon="🔌")
        else:
            st.progress(status.user.remaining / status.user.limit,
                        text=f"Your quota: {status.user.remaining}/{status.user.limit} requests per minute")
            if held := batch_quota_text(status):  # a running batch holds part of it (its share)
                st.caption(held)
        render_budget_sidebar(service, handle.caller)  # a line per budget set; a warning from 80 %
        mode = st.session_state.get("_access_mode", "local")
        who = "a kiosk visitor" if mode == "kiosk" else f"`{handle.user}`"
        st.caption(f"Signed in as {who} · **{handle.role}**"
                   + (" (local mode)" if mode == "local" else ""))
        st.caption("🔑 Your requests use **your own key**." if handle.has_session_key
                   else "Your requests use **the server's key**.")
        render_account_sidebar(service, handle.caller)  # the key's type and balance, when the backend reports them
        if mode == "team" and st.button("Sign out", key="sidebar_signout", icon=":material/logout:"):
            st.logout()


def cost_text(result: object) -> str:
    """An answer's cost in words: ``0.000136 pollen``, ``saved 0.000136 pollen`` for a
    cached one (what the cache saved), ``unpriced`` when the model has no price; ""
    for a value that carries no cost at all (or does not know it: ``cost_known``)."""
    if not hasattr(result, "cost") or not getattr(result, "cost_known", True):
        return ""
    cost = getattr(result, "cost", None)
    if cost is None:
        return "unpriced"
    return f"saved {format_cost(cost)}" if getattr(result, "cached", False) else format_cost(cost)


def result_caption(result: object) -> str:
    """One line under an answer: model, latency, TTFT, tokens, cost, cache, request id."""
    parts = [code_span(str(getattr(result, "model", "?"))), f"{getattr(result, 'latency_ms', 0):,.0f} ms"]
    ttft = getattr(result, "ttft_ms", None)
    if ttft is not None and getattr(result, "usage", None) is not None:
        parts.append(f"TTFT {ttft:,.0f} ms")
    usage = getattr(result, "usage", None)
    if usage is not None:
        parts.append(f"{usage.prompt_tokens:,} → {usage.completion_tokens:,} tokens")
    if cost := cost_text(result):
        parts.append(cost)
    if getattr(result, "cached", False):
        parts.append("⚡ from cache")
    if getattr(result, "stopped_early", False):
        parts.append("stopped early")
    parts.append(f"id `{getattr(result, 'request_id', '')}`")
    return " · ".join(parts)


# The Monitor page's widgets live in ui/monitor.py; pages reach them as ui.<name>.
from .monitor import (  # noqa: E402 - after the shared helpers they build on
    MONITOR_FILTERS,
    MonitorControls,
    chart_slots,
    download_buttons,
    format_duration,
    format_ms,
    format_time,
    kpi_row,
    load_filter_options,
    monitor_controls_ui,
    monitor_figures,
    render_request_detail,
    render_request_table,
    render_users,
    retention_ui,
    time_saved_metric,
)

__all__ = [
    "Access",
    "HEALTH_COLORS",
    "HEALTH_ICONS",
    "HEALTH_WORDS",
    "MONITOR_FILTERS",
    "MonitorControls",
    "access",
    "backend_badge",
    "can_enter",
    "chart_slots",
    "download_buttons",
    "format_duration",
    "format_ms",
    "format_time",
    "get_service",
    "guard",
    "history_banner",
    "kpi_row",
    "load_filter_options",
    "load_settings",
    "model_picker",
    "monitor_controls_ui",
    "monitor_figures",
    "render_model_facts",
    "render_request_detail",
    "render_request_table",
    "render_users",
    "cost_text",
    "result_caption",
    "retention_ui",
    "service_or_stop",
    "session_handle",
    "show_error",
    "sidebar",
    "time_saved_metric",
]
