"""Compare: one prompt on 2 to 4 models side by side, a vote, a leaderboard, and permalinks."""

import random

import streamlit as st

from blossom_dash import DashError, ui
from blossom_dash.features import compare as cmp
from blossom_dash.ui import compare_view
from blossom_dash.ui.safe import safe_markdown

handle = ui.session_handle()
service = handle.service
st.title("Compare")
ui.backend_badge(service)

SIZES = {"Square 512×512": (512, 512), "Square 1024×1024": (1024, 1024), "Landscape 1024×768": (1024, 768),
         "Portrait 768×1024": (768, 1024)}
st.session_state.setdefault("compare_image_seed", random.randint(0, 2**31 - 1))


def show_last(kind: str) -> None:
    """Draw this session's last comparison of ``kind`` from the store, with vote buttons."""
    if last := st.session_state.get(f"compare_{kind}_last"):
        with ui.guard("loading the comparison"):
            compare_view.render_comparison(handle, handle.load_comparison(last), editable=True, blind=blind)


if opened := st.query_params.get("comparison"):
    shown = None
    with ui.guard("opening the comparison"):
        shown = handle.load_comparison(opened)
        st.caption(f"Read-only · {safe_markdown(shown.summary())}")
        st.code(shown.prompt, language=None, wrap_lines=True)
        compare_view.render_comparison(handle, shown, editable=False, blind=False)
    bar = st.container(horizontal=True)
    if bar.button("Start a new comparison", key="compare_new", icon="➕"):
        st.query_params.clear()
        st.rerun()
    if shown is not None and (shown.user == handle.user or handle.caller.is_admin) and bar.button(
            "Delete this comparison", key="compare_delete", icon="🗑️",
            help="Removes the permalink and its vote for everyone (its owner or an admin may)."):
        with ui.guard("deleting the comparison"):
            handle.delete_comparison(opened)
            st.query_params.clear()
            st.rerun()
    st.stop()

text_models: list[str] = []
image_models: list[str] = []
blind = st.toggle("Blind vote", key="compare_blind", help="Hide the model names (Model A, B…) until you vote, "
                  "as Chatbot Arena does, so that the names do not sway the vote.")
with ui.guard("listing models"):
    listed = [service.model_list("text"), service.model_list("image")]
    text_models, image_models = (list(m.names) for m in listed)
    for m in listed:
        if m.fallback:
            st.caption(f"⚠️ {safe_markdown(m.detail)} Type model names the backend serves.")
text_tab, image_tab, board_tab = st.tabs(["💬 Text", "🖼️ Images", "🏆 Leaderboard"])

with text_tab:
    with st.form("compare_text_form", border=False):
        prompt = st.text_area("Prompt", key="compare_prompt", height=90,
                              placeholder="e.g. Explain p95 latency to a product manager in three sentences.")
        models = st.multiselect(f"Models (2 to {cmp.MAX_MODELS})", text_models, default=text_models[:3],
                                max_selections=cmp.MAX_MODELS, accept_new_options=True, key="compare_models",
                                help="Pick from the list, or type any model name the backend knows.")
        if not blind:  # prices and success rates would sway a blind vote as the names would
            ui.render_model_facts(service, "text", models)
        c1, c2 = st.columns(2)
        max_tokens = c1.number_input("Max tokens", 1, 8192, 256, step=64, key="compare_max_tokens")
        seed = c2.number_input("Seed (optional)", 0, 2**31 - 1, value=None, key="compare_seed", placeholder="none")
        go = st.form_submit_button("Compare", type="primary", icon="⚖️")
    if not go:
        show_last("text")
    else:
        try:
            run = handle.compare_text(prompt, models, max_tokens=int(max_tokens),
                                      seed=None if seed is None else int(seed))
        except DashError as err:
            ui.show_error(err)
        else:
            compare_view.stream_comparison(run, blind=blind)

with image_tab:
    with st.form("compare_image_form", border=False):
        image_prompt = st.text_area("Describe the image", key="compare_image_prompt", height=90,
                                    placeholder="A watercolour lighthouse at dawn, soft light")
        picked = st.multiselect(f"Image models (2 to {cmp.MAX_MODELS})", image_models, default=image_models[:3],
                                max_selections=cmp.MAX_MODELS, accept_new_options=True, key="compare_image_models")
        if not blind:
            ui.render_model_facts(service, "image", picked)
        c1, c2 = st.columns(2)
        size = c1.selectbox("Size", list(SIZES), key="compare_image_size")
        image_seed = c2.number_input("Seed (the same for every model)", 0, 2**31 - 1, key="compare_image_seed")
        draw = st.form_submit_button("Compare images", type="primary", icon="🎨")
    if draw:
        width, height = SIZES[size]
        with ui.guard("comparing images"), st.spinner(f"Generating {len(picked)} images at once…"):
            comp = handle.compare_images(image_prompt, picked, width=width, height=height, seed=int(image_seed))
            st.session_state["compare_image_last"] = comp.id
    show_last("image")

with board_tab:
    kind = st.segmented_control("Leaderboard of", ["text", "image"], default="text", key="compare_board_kind",
                                format_func={"text": "💬 Text models", "image": "🖼️ Image models"}.get) or "text"
    with ui.guard("loading the leaderboard"):
        board = handle.leaderboard(kind)
        if board.empty:
            st.info("No votes yet: run a comparison and vote for the best answer.")
        else:
            st.dataframe(cmp.leaderboard_table(board), hide_index=True, key="compare_board", width="stretch")
            st.caption("Votes: voted comparisons the model answered in. Win rate: wins ÷ votes. The 95 % interval "
                       "(Wilson) says how far the win rate can be trusted: 1 of 1 is 21–100 %, 60 of 100 is "
                       "50–69 %. Sorted by the interval's low end, so one lucky vote does not top the board.")
