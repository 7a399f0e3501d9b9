"""Saved chats: every Playground conversation of a signed-in user, kept as they go.

Unlike ``conversations`` (a read-only snapshot under a permalink, made by Share), a
saved chat is the user's own working copy: the Playground upserts it after every
turn under one id, and the sidebar lists, searches, reopens, renames and deletes it.
Only its owner may open, rename or delete it (an admin may delete anyone's; the
service checks and audits that, ``service_chat``).

A chat stores the Playground's message dicts (the contract of issue 11): ``role``,
``content``, ``caption``, ``code``, ``status``, ``error``, ``retry_at``, ``model``,
``request_id``, ``images`` (``[{"name", "mime", "data": bytes}]``, stored base64 in
the JSON) and ``feedback`` (``{"score": 1|-1, "comment"}``). Other keys are dropped
when saving and ignored when loading, so a newer page may add keys freely.

The ``chats`` table lives in the usage database on the shared ``store.metadata``,
created with ``ensure_tables`` on first use (idempotent, under the schema lock; an
older database gains it without a migration). The existing ``conversations`` table
and its permalinks are untouched.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Boolean, Column, Float, Index, Integer, String, Table, Text, delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..errors import DashError, InvalidRequest, PermissionDenied
from ..telemetry.store import ensure_tables, fit_text, metadata
from .conversations import MAX_CHARS, MAX_TURNS, TITLE_CHARS

chats = Table(
    "chats",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user", String(128), nullable=False),
    Column("created", Float, nullable=False),  # unix epoch seconds, UTC
    Column("updated", Float, nullable=False),  # unix epoch seconds, UTC: the last save
    Column("title", String(200), nullable=False),
    Column("renamed", Boolean, nullable=False, default=False),  # a title the user chose is kept
    Column("turns", Integer, nullable=False),
    Column("messages", Text, nullable=False),  # JSON list of message dicts, image bytes base64
    Column("haystack", Text, nullable=False),  # title and every message's text, lower-cased, for search
    Index("ix_chats_user_updated", "user", "updated"),
)

#: Image bytes one chat may hold, all its attachments together (8 MiB, before base64,
#: which stores them in a third more). A bigger chat is refused in words: start a new one.
MAX_IMAGE_BYTES = 8 * 1024 * 1024
#: Most chats one list returns (newest updated first): the sidebar shows a dozen at a time.
MAX_LISTED = 200
#: Longest search text (characters).
MAX_SEARCH_CHARS = 200
#: The keys of a message that are stored; any other key is dropped.
MESSAGE_KEYS = ("role", "content", "caption", "code", "status", "error", "retry_at", "model", "request_id",
                "images", "feedback")
STATUSES = ("ok", "stopped", "refused", "failed")
_TEXT_KEYS = ("content", "caption", "code", "error", "model", "request_id")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,32}$")


class ChatStorageFailed(DashError):
    """The usage database could not store, read or delete a saved chat."""


@dataclass(frozen=True)
class ChatSummary:
    """One line of the chat list.

    Attributes:
        id: The chat's id (``playground_chat_id``).
        user: Its owner.
        title: The first user prompt, shortened, until the owner renames it.
        created: When it was first saved, epoch seconds (UTC).
        updated: When it was last saved or renamed, epoch seconds (UTC).
        turns: How many messages it holds.
    """

    id: str
    user: str
    title: str
    created: float
    updated: float
    turns: int


@dataclass(frozen=True)
class Chat:
    """A saved chat with its messages.

    Attributes:
        summary: Its ``ChatSummary``.
        messages: The message dicts, oldest first, with only ``MESSAGE_KEYS``
            (image ``data`` as bytes again).
    """

    summary: ChatSummary
    messages: list[dict[str, Any]]

    @property
    def id(self) -> str:
        """The chat's id."""
        return self.summary.id


def is_chat_id(value: object) -> bool:
    """Whether ``value`` has the shape of a chat id (not whether it exists)."""
    return isinstance(value, str) and bool(_ID_RE.match(value))


def _clean_text(value: object) -> str:
    return str(value).replace("\x00", "") if value is not None else ""  # PostgreSQL's text holds no NUL


def _image(raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{where} has an attachment that is not an image record.",
                             "Attach the image again.")
    data = raw.get("data")
    if isinstance(data, str):  # already base64 (a message read back from JSON)
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{where} has an image whose data is damaged.", "Attach the image again.") from None
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidRequest(f"{where} has an image without its bytes.", "Attach the image again.")
    mime = _clean_text(raw.get("mime"))[:64]
    if not mime.startswith("image/"):
        raise InvalidRequest(f"{where} has an attachment of type {mime or 'unknown'!r}; only images are kept.",
                             "Attach a PNG, JPEG, GIF or WebP image.")
    return {"name": _clean_text(raw.get("name"))[:200] or "image", "mime": mime, "data": bytes(data)}


def _feedback(raw: object) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping) or raw.get("score") not in (1, -1):
        return None  # no vote (or a cleared one): nothing to keep
    return {"score": int(raw["score"]), "comment": _clean_text(raw.get("comment"))[:1000]}


def normalize_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Playground messages as a chat stores them: only ``MESSAGE_KEYS``, typed, bounded.

    Args:
        messages: Message dicts, oldest first (the contract in this module's docstring).

    Returns:
        New dicts (the input is not changed); empty strings and absent keys are left out.

    Raises:
        InvalidRequest: a role other than user/assistant, an unknown ``status``, an
            attachment that is not an image, no message with text, more than
            ``MAX_TURNS`` messages, ``MAX_CHARS`` characters or ``MAX_IMAGE_BYTES``
            of images.
    """
    out: list[dict[str, Any]] = []
    chars = image_bytes = 0
    for n, msg in enumerate(messages, 1):
        role = msg.get("role") if isinstance(msg, Mapping) else None
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"Message {n} has the role {role!r}; a chat keeps only user and assistant turns.",
                                 "Start a new chat.")
        kept: dict[str, Any] = {"role": role, "content": _clean_text(msg.get("content"))}
        for key in _TEXT_KEYS[1:]:
            if value := _clean_text(msg.get(key)):
                kept[key] = value
        status = msg.get("status")
        if status not in (None, "", *STATUSES):
            raise InvalidRequest(f"Message {n} has the status {status!r}; known: {', '.join(STATUSES)}.",
                                 "Start a new chat.")
        if status:
            kept["status"] = status
        if isinstance(msg.get("retry_at"), int | float) and not isinstance(msg.get("retry_at"), bool):
            kept["retry_at"] = float(msg["retry_at"])
        if images := [_image(img, f"Message {n}") for img in msg.get("images") or ()]:
            kept["images"] = images
            image_bytes += sum(len(img["data"]) for img in images)
        if (fb := _feedback(msg.get("feedback"))) is not None:
            kept["feedback"] = fb
        chars += len(kept["content"]) + len(kept.get("code", ""))
        out.append(kept)
    if not any(m["content"].strip() or m.get("images") for m in out):
        raise InvalidRequest("There is nothing to save yet: the chat is empty.", "Send a prompt first.")
    if len(out) > MAX_TURNS:
        raise InvalidRequest(f"The chat has {len(out):,} messages; a saved chat holds {MAX_TURNS:,}.",
                             "Start a new chat to go on (the saved one keeps its first messages).")
    if chars > MAX_CHARS:
        raise InvalidRequest(f"The chat is longer than {MAX_CHARS:,} characters, too long to save.",
                             "Start a new chat to go on.")
    if image_bytes > MAX_IMAGE_BYTES:
        raise InvalidRequest(f"The chat's images add up to {image_bytes / 2**20:.1f} MiB; a saved chat holds "
                             f"{MAX_IMAGE_BYTES / 2**20:.0f} MiB of images.",
                             "Start a new chat for more images, or attach smaller ones.")
    return out


def _to_json(messages: list[dict[str, Any]]) -> str:
    stored = [{**m, "images": [{**img, "data": base64.b64encode(img["data"]).decode("ascii")}
                               for img in m["images"]]} if "images" in m else m for m in messages]
    return orjson.dumps(stored).decode()


def _from_json(text: str) -> list[dict[str, Any]]:
    """Stored JSON as message dicts (image data as bytes); unknown keys are ignored."""
    out = []
    for raw in orjson.loads(text):
        msg = {k: v for k, v in raw.items() if k in MESSAGE_KEYS}
        if "images" in msg:
            msg["images"] = [_image(img, "A saved message") for img in msg["images"]]
        out.append(msg)
    return out


def chat_title(messages: Iterable[Mapping[str, Any]]) -> str:
    """The first user prompt on one line, at most ``TITLE_CHARS`` characters ("New chat" when none)."""
    first = next((str(m.get("content") or "") for m in messages
                  if m.get("role") == "user" and str(m.get("content") or "").strip()), "New chat")
    line = " ".join(first.replace("\x00", "").split())
    return line if len(line) <= TITLE_CHARS else line[:TITLE_CHARS - 1] + "…"


def _haystack(title: str, messages: list[dict[str, Any]]) -> str:
    return "\n".join([title, *(m["content"] for m in messages)]).lower()


def _summary(row: Any) -> ChatSummary:
    return ChatSummary(row.id, row.user, row.title, float(row.created), float(row.updated), int(row.turns))


@contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """Turn a database error into ``ChatStorageFailed`` with words."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise ChatStorageFailed(f"The chat could not be {what}: the usage database refused.",
                                "Try again; if it repeats, check the database.") from exc


_SUMMARY_COLUMNS = (chats.c.id, chats.c.user, chats.c.title, chats.c.created, chats.c.updated, chats.c.turns,
                    chats.c.renamed)


class ChatStore:
    """Saved chats in the usage database (SQLAlchemy Core). It checks ownership of each
    row against the ``user`` it is given; who that user is, and whether they may save at
    all, the service decides.

    Args:
        engine: The usage store's engine; the ``chats`` table is created if missing.

    Raises:
        ChatStorageFailed: the table cannot be created.
    """

    def __init__(self, engine: Engine, *, clock: Any = time.time) -> None:
        self.engine = engine
        self._clock = clock
        try:
            ensure_tables(engine, [chats])
        except SQLAlchemyError as exc:
            raise ChatStorageFailed("The usage database cannot hold saved chats.",
                                    "Check BLOSSOM_DASH_DATABASE_URL and that the database is writable.") from exc

    def _owned(self, conn: Any, chat_id: str, user: str) -> Any:
        """The row of ``chat_id`` if ``user`` owns it.

        Raises:
            InvalidRequest: malformed or unknown id.
            PermissionDenied: someone else's chat.
        """
        if not is_chat_id(chat_id):
            raise InvalidRequest(f"{str(chat_id)[:40]!r} is not a chat id.", "Pick a chat from the list.")
        row = conn.execute(select(*_SUMMARY_COLUMNS).where(chats.c.id == chat_id)).first()
        if row is None:
            raise InvalidRequest("This chat no longer exists: it was deleted.",
                                 "Pick another chat from the list, or start a new one.")
        if row.user != user:
            raise PermissionDenied("This chat belongs to another user; only its owner may open or change it.",
                                   "Your own chats are listed in the sidebar.")
        return row

    def save(self, chat_id: str | None, messages: Iterable[Mapping[str, Any]], *, user: str) -> ChatSummary:
        """Save a chat: a new one when ``chat_id`` is None (or names a chat deleted
        meanwhile, so the work is not lost), else replace that chat's messages.

        The title follows the first user prompt until the owner renames the chat.

        Returns:
            The chat's ``ChatSummary`` (keep its ``id`` for the next save).

        Raises:
            InvalidRequest: see ``normalize_messages``; a malformed ``chat_id``.
            PermissionDenied: ``chat_id`` is another user's chat.
            ChatStorageFailed: the write failed (nothing changed).
        """
        kept = normalize_messages(messages)
        user = str(user)[:128]
        now, title = self._clock(), fit_text(chat_title(kept), chats.c.title) or "New chat"
        body = _to_json(kept)
        with _store_errors("saved"), self.engine.begin() as conn:
            row = None
            if chat_id is not None:
                try:
                    row = self._owned(conn, chat_id, user)
                except InvalidRequest:
                    if not is_chat_id(chat_id):
                        raise
            if row is None:
                new_id = secrets.token_urlsafe(9)
                conn.execute(insert(chats).values(id=new_id, user=user, created=now, updated=now, title=title,
                                                  renamed=False, turns=len(kept), messages=body,
                                                  haystack=_haystack(title, kept)))
                return ChatSummary(new_id, user, title, now, now, len(kept))
            title = row.title if row.renamed else title
            conn.execute(update(chats).where(chats.c.id == row.id).values(
                updated=now, title=title, turns=len(kept), messages=body, haystack=_haystack(title, kept)))
            return ChatSummary(row.id, user, title, float(row.created), now, len(kept))

    def list(self, user: str, *, search: str | None = None, limit: int = MAX_LISTED) -> list[ChatSummary]:
        """``user``'s chats, newest updated first, at most ``limit`` (≤ ``MAX_LISTED``).

        Args:
            search: Words to find in the title or any message's text, case-insensitive
                (one substring, at most ``MAX_SEARCH_CHARS`` characters); None or blank:
                every chat.

        Raises:
            ChatStorageFailed: the read failed.
        """
        query = select(*_SUMMARY_COLUMNS).where(chats.c.user == user)
        needle = " ".join((search or "").split()).lower()[:MAX_SEARCH_CHARS].replace("\x00", "")
        if needle:
            query = query.where(chats.c.haystack.contains(needle, autoescape=True))
        query = query.order_by(chats.c.updated.desc(), chats.c.id).limit(max(1, min(int(limit), MAX_LISTED)))
        with _store_errors("listed"), self.engine.connect() as conn:
            return [_summary(r) for r in conn.execute(query)]

    def load(self, chat_id: str, *, user: str) -> Chat:
        """``user``'s chat ``chat_id`` with its messages.

        Raises:
            InvalidRequest: malformed or unknown id, or a damaged row.
            PermissionDenied: another user's chat.
            ChatStorageFailed: the read failed.
        """
        with _store_errors("read"), self.engine.connect() as conn:
            row = self._owned(conn, chat_id, user)
            body = conn.execute(select(chats.c.messages).where(chats.c.id == chat_id)).scalar()
        try:
            messages = _from_json(body)
        except (orjson.JSONDecodeError, TypeError, AttributeError, InvalidRequest) as exc:
            raise InvalidRequest("This saved chat is damaged and cannot be opened.",
                                 "Delete it, or start a new chat.") from exc
        return Chat(_summary(row), messages)

    def owner(self, chat_id: str) -> str | None:
        """Who owns ``chat_id`` (None: no such chat, or a malformed id).

        Raises:
            ChatStorageFailed: the read failed.
        """
        if not is_chat_id(chat_id):
            return None
        with _store_errors("read"), self.engine.connect() as conn:
            return conn.execute(select(chats.c.user).where(chats.c.id == chat_id)).scalar()

    def rename(self, chat_id: str, title: str, *, user: str) -> ChatSummary:
        """Give ``user``'s chat a title of their own (kept when the chat is saved again).

        Raises:
            InvalidRequest: a blank title, or malformed or unknown id.
            PermissionDenied: another user's chat.
            ChatStorageFailed: the write failed.
        """
        line = " ".join(_clean_text(title).split())
        if not line:
            raise InvalidRequest("A chat's title cannot be empty.", "Type a few words that name it.")
        if len(line) > TITLE_CHARS:
            raise InvalidRequest(f"The title has {len(line)} characters; a chat's title holds {TITLE_CHARS}.",
                                 "Shorten it.")
        now = self._clock()
        with _store_errors("renamed"), self.engine.begin() as conn:
            row = self._owned(conn, chat_id, user)
            body = conn.execute(select(chats.c.messages).where(chats.c.id == chat_id)).scalar()
            texts = [str(m.get("content") or "") for m in orjson.loads(body)]
            conn.execute(update(chats).where(chats.c.id == chat_id).values(
                title=line, renamed=True, updated=now, haystack="\n".join([line, *texts]).lower()))
        return ChatSummary(row.id, row.user, line, float(row.created), now, int(row.turns))

    def delete(self, chat_id: str) -> bool:
        """Delete a chat whoever owns it (the caller checked who may); whether there was one.

        Raises:
            ChatStorageFailed: the write failed.
        """
        if not is_chat_id(chat_id):
            return False
        with _store_errors("deleted"), self.engine.begin() as conn:
            return conn.execute(delete(chats).where(chats.c.id == chat_id)).rowcount > 0


__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_LISTED",
    "MAX_SEARCH_CHARS",
    "MESSAGE_KEYS",
    "STATUSES",
    "Chat",
    "ChatStorageFailed",
    "ChatStore",
    "ChatSummary",
    "chat_title",
    "chats",
    "is_chat_id",
    "normalize_messages",
]
