"""Shared conversations: a Playground chat saved under an id, reopened read-only by its link.

A permalink is ``?conversation=<id>`` on the Playground. The id is random (72 bits,
URL-safe) so a link cannot be guessed from another; a saved conversation is a
snapshot: chatting on afterwards and sharing again makes a new link, and an old link
keeps showing what was shared (as ChatGPT's and Open WebUI's share links do).

The ``conversations`` table lives in the usage database, on the shared
``store.metadata``, created with ``ensure_tables(engine, [conversations])`` when the
store is first used (idempotent: an existing database gets the table without a
migration; under the store's schema lock, so replicas may start at once).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from sqlalchemy import Column, Float, String, Table, Text, delete, insert, select
from sqlalchemy.engine import Engine

from ..telemetry.store import ensure_tables, metadata

conversations = Table(
    "conversations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user", String(128), nullable=False),
    Column("created", Float, nullable=False),  # unix epoch seconds, UTC
    Column("title", String(200), nullable=False),
    Column("turns", Text, nullable=False),  # JSON list of Turn
)

#: Most turns one shared conversation keeps, and the most characters of all turns.
MAX_TURNS = 200
MAX_CHARS = 1_000_000
TITLE_CHARS = 80
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,32}$")


class ConversationError(ValueError):
    """A conversation cannot be saved or found; the message says why, in words."""


@dataclass(frozen=True)
class Turn:
    """One chat message.

    Attributes:
        role: ``user`` or ``assistant``.
        content: The text (markdown).
        caption: The line under an answer (model, latency, TTFT, tokens).
        code: The equivalent blossom-ai script (``snippets``), when there is one.
    """

    role: str
    content: str
    caption: str = ""
    code: str = ""


@dataclass(frozen=True)
class Conversation:
    """A saved conversation.

    Attributes:
        id: The permalink id.
        user: Who shared it.
        created: When, epoch seconds.
        title: The first question, shortened.
        turns: The messages, oldest first.
    """

    id: str
    user: str
    created: float
    title: str
    turns: tuple[Turn, ...]


def describe(conv: Conversation) -> str:
    """One line under a shared conversation's title: who, when (UTC), how many turns."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(conv.created))
    answers = sum(t.role == "assistant" for t in conv.turns)
    return f"Shared by `{conv.user}` on {when} · {answers} answer{'s' * (answers != 1)} · read-only"


def share_link(app_url: str | None, conversation_id: str) -> str:
    """The permalink: the page's URL (query dropped) with ``?conversation=<id>``.

    Args:
        app_url: The page's URL as the browser has it (``st.context.url``); None or
            empty gives a relative link.
    """
    parts = urlsplit(app_url or "")
    path = parts.path or ("/" if parts.netloc else "")
    return urlunsplit((parts.scheme, parts.netloc, path, f"conversation={conversation_id}", ""))


def is_conversation_id(value: object) -> bool:
    """Whether ``value`` has the shape of a conversation id (not whether it exists)."""
    return isinstance(value, str) and bool(_ID_RE.match(value))


def to_turns(messages: Iterable[Mapping[str, Any]]) -> list[Turn]:
    """Playground messages (``{"role", "content", "caption"?, "code"?}``) as turns.

    Raises:
        ConversationError: no message with text, a role other than user/assistant,
            more than ``MAX_TURNS`` turns or ``MAX_CHARS`` characters.
    """
    turns = []
    for msg in messages:
        role = msg.get("role") if isinstance(msg, Mapping) else None
        if role not in ("user", "assistant"):
            raise ConversationError(f"A message has the role {role!r}; only user and assistant turns are shared.")
        turns.append(Turn(role, str(msg.get("content") or ""), str(msg.get("caption") or ""),
                          str(msg.get("code") or "")))
    if not any(t.content.strip() for t in turns):
        raise ConversationError("There is nothing to share yet: the chat is empty.")
    if len(turns) > MAX_TURNS:
        raise ConversationError(f"The chat has {len(turns):,} turns; a shared conversation holds {MAX_TURNS:,}.")
    if sum(len(t.content) + len(t.code) for t in turns) > MAX_CHARS:
        raise ConversationError(f"The chat is longer than {MAX_CHARS:,} characters, too long to share.")
    return turns


def title_of(turns: Iterable[Turn]) -> str:
    """The first user message on one line, at most ``TITLE_CHARS`` characters."""
    first = next((t.content for t in turns if t.role == "user" and t.content.strip()), "Conversation")
    line = " ".join(first.replace("\x00", "").split())  # PostgreSQL's text holds no NUL
    return line if len(line) <= TITLE_CHARS else line[:TITLE_CHARS - 1] + "…"


class ConversationStore:
    """Saved conversations in the usage database.

    Args:
        engine: The usage store's SQLAlchemy engine.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the table cannot be created.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        ensure_tables(engine, [conversations])

    def save(self, messages: Iterable[Mapping[str, Any]], *, user: str) -> Conversation:
        """Save a snapshot of a chat under a new id.

        Args:
            messages: The chat, oldest first (see ``to_turns``).
            user: Who shares it.

        Returns:
            The saved ``Conversation``.

        Raises:
            ConversationError: see ``to_turns``.
            sqlalchemy.exc.SQLAlchemyError: the write failed (nothing is stored).
        """
        turns = tuple(to_turns(messages))
        conv = Conversation(secrets.token_urlsafe(9), str(user)[:128], time.time(), title_of(turns), turns)
        with self.engine.begin() as conn:
            conn.execute(insert(conversations).values(
                id=conv.id, user=conv.user, created=conv.created, title=conv.title,
                turns=orjson.dumps([asdict(t) for t in turns]).decode()))
        return conv

    def load(self, conversation_id: str) -> Conversation:
        """The conversation saved under ``conversation_id``.

        Raises:
            ConversationError: the id is malformed, unknown, or its row is damaged.
            sqlalchemy.exc.SQLAlchemyError: the read failed.
        """
        if not is_conversation_id(conversation_id):
            raise ConversationError(f"{str(conversation_id)[:40]!r} is not a conversation link id.")
        with self.engine.connect() as conn:
            row = conn.execute(select(conversations).where(conversations.c.id == conversation_id)).first()
        if row is None:
            raise ConversationError(f"No conversation has the id {conversation_id!r}.")
        try:
            turns = tuple(Turn(**{k: str(v) for k, v in t.items() if k in Turn.__dataclass_fields__})
                          for t in orjson.loads(row.turns))
        except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
            raise ConversationError(f"The conversation {conversation_id!r} is damaged and cannot be shown.") from exc
        return Conversation(row.id, row.user, float(row.created), row.title, turns)

    def delete(self, conversation_id: str) -> bool:
        """Delete one saved conversation; whether there was one.

        Raises:
            ConversationError: the id is malformed.
            sqlalchemy.exc.SQLAlchemyError: the write failed.
        """
        if not is_conversation_id(conversation_id):
            raise ConversationError(f"{str(conversation_id)[:40]!r} is not a conversation link id.")
        with self.engine.begin() as conn:
            return conn.execute(delete(conversations).where(conversations.c.id == conversation_id)).rowcount > 0


__all__ = [
    "Conversation",
    "ConversationError",
    "ConversationStore",
    "Turn",
    "conversations",
    "describe",
    "is_conversation_id",
    "share_link",
    "title_of",
    "to_turns",
]
