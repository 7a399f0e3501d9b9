"""Saved chats in the Playground's sidebar, 👍/👎 under an answer, and the feedback table.

- ``chat_history_sidebar(handle)``: the signed-in user's chats (``BlossomService.list_chats``):
  New chat, a search box, a dozen chats at a time (title and age, the open one marked),
  each with a menu to rename or delete it (after a confirmation). Opening one puts its
  messages in ``st.session_state["playground_messages"]`` and its id in
  ``["playground_chat_id"]`` and reruns the page.
- ``answer_feedback(handle, msg, key)``: ``st.feedback("thumbs")`` and an optional
  comment for one assistant message; the vote is stored (``rate_answer``), written into
  ``msg["feedback"]`` and the open chat saved again, so reopening it shows the vote.
- ``start_new_chat()``: what any "New chat" button calls (the id goes with the messages).
- ``save_current_chat(handle)``: the Playground calls it after every turn (saves the chat
  as it goes; a new chat gets its ``playground_chat_id``).
- ``feedback_table(handle)``: Monitor's "Answer feedback by model".
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from ..errors import DashError
from ..features.chats import MAX_LISTED
from ..session import SessionHandle
from .feedback import guard, show_error
from .safe import safe_markdown
from .times import local_time

MESSAGES = "playground_messages"
CHAT_ID = "playground_chat_id"
#: The Playground's pending action (Regenerate, Edit, Retry: ``ui.chat.PENDING``), dropped with the old chat.
PENDING = "playground_pending"
SHOWN = "history_shown"
#: Why the open chat's last save failed (kept until a save works, so a rerun does not hide it).
UNSAVED = "history_unsaved"
#: Chats the sidebar shows at first and adds per "Show more".
PAGE = 12


def relative_age(ts: float, now: float | None = None) -> str:
    """How long ago ``ts`` (epoch seconds) was, in a few characters: "just now", "5 min ago",
    "2 h ago", "3 d ago", "4 mo ago" (a month taken as 30 days). A time in the future
    (another server's clock) reads "just now"."""
    age = (time.time() if now is None else now) - ts
    if age < 60:
        return "just now"
    if age < 3600:
        return f"{int(age // 60)} min ago"
    if age < 86400:
        return f"{int(age // 3600)} h ago"
    if age < 60 * 86400:
        return f"{int(age // 86400)} d ago"
    return f"{int(age // (30 * 86400))} mo ago"


def _open_chat(chat_id: str | None, messages: list[dict[str, Any]]) -> None:
    st.session_state[MESSAGES] = messages
    st.session_state[CHAT_ID] = chat_id
    st.session_state.pop(PENDING, None)
    st.session_state.pop(UNSAVED, None)
    if "conversation" in st.query_params:  # leave a shared read-only view for the chat
        del st.query_params["conversation"]


def start_new_chat() -> None:
    """Empty the Playground for a new chat: no messages, no ``playground_chat_id`` (so the next
    save makes a new chat instead of overwriting the open one), no pending action. Safe in a
    button's ``on_click``."""
    _open_chat(None, [])


def chat_history_sidebar(handle: SessionHandle) -> None:
    """The user's saved chats in ``st.sidebar`` (call it from the Playground only).

    Widget keys start with ``history_``. A viewer (who cannot save) sees one line
    saying so. A database that fails shows its error in the sidebar; the chat goes on.
    """
    with st.sidebar:
        st.subheader("Your chats")
        if handle.role == "viewer":
            st.caption("Chats are not saved for viewers.")
            return
        _unsaved_warning()
        open_id = st.session_state.get(CHAT_ID)
        st.button("New chat", key="history_new", icon=":material/add:", width="stretch", on_click=start_new_chat)
        search = st.text_input("Search your chats", key="history_search", placeholder="Search your chats",
                               label_visibility="collapsed", max_chars=200)
        try:
            chats = handle.list_chats(search or None)
        except DashError as err:
            show_error(err)
            return
        if not chats:
            st.caption(f"No chat holds “{search.strip()}”." if search and search.strip()
                       else "No saved chats yet: each chat is saved as you go.")
            return
        shown = int(st.session_state.get(SHOWN, PAGE))
        now = time.time()
        for chat in chats[:shown]:
            _chat_row(handle, chat, is_open=chat.id == open_id, now=now)
        if len(chats) > shown and st.button(f"Show more ({len(chats) - shown:,} more)", key="history_more",
                                            type="tertiary"):
            st.session_state[SHOWN] = shown + PAGE
            st.rerun()
        if len(chats) >= MAX_LISTED and shown >= len(chats) and not (search and search.strip()):
            st.caption(f"Your newest {MAX_LISTED} chats are listed; search to find an older one.")


def _chat_row(handle: SessionHandle, chat: Any, *, is_open: bool, now: float) -> None:
    left, right = st.columns([0.84, 0.16], gap="small", vertical_alignment="center")
    title = safe_markdown(chat.title, limit=80)  # a prompt: inert, it loads and links nothing
    age = relative_age(chat.updated, now) + (" · open" if is_open else "")
    # Two lines (the title, cut with an ellipsis to the sidebar's width; its age under it); the open
    # chat is boxed (secondary) and bold, the others plain (tertiary).
    label = f"{f'**{title}**' if is_open else title}  \n:gray[:small[{age}]]"
    if left.button(label, key=f"history_open_{chat.id}", type="secondary" if is_open else "tertiary",
                   help=f"Last saved {local_time(chat.updated)} · {chat.turns:,} messages"
                        + (" · open now" if is_open else ""), width="stretch"):
        with guard("opening the chat"):
            loaded = handle.load_chat(chat.id)
            _open_chat(loaded.id, loaded.messages)
            st.rerun()
    with right.popover("", icon=":material/more_vert:", key=f"history_menu_{chat.id}",
                       help="Rename or delete this chat"):
        title = st.text_input("Title", value=chat.title, key=f"history_title_{chat.id}", max_chars=80)
        if st.button("Rename", key=f"history_rename_{chat.id}"):
            with guard("renaming the chat"):
                handle.rename_chat(chat.id, title)
                st.rerun()
        sure = st.checkbox("Delete this chat for good", key=f"history_sure_{chat.id}")
        if st.button("Delete", key=f"history_delete_{chat.id}", type="primary", disabled=not sure):
            with guard("deleting the chat"):
                handle.delete_chat(chat.id)
                if is_open:
                    _open_chat(None, [])
                st.rerun()


def save_current_chat(handle: SessionHandle) -> str | None:
    """Save the Playground's chat (``playground_messages``) under ``playground_chat_id``;
    call it after every turn. A new chat gets its id here (written to ``playground_chat_id``).

    Nothing is saved, silently, for a viewer or a chat with nothing in it yet. A chat
    that cannot be saved (over a cap, the database down) says so in one warning, here
    and in the sidebar until a save works (so a rerun right after does not hide it),
    and the chat goes on unsaved.

    Returns:
        The chat's id, or None when it was not saved.
    """
    messages = st.session_state.get(MESSAGES)
    if handle.role == "viewer" or not isinstance(messages, list) or not any(
            str(m.get("content") or "").strip() or m.get("images") for m in messages if isinstance(m, dict)):
        return None
    try:
        saved = handle.save_chat(st.session_state.get(CHAT_ID), messages)
    except DashError as err:
        st.session_state[UNSAVED] = f"**This chat is not saved: {err.message}**" + (
            f"\n\n{err.hint}" if err.hint else "")
        _unsaved_warning()
        return None
    st.session_state.pop(UNSAVED, None)
    st.session_state[CHAT_ID] = saved.id
    return saved.id


def _unsaved_warning() -> None:
    if words := st.session_state.get(UNSAVED):
        st.warning(words, icon=":material/cloud_off:")


def _save_open_chat(handle: SessionHandle, msg: dict[str, Any]) -> None:
    """Save the Playground's chat again when ``msg`` is one of its messages (the vote in it)."""
    messages = st.session_state.get(MESSAGES)
    if isinstance(messages, list) and any(m is msg for m in messages):
        save_current_chat(handle)


def answer_feedback(handle: SessionHandle, msg: dict[str, Any], key: str, *, where: Any = None) -> bool:
    """👍/👎 and an optional comment (≤ 1,000 characters, in a popover) under one answer.

    Args:
        handle: This session's handle (``rate_answer``).
        msg: The assistant message dict; its ``feedback`` is updated in place
            (``{"score": 1|-1, "comment"}``, removed when the vote is cleared).
        key: A prefix unique on the page (the message's index will do); the widgets'
            keys add the answer's ``request_id``.
        where: A horizontal container to draw in (e.g. the bar of Regenerate, Edit,
            Copy); default: a row of its own.

    Draws nothing, and returns False, for a user message, a message without a
    ``request_id``, a ``status`` other than ok/stopped, or a viewer.

    Returns:
        Whether the vote or comment changed (the open chat is then already saved again).
    """
    rid = msg.get("request_id")
    if msg.get("role") != "assistant" or not rid or (msg.get("status") or "ok") not in ("ok", "stopped") \
            or handle.role == "viewer":
        return False
    old = msg.get("feedback") if isinstance(msg.get("feedback"), dict) else {}
    old_score = old.get("score") if old.get("score") in (1, -1) else None
    row = where if where is not None else st.container(horizontal=True, vertical_alignment="center", gap="small")
    picked = row.feedback("thumbs", key=f"{key}_thumbs_{rid}", default={1: 1, -1: 0}.get(old_score))
    score = None if picked is None else (1 if picked == 1 else -1)
    changed = False
    if score != old_score:
        changed = _vote(handle, msg, score, old.get("comment", "") if score else "")
    if score is not None:
        comment = str((msg.get("feedback") or {}).get("comment") or "")
        with row.popover("Edit comment" if comment else "Add a comment", icon=":material/chat:", type="tertiary",
                         key=f"{key}_comment_menu_{rid}"):
            text = st.text_area("What was good or wrong? (optional)", value=comment, max_chars=1000,
                                key=f"{key}_comment_{rid}")
            if st.button("Save comment", key=f"{key}_comment_save_{rid}") and _vote(handle, msg, score, text):
                changed = True
                st.caption("Saved with your vote." if text.strip() else "Comment removed; your vote stays.")
    if changed:
        _save_open_chat(handle, msg)
    return changed


def _vote(handle: SessionHandle, msg: dict[str, Any], score: int | None, comment: str) -> bool:
    try:
        vote = handle.rate_answer(str(msg["request_id"]), score, model=str(msg.get("model") or ""), comment=comment)
    except DashError as err:
        show_error(err)
        return False
    if vote is None:
        msg.pop("feedback", None)
    else:
        msg["feedback"] = vote.as_message_feedback()
    return True


def feedback_table(handle: SessionHandle, since_s: float | None = None) -> None:
    """Monitor's section "Answer feedback by model" as this session's caller sees it
    (``render_feedback_table``)."""
    render_feedback_table(handle.service, handle.caller, since_s)


def render_feedback_table(service: Any, caller: Any, since_s: float | None = None) -> None:
    """Monitor's section "Answer feedback by model": 👍, 👎, votes, the share of 👍 and the
    newest comments ``caller`` may read (an admin's: everyone's; a member's: their own).

    Args:
        service: The facade (``feedback_by_model``).
        caller: Who reads (a ``gateway.Caller``).
        since_s: Only the last ``since_s`` seconds (the Monitor's range); None: all time.
    """
    st.subheader("Answer feedback by model")
    try:
        table = service.feedback_by_model(since_s, caller=caller)
    except DashError as err:
        show_error(err)
        return
    if table.empty:
        st.info("No answer has a 👍 or 👎 yet" + (" in this period" if since_s else "")
                + ". Vote under any answer on the Playground.", icon=":material/thumbs_up_down:")
        return
    who = ("everyone's comments" if caller.is_admin else
           "no comments (viewers see the counts)" if caller.role == "viewer" else "your own comments only")
    st.caption(f"Every user's votes are counted, one per user per answer; this table shows {who}.")
    shown = pd.DataFrame({
        "model": table["model"], "up": table["up"], "down": table["down"], "votes": table["votes"],
        "share_up": [None if v is None or v != v else round(100 * v) for v in table["share_up"]],
        "comments": [" · ".join(c) for c in table["comments"]],
    })
    st.dataframe(shown, hide_index=True, key="monitor_feedback_table", column_config={
        "model": "Model", "up": st.column_config.NumberColumn("👍", format="%d"),
        "down": st.column_config.NumberColumn("👎", format="%d"),
        "votes": st.column_config.NumberColumn("Votes", format="%d"),
        "share_up": st.column_config.NumberColumn("Share 👍", format="%d %%", help="👍 out of all votes"),
        "comments": st.column_config.TextColumn("Newest comments", width="large"),
    })


__all__ = ["PAGE", "answer_feedback", "chat_history_sidebar", "feedback_table", "relative_age", "render_feedback_table",
           "save_current_chat", "start_new_chat"]
