"""blossom-dash: prompt models, compare them, and watch usage, in one Streamlit app."""

import streamlit as st

from blossom_dash import ui

st.set_page_config(page_title="blossom-dash", page_icon="🌸", layout="wide")

pages = [
    st.Page("pages/playground.py", title="Playground", icon="💬", default=True),
    st.Page("pages/compare.py", title="Compare", icon="⚖️"),
    st.Page("pages/gallery.py", title="Gallery", icon="🖼️"),
    st.Page("pages/batch.py", title="Batch", icon="🗂️"),
    st.Page("pages/monitor.py", title="Monitor", icon="📈"),
    st.Page("pages/controls.py", title="Controls", icon="🎛️"),
]
pg = st.navigation(pages)
ui.sidebar(ui.session_handle())
pg.run()
