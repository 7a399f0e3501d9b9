"""The Playground's chat pieces: one message as inert markdown, and a shared chat's read-only view."""

from __future__ import annotations

import dataclasses
from typing import Any

import streamlit as st

from ..features import conversations
from ..session import SessionHandle
from .feedback import guard
from .safe import safe_markdown


def render_turn(msg: dict[str, Any]) -> None:
    """One chat message: its text (made inert: no images load, no links), the figures, its code."""
    st.markdown(safe_markdown(msg["content"]))
    if msg.get("caption"):
        st.caption(msg["caption"])
    if msg.get("code"):
        st.expander("Show code", icon="🐍").code(msg["code"], language="python")


def shared_conversation_ui(handle: SessionHandle, shared_id: str) -> None:
    """A permalinked chat, read-only, with "Start a new chat" and, for its owner or an admin, Delete."""
    shared = None
    with guard("opening the shared conversation"):
        shared = handle.service.load_conversation(shared_id)
        st.subheader(safe_markdown(shared.title))
        st.caption(conversations.describe(shared))
        for turn in shared.turns:
            with st.chat_message(turn.role):
                render_turn(dataclasses.asdict(turn))
    bar = st.container(horizontal=True)
    if bar.button("Start a new chat", key="playground_new_chat", icon="💬", type="primary"):
        del st.query_params["conversation"]
        st.rerun()
    if shared is not None and (shared.user == handle.user or handle.caller.is_admin) and bar.button(
            "Delete this shared chat", key="playground_delete_shared", icon="🗑️",
            help="Removes the permalink for everyone (the owner or an admin may)."):
        with guard("deleting the shared conversation"):
            handle.delete_conversation(shared_id)
            del st.query_params["conversation"]
            st.toast("Shared chat deleted.", icon="🗑️")
            st.rerun()
