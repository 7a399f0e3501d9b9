"""blossom-dash: prompt models, compare them, and watch usage, in one Streamlit app."""

import streamlit as st

from blossom_dash import ui

st.set_page_config(page_title="blossom-dash", page_icon="🌸", layout="wide")

pages = [
    st.Page("app_pages/playground.py", title="Playground", icon="💬", default=True),
    st.Page("app_pages/image.py", title="Image", icon="🎨"),
    st.Page("app_pages/speech.py", title="Speech", icon="🔊"),
    st.Page("app_pages/compare.py", title="Compare", icon="⚖️"),
    st.Page("app_pages/gallery.py", title="Gallery", icon="🖼️"),
    st.Page("app_pages/batch.py", title="Batch", icon="🗂️"),
    st.Page("app_pages/prompts.py", title="Prompts", icon="📚"),
    st.Page("app_pages/monitor.py", title="Monitor", icon="📈"),
    st.Page("app_pages/controls.py", title="Controls", icon="🎛️"),
]
# Not signed in (or not allowed): the pages stay routed, so a deep link keeps its URL, but
# hidden; session_handle() shows the sign-in or "not allowed" page and stops there.
pg = st.navigation(pages, position="sidebar" if ui.can_enter() else "hidden")
ui.sidebar(ui.session_handle())
pg.run()
