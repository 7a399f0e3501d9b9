"""Controls: the live cache, rate limits, backend, API key and replay recordings (they apply at once)."""

import streamlit as st

from blossom_dash import ui
from blossom_dash.ui import account as account_ui
from blossom_dash.ui import admin as admin_ui
from blossom_dash.ui import budget as budget_ui
from blossom_dash.ui import controls as controls_ui

handle = ui.session_handle()
service = handle.service
st.title("Controls")
ui.backend_badge(service)
st.caption("Cache, limits and backend are shared by everyone using this app; the API key you enter below is "
           "yours only.")
admin = handle.caller.is_admin
caller = handle.caller
if not admin:
    st.info(f"You are signed in as a **{handle.role}**: only an admin changes the cache, the limits, the backend "
            "and replay. Their settings are shown here; you can set a key for your own requests.", icon="🔒")

cache_col, limit_col = st.columns(2)

with cache_col:
    controls_ui.cache_ui(handle)

with limit_col:
    controls_ui.limits_ui(handle)

st.divider()
backend_col, key_col = st.columns(2)

with backend_col:
    st.subheader("Backend")
    health = service.health()
    probe = f" · last check {health['latency_ms']:,.0f} ms" if health["latency_ms"] is not None else ""
    state = health["detail"] if health["status"] == "down" else f"circuit breaker **closed** · {health['detail']}"
    st.markdown(f"{ui.HEALTH_ICONS[health['status']]} **{health['label']}** — {state}{probe}")
    if st.button("Check now", key="controls_health", icon="🔄",
                 help="Ask the backend's model list (no generation is spent); counts as traffic."):
        service.health(max_age_s=0)
        st.rerun()
    admin_ui.backend_switch_ui(service, caller)

with key_col:
    st.subheader("API key")
    configured = service.settings.api_key is not None
    st.markdown(("✅ A key is configured for the app (environment or secrets)." if configured else
                 "No app-wide key: set `POLLINATIONS_API_KEY` or `.streamlit/secrets.toml`.")
                + ("\n\n🔑 **Your session key is set** (used for your requests only; never shown)."
                   if handle.has_session_key else ""))

    def _use_key(clear: bool = False) -> None:
        """Hand the typed key to this session's handle, then wipe the field."""
        handle.set_api_key(None if clear else st.session_state.get("controls_session_key", ""))
        st.session_state["controls_session_key"] = ""

    with st.form("controls_key_form"):
        st.text_input("Use a key for this session only", type="password", key="controls_session_key",
                      placeholder="sk_… or pk_…")
        c1, c2 = st.columns(2)
        c1.form_submit_button("Use this key", on_click=_use_key)
        c2.form_submit_button("Forget my key", on_click=_use_key, kwargs={"clear": True})
    st.markdown("**The server key's account**")
    with ui.guard("reading the account"):
        account_ui.render_account_controls(service, caller=caller)

st.divider()
st.subheader("Replay")
st.caption("Record answers on disk so they survive restarts, then replay them with no backend at all: record a "
           "demo at the office, export it, import it on stage and turn *replay only* on.")
admin_ui.replay_ui(service, caller)

st.divider()
with ui.guard("reading the budgets"):
    budget_ui.budgets_ui(service, caller)

with ui.guard("reading the alerts"):
    admin_ui.alerts_ui(service, caller)
st.divider()
with ui.guard("reading the audit log"):
    admin_ui.audit_ui(service, caller)
