"""Compare: one prompt on 2 to 4 models side by side, a vote (blind if asked), a leaderboard, and permalinks."""

import random

import streamlit as st

from blossom_dash import ui
from blossom_dash.features import compare as cmp
from blossom_dash.ui import compare_view as view
from blossom_dash.ui.prompts import template_picker
from blossom_dash.ui.safe import code_span, safe_markdown

handle = ui.session_handle()
service = handle.service
st.title("Compare")
ui.backend_badge(service)

SIZES = {"Square 512×512": (512, 512), "Square 1024×1024": (1024, 1024), "Landscape 1024×768": (1024, 768),
         "Portrait 768×1024": (768, 1024)}
state = st.session_state
state.setdefault("compare_image_seed", random.randint(0, 2**31 - 1))
view.keep_form_state()


def show_last(kind: str) -> None:
    """Draw this session's last comparison of ``kind`` from the store, with vote buttons."""
    if last := state.get(f"compare_{kind}_last"):
        with ui.guard("loading the comparison"):
            view.render_comparison(handle, handle.load_comparison(last), editable=True, blind=blind)


if opened := st.query_params.get("comparison"):
    view.read_only(handle, opened)
    st.stop()

blind = st.toggle("Blind vote", key="compare_blind", help="Shuffle the columns and hide every model name (Model A, "
                  "B…) until you vote, as Chatbot Arena does, so that the names do not sway the vote. Turning it "
                  "off reveals a pending comparison's names.")
go = {kind: state.pop(f"compare_{kind}_go", False) for kind in ("text", "image")}
if blind and (go["text"] or go["image"] or (pending := view.pending_blind(handle)) is not None):
    view.blind_header(None if go["text"] or go["image"] else pending)
    if go["text"]:
        view.run_text(handle, blind=blind)
    elif not go["image"] or view.run_images(handle, SIZES, blind=blind):
        show_last("image" if go["image"] else pending.kind)
    st.stop()

text_models: list[str] = []
image_models: list[str] = []
with ui.guard("listing models"):
    listed = [service.model_list("text"), service.model_list("image")]
    text_models, image_models = (list(m.names) for m in listed)
    for m in listed:
        if m.fallback:
            st.caption(f"⚠️ {safe_markdown(m.detail)} Type model names the backend serves.")
text_tab, image_tab, board_tab = st.tabs(["💬 Text", "🖼️ Images", "🏆 Leaderboard"])
initial = {k: v for k, v in (("compare_models", text_models[:3]), ("compare_image_models", image_models[:3]),
                             ("compare_max_tokens", 256)) if k not in state}

with text_tab:
    if (used := template_picker(handle, "compare_template")) is not None and used.prompt != state.get(
            "compare_template_prompt"):
        state["compare_prompt"] = state["compare_template_prompt"] = used.prompt
        state["compare_system"] = used.system or None
    if state.get("compare_system"):
        st.caption(f"System prompt (from the template): {code_span(state['compare_system'][:120])}")
    if service.replay_only:
        view.replay_caption(handle, "text", state.get("compare_prompt", ""))
    with st.form("compare_text_form", border=False):
        st.text_area("Prompt", key="compare_prompt", height=90,
                     placeholder="e.g. Explain p95 latency to a product manager in three sentences.")
        models = st.multiselect(f"Models (2 to {cmp.MAX_MODELS})", text_models, max_selections=cmp.MAX_MODELS,
                                accept_new_options=True, key="compare_models",
                                help="Pick from the list, or type any model name the backend knows.",
                                **({"default": initial["compare_models"]} if "compare_models" in initial else {}))
        if not blind:  # prices and success rates would sway a blind vote as the names would
            ui.render_model_facts(service, "text", models)
        c1, c2 = st.columns(2)
        c1.number_input("Max tokens", 1, 8192, step=64, key="compare_max_tokens",
                        **({"value": 256} if "compare_max_tokens" in initial else {}))
        c2.number_input("Seed (optional)", 0, 2**31 - 1, key="compare_seed", placeholder="none",
                        **({} if "compare_seed" in state else {"value": None}))
        st.form_submit_button("Compare", type="primary", icon="⚖️", on_click=state.update,
                              kwargs={"compare_text_go": True})
    view.run_text(handle, blind=blind) if go["text"] else show_last("text")

with image_tab:
    if service.replay_only:
        view.replay_caption(handle, "image", state.get("compare_image_prompt", ""))
    with st.form("compare_image_form", border=False):
        st.text_area("Describe the image", key="compare_image_prompt", height=90,
                     placeholder="A watercolour lighthouse at dawn, soft light")
        picked = st.multiselect(f"Image models (2 to {cmp.MAX_MODELS})", image_models, max_selections=cmp.MAX_MODELS,
                                accept_new_options=True, key="compare_image_models", **(
                                    {"default": initial["compare_image_models"]}
                                    if "compare_image_models" in initial else {}))
        if not blind:
            ui.render_model_facts(service, "image", picked)
        c1, c2 = st.columns(2)
        c1.selectbox("Size", list(SIZES), key="compare_image_size")
        c2.number_input("Seed (the same for every model)", 0, 2**31 - 1, key="compare_image_seed")
        st.form_submit_button("Compare images", type="primary", icon="🎨", on_click=state.update,
                              kwargs={"compare_image_go": True})
    if not go["image"] or view.run_images(handle, SIZES, blind=blind):
        show_last("image")
    if state.get("compare_image_last"):
        st.button("🎲 New seed", key="compare_image_new_seed", on_click=view.new_seed,
                  help="Draw the same prompt on the same models again with a new random seed (the same for all).")

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
