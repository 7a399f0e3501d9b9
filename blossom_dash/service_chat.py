"""Saved chats and answer feedback in ``BlossomService`` (mixin ``ChatMethods``).

The storage is ``features.chats`` and ``features.chat_feedback``; this module decides
who may do what (the rules below) and turns everything into a ``DashError`` in words.

Who may do what:
    - A chat belongs to the user who saved it (``caller.user``; ``local`` in local
      mode, a kiosk visitor's signed id in kiosk mode). Only they may list, open or
      rename it; they or an admin may delete it (an admin's delete of another's chat
      is audited). A viewer cannot save chats (they read the team's aggregates only).
    - Anyone but a viewer may vote on an answer; one vote per user per answer.
    - The tally per model is an aggregate like the Monitor's and is read by every
      role; the comments in it are an admin's to read in full (they may quote
      prompts), a member sees only their own, a viewer none.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd

from .errors import DashError, PermissionDenied
from .features.chat_feedback import AnswerVote, FeedbackStore
from .features.chats import Chat, ChatStore, ChatSummary
from .gateway import Caller
from .service_access import FACTS_EVERY_S

log = logging.getLogger("blossom_dash")


def _who(caller: Caller | None) -> Caller:
    return caller or Caller("local")


def _may_write(caller: Caller, what: str) -> None:
    if caller.role == "viewer":
        raise PermissionDenied(f"A viewer cannot {what}; you are signed in as a viewer.",
                               "Ask an admin of this dashboard for member access.")


class ChatMethods:
    """Saved chats and feedback; mixed into ``BlossomService`` (which provides
    ``store``, ``_lock``, ``_owner_or_admin`` and ``flush_events``)."""

    store: Any
    _lock: Any

    def _owner_or_admin(self, caller: Caller | None, what: str, item_id: str, owner: str) -> None:  # AccessMethods
        raise NotImplementedError

    def flush_events(self) -> int:  # AccessMethods
        raise NotImplementedError

    def _chat_store(self) -> ChatStore:
        """The ``chats`` table, created in the usage database on first use."""
        with self._lock:
            store = getattr(self, "_chats_store", None)
            if store is None:
                store = self._chats_store = ChatStore(self.store.engine)
            return store

    def _feedback_store(self) -> FeedbackStore:
        """The ``answer_feedback`` table, created in the usage database on first use."""
        with self._lock:
            store = getattr(self, "_answer_feedback_store", None)
            if store is None:
                store = self._answer_feedback_store = FeedbackStore(self.store.engine)
            return store

    # ----- saved chats ------------------------------------------------------------------

    def save_chat(self, chat_id: str | None, messages: list[dict[str, Any]], *,
                  caller: Caller | None = None) -> ChatSummary:
        """Save the caller's chat as it goes: a new chat when ``chat_id`` is None (or was
        deleted meanwhile), else that chat's messages replaced.

        Args:
            chat_id: ``st.session_state["playground_chat_id"]`` (None for a new chat).
            messages: The Playground messages (``features.chats`` names the keys kept).

        Returns:
            The ``ChatSummary``; keep its ``id`` as ``playground_chat_id``.

        Raises:
            PermissionDenied: a viewer, or ``chat_id`` is another user's chat.
            InvalidRequest: an empty chat, a bad role or status, over the caps
                (``conversations.MAX_TURNS``/``MAX_CHARS``, ``chats.MAX_IMAGE_BYTES``).
            ChatStorageFailed: the database refused (nothing changed).
        """
        caller = _who(caller)
        _may_write(caller, "save chats")
        return self._chat_store().save(chat_id, messages, user=caller.user)

    def list_chats(self, search: str | None = None, *, limit: int = 200,
                   caller: Caller | None = None) -> list[ChatSummary]:
        """The caller's own chats, newest updated first (at most ``limit`` ≤ 200), whose title
        or text holds ``search`` (case-insensitive; None or blank: all).

        Raises:
            ChatStorageFailed: the database refused.
        """
        return self._chat_store().list(_who(caller).user, search=search, limit=limit)

    def load_chat(self, chat_id: str, *, caller: Caller | None = None) -> Chat:
        """One of the caller's chats with its messages (image bytes as bytes).

        Raises:
            InvalidRequest: malformed, unknown (deleted) or damaged.
            PermissionDenied: another user's chat (an admin too: chats are private).
            ChatStorageFailed: the database refused.
        """
        return self._chat_store().load(chat_id, user=_who(caller).user)

    def rename_chat(self, chat_id: str, title: str, *, caller: Caller | None = None) -> ChatSummary:
        """Give one of the caller's chats a title (1 to 80 characters), kept from then on.

        Raises:
            InvalidRequest: a blank or too long title; an unknown chat.
            PermissionDenied: another user's chat.
            ChatStorageFailed: the database refused.
        """
        return self._chat_store().rename(chat_id, title, user=_who(caller).user)

    def delete_chat(self, chat_id: str, *, caller: Caller | None = None) -> bool:
        """Delete a saved chat: its owner or an admin may (an admin's delete of another's is
        audited). Shared permalinks made from it (``conversations``) stay.

        Returns:
            Whether it existed (False: already gone, or a malformed id).

        Raises:
            PermissionDenied: the caller neither owns it nor is an admin.
            ChatStorageFailed: the database refused.
        """
        store = self._chat_store()
        owner = store.owner(chat_id)
        if owner is None:
            return False
        self._owner_or_admin(_who(caller), "saved chat", chat_id, owner)
        return store.delete(chat_id)

    # ----- answer feedback ----------------------------------------------------------------

    def rate_answer(self, request_id: str, score: int | None, *, model: str = "", comment: str = "",
                    caller: Caller | None = None) -> AnswerVote | None:
        """The caller's 👍 (1) / 👎 (-1) on one answer with an optional comment (≤ 1,000
        characters), replacing their earlier vote; ``score=None`` removes it.

        Args:
            request_id: The answer's request id (``TextResult.request_id``).
            model: The model that answered; "" looks it up on the answer's event.

        Returns:
            The vote stored, or None when cleared.

        Raises:
            PermissionDenied: a viewer.
            InvalidRequest: a bad id, score or comment; the model not known.
            FeedbackStorageFailed: the database refused (the old vote is kept).
        """
        caller = _who(caller)
        _may_write(caller, "rate answers")
        store = self._feedback_store()
        if score is not None and not str(model or "").strip():
            self.flush_events()  # the answer's event may still be on its way to the store
            model = store.model_of(request_id) or ""
        return store.vote(request_id, score, user=caller.user, model=model, comment=comment)

    def feedback_by_model(self, since_s: float | None = None, *, caller: Caller | None = None,
                          now: float | None = None) -> pd.DataFrame:
        """Votes on answers per model: ``chat_feedback.FEEDBACK_COLUMNS`` (model, up, down,
        votes, share_up 0..1 or None, comments: the newest three the caller may read), most
        votes first.

        Args:
            since_s: Only the votes of the last ``since_s`` seconds; None: all time.

        Every role reads the counts (an aggregate, as the Monitor's); an admin reads
        everyone's comments, a member their own, a viewer none.

        Raises:
            FeedbackStorageFailed: the database refused.
        """
        caller = _who(caller)
        since_ts = None if since_s is None else (time.time() if now is None else now) - float(since_s)
        return self._feedback_store().by_model(
            since_ts=since_ts, all_comments=caller.is_admin,
            comments_of=None if caller.is_admin or caller.role == "viewer" else caller.user)

    def answer_votes(self) -> dict[str, tuple[int, int]]:
        """Every user's 👍 and 👎 on answers per model, all time, for the model facts beside
        the pickers: ``{model: (up, down)}``; the team's counts, no comment and no user.

        Read once for every caller of this process and kept ``FACTS_EVERY_S`` (30 s), as the
        pickers' other facts; ``{}`` when the store cannot be read (logged).
        """
        with self._lock:
            cached = getattr(self, "_answer_votes", None)
            if cached is not None and time.monotonic() - cached[0] < FACTS_EVERY_S:
                return dict(cached[1])
        try:
            table = self._feedback_store().by_model()
        except DashError:
            log.exception("answer feedback could not be read for the model facts")
            return {}
        votes = {str(r.model): (int(r.up), int(r.down)) for r in table.itertuples()}
        with self._lock:
            self._answer_votes = (time.monotonic(), votes)
        return dict(votes)


__all__ = ["ChatMethods"]
