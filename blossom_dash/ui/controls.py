"""Controls' shared settings: the response cache and the rate limits, with their live figures.

Admins change them (the service checks the role again on every change); everyone else
sees the figures and the settings in words.
"""

from __future__ import annotations

import streamlit as st

from ..session import SessionHandle
from . import batch_view
from .feedback import guard


def cache_ui(handle: SessionHandle) -> None:
    """The response cache: settings (admins), Clear, and its entries, hit rate, size, savings."""
    service, caller, admin = handle.service, handle.caller, handle.caller.is_admin
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
                with guard("applying the cache settings"):
                    stats = service.configure_cache(enabled=enabled, ttl_s=float(ttl), max_entries=int(max_entries),
                                                    max_bytes=int(max_mib) * 1_048_576, caller=caller)
                    st.toast("Cache settings applied.", icon="✅")
        if st.button("Clear cache", key="controls_cache_clear", icon="🗑️"):
            kept = " (recordings kept)." if stats.persistent else "."
            with guard("clearing the cache"):
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


def limits_ui(handle: SessionHandle) -> None:
    """The per-user and global RPM limits (admins change them) and this user's live quota."""
    service, caller, admin = handle.service, handle.caller, handle.caller.is_admin
    st.subheader("Rate limits")
    user_rpm, global_rpm = service.rate_limits()
    if admin:
        with st.form("controls_limits_form"):
            new_user = st.number_input("Per-user limit (RPM)", 1, 100_000, user_rpm, key="controls_user_rpm",
                                       help=f"A user's batch may take {service.settings.batch_share:.0%} of it "
                                            "(`BLOSSOM_DASH_BATCH_SHARE`); the rest stays free for their chats.")
            new_global = st.number_input("Global limit (RPM)", 1, 1_000_000, global_rpm, key="controls_global_rpm")
            if st.form_submit_button("Apply limits", type="primary"):
                with guard("applying the limits"):
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


__all__ = ["cache_ui", "limits_ui"]
