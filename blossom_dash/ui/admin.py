"""Controls' team-wide widgets: the backend switch, replay recordings, alerts, the audit log.

Each shows an admin the controls and anyone else what is set; the service refuses a
non-admin whatever this draws.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from ..gateway import Caller
from ..policies.replay_zip import MAX_IMPORT_BYTES
from ..service import BlossomService
from ..telemetry.export import to_csv
from .feedback import guard

#: How each delivery status reads on Controls.
_ALERT_STATUS = {"sent": "✅ sent", "queued": "⏳ queued", "retrying": "🔁 retrying", "failed": "❌ failed",
                 "not sent": "➖ not sent"}


def alerts_ui(service: BlossomService, caller: Caller) -> None:
    """The last 50 alerts (budget, error rate, circuit) with their delivery status; admins only.

    Draws nothing for anyone else (the service refuses them: ``PermissionDenied``).
    """
    if not caller.is_admin:
        return
    st.divider()
    st.subheader("Alerts")
    found = service.alerts(caller=caller)
    where = (f"POSTed to `{found['webhook']}` (`BLOSSOM_DASH_ALERT_WEBHOOK`)" if found["webhook"]
             else "not sent anywhere: set `BLOSSOM_DASH_ALERT_WEBHOOK` to a webhook URL (Slack-compatible JSON)")
    st.caption(f"Budget 80 % and 100 %, a high error rate over 5 minutes, the circuit breaker opening and closing: "
               f"{where}. Each crossing is sent once.")
    if found["webhook"] and st.button("Send a test alert", key="controls_alerts_test", icon="🔔"):
        with guard("sending a test alert"):
            service.send_test_alert(caller=caller)
            st.toast("Test alert queued: its delivery shows below.", icon="🔔")
            found = service.alerts(caller=caller)
    if not found["alerts"]:
        st.info("No alert since this process started.", icon="🔔")
        return
    rows = [{"at": pd.Timestamp(a.at, unit="s"), "kind": a.kind, "alert": a.text,
             "status": _ALERT_STATUS.get(a.status, a.status), "attempts": a.attempts, "reason": a.reason}
            for a in found["alerts"]]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="controls_alerts_table",
                 column_config={"at": st.column_config.DatetimeColumn("When (UTC)", format="YYYY-MM-DD HH:mm:ss"),
                                "kind": "Kind", "alert": "Alert", "status": "Delivery", "attempts": "Attempts",
                                "reason": "Why"})


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


def backend_switch_ui(service: BlossomService, caller: Caller) -> None:
    """Switch among the allow-listed backends (and, when allowed, a typed URL); admins only."""
    admin = caller.is_admin
    if admin:
        with st.form("controls_backend_form"):
            custom = service.settings.allow_custom_backend
            choice = st.radio("Switch to", service.backend_choices() + (["custom URL"] if custom else []),
                              horizontal=True, key="controls_backend_choice",
                              help="The allow-listed backends (BLOSSOM_DASH_BACKENDS). The server's Pollinations key "
                                   "goes to Pollinations only.")
            url = st.text_input("Custom base URL", key="controls_backend_url", disabled=not custom,
                                placeholder="http://127.0.0.1:11434 (gets no key)" if custom else
                                "off: set BLOSSOM_DASH_ALLOW_CUSTOM_BACKEND=true to allow one")
            if st.form_submit_button("Switch backend"):
                with guard("switching backend"):
                    spec = url.strip() if choice == "custom URL" else choice
                    info = service.switch_backend(spec, caller=caller)
                    st.success(f"Now using {info['label']}.")
                    st.rerun()
    else:
        st.caption(f"Backends an admin can switch to: {', '.join(service.backend_choices())}.")


def replay_ui(service: BlossomService, caller: Caller) -> None:
    """Recording and replay-only switches, import, clear, export (admins), and the recorded figures."""
    admin = caller.is_admin
    rec_col, file_col = st.columns(2)
    with rec_col:
        rstats = service.cache_stats()
        if admin:
            with st.form("controls_replay_form"):
                persistent = st.toggle("Record answers (persistent cache)", value=rstats.persistent,
                                       key="controls_replay_persistent",
                                       help="Each answer is also written under the data directory and served after "
                                            "a restart.")
                replay_only = st.toggle("Replay only: never call a backend", value=rstats.replay_only,
                                        key="controls_replay_only", help="Recorded prompts answer at once and spend no "
                                        "rate limit; anything else is refused with a message.")
                if st.form_submit_button("Apply replay settings", type="primary"):
                    with guard("changing the replay settings"):
                        service.configure_replay(persistent=persistent, replay_only=replay_only, caller=caller)
                        st.toast("Replay settings applied.", icon="✅")
        figures = st.container()  # filled last, so it counts what an import or a clear below just did
    with file_col:
        export = st.container()
        if admin:
            upload = st.file_uploader("Import recordings (.zip from Export)", type=["zip"],
                                      key="controls_replay_upload", max_upload_size=MAX_IMPORT_BYTES // 1_048_576)
            if st.button("Import", key="controls_replay_import", icon="⬆️", disabled=upload is None) and upload:
                with guard("importing recordings"):
                    report = service.import_recordings(upload.getvalue(), caller=caller)
                    st.success(report.describe(), icon="📼")
            with st.popover("Clear recordings…", icon="🗑️"):
                st.markdown("Delete **every** recorded answer? Export them first to keep a copy.")
                if st.button("Delete all recordings", key="controls_replay_clear", type="primary"):
                    with guard("deleting recordings"):
                        st.toast(f"Deleted {service.clear_recordings(caller=caller):,} recordings.", icon="🗑️")
    rstats = service.cache_stats()
    with figures:
        r = st.columns(2)
        r[0].metric("Recorded answers", f"{rstats.persistent_entries:,}")
        r[1].metric("On disk", f"{rstats.persistent_bytes / 2**20:,.1f} MiB")
        if rstats.replay_only:
            st.warning("**Replay only is on**: answers come from the recordings, nothing reaches a backend.", icon="📼")
        elif not rstats.persistent and rstats.persistent_entries:
            st.caption("Recording is off: these answers are kept but not served until you turn it back on.")
    if admin:
        export.download_button("Export recordings (.zip)", data=lambda: service.export_recordings(caller=caller),
                               icon="⬇️",
                               file_name=f"blossom-replay-{time.strftime('%Y%m%d-%H%M')}.zip", mime="application/zip",
                               key="controls_replay_export", disabled=not rstats.persistent_entries, on_click="ignore")
