"""Answer feedback: 👍 / 👎 with an optional comment on one answer, and the tally per model.

One vote per user per answer, keyed by the answer's ``request_id`` (the id on its
event): voting again replaces the vote, clearing removes it. The tally per model
(``by_model``) counts every user's votes; the comments in it are filtered by the
reader (the service decides: an admin reads everyone's, a member their own, a viewer
none), since a comment may quote a prompt.

The ``answer_feedback`` table lives in the usage database on the shared
``store.metadata``, created with ``ensure_tables`` on first use (idempotent, under
the schema lock).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Column, Float, Integer, String, Table, Text, and_, case, delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..errors import DashError, InvalidRequest
from ..telemetry.store import ensure_tables, events, metadata

answer_feedback = Table(
    "answer_feedback",
    metadata,
    Column("request_id", String(32), primary_key=True),
    Column("user", String(128), primary_key=True),
    Column("model", String(128), nullable=False, index=True),
    Column("score", Integer, nullable=False),  # +1 thumbs up, -1 thumbs down
    Column("comment", Text, nullable=False, default=""),
    Column("ts", Float, nullable=False, index=True),  # unix epoch seconds, UTC
)

#: Longest comment on one answer (characters).
MAX_COMMENT_CHARS = 1000
#: Newest comments shown per model in ``by_model``, and the most read to find them.
COMMENTS_PER_MODEL = 3
_COMMENTS_READ = 500
#: Columns of ``by_model``, in order: votes up, down, their sum, the share of up
#: votes (0..1), and the newest comments the reader may see (newest first).
FEEDBACK_COLUMNS: tuple[str, ...] = ("model", "up", "down", "votes", "share_up", "comments")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,32}$")


class FeedbackStorageFailed(DashError):
    """The usage database could not store or read answer feedback."""


@dataclass(frozen=True)
class AnswerVote:
    """One user's vote on one answer.

    Attributes:
        request_id: The answer's request id.
        user: Who voted.
        model: The model that answered.
        score: ``1`` (👍) or ``-1`` (👎).
        comment: What they added ("" for none).
        ts: When, epoch seconds (UTC).
    """

    request_id: str
    user: str
    model: str
    score: int
    comment: str
    ts: float

    def as_message_feedback(self) -> dict[str, Any]:
        """The vote as a Playground message's ``feedback`` value."""
        return {"score": self.score, "comment": self.comment}


@contextmanager
def _store_errors(what: str) -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as exc:
        raise FeedbackStorageFailed(f"The feedback could not be {what}: the usage database refused.",
                                    "Try again; if it repeats, check the database.") from exc


def _upsert(dialect: str, vote: AnswerVote) -> Any:
    """``INSERT ... ON CONFLICT (request_id, user) DO UPDATE``: one statement, so votes from two
    tabs at once never collide (SQLite and PostgreSQL spell it alike; the usage store is one of them)."""
    module = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
    values = {"request_id": vote.request_id, "user": vote.user, "model": vote.model, "score": vote.score,
              "comment": vote.comment, "ts": vote.ts}
    stmt = module.insert(answer_feedback).values(**values)
    return stmt.on_conflict_do_update(index_elements=["request_id", "user"],
                                      set_={k: stmt.excluded[k] for k in ("model", "score", "comment", "ts")})


def check_request_id(request_id: object) -> str:
    """``request_id`` if it has the shape of one.

    Raises:
        InvalidRequest: it does not (empty, too long, odd characters).
    """
    if not isinstance(request_id, str) or not _REQUEST_ID_RE.match(request_id):
        raise InvalidRequest("This answer has no request id to attach feedback to.",
                             "Feedback is for answers a model gave; ask again, then vote.")
    return request_id


class FeedbackStore:
    """Votes on answers in the usage database (SQLAlchemy Core).

    Args:
        engine: The usage store's engine; the table is created if missing.
        clock: Epoch seconds now (tests pass a fake one).

    Raises:
        FeedbackStorageFailed: the table cannot be created.
    """

    def __init__(self, engine: Engine, *, clock: Any = time.time) -> None:
        self.engine = engine
        self._clock = clock
        try:
            ensure_tables(engine, [answer_feedback])
        except SQLAlchemyError as exc:
            raise FeedbackStorageFailed("The usage database cannot hold answer feedback.",
                                        "Check BLOSSOM_DASH_DATABASE_URL and that the database is "
                                        "writable.") from exc

    def model_of(self, request_id: str) -> str | None:
        """The model on the event of ``request_id`` (None when not recorded yet).

        Raises:
            FeedbackStorageFailed: the read failed.
        """
        with _store_errors("read"), self.engine.connect() as conn:
            return conn.execute(select(events.c.model).where(events.c.request_id == request_id)).scalar()

    def vote(self, request_id: str, score: int | None, *, user: str, model: str,
             comment: str = "") -> AnswerVote | None:
        """Record ``user``'s vote on one answer, replacing theirs; ``score=None`` clears it.

        Args:
            request_id: The answer's request id.
            score: ``1``, ``-1``, or None to remove the vote.
            user: Who votes.
            model: The model that answered (at most 128 characters).
            comment: Optional words, at most ``MAX_COMMENT_CHARS``.

        Returns:
            The vote now stored, or None when cleared.

        Raises:
            InvalidRequest: a bad request id, a score other than 1/-1/None, a comment
                too long, no model.
            FeedbackStorageFailed: the write failed (the old vote is kept).
        """
        request_id = check_request_id(request_id)
        if score is not None and (isinstance(score, bool) or score not in (1, -1)):
            raise InvalidRequest(f"A vote is 👍 (1) or 👎 (-1), not {score!r}.", "Pick a thumb.")
        comment = str(comment or "").replace("\x00", "").strip()
        if len(comment) > MAX_COMMENT_CHARS:
            raise InvalidRequest(f"The comment has {len(comment):,} characters; feedback holds "
                                 f"{MAX_COMMENT_CHARS:,}.", "Shorten it.")
        model = str(model or "").replace("\x00", "").strip()
        if score is not None and not model:
            raise InvalidRequest("Which model gave this answer is not known, so the vote cannot be counted.",
                                 "Try again in a moment.")
        user = str(user)[:128]
        key = and_(answer_feedback.c.request_id == request_id, answer_feedback.c.user == user)
        if score is None:
            with _store_errors("removed"), self.engine.begin() as conn:
                conn.execute(delete(answer_feedback).where(key))
            return None
        vote = AnswerVote(request_id, user, model[:128], int(score), comment, self._clock())
        with _store_errors("saved"), self.engine.begin() as conn:
            conn.execute(_upsert(conn.dialect.name, vote))
        return vote

    def by_model(self, *, since_ts: float | None = None, comments_of: str | None = None,
                 all_comments: bool = False) -> pd.DataFrame:
        """Votes per model (``FEEDBACK_COLUMNS``), most votes first.

        Args:
            since_ts: Count only votes from this epoch second on; None: all.
            comments_of: Show only this user's comments (a member reads their own).
            all_comments: Show everyone's comments (an admin); neither this nor
                ``comments_of``: no comments (``[]`` each row).

        Raises:
            FeedbackStorageFailed: the read failed.
        """
        fb = answer_feedback.c
        where = [] if since_ts is None else [fb.ts >= since_ts]
        up = func.sum(case((fb.score > 0, 1), else_=0))
        down = func.sum(case((fb.score < 0, 1), else_=0))
        counts = select(fb.model, up.label("up"), down.label("down")).where(*where).group_by(fb.model)
        comments: dict[str, list[str]] = {}
        with _store_errors("read"), self.engine.connect() as conn:
            rows = conn.execute(counts).all()
            if all_comments or comments_of is not None:
                cq = select(fb.model, fb.comment).where(*where, fb.comment != "")
                if not all_comments:
                    cq = cq.where(fb.user == comments_of)
                for model, text in conn.execute(cq.order_by(fb.ts.desc()).limit(_COMMENTS_READ)):
                    if len(kept := comments.setdefault(model, [])) < COMMENTS_PER_MODEL:
                        kept.append(text)
        table = pd.DataFrame(
            [{"model": m, "up": int(u), "down": int(d), "votes": int(u) + int(d),
              "share_up": int(u) / (int(u) + int(d)) if int(u) + int(d) else None,
              "comments": comments.get(m, [])} for m, u, d in rows],
            columns=list(FEEDBACK_COLUMNS))
        return table.sort_values(["votes", "model"], ascending=[False, True], ignore_index=True)


__all__ = [
    "COMMENTS_PER_MODEL",
    "FEEDBACK_COLUMNS",
    "MAX_COMMENT_CHARS",
    "AnswerVote",
    "FeedbackStorageFailed",
    "FeedbackStore",
    "answer_feedback",
    "check_request_id",
]
