"""Compare's views: a stored comparison with its vote and permalink, and a run streaming side by side."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from ..errors import DashError
from ..features import compare as cmp
from ..session import SessionHandle
from . import result_caption
from .feedback import show_error
from .safe import code_span, safe_markdown

ANSWER_HEIGHT = 380  # px; answers scroll inside equal boxes so the columns stay aligned


def _vote(handle: SessionHandle, comp: cmp.Comparison, choice: str) -> None:
    try:
        handle.vote(comp.id, choice)
    except DashError as err:  # shown on the next run; a callback cannot draw in place
        st.session_state[f"compare_{comp.kind}_vote_error"] = err


def render_comparison(handle: SessionHandle, comp: cmp.Comparison, *, editable: bool, blind: bool) -> None:
    """Draw a stored comparison: one column per model, the vote and the permalink.

    In a blind comparison the models are "Model A", "Model B"… until the vote reveals them.
    """
    hide = editable and blind and comp.vote is None
    for col, panel in zip(st.columns(len(comp.panels)), comp.panels, strict=True):
        if hide:
            panel = replace(panel, model=cmp.panel_label(panel.position))
        with col:
            st.markdown(f"**{safe_markdown(panel.model)}**")
            if not panel.ok:
                show_error(panel.error())
                if panel.latency_ms is not None:
                    st.caption(f"{code_span(panel.model)} · failed after {panel.latency_ms:,.0f} ms")
            elif comp.kind == "image":
                st.image(panel.image, width="stretch")
                st.caption(f"{result_caption(panel)} · seed {panel.seed} · {panel.width}×{panel.height}")
            else:
                st.container(height=ANSWER_HEIGHT).markdown(safe_markdown(panel.text))
                st.caption(result_caption(panel))
            if editable:
                st.button("👍 Best", key=f"compare_{comp.kind}_vote_{panel.position}", disabled=not panel.ok,
                          type="primary" if comp.voted == panel.model else "secondary", width="stretch",
                          on_click=_vote, args=(handle, comp, comp.panels[panel.position].model))
    if editable:
        left, right, note = st.columns([1, 1, 4])
        for col, choice, label in ((left, cmp.TIE, "🤝 Tie"), (right, cmp.ALL_BAD, "👎 All bad")):
            col.button(label, key=f"compare_{comp.kind}_vote_{choice}", on_click=_vote, args=(handle, comp, choice),
                       type="primary" if comp.voted == choice else "secondary", width="stretch")
        note.caption("Vote for the best answer, a tie, or all bad; voting again replaces your vote.")
    if err := st.session_state.pop(f"compare_{comp.kind}_vote_error", None):
        show_error(err)
    st.markdown(f"**Vote:** {safe_markdown(comp.vote.describe())}" if comp.vote else "**Vote:** none yet")
    link = cmp.permalink(st.context.url, comp.id)
    st.markdown(f"🔗 Permalink (opens read-only): [{link}]({link})")


def stream_comparison(run: cmp.TextComparison, *, blind: bool) -> None:
    """Stream every model's answer into its own column, then store the comparison."""
    boxes, captions = [], []
    for i, col in enumerate(st.columns(len(run.models))):
        col.markdown(f"**{safe_markdown(cmp.panel_label(i) if blind else run.models[i])}**")
        boxes.append(col.container(height=ANSWER_HEIGHT).empty())
        captions.append(col.empty())
        boxes[-1].caption("Waiting for the first token…")
    for update in run.updates():
        if update.error is not None:
            with boxes[update.index].container():
                show_error(update.error)
        else:
            boxes[update.index].markdown(safe_markdown(update.text) + ("" if update.done else " ▌"))
    for panel, caption in zip(run.panels(), captions, strict=True):
        if panel.ok:
            shown_as = replace(panel, model=cmp.panel_label(panel.position)) if blind else panel
            caption.caption(result_caption(shown_as))
    try:
        comp = run.finish()
    except DashError as err:
        show_error(err)  # the answers stay on screen
    else:
        st.session_state["compare_text_last"] = comp.id
        st.rerun()  # redraw from the store, with the vote buttons and the permalink
