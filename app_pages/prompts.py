"""Prompts: a library of named, versioned prompt templates with labels, shared with the team."""

import streamlit as st

from blossom_dash import ui
from blossom_dash.ui import prompts as library

handle = ui.session_handle()
st.title("Prompts")
ui.backend_badge(handle.service)
st.caption("Templates with {variables}, saved as numbered versions; labels such as production point at one. "
           "Use them on the Playground and Compare (“Use a template”) and in Batch (a template column).")

if created := library.create_ui(handle):
    st.session_state["prompts_selected"] = created.id
    st.rerun()

templates = []
with ui.guard("reading the prompt library"):
    templates = handle.prompt_templates()
if not templates:
    st.info("No templates yet. Create one above: a name, a prompt such as “Summarise {text} in {words} words”, "
            "and share it with the team if others should use it.")
    st.stop()

by_id = {t.id: t for t in templates}
if st.session_state.get("prompts_selected") not in by_id:
    st.session_state["prompts_selected"] = templates[0].id
selected = st.selectbox("Template", list(by_id), key="prompts_selected",
                        format_func=lambda i: library.template_label(by_id[i], handle.user))
template = by_id[selected]
st.caption(f"Owner {template.owner} · {'shared with the team' if template.visibility == 'team' else 'private'} · "
           f"{template.latest} version(s) · reference it as `{template.name}`, `{template.name}@<label>` "
           f"or `{template.name}@<version>`")

with ui.guard("showing the template"):
    versions = library.render_versions(handle, template)
    st.subheader("Try it")
    library.try_ui(handle, template)
    st.subheader("Compare versions")
    library.diff_ui(handle, template)
    if library.manage_ui(handle, template, versions):
        st.rerun()
