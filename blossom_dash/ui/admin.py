"""Admin-only widgets: the audit log of team-wide changes."""

from __future__ import annotations

import streamlit as st

from ..gateway import Caller
from ..service import BlossomService
from ..telemetry.export import to_csv


def audit_ui(service: BlossomService, caller: Caller) -> None:
    """The newest admin actions (who, when, what, old -> new) and a CSV download; admins only.

    The service refuses anyone else (``PermissionDenied``); for them this draws nothing.
    """
    if not caller.is_admin:
        return
    st.subheader("Audit log")
    st.caption("Every change to the backend, cache, limits, replay and history, by whom and when "
               "(kept in the usage database).")
    entries = service.audit_entries(caller=caller)
    if entries.empty:
        st.info("No admin action yet.", icon="📜")
        return
    st.dataframe(entries, hide_index=True, width="stretch", key="controls_audit_table",
                 column_config={"ts": st.column_config.DatetimeColumn("When (UTC)", format="YYYY-MM-DD HH:mm:ss"),
                                "user": "Who", "action": "What", "old": "Before", "new": "After"})
    st.download_button("Download the audit log (CSV)", data=lambda: to_csv(service.audit_entries(caller=caller)),
                       file_name="blossom-audit.csv", mime="text/csv", icon="⬇️", key="controls_audit_csv",
                       on_click="ignore")
