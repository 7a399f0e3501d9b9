"""Comparisons: one prompt on 2 to 4 models side by side, votes, and a leaderboard.

What a presenter needs to show how models differ (LiteLLM's Compare tab, Chatbot
Arena's votes): the answers of several models to one prompt, each with its figures;
a vote per comparison (one answer is best, a tie, or all bad); a leaderboard of wins
with the number of votes behind each figure; and a permalink that reopens a stored
comparison read-only.

This module checks a request, builds its permalink and runs it (``merge_streams``,
``TextComparison``, ``run_all``). The values are in ``compare_panels`` (``Panel``,
``Vote``, ``Comparison``); storage, votes and the leaderboard in ``compare_store``
(three tables on the shared ``store.metadata`` in the usage database, created on first
use). Their names are re-exported here, so ``from blossom_dash.features.compare import
...`` is the one place to import them from. No streamlit here: the Compare page draws.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DashError, InvalidRequest
from .compare_panels import (
    ALL_BAD,
    TIE,
    Comparison,
    Panel,
    Vote,
    blind_panel,
    image_panel,
    mask_names,
    panel_label,
    text_panel,
)
from .compare_store import (
    LEADERBOARD_COLUMNS,
    MAX_STORED_IMAGE_BYTES,
    STORED_IMAGE_MAX_PX,
    TABLES,
    Z_95,
    ComparisonStore,
    StorageFailed,
    comparison_answers,
    comparison_votes,
    comparisons,
    leaderboard_table,
    new_comparison_id,
    wilson_interval,
)

if TYPE_CHECKING:
    from ..gateway.streams import TextStream

log = logging.getLogger("blossom_dash.compare")

MIN_MODELS, MAX_MODELS = 2, 4
#: The shuffle of blind comparisons (a test may put a seeded ``random.Random`` here).
BLIND_RNG: random.Random = random.SystemRandom()


def blind_order(models: Sequence[str], rng: random.Random | None = None) -> list[str]:
    """``models`` in a fresh random order for a blind vote (every order equally likely,
    the picker's included, so the order says nothing about which model is where).

    Args:
        models: The models as picked.
        rng: The randomness; ``BLIND_RNG`` when None.

    Returns:
        A new list: the panels' order, which the comparison is stored in.
    """
    order = list(models)
    (rng or BLIND_RNG).shuffle(order)
    return order


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
        comparison_id: The id it will be stored under ("" when not picked yet).
    """

    def __init__(self, prompt: str, models: list[str], params: dict[str, Any],
                 starts: list[TextStream | DashError], save: Callable[[list[Panel]], Comparison],
                 comparison_id: str = "") -> None:
        self.id = comparison_id
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
    "BLIND_RNG",
    "TextComparison",
    "Vote",
    "blind_order",
    "blind_panel",
    "check_request",
    "image_panel",
    "leaderboard_table",
    "mask_names",
    "merge_streams",
    "new_comparison_id",
    "panel_label",
    "permalink",
    "run_all",
    "text_panel",
    "wilson_interval",
    # The tables and storage limits as well: tests and scripts read them from here.
    "MAX_STORED_IMAGE_BYTES",
    "STORED_IMAGE_MAX_PX",
    "TABLES",
    "Z_95",
    "comparison_answers",
    "comparison_votes",
    "comparisons",
]
