"""Compare's views: a stored comparison with its vote and permalink, a run streaming side by
side, the blind vote's stage, the refusal with its countdown, and the replay-only note.

A blind comparison (``Comparison.blind``) is shown, until its vote, with its panels'
labels (``Model A`` …) for names and every model name in answers and errors masked
(``compare.blind_panel``); the page shows nothing else that names a model meanwhile
(``blind_stage``: no picker, no model facts, no leaderboard, no permalink).
"""

from __future__ import annotations

import random
import time

import streamlit as st

from ..errors import BudgetExceeded, DashError, RateLimited
from ..features import compare as cmp
from ..features.gallery import GALLERY_KEY, add_comparison
from ..gateway.requests import SEED_MAX
from ..session import SessionHandle
from . import result_caption
from .feedback import guard, show_error
from .safe import code_span, safe_markdown

ANSWER_HEIGHT = 380  # px; answers scroll inside equal boxes so the columns stay aligned
#: The form widgets whose values outlive a run that does not draw them (the blind stage).
FORM_KEYS = ("compare_prompt", "compare_models", "compare_max_tokens", "compare_seed", "compare_image_prompt",
             "compare_image_models", "compare_image_size", "compare_image_seed")
#: Session keys: the comparison awaiting its blind vote, and a refusal's retry time (epoch s).
RETRY_AT = "compare_retry_at"
GALLERY_PENDING = "compare_image_gallery_pending"
REVEALED = "compare_blind_revealed"


def keep_form_state() -> None:
    """Keep the forms' values across a run that does not draw the forms (Streamlit drops
    the state of widgets not drawn in a run; a value set through the API is kept)."""
    for key in FORM_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def to_gallery(comp: cmp.Comparison) -> None:
    """Put a comparison's images in this session's Gallery (a blind one after its vote)."""
    if comp.kind == "image":
        st.session_state[GALLERY_KEY] = add_comparison(st.session_state.get(GALLERY_KEY, []), comp)


def _vote(handle: SessionHandle, comp: cmp.Comparison, choice: str) -> None:
    try:
        handle.vote(comp.id, choice)
    except DashError as err:  # shown on the next run; a callback cannot draw in place
        st.session_state[f"compare_{comp.kind}_vote_error"] = err
        return
    if comp.blind:
        st.session_state[REVEALED] = comp.id  # the reveal stays at the top, in view
    pending = st.session_state.get(GALLERY_PENDING)
    if pending is not None and pending.id == comp.id:  # a blind image comparison's images, now that it is voted
        to_gallery(st.session_state.pop(GALLERY_PENDING))


def _votes(handle: SessionHandle, comp: cmp.Comparison) -> None:
    if not comp.votable:
        answered = sum(p.ok for p in comp.panels)
        st.info(f"{answered} of {len(comp.panels)} models answered: a vote needs at least two answers, so this "
                "comparison takes none (it stays off the leaderboard). Run it again when the models can answer.",
                icon="ℹ️")
        return
    left, right, note = st.columns([1, 1, 4])
    for col, choice, label in ((left, cmp.TIE, "🤝 Tie"), (right, cmp.ALL_BAD, "👎 All bad")):
        col.button(label, key=f"compare_{comp.kind}_vote_{choice}", on_click=_vote, args=(handle, comp, choice),
                   type="primary" if comp.voted == choice else "secondary", width="stretch")
    note.caption("Vote for the best answer, a tie, or all bad; voting again replaces your vote.")


def render_comparison(handle: SessionHandle, comp: cmp.Comparison, *, editable: bool, blind: bool) -> None:
    """Draw a stored comparison: one column per model, the vote and the permalink.

    Args:
        editable: With vote buttons (this session's comparison), not read-only.
        blind: The blind toggle is on: a blind comparison not voted yet shows labels
            and masked names (and no permalink); after the vote, names and letters.
    """
    hide = editable and blind and comp.blind and comp.vote is None
    for col, panel in zip(st.columns(len(comp.panels)), comp.panels, strict=True):
        shown = cmp.blind_panel(panel, comp.models) if hide else panel
        with col:
            st.markdown(f"**{safe_markdown(shown.model)}**")
            if comp.blind and not hide:
                st.caption(f"was {cmp.panel_label(panel.position)} in the blind vote")
            if not shown.ok:
                show_error(shown.error())
                if shown.latency_ms is not None:
                    st.caption(f"{code_span(shown.model)} · failed after {shown.latency_ms:,.0f} ms")
            elif comp.kind == "image":
                st.image(shown.image, width="stretch")
                st.caption(f"{result_caption(shown)} · seed {shown.seed} · {shown.width}×{shown.height}")
            else:
                st.container(height=ANSWER_HEIGHT).markdown(safe_markdown(shown.text))
                st.caption(result_caption(shown))
            if editable and comp.votable:
                st.button("👍 Best", key=f"compare_{comp.kind}_vote_{panel.position}", disabled=not panel.ok,
                          type="primary" if comp.voted == panel.model else "secondary", width="stretch",
                          on_click=_vote, args=(handle, comp, panel.model))
    if editable:
        _votes(handle, comp)
    if err := st.session_state.pop(f"compare_{comp.kind}_vote_error", None):
        show_error(err)
    if editable and (note := st.session_state.pop(f"compare_{comp.kind}_note", None)):
        st.caption(note)
    if hide:
        st.caption("The names, the permalink and the leaderboard appear after your vote.")
        return
    st.markdown(f"**Vote:** {safe_markdown(comp.vote.describe())}" if comp.vote else "**Vote:** none yet")
    link = cmp.permalink(st.context.url, comp.id)
    st.markdown(f"🔗 Permalink (opens read-only): [{link}]({link})")


def stream_comparison(run: cmp.TextComparison) -> None:
    """Stream every model's answer into its own column, then store the comparison.

    A blind run (``run.params["blind"]``) shows labels and masks every model name.
    """
    blind = bool(run.params.get("blind"))

    def mask(text: str, partial: bool = False) -> str:
        return cmp.mask_names(text, run.models, partial=partial) if blind else text

    boxes, captions = [], []
    for i, col in enumerate(st.columns(len(run.models))):
        col.markdown(f"**{safe_markdown(cmp.panel_label(i) if blind else run.models[i])}**")
        boxes.append(col.container(height=ANSWER_HEIGHT).empty())
        captions.append(col.empty())
        boxes[-1].caption("Waiting for the first token…")
    for update in run.updates():
        if update.error is not None:
            with boxes[update.index].container():
                show_error(DashError(mask(update.error.message), mask(update.error.hint)) if blind else update.error)
        else:
            boxes[update.index].markdown(safe_markdown(mask(update.text, not update.done))
                                         + ("" if update.done else " ▌"))
    for panel, caption in zip(run.panels(), captions, strict=True):
        if panel.ok:
            caption.caption(result_caption(cmp.blind_panel(panel, run.models) if blind else panel))
    try:
        comp = run.finish()
    except DashError as err:
        show_error(err)  # the answers stay on screen
    else:
        st.session_state["compare_text_last"] = comp.id
        st.rerun()  # redraw from the store, with the vote buttons and the permalink


def pending_blind(handle: SessionHandle) -> cmp.Comparison | None:
    """This session's last comparison that is blind and not voted yet (text first), or the
    one just revealed by its vote (shown at the top until "Next comparison"), or None."""
    for kind in ("text", "image"):
        if cid := st.session_state.get(f"compare_{kind}_last"):
            try:
                comp = handle.load_comparison(cid)
            except DashError:
                continue
            if comp.blind and comp.votable and (comp.vote is None or st.session_state.get(REVEALED) == comp.id):
                return comp
    return None


def _skip(kind: str) -> None:
    st.session_state.pop(f"compare_{kind}_last", None)
    st.session_state.pop(GALLERY_PENDING, None)


def blind_header(comp: cmp.Comparison | None) -> None:
    """The blind stage's heading: what is hidden and why, and a way out without voting; once
    voted, the reveal and "Next comparison" (back to the forms)."""
    left, right = st.columns([4, 1], vertical_alignment="center")
    if comp is not None and comp.vote is not None:
        left.success(f"**Revealed.** {safe_markdown(comp.vote.describe())}: each column now shows its model and "
                     "the letter it had.", icon="🎉")
        right.button("Next comparison", key="compare_blind_next", icon="➡️", width="stretch", type="primary",
                     on_click=st.session_state.pop, args=(REVEALED, None))
        return
    left.info("**Blind vote.** The columns are in a random order and every model name is hidden (the picker, "
              "the model facts, the leaderboard too) until you vote; then the names are revealed.", icon="🙈")
    if comp is not None:
        right.button("Skip this vote", key="compare_blind_skip", icon="⏭️", on_click=_skip, args=(comp.kind,),
                     width="stretch", help="Back to the forms without voting; the names stay hidden.")


def show_refusal(err: DashError) -> None:
    """A comparison refused before anything was sent: the words, and a live countdown to
    when the window's next slot frees (a rate limit) or the budget resets."""
    show_error(err)
    wait = getattr(err, "retry_after_s", None)
    if isinstance(err, RateLimited | BudgetExceeded) and wait:
        st.session_state[RETRY_AT] = time.time() + float(wait)
        _countdown()


@st.fragment(run_every=1.0)
def _countdown() -> None:
    left = float(st.session_state.get(RETRY_AT, 0.0)) - time.time()
    if left <= 0:
        st.caption("✅ A slot is free again: press Compare to try (the check runs again first).")
        return
    shown = f"{left:,.0f} s" if left < 3600 else f"{left / 3600:,.1f} h"
    st.caption(f"⏳ Compare can be tried again in {shown}.")


def replay_note(handle: SessionHandle, kind: str, prompt: str, picked: list[str]) -> list[str] | None:
    """In replay-only mode: say which models were recorded for ``prompt`` and whether the pick fits.

    Returns:
        The models to compare (the picked ones that were recorded) when at least two
        are; None when the comparison cannot be replayed (the reason is shown).
    """
    recorded = handle.models_recorded_for(kind, prompt) if prompt.strip() else []
    what = "prompt" if kind == "text" else "image prompt"
    if len(recorded) < 2:
        st.warning(f"**Replay-only mode: {len(recorded)} model(s) recorded for this {what}**"
                   + (f" ({', '.join(code_span(m) for m in recorded)})" if recorded else "")
                   + "; a comparison needs two. Record it with replay-only off (Controls → Replay: persistent "
                     "cache on, then compare live), or import a recording set on Controls.", icon="⏺️")
        return None
    usable = [m for m in picked if m in recorded]
    if len(usable) < 2:
        st.warning(f"**Replay-only mode: the models recorded for this {what} are "
                   f"{', '.join(code_span(m) for m in recorded)}.** Pick at least two of them.", icon="⏺️")
        return None
    if left_out := [m for m in picked if m not in recorded]:  # shown with the comparison (the run redraws)
        st.session_state[f"compare_{kind}_note"] = (f"Not recorded for this {what}, left out: "
                                                    f"{', '.join(code_span(m) for m in left_out)}.")
    return usable


def replay_caption(handle: SessionHandle, kind: str, prompt: str) -> None:
    """Above a form in replay-only mode: which models were recorded for the last prompt typed."""
    recorded = handle.models_recorded_for(kind, prompt) if prompt.strip() else []
    if recorded:
        st.caption(f"⏺️ Replay-only: recorded for this prompt: {', '.join(code_span(m) for m in recorded)}. "
                   "Pick two or more of them.")
    else:
        st.caption("⏺️ Replay-only: answers come from recordings only. Type a recorded prompt and press the "
                   "button: the page then says which models were recorded for it.")


# ----- the page's actions (the Compare page calls them; they read its form's keys) ------------


def read_only(handle: SessionHandle, opened: str) -> None:
    """A permalink's view (``?comparison=<id>``): the comparison with its names and vote, no
    vote buttons; a way back, and delete for its owner or an admin."""
    shown = None
    with guard("opening the comparison"):
        shown = handle.load_comparison(opened)
        st.caption(f"Read-only · {safe_markdown(shown.summary())}")
        st.code(shown.prompt, language=None, wrap_lines=True)
        render_comparison(handle, shown, editable=False, blind=False)
    bar = st.container(horizontal=True)
    if bar.button("Start a new comparison", key="compare_new", icon="➕"):
        st.query_params.clear()
        st.rerun()
    if shown is not None and (shown.user == handle.user or handle.caller.is_admin) and bar.button(
            "Delete this comparison", key="compare_delete", icon="🗑️",
            help="Removes the permalink and its vote for everyone (its owner or an admin may)."):
        with guard("deleting the comparison"):
            handle.delete_comparison(opened)
            st.query_params.clear()
            st.rerun()


def run_text(handle: SessionHandle, *, blind: bool) -> None:
    """Stream the text form's comparison (refused whole, unsent, when the quota cannot cover
    it; in replay-only mode, among the models recorded for the prompt)."""
    state = st.session_state
    models = state.get("compare_models") or []
    if handle.service.replay_only and (models := replay_note(handle, "text", state.get("compare_prompt", ""),
                                                             models)) is None:
        return
    seed = state.get("compare_seed")
    try:
        run = handle.compare_text(state.get("compare_prompt", ""), models, system=state.get("compare_system"),
                                  max_tokens=int(state.get("compare_max_tokens") or 256),
                                  seed=None if seed is None else int(seed), blind=blind)
    except DashError as err:
        show_refusal(err)
    else:
        stream_comparison(run)


def run_images(handle: SessionHandle, sizes: dict[str, tuple[int, int]], *, blind: bool) -> bool:
    """Draw the image form's comparison; its images join the Gallery (a blind one's after
    the vote). Returns whether it was drawn (else the reason is shown)."""
    state = st.session_state
    picked, prompt = state.get("compare_image_models") or [], state.get("compare_image_prompt", "")
    if handle.service.replay_only and (picked := replay_note(handle, "image", prompt, picked)) is None:
        return False
    width, height = sizes[state.get("compare_image_size") or next(iter(sizes))]
    try:
        with st.spinner(f"Generating {len(picked)} images at once…"):
            comp = handle.compare_images(prompt, picked, width=width, height=height,
                                         seed=int(state["compare_image_seed"]), blind=blind)
    except DashError as err:
        show_refusal(err)
        return False
    state["compare_image_last"] = comp.id
    if comp.blind:
        state[GALLERY_PENDING] = comp
    else:
        to_gallery(comp)
    return True


def new_seed() -> None:
    """The "New seed" button's callback: a new random seed in the box, and the same image
    comparison drawn again with it (so the image and its caption always match the seed)."""
    st.session_state["compare_image_seed"] = random.randint(0, SEED_MAX)
    st.session_state["compare_image_go"] = True


__all__ = ["ANSWER_HEIGHT", "FORM_KEYS", "GALLERY_PENDING", "RETRY_AT", "REVEALED", "blind_header",
           "keep_form_state", "new_seed", "pending_blind", "read_only", "render_comparison", "replay_caption",
           "replay_note", "run_images", "run_text", "show_refusal", "stream_comparison", "to_gallery"]
