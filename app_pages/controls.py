"""Controls: the live cache, rate limits, backend, API key and replay recordings (they apply at once)."""

import streamlit as st

from blossom_dash import ui
from blossom_dash.ui import account as account_ui
from blossom_dash.ui import admin as admin_ui
from blossom_dash.ui import batch_view
from blossom_dash.ui import budget as budget_ui

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
    st.subheader("Response cache")
    stats = service.cache_stats()
    if admin:  # members see the figures only
        with st.form("controls_cache_form"):
            enabled = st.toggle("Cache enabled", value=stats.enabled, key="controls_cache_enabled")
            ttl = st.number_input("TTL (seconds)", 1, 7 * 86400, int(stats.ttl_s), key="controls_cache_ttl")
            c = st.columns(2)
            max_entries = c[0].number_input("Max entries", 1, 100_000, stats.max_entries, key="controls_cache_max")
            max_mib = c[1].number_input("Max size (MiB)", 1, 65_536, max(1, stats.max_bytes // 1_048_576),
                                        key="controls_cache_max_mib")
            if st.form_submit_button("Apply cache settings", type="primary"):
                with ui.guard("applying the cache settings"):
                    stats = service.configure_cache(enabled=enabled, ttl_s=float(ttl), max_entries=int(max_entries),
                                                    max_bytes=int(max_mib) * 1_048_576, caller=caller)
                    st.toast("Cache settings applied.", icon="✅")
        if st.button("Clear cache", key="controls_cache_clear", icon="🗑️"):
            kept = " (recordings kept)." if stats.persistent else "."
            with ui.guard("clearing the cache"):
                st.toast(f"Cleared {service.clear_cache(caller=caller)} entries{kept}", icon="🗑️")
            stats = service.cache_stats()
    else:
        st.caption(f"TTL {stats.ttl_s:,.0f} s · at most {stats.max_entries:,} entries and "
                   f"{stats.max_bytes / 1_048_576:,.0f} MiB (an admin changes these).")
    if stats.unavailable:
        st.warning(f"{stats.unavailable} Nothing is cached meanwhile; these are the last figures read.",
                   icon="🔌")
    where = "all replicas together (shared in Redis)" if stats.shared else "this process, since it started"
    m = st.columns(3)
    m[0].metric("Entries", f"{stats.entries:,} / {stats.max_entries:,}")
    m[1].metric("Hit rate", f"{stats.hit_rate:.0%}", help=f"{stats.hits:,} hits, {stats.misses:,} misses: {where}")
    m[2].metric("Size", f"{stats.bytes / 1_048_576:,.1f} MiB", help=f"At most {stats.max_bytes / 1_048_576:,.0f} MiB")
    st.caption(f"{stats.evictions:,} evicted (full) · {stats.expirations:,} expired (TTL) · "
               f"{stats.saved_ms / 1000:,.1f} s of backend time saved · "
               + ("**on**" if stats.enabled else "**off**: every request goes to the backend"))
    st.caption(f"Answers larger than {service.settings.max_response_bytes / 1_048_576:,.0f} MiB are refused "
               "and never cached (`BLOSSOM_DASH_MAX_RESPONSE_BYTES`).")

with limit_col:
    st.subheader("Rate limits")
    user_rpm, global_rpm = service.rate_limits()
    if admin:
        with st.form("controls_limits_form"):
            new_user = st.number_input("Per-user limit (RPM)", 1, 100_000, user_rpm, key="controls_user_rpm",
                                       help=f"A user's batch may take {service.settings.batch_share:.0%} of it "
                                            "(`BLOSSOM_DASH_BATCH_SHARE`); the rest stays free for their chats.")
            new_global = st.number_input("Global limit (RPM)", 1, 1_000_000, global_rpm, key="controls_global_rpm")
            if st.form_submit_button("Apply limits", type="primary"):
                with ui.guard("applying the limits"):
                    service.configure_limits(per_user_rpm=int(new_user), global_rpm=int(new_global), caller=caller)
                    st.toast("Limits applied. Requests already made in the last minute still count against a new "
                             "limit.", icon="✅")
    else:
        st.caption(f"{user_rpm:,} requests per minute per user, {global_rpm:,} for everyone together "
                   "(an admin changes these).")

    @st.fragment(run_every=1)
    def quota() -> None:
        """This user's and the global moving windows, counting down live."""
        status = handle.rate_status()
        q = st.columns(2)
        down = bool(status.unavailable)  # the shared store is unreachable: no count to show
        q[0].metric("Your remaining", "—" if down else f"{status.user.remaining} / {status.user.limit}",
                    help="Requests you can still make in the 60 s moving window")
        q[1].metric("Global remaining", "—" if down else f"{status.global_.remaining} / {status.global_.limit}")
        if down:
            st.warning("The rate limits cannot be read: requests are refused until the shared store answers.",
                       icon="🔌")
        elif status.user.remaining == 0:
            st.warning(f"You are at your limit: the next slot frees in {status.user.reset_in_s:.0f} s.", icon="⏳")
        elif status.user.reset_in_s:
            st.caption(f"Your oldest request leaves the window in {status.user.reset_in_s:.0f} s.")
        if held := batch_view.batch_quota_text(status):  # a running batch holds part of the window
            st.caption(held)

    quota()

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
