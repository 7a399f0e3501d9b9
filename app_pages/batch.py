"""Batch: run a CSV of prompts as a background job, watch its progress, download the answers."""

import streamlit as st

from blossom_dash import DashError, ui
from blossom_dash.features import batch
from blossom_dash.ui import batch_view, times
from blossom_dash.ui import budget as budget_ui

handle = ui.session_handle()
service = handle.service
st.title("Batch")
ui.backend_badge(service)
LIVE_ROWS = 500  # rows shown while a job runs (the page polls); downloads always have all
LABELS = {"row": "Row", "status": "Status", "prompt": "Prompt", "answered_by": "Answered by", "prompt_tokens":
          "Prompt tokens", "completion_tokens": "Completion tokens", "cached": "From cache", "model": "Model",
          "system": "System", "temperature": "Temperature", "max_tokens": "Max tokens", "seed": "Seed",
          "request_id": "Request id"}


def _label(job: batch.BatchStatus) -> str:
    when = times.local_time(job.created_ts)  # the viewer's zone, named
    owner = f" · {job.user}" if st.session_state.get("batch_all_jobs") else ""
    return f"{job.name or 'batch'} · {when} · {job.total:,} rows{owner}"  # its state is in the panel, kept live


# ----- a new batch ------------------------------------------------------------------------
st.subheader("New batch")
left, right = st.columns([4, 1], vertical_alignment="center")
upload = left.file_uploader("CSV of prompts", type=["csv", "tsv", "txt"], key="batch_file",
                            max_upload_size=batch.MAX_FILE_BYTES // 1_048_576)
right.download_button("Template", batch.template_csv(), file_name="batch-template.csv", mime="text/csv",
                      key="batch_template", icon="📄", on_click="ignore")
st.caption(f"One prompt per row in a column named **prompt**; optional columns **model**, **system**, "
           f"**temperature**, **max_tokens**, **seed** (blank = the default); or, instead of **prompt**, a "
           f"**template** (`name`, `name@production`, `name@3`) and one column per variable. UTF-8, up to "
           f"{batch.MAX_ROWS:,} rows and {batch.MAX_FILE_BYTES // 1_048_576} MB.")
if upload is not None:
    with ui.guard("reading the file"):
        listed = service.model_list("text")
        models = None if listed.fallback else list(listed.names)  # a fallback list cannot judge a name
        parsed = batch.parse_csv(upload.getvalue(), known_models=models,
                                 max_prompt_chars=service.settings.max_prompt_chars,
                                 templates=handle.prompt_resolver())  # a "template" column (Prompts page)
        valid, invalid = parsed.valid, parsed.invalid
        st.markdown(f"**{upload.name}** · {len(parsed.rows):,} rows · ✅ {len(valid):,} valid · "
                    f"❌ {len(invalid):,} invalid")
        for note in parsed.notes:
            st.caption(note)
        if invalid:
            first = invalid[0]
            st.warning(f"**{len(invalid):,} row(s) cannot run**, e.g. row {first.row}: {'; '.join(first.errors)}. "
                       f"Run the {len(valid):,} valid rows, or fix the file and upload it again.", icon="⚠️")
        preview = parsed.frame()
        if invalid and st.toggle("Show only invalid rows", key="batch_only_invalid"):
            preview = preview[preview["problem"] != ""]
        st.dataframe(preview, hide_index=True, key="batch_preview", height=min(38 + 35 * len(preview), 300),
                     placeholder="",  # a blank cell is blank, not "None"
                     column_order=["row", "problem", *parsed.columns],  # only the columns the file has
                     column_config={**LABELS, "row": st.column_config.NumberColumn("Row", help="As a spreadsheet "
                                                                                          "numbers it"),
                                    "problem": st.column_config.TextColumn("Problem", width="medium"),
                                    "prompt": st.column_config.TextColumn("Prompt", width="large")})
        with st.expander("Defaults for rows that leave model or max_tokens blank"):
            c1, c2 = st.columns(2)
            default_model = c1.selectbox("Model", models, key="batch_default_model")
            default_tokens = c2.number_input("Max tokens", 1, 8192, 512, step=64, key="batch_default_max_tokens")
        ui.render_model_facts(service, "text", sorted({r.model or default_model or "" for r in valid}))
        estimate = service.estimate_batch(valid, model=default_model, max_tokens=int(default_tokens))
        batch_view.render_estimate(estimate)
        budget_ui.render_batch_headroom(service, handle.caller, estimate.total)  # a job over budget pauses
        started = st.session_state.get("batch_started_file") == upload.file_id  # no double submit
        if st.button(f"Run {len(valid):,} valid rows", type="primary", icon="▶️", disabled=not valid or started,
                     key="batch_run"):
            rows = batch.apply_defaults(valid, model=default_model, max_tokens=int(default_tokens))
            st.session_state["batch_job_select"] = handle.submit_batch(rows, name=upload.name)
            st.session_state["batch_started_file"] = upload.file_id
            st.toast(f"Started a job of {len(rows):,} rows. It keeps running if you leave this page.", icon="▶️")
            st.rerun()
        if started:
            st.caption("This file has been started as a job (below). Upload another file to start a new batch.")

# ----- your jobs --------------------------------------------------------------------------
st.subheader("Your jobs")
everyone = handle.role == "admin" and st.toggle("All jobs (every user's)", key="batch_all_jobs",
                                                help="Admins see and can cancel every user's jobs.")
jobs: list[batch.BatchStatus] = []
with ui.guard("listing your jobs"):
    jobs = handle.list_batches(everyone=everyone)
if not jobs:
    st.info("No batch jobs yet. Upload a CSV above: the job runs on the server, so it keeps going when you "
            "switch pages or reload, and you come back to it here.")
    st.stop()
by_id = {j.job_id: j for j in jobs}
if (linked := st.query_params.get("job")) in by_id:  # a link from Monitor's request detail: ?job=<id>
    st.session_state["batch_job_select"] = linked
    del st.query_params["job"]
if st.session_state.get("batch_job_select") not in by_id:
    st.session_state["batch_job_select"] = jobs[0].job_id
job_id = st.selectbox("Job", list(by_id), format_func=lambda j: _label(by_id[j]), key="batch_job_select")


@st.fragment(run_every=2.0 if by_id[job_id].active else None)
def job_panel(job_id: str, was_active: bool) -> None:
    """Progress, controls and results of one job; polls while it runs."""
    try:
        status = handle.batch_status(job_id)
    except DashError as err:
        ui.show_error(err)
        return
    if was_active and not status.active:
        st.rerun()  # the job has stopped: redraw the page once, which stops the polling
    batch_view.render_status(status, handle.rate_status() if status.active else None)
    actions = [(label, icon, key, act) for label, icon, key, act, show in (
        ("Cancel", "⏹️", "batch_cancel", lambda: handle.cancel_batch(job_id), status.active),
        ("Resume", "▶️", "batch_resume", lambda: handle.resume_batch(job_id), status.resumable),
        ("Retry failed rows", "🔁", "batch_retry", lambda: handle.resume_batch(job_id, retry_failed=True),
         not status.active and status.failed > 0),
        ("Delete job", "🗑️", "batch_delete", lambda: handle.delete_batch(job_id), not status.active),
    ) if show]
    with ui.guard("changing the job"):
        for col, (label, icon, key, act) in zip(st.columns(4), actions, strict=False):
            if col.button(label, icon=icon, key=key, type="primary" if key == "batch_resume" else "secondary"):
                act()
                st.rerun()
    results = handle.batch_results(job_id, limit=LIVE_ROWS if status.active else None)
    if status.active and status.total > LIVE_ROWS:
        st.caption(f"Showing the first {LIVE_ROWS:,} of {status.total:,} rows while the job runs; the downloads "
                   "have every row.")
    st.dataframe(results, hide_index=True, key="batch_results_table", placeholder="",  # blank, never "None"
                 column_order=["row", "status", "prompt", "answer", "answered_by", "latency_ms", "prompt_tokens",
                               "completion_tokens", "cached", "error", "model", "system", "temperature",
                               "max_tokens", "seed", "request_id"],
                 column_config={**LABELS,
                                "latency_ms": st.column_config.NumberColumn("Latency", format="%.0f ms"),
                                "answer": st.column_config.TextColumn("Answer", width="large"),
                                "error": st.column_config.TextColumn("Error", width="medium")})
    stem = (status.name.rsplit(".", 1)[0] or "batch") + "-results"
    d = st.columns(4)
    d[0].download_button("CSV", lambda: batch.results_csv(handle.batch_results(job_id)), file_name=f"{stem}.csv",
                         mime="text/csv", key="batch_download_csv", icon="⬇️", on_click="ignore")
    d[1].download_button("JSONL", lambda: batch.results_jsonl(handle.batch_results(job_id)),
                         file_name=f"{stem}.jsonl", mime="application/jsonl", key="batch_download_jsonl", icon="⬇️",
                         on_click="ignore")


with ui.guard("showing the job"):
    job_panel(job_id, by_id[job_id].active)
