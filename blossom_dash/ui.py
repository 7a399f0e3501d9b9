"""The one bridge to Streamlit: the cached service, per-session handles, shared widgets.

Pages import this module and ``blossom_dash``'s plain types; nothing else in the
package imports streamlit.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st
from pydantic import ValidationError

from .errors import DashError
from .service import BlossomService, SessionHandle
from .settings import Settings

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


def _user_id() -> str:
    """A stable per-browser identity until there is login.

    The logged-in e-mail when ``st.user`` has one; else a short hash of Streamlit's
    XSRF cookie, which a browser keeps across reloads and tabs; else "anonymous".
    """
    try:
        if st.user.is_logged_in and st.user.get("email"):
            return str(st.user.get("email"))
    except Exception:  # noqa: BLE001 - auth not configured
        pass
    cookie = st.context.cookies.get("_streamlit_xsrf") if st.context.cookies else None
    if cookie:
        return "browser-" + hashlib.sha256(cookie.encode()).hexdigest()[:8]
    return "anonymous"


@st.cache_resource(scope="session", show_spinner=False)
def _handle(user: str, service_id: int, session_id: str) -> SessionHandle:
    return get_service().session(user, session_id)


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
    """This browser session's handle (user identity + optional session API key)."""
    service = service_or_stop()
    ctx = st.runtime.scriptrunner.get_script_run_ctx()
    session_id = ctx.session_id if ctx else "script"
    return _handle(_user_id(), id(service), session_id[:12])


def backend_badge(service: BlossomService) -> None:
    """One line that says which backend answers, and that the demo is synthetic."""
    info = service.backend_info()
    if info["is_demo"]:
        st.caption(f":orange-badge[DEMO BACKEND] Offline and synthetic: answers are generated locally at "
                   f"`{info['base_url']}`, not by a real model.")
    else:
        st.caption(f":green-badge[{info['name'].upper()}] Live backend `{info['base_url']}`.")


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
    """The shared sidebar: backend, identity, and this user's remaining quota."""
    service = handle.service
    info = service.backend_info()
    with st.sidebar:
        st.markdown(f"**Backend:** {'🟠 demo (synthetic)' if info['is_demo'] else '🟢 ' + info['name']}")
        status = handle.rate_status()
        st.progress(status.user.remaining / status.user.limit,
                    text=f"Your quota: {status.user.remaining}/{status.user.limit} requests per minute")
        st.caption(f"Signed in as `{handle.user}`" + (" · session API key set" if handle.has_session_key else ""))


def result_caption(result: object) -> str:
    """One line under an answer: model, latency, TTFT, tokens, cache, request id."""
    parts = [f"`{getattr(result, 'model', '?')}`", f"{getattr(result, 'latency_ms', 0):,.0f} ms"]
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
