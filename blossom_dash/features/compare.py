"""Comparisons: one prompt on 2 to 4 models side by side, votes, and a leaderboard.

What a presenter needs to show how models differ (LiteLLM's Compare tab, Chatbot
Arena's votes): the answers of several models to one prompt, each with its figures;
a vote per comparison (one answer is best, a tie, or all bad); a leaderboard of wins
with the number of votes behind each figure; and a permalink that reopens a stored
comparison read-only.

Storage: three tables on the shared ``store.metadata`` (``comparisons``,
``comparison_answers``, ``comparison_votes``) in the usage database, created on first
use with ``metadata.create_all(engine, tables=...)`` (idempotent, so an existing
database gains them without a migration). No streamlit here: the Compare page draws.
"""

from __future__ import annotations

import io
import json
import logging
import math
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

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
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from .. import errors
from ..errors import DashError, InvalidRequest
from ..telemetry.store import metadata

if TYPE_CHECKING:
    from ..service import ImageResult, TextResult, TextStream, Usage

log = logging.getLogger("blossom_dash.compare")

MIN_MODELS, MAX_MODELS = 2, 4
#: The two vote choices that name no model.
TIE, ALL_BAD = "tie", "all_bad"
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


@dataclass(frozen=True)
class Panel:
    """One model's answer in a comparison (text or image), or its error in words.

    Attributes have the names ``ui.result_caption`` reads (``model``, ``latency_ms``,
    ``ttft_ms``, ``usage``, ``cached``, ``request_id``).

    Attributes:
        position: 0-based column of the panel.
        latency_ms: Wall time of the model's request, in milliseconds.
        ttft_ms: Time to first token (text only), in milliseconds.
        error_type: The ``DashError`` subclass name; ``""`` when the model answered.
        image: The image bytes (image comparisons only).
    """

    position: int
    model: str
    text: str = ""
    error_type: str = ""
    error_message: str = ""
    error_hint: str = ""
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached: bool = False
    stopped_early: bool = False
    request_id: str = ""
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    content_type: str | None = None
    image: bytes | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the model answered (no error)."""
        return not self.error_type

    @property
    def usage(self) -> Usage | None:
        """Token usage of a text answer; None for images and failed panels."""
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        from ..service import Usage  # service imports this module at load time

        p, c = self.prompt_tokens or 0, self.completion_tokens or 0
        return Usage(p, c, p + c)

    def error(self) -> DashError | None:
        """The panel's failure as a ``DashError`` (for ``ui.show_error``), or None.

        Keeps the severity of the original error type (a rate limit is a warning).
        """
        if self.ok:
            return None
        err = DashError(self.error_message, self.error_hint)
        err.severity = getattr(getattr(errors, self.error_type, DashError), "severity", "error")
        return err


def panel_label(position: int) -> str:
    """The anonymous name of a column in a blind comparison: ``Model A`` … ``Model D``."""
    return f"Model {chr(ord('A') + position)}"


def text_panel(position: int, model: str, result: TextResult | None, error: DashError | None,
               failed_after_ms: float | None = None) -> Panel:
    """A panel from a finished stream's ``result`` or its ``error``.

    Neither (the stream was abandoned before its end) is a panel with an error.
    ``failed_after_ms`` is a failed panel's latency (how long until it failed).
    """
    if error is not None or result is None:
        err = error or DashError("The answer was not read to its end.", "Run the comparison again.")
        return Panel(position, model, error_type=type(err).__name__, error_message=err.message,
                     error_hint=err.hint, latency_ms=failed_after_ms)
    return Panel(position, model, text=result.text, latency_ms=result.latency_ms, ttft_ms=result.ttft_ms,
                 prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens,
                 cached=result.cached, stopped_early=result.stopped_early, request_id=result.request_id)


def image_panel(position: int, model: str, outcome: ImageResult | DashError,
                failed_after_ms: float | None = None) -> Panel:
    """A panel from an ``ImageResult`` or the ``DashError`` its request raised.

    ``failed_after_ms`` is a failed panel's latency (how long until it failed).
    """
    if isinstance(outcome, DashError):
        return Panel(position, model, error_type=type(outcome).__name__, error_message=outcome.message,
                     error_hint=outcome.hint, latency_ms=failed_after_ms)
    return Panel(position, model, latency_ms=outcome.latency_ms, cached=outcome.cached,
                 request_id=outcome.request_id, seed=outcome.seed, width=outcome.width, height=outcome.height,
                 content_type=outcome.content_type, image=outcome.data)


@dataclass(frozen=True)
class Vote:
    """The vote on one comparison.

    Attributes:
        choice: ``"model"`` (``model`` was best), ``"tie"`` or ``"all_bad"``.
    """

    choice: str
    model: str | None
    user: str
    ts: float

    def describe(self) -> str:
        """The vote in words, e.g. ``demo-swift was best``."""
        if self.choice == "model":
            return f"{self.model} was best"
        return "a tie" if self.choice == TIE else "all answers were bad"


@dataclass(frozen=True)
class Comparison:
    """A stored comparison: the prompt, its parameters, one panel per model, the vote.

    Attributes:
        id: 12 hex characters, the permalink's ``?comparison=<id>``.
        ts: When it completed, epoch seconds.
        kind: ``"text"`` or ``"image"``.
        params: The request's parameters (``max_tokens``, ``seed``, ``width`` …).
    """

    id: str
    ts: float
    kind: str
    prompt: str
    params: dict[str, Any]
    user: str
    backend: str
    panels: tuple[Panel, ...]
    vote: Vote | None = None

    @property
    def models(self) -> list[str]:
        """The models, in column order."""
        return [p.model for p in self.panels]

    def summary(self) -> str:
        """One line: kind, number of models, when (UTC), backend and parameters set."""
        when = datetime.fromtimestamp(self.ts, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
        names = {"max_tokens": "max tokens", "seed": "seed", "temperature": "temperature", "width": "width",
                 "height": "height"}
        shown = [f"{label} {self.params[key]}" for key, label in names.items() if self.params.get(key) is not None]
        if self.params.get("system"):
            shown.append("with a system prompt")
        return " · ".join([f"{self.kind.capitalize()} comparison of {len(self.panels)} models", when,
                           f"{self.backend} backend", *shown])

    @property
    def voted(self) -> str | None:
        """The current vote as a choice: the winning model, ``"tie"``, ``"all_bad"``, or None."""
        if self.vote is None:
            return None
        return self.vote.model if self.vote.choice == "model" else self.vote.choice

    def vote_options(self) -> list[str]:
        """What a vote may name: the models that answered, then ``tie`` and ``all_bad``."""
        return [p.model for p in self.panels if p.ok] + [TIE, ALL_BAD]


def new_comparison_id() -> str:
    """A random 12-hex-character id (48 bits: permalinks are not guessable in practice)."""
    return secrets.token_hex(6)


def permalink(page_url: str | None, comparison_id: str, page_path: str = "compare") -> str:
    """The permalink of a comparison: ``<app>/compare?comparison=<id>``.

    Args:
        page_url: The browser's URL without its query (``st.context.url``), which may
            or may not end in the page's path; None or ``""`` gives a relative link.
        comparison_id: The comparison's id.
        page_path: The Compare page's URL path in the app's navigation.

    Returns:
        An absolute URL, or ``?comparison=<id>`` (relative to the current page).
    """
    base = (page_url or "").split("?")[0].rstrip("/")
    if not base:
        return f"?comparison={comparison_id}"
    if not base.endswith(f"/{page_path}"):
        base = f"{base}/{page_path}"
    return f"{base}?comparison={comparison_id}"


def check_request(prompt: Any, models: Any, *, max_prompt_chars: int) -> list[str]:
    """Validate a comparison request before any model is called.

    Args:
        prompt: The one prompt all models get.
        models: 2 to 4 distinct model names (any names: an unknown one fails in its
            own panel, as the backend says).
        max_prompt_chars: The service's prompt limit.

    Returns:
        The model names, stripped, in the given order.

    Raises:
        InvalidRequest: empty or too long prompt; fewer than 2, more than 4, blank or
            repeated models.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("The prompt is empty.", "Type one prompt; every model you picked will answer it.")
    if len(prompt) > max_prompt_chars:
        raise InvalidRequest(f"The prompt has {len(prompt):,} characters; the limit is {max_prompt_chars:,}.",
                             "Shorten it.")
    if isinstance(models, str) or not isinstance(models, Sequence):
        raise InvalidRequest("Models must be a list of names.", f"Pick {MIN_MODELS} to {MAX_MODELS} models.")
    names = [m.strip() for m in models if isinstance(m, str)]
    if len(names) != len(models) or not all(names):
        raise InvalidRequest("A model name is blank.", "Remove it, or type the model's name.")
    if not MIN_MODELS <= len(names) <= MAX_MODELS:
        raise InvalidRequest(f"A comparison needs {MIN_MODELS} to {MAX_MODELS} models; {len(names)} picked.",
                             f"Pick {MIN_MODELS} to {MAX_MODELS} models.")
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise InvalidRequest(f"{', '.join(repeated)} is picked twice.", "Pick each model once.")
    return names


# ----- running ------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelUpdate:
    """The state of one streaming panel after new deltas arrived.

    Attributes:
        index: The panel's position.
        text: Everything received so far.
        done: The stream ended (answered, failed, or stopped).
        error: The failure, when it failed.
    """

    index: int
    text: str
    done: bool = False
    error: DashError | None = None


_END = object()


def merge_streams(streams: Sequence[TextStream | DashError]) -> Iterator[PanelUpdate]:
    """Read several text streams at once; yield coalesced per-panel updates.

    One daemon thread per stream only moves deltas into a queue (no UI calls); the
    caller's thread drains the queue and, after each blocking read, takes everything
    else already queued, so a slow consumer gets fewer, larger updates instead of a
    backlog. A ``DashError`` in place of a stream (it failed to start) is reported at
    once as a finished panel. Closing the generator early asks the readers to close
    their streams (the backend calls are cancelled and their events recorded).

    Args:
        streams: Per panel, a ``TextStream`` or the error that prevented it.

    Yields:
        ``PanelUpdate``: one per panel whose text or state changed; each panel's last
        update has ``done=True``.
    """
    q: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
    stop = threading.Event()

    def read(index: int, stream: TextStream) -> None:
        try:
            for delta in stream:
                q.put((index, delta))
                if stop.is_set():
                    stream.close()
                    break
            q.put((index, _END))
        except DashError as err:
            q.put((index, err))
        except Exception as exc:  # a bug; shown in its own panel as words
            log.exception("stream %d failed unexpectedly", index)
            q.put((index, DashError(f"This answer failed unexpectedly ({type(exc).__name__}).",
                                    "The other answers are unaffected; run the comparison again.")))

    texts = [""] * len(streams)
    pending = set()
    for i, s in enumerate(streams):
        if isinstance(s, DashError):
            yield PanelUpdate(i, "", done=True, error=s)
        else:
            pending.add(i)
            threading.Thread(target=read, args=(i, s), name=f"compare-stream-{i}", daemon=True).start()
    try:
        while pending:
            batch = [q.get()]
            while True:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            changed: dict[int, PanelUpdate] = {}
            for i, item in batch:
                if isinstance(item, str):
                    texts[i] += item
                    changed[i] = PanelUpdate(i, texts[i])
                else:
                    pending.discard(i)
                    changed[i] = PanelUpdate(i, texts[i], done=True, error=item if item is not _END else None)
            yield from changed.values()
    finally:
        stop.set()


class TextComparison:
    """A text comparison in flight: streams started, answers not yet stored.

    Iterate ``updates()`` to draw the answers as they arrive, then call ``finish()``
    to store the comparison and get its permalink id.

    Args:
        prompt: The prompt.
        models: The models, in column order.
        params: The request's parameters, stored with the comparison.
        starts: Per model, its ``TextStream`` or the ``DashError`` that stopped it.
        save: Stores the finished panels; returns the stored ``Comparison``.
    """

    def __init__(self, prompt: str, models: list[str], params: dict[str, Any],
                 starts: list[TextStream | DashError], save: Callable[[list[Panel]], Comparison]) -> None:
        self.prompt = prompt
        self.models = models
        self.params = params
        self.starts = starts
        self._save = save
        self._t0 = time.monotonic()
        self._ended_ms: dict[int, float] = {}

    def updates(self) -> Iterator[PanelUpdate]:
        """``merge_streams`` over this comparison's streams (notes when each ended)."""
        for update in merge_streams(self.starts):
            if update.done:
                self._ended_ms[update.index] = (time.monotonic() - self._t0) * 1000
            yield update

    def panels(self) -> list[Panel]:
        """One panel per model from the streams' results or errors."""
        out = []
        for i, (model, s) in enumerate(zip(self.models, self.starts, strict=True)):
            ended = self._ended_ms.get(i)
            if isinstance(s, DashError):
                out.append(text_panel(i, model, None, s, ended))
            else:
                out.append(text_panel(i, model, s.result, s.error, ended))
        return out

    def finish(self) -> Comparison:
        """Store the comparison (call after ``updates()`` is exhausted).

        Raises:
            StorageFailed: the database refused the write.
        """
        return self._save(self.panels())


def run_all(calls: Sequence[Callable[[], Any]]) -> list[tuple[Any, float]]:
    """Run blocking calls concurrently (one thread each); keep each result or error.

    Args:
        calls: Zero-argument callables (e.g. one image request per model).

    Returns:
        Per call, in order, ``(outcome, elapsed_ms)``: its return value or the
        ``DashError`` it raised (any other exception, a bug, becomes a ``DashError``
        in words and is logged), and its wall time in milliseconds.
    """
    def one(call: Callable[[], Any]) -> tuple[Any, float]:
        t0 = time.monotonic()
        try:
            outcome = call()
        except DashError as err:
            outcome = err
        except Exception as exc:  # a bug; shown in its own cell as words
            log.exception("comparison call failed unexpectedly")
            outcome = DashError(f"This request failed unexpectedly ({type(exc).__name__}).",
                                "The other models are unaffected; run the comparison again.")
        return outcome, (time.monotonic() - t0) * 1000

    if not calls:
        return []
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="compare") as pool:
        return list(pool.map(one, calls))


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
            metadata.create_all(engine, tables=list(TABLES))
        except SQLAlchemyError as exc:
            raise StorageFailed("The usage database cannot hold comparisons.",
                                "Check BLOSSOM_DASH_DATABASE_URL and that the database is writable.") from exc

    def save(self, *, kind: str, prompt: str, params: dict[str, Any], panels: Sequence[Panel], user: str,
             session: str, backend: str, ts: float | None = None) -> Comparison:
        """Store a finished comparison with all its panels in one transaction.

        Returns:
            The stored ``Comparison`` (its panels keep the full image bytes).

        Raises:
            StorageFailed: the write failed (nothing is stored).
        """
        cid, ts = new_comparison_id(), time.time() if ts is None else ts
        rows = []
        for p in panels:
            image, stored_type = _storable_image(p.image)
            rows.append({"comparison_id": cid, "position": p.position, "model": p.model, "text": p.text,
                         "error_type": p.error_type, "error_message": p.error_message,
                         "error_hint": p.error_hint, "latency_ms": p.latency_ms, "ttft_ms": p.ttft_ms,
                         "prompt_tokens": p.prompt_tokens, "completion_tokens": p.completion_tokens,
                         "cached": p.cached, "stopped_early": p.stopped_early, "request_id": p.request_id,
                         "seed": p.seed, "width": p.width, "height": p.height,
                         "content_type": stored_type or p.content_type, "image": image})
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(comparisons).values(
                    id=cid, ts=ts, user=user, session=session, kind=kind, backend=backend, prompt=prompt,
                    params=json.dumps(params, sort_keys=True)))
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
        if choice not in comp.vote_options():
            raise InvalidRequest(f"{str(choice)[:60]!r} is not a choice in this comparison.",
                                 f"Vote for one of {', '.join(comp.vote_options())}.")
        vote = Vote("model" if choice not in (TIE, ALL_BAD) else choice,
                    choice if choice not in (TIE, ALL_BAD) else None, user, time.time())
        try:
            # Delete-then-insert in one transaction: a portable upsert (SQLite, PostgreSQL, others).
            with self.engine.begin() as conn:
                conn.execute(delete(comparison_votes).where(comparison_votes.c.comparison_id == comp.id))
                conn.execute(insert(comparison_votes).values(comparison_id=comp.id, choice=vote.choice,
                                                             model=vote.model, user=user, session=session,
                                                             ts=vote.ts))
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


__all__ = [
    "ALL_BAD",
    "LEADERBOARD_COLUMNS",
    "MAX_MODELS",
    "MIN_MODELS",
    "TIE",
    "Comparison",
    "ComparisonStore",
    "Panel",
    "PanelUpdate",
    "StorageFailed",
    "TextComparison",
    "Vote",
    "check_request",
    "image_panel",
    "leaderboard_table",
    "merge_streams",
    "new_comparison_id",
    "panel_label",
    "permalink",
    "run_all",
    "text_panel",
    "wilson_interval",
]
