"""Comparison storage: the tables, votes, and the leaderboard with its Wilson intervals.

Three tables on the shared ``store.metadata`` (``comparisons``, ``comparison_answers``,
``comparison_votes``) in the usage database, created on first use with
``ensure_tables(engine, TABLES)`` (idempotent, so an existing database gains them
without a migration; under the store's schema lock, so replicas may start at once).
``ComparisonStore`` saves and loads comparisons, records the one vote per comparison
and computes the leaderboard; ``leaderboard_table`` puts it in words for reading.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd
from PIL import Image
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    and_,
    case,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy import delete as sa_delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..errors import DashError, InvalidRequest
from ..telemetry.store import ensure_tables, fit_text, metadata
from .compare_panels import ALL_BAD, TIE, Comparison, Panel, Vote

log = logging.getLogger("blossom_dash.compare")

#: 95 % two-sided normal quantile for the Wilson interval.
Z_95 = 1.959963984540054
#: Images larger than this are stored as a downscaled JPEG (the screen keeps the original).
MAX_STORED_IMAGE_BYTES = 1_500_000
STORED_IMAGE_MAX_PX = 1024
_ID_RE = re.compile(r"^[0-9a-f]{12}$")

comparisons = Table(
    "comparisons",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("ts", Float, nullable=False, index=True),  # unix epoch seconds, UTC
    Column("user", String(128), nullable=False),
    Column("session", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # text | image
    Column("backend", String(256), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("params", Text, nullable=False),  # JSON object
)

comparison_answers = Table(
    "comparison_answers",
    metadata,
    Column("comparison_id", String(16), ForeignKey("comparisons.id"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("model", String(128), nullable=False, index=True),
    Column("text", Text, nullable=True),
    Column("error_type", String(64), nullable=False, default=""),
    Column("error_message", Text, nullable=True),
    Column("error_hint", Text, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("ttft_ms", Float, nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("cached", Boolean, nullable=False, default=False),
    Column("stopped_early", Boolean, nullable=False, default=False),
    Column("request_id", String(32), nullable=True),
    Column("seed", Integer, nullable=True),
    Column("width", Integer, nullable=True),
    Column("height", Integer, nullable=True),
    Column("content_type", String(32), nullable=True),
    Column("image", LargeBinary, nullable=True),
)

comparison_votes = Table(
    "comparison_votes",
    metadata,
    # One vote per comparison: voting again replaces it.
    Column("comparison_id", String(16), ForeignKey("comparisons.id"), primary_key=True),
    Column("choice", String(16), nullable=False),  # "model" | "tie" | "all_bad"
    Column("model", String(128), nullable=True),  # the winner when choice == "model"
    Column("user", String(128), nullable=False),
    Column("session", String(64), nullable=False),
    Column("ts", Float, nullable=False),
)

TABLES = (comparisons, comparison_answers, comparison_votes)

#: Columns of ``leaderboard()``, in order.
LEADERBOARD_COLUMNS: tuple[str, ...] = (
    "model", "votes", "wins", "ties", "losses", "all_bad", "win_rate", "ci_low", "ci_high",
)


class StorageFailed(DashError):
    """The usage database could not store or read a comparison."""


def new_comparison_id() -> str:
    """A random 12-hex-character id (48 bits: permalinks are not guessable in practice)."""
    return secrets.token_hex(6)


# ----- statistics -----------------------------------------------------------------------


def wilson_interval(wins: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a win rate (95 % by default).

    Source: E. B. Wilson (1927), "Probable inference, the law of succession, and
    statistical inference", JASA 22; the interval scipy's
    ``binomtest(k, n).proportion_ci(method="wilson")`` returns (1 of 1 -> 0.21–1.00,
    60 of 100 -> 0.50–0.69). Written out because it is five lines and scipy is not a
    dependency of this app.

    Args:
        wins: Successes, 0..n.
        n: Trials; 0 gives ``(0.0, 1.0)`` (nothing is known).

    Returns:
        ``(low, high)`` as fractions in [0, 1].
    """
    if n <= 0:
        return 0.0, 1.0
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# ----- storage ------------------------------------------------------------------------


def _storable_image(data: bytes | None) -> tuple[bytes | None, str | None]:
    """The bytes to keep for a permalink; large images become a 1024-px JPEG (Pillow)."""
    if data is None or len(data) <= MAX_STORED_IMAGE_BYTES:
        return data, None
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        img.thumbnail((STORED_IMAGE_MAX_PX, STORED_IMAGE_MAX_PX))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=85)
    return out.getvalue(), "image/jpeg"


def _fit(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as ``table`` stores them on every database: each text through
    ``fit_text`` (PostgreSQL refuses a text longer than its column, or holding NUL)."""
    return {k: fit_text(v, table.c[k]) if isinstance(v, str) else v for k, v in values.items()}


class ComparisonStore:
    """Comparisons and votes in the usage database (SQLAlchemy Core).

    Args:
        engine: The usage store's engine; the three tables are created if missing.

    Raises:
        StorageFailed: the tables cannot be created.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            ensure_tables(engine, TABLES)
        except SQLAlchemyError as exc:
            raise StorageFailed("The usage database cannot hold comparisons.",
                                "Check BLOSSOM_DASH_DATABASE_URL and that the database is writable.") from exc

    def save(self, *, kind: str, prompt: str, params: dict[str, Any], panels: Sequence[Panel], user: str,
             session: str, backend: str, ts: float | None = None, comparison_id: str | None = None) -> Comparison:
        """Store a finished comparison with all its panels in one transaction.

        ``comparison_id`` is the id picked before the requests were sent (so that they can
        name it); a new one when None.

        Returns:
            The stored ``Comparison`` (its panels keep the full image bytes).

        Raises:
            StorageFailed: the write failed (nothing is stored).
        """
        cid, ts = comparison_id or new_comparison_id(), time.time() if ts is None else ts
        rows = []
        for p in panels:
            image, stored_type = _storable_image(p.image)
            rows.append(_fit(comparison_answers, {
                         "comparison_id": cid, "position": p.position, "model": p.model, "text": p.text,
                         "error_type": p.error_type, "error_message": p.error_message,
                         "error_hint": p.error_hint, "latency_ms": p.latency_ms, "ttft_ms": p.ttft_ms,
                         "prompt_tokens": p.prompt_tokens, "completion_tokens": p.completion_tokens,
                         "cached": p.cached, "stopped_early": p.stopped_early, "request_id": p.request_id,
                         "seed": p.seed, "width": p.width, "height": p.height,
                         "content_type": stored_type or p.content_type, "image": image}))
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(comparisons).values(**_fit(comparisons, {
                    "id": cid, "ts": ts, "user": user, "session": session, "kind": kind, "backend": backend,
                    "prompt": prompt, "params": json.dumps(params, sort_keys=True)})))
                conn.execute(insert(comparison_answers), rows)
        except SQLAlchemyError as exc:
            log.exception("could not store comparison")
            raise StorageFailed("The comparison could not be saved to the usage database.",
                                "The answers are still on screen; run it again to get a permalink and a vote.") \
                from exc
        return Comparison(cid, ts, kind, prompt, dict(params), user, backend, tuple(panels))

    def load(self, comparison_id: Any) -> Comparison:
        """The stored comparison with its panels and vote.

        Raises:
            InvalidRequest: the id is malformed or unknown.
            StorageFailed: the database could not be read.
        """
        cid = _check_id(comparison_id)
        try:
            with self.engine.connect() as conn:
                head = conn.execute(select(comparisons).where(comparisons.c.id == cid)).mappings().first()
                answers = conn.execute(select(comparison_answers).where(comparison_answers.c.comparison_id == cid)
                                       .order_by(comparison_answers.c.position)).mappings().all()
                vote = conn.execute(select(comparison_votes).where(comparison_votes.c.comparison_id == cid)
                                    ).mappings().first()
        except SQLAlchemyError as exc:
            raise StorageFailed("The usage database could not be read.", "Try again in a moment.") from exc
        if head is None:
            raise InvalidRequest(f"There is no comparison with the id {cid!r}.",
                                 "The link may be from another installation, or its history was deleted. "
                                 "Start a new comparison.")
        names = {c.name for c in comparison_answers.columns} - {"comparison_id"}
        panels = tuple(Panel(**{k: (v if v is not None or k not in _PANEL_DEFAULTS else _PANEL_DEFAULTS[k])
                                for k, v in row.items() if k in names}) for row in answers)
        return Comparison(head["id"], head["ts"], head["kind"], head["prompt"], json.loads(head["params"]),
                          head["user"], head["backend"], panels,
                          Vote(vote["choice"], vote["model"], vote["user"], vote["ts"]) if vote else None)

    def delete(self, comparison_id: Any) -> bool:
        """Delete a stored comparison with its answers and vote; whether there was one.

        Raises:
            InvalidRequest: the id is malformed.
            StorageFailed: the write failed.
        """
        cid = _check_id(comparison_id)
        try:
            with self.engine.begin() as conn:
                for table in (comparison_votes, comparison_answers):
                    conn.execute(sa_delete(table).where(table.c.comparison_id == cid))
                return conn.execute(sa_delete(comparisons).where(comparisons.c.id == cid)).rowcount > 0
        except SQLAlchemyError as exc:
            raise StorageFailed("The comparison could not be deleted: the usage database refused.",
                                "Try again in a moment.") from exc

    def vote(self, comparison_id: Any, choice: Any, *, user: str, session: str) -> Vote:
        """Record the vote on a comparison, replacing any earlier one.

        Args:
            comparison_id: The comparison's id.
            choice: A model of the comparison that answered, ``"tie"`` or ``"all_bad"``.

        Raises:
            InvalidRequest: unknown comparison, or a choice it does not offer.
            StorageFailed: the write failed.
        """
        comp = self.load(comparison_id)
        if not comp.votable:
            raise InvalidRequest(f"This comparison has {sum(p.ok for p in comp.panels)} answer(s); a vote needs "
                                 "at least two.", "Run the comparison again when the models can answer.")
        if choice not in comp.vote_options():
            raise InvalidRequest(f"{str(choice)[:60]!r} is not a choice in this comparison.",
                                 f"Vote for one of {', '.join(comp.vote_options())}.")
        vote = Vote("model" if choice not in (TIE, ALL_BAD) else choice,
                    choice if choice not in (TIE, ALL_BAD) else None, user, time.time())
        try:
            # Delete-then-insert in one transaction: a portable upsert (SQLite, PostgreSQL, others).
            with self.engine.begin() as conn:
                conn.execute(delete(comparison_votes).where(comparison_votes.c.comparison_id == comp.id))
                conn.execute(insert(comparison_votes).values(**_fit(comparison_votes, {
                    "comparison_id": comp.id, "choice": vote.choice, "model": vote.model, "user": user,
                    "session": session, "ts": vote.ts})))
        except SQLAlchemyError as exc:
            raise StorageFailed("The vote could not be saved.", "Try again in a moment.") from exc
        return vote

    def leaderboard(self, kind: str = "text") -> pd.DataFrame:
        """Per model: voted comparisons it answered in, wins, ties, losses, all-bad.

        A model counts in a voted comparison only if it answered there (a failed
        panel could not be judged). ``win_rate = wins / votes``; ``ci_low``/``ci_high``
        is its 95 % Wilson interval, which says how much the figure can be trusted
        (1 win of 1 is 21–100 %, 60 of 100 is 50–69 %). Sorted by ``ci_low``, the
        rate the model beats with 95 % confidence, so a lucky single vote does not
        top the board (E. Miller, "How not to sort by average rating", 2009).

        Args:
            kind: ``"text"`` or ``"image"``.

        Returns:
            A DataFrame with ``LEADERBOARD_COLUMNS`` (empty when nothing is voted).

        Raises:
            InvalidRequest: unknown kind.
            StorageFailed: the database could not be read.
        """
        if kind not in ("text", "image"):
            raise InvalidRequest(f"Unknown comparison kind {kind!r}.", "Use 'text' or 'image'.")
        a, v, c = comparison_answers, comparison_votes, comparisons
        won = and_(v.c.choice == "model", v.c.model == a.c.model)
        query = (
            select(a.c.model, func.count().label("votes"),
                   func.sum(case((won, 1), else_=0)).label("wins"),
                   func.sum(case((v.c.choice == TIE, 1), else_=0)).label("ties"),
                   func.sum(case((v.c.choice == ALL_BAD, 1), else_=0)).label("all_bad"))
            .select_from(a.join(v, v.c.comparison_id == a.c.comparison_id)
                         .join(c, c.c.id == a.c.comparison_id))
            .where(c.c.kind == kind, a.c.error_type == "")
            .group_by(a.c.model)
        )
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise StorageFailed("The usage database could not be read.", "Try again in a moment.") from exc
        df = pd.DataFrame(rows, columns=["model", "votes", "wins", "ties", "all_bad"])
        if df.empty:
            return pd.DataFrame({col: pd.Series(dtype="float64" if col in ("win_rate", "ci_low", "ci_high")
                                                else "int64" if col != "model" else "object")
                                 for col in LEADERBOARD_COLUMNS})
        for col in ("votes", "wins", "ties", "all_bad"):
            df[col] = df[col].astype("int64")
        df["losses"] = df["votes"] - df["wins"] - df["ties"] - df["all_bad"]
        df["win_rate"] = df["wins"] / df["votes"]
        bounds = [wilson_interval(w, n) for w, n in zip(df["wins"], df["votes"], strict=True)]
        df["ci_low"] = [lo for lo, _ in bounds]
        df["ci_high"] = [hi for _, hi in bounds]
        df = df.sort_values(["ci_low", "wins", "model"], ascending=[False, False, True], ignore_index=True)
        return df[list(LEADERBOARD_COLUMNS)]


def leaderboard_table(board: pd.DataFrame) -> pd.DataFrame:
    """``leaderboard()`` for reading: each rate next to the counts behind it.

    Returns:
        Columns Model, Votes, Wins, Ties, Losses, All bad, Win rate (``"50 % (1 of 2)"``)
        and 95 % interval (``"9–91 %"``).
    """
    def pct(x: float) -> str:
        return f"{x * 100:.0f}"

    return pd.DataFrame({
        "Model": board["model"], "Votes": board["votes"], "Wins": board["wins"], "Ties": board["ties"],
        "Losses": board["losses"], "All bad": board["all_bad"],
        "Win rate": [f"{pct(r)} % ({w} of {n})" for r, w, n in zip(board["win_rate"], board["wins"], board["votes"],
                                                                    strict=True)],
        "95 % interval": [f"{pct(lo)}–{pct(hi)} %" for lo, hi in zip(board["ci_low"], board["ci_high"], strict=True)],
    })


_PANEL_DEFAULTS: dict[str, Any] = {"text": "", "error_type": "", "error_message": "", "error_hint": "",
                                   "cached": False, "stopped_early": False, "request_id": ""}


def _check_id(comparison_id: Any) -> str:
    cid = comparison_id.strip().lower() if isinstance(comparison_id, str) else ""
    if not _ID_RE.match(cid):
        raise InvalidRequest(f"{str(comparison_id)[:40]!r} is not a comparison id.",
                             "A comparison link ends in ?comparison= and 12 letters and digits; "
                             "check that it was copied whole.")
    return cid
