"""What a comparison is made of: one ``Panel`` per model, the ``Vote``, the ``Comparison``.

Plain frozen dataclasses and the helpers that build panels from the service's results
(``text_panel``, ``image_panel``). No storage and no streamlit here: ``compare_store``
keeps them, the Compare page draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .. import errors
from ..errors import DashError
from ..results import Usage

if TYPE_CHECKING:
    from ..results import ImageResult, TextResult

#: The two vote choices that name no model.
TIE, ALL_BAD = "tie", "all_bad"


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
        cost: Pollen the answer cost (for a cached one, what the cache saved); None
            when unpriced. Only known for a comparison run in this session
            (``cost_known``): saved comparisons do not keep it.
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
    cost: Decimal | None = None
    cost_known: bool = False

    @property
    def ok(self) -> bool:
        """Whether the model answered (no error)."""
        return not self.error_type

    @property
    def usage(self) -> Usage | None:
        """Token usage of a text answer; None for images and failed panels."""
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
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


def mask_names(text: str, names: list[str], *, partial: bool = False) -> str:
    """``text`` with each of ``names`` (a blind comparison's models, in panel order)
    replaced by its panel label (``Model A`` …), longest name first, so that an answer
    or an error that names its model does not give the blind vote away.

    With ``partial`` (a stream still arriving), a tail that could be the start of a
    name (``"… I am demo-sw"``) is left out until the rest arrives.
    """
    for position, name in sorted(enumerate(names), key=lambda pn: -len(pn[1])):
        if name:
            text = text.replace(name, panel_label(position))
    if partial:
        cut = max((k for name in names for k in range(1, len(name)) if text.endswith(name[:k])), default=0)
        text = text[: len(text) - cut]
    return text


def blind_panel(panel: Panel, names: list[str]) -> Panel:
    """``panel`` as a blind vote shows it: its label for its model, and every model name
    in its answer and error words masked (``mask_names``)."""
    return replace(panel, model=panel_label(panel.position), text=mask_names(panel.text, names),
                   error_message=mask_names(panel.error_message, names),
                   error_hint=mask_names(panel.error_hint, names))


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
                 cached=result.cached, stopped_early=result.stopped_early, request_id=result.request_id,
                 cost=result.cost, cost_known=True)


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
                 content_type=outcome.content_type, image=outcome.data, cost=outcome.cost, cost_known=True)


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
        if self.blind:
            shown.append("blind vote")
        return " · ".join([f"{self.kind.capitalize()} comparison of {len(self.panels)} models", when,
                           f"{self.backend} backend", *shown])

    @property
    def voted(self) -> str | None:
        """The current vote as a choice: the winning model, ``"tie"``, ``"all_bad"``, or None."""
        if self.vote is None:
            return None
        return self.vote.model if self.vote.choice == "model" else self.vote.choice

    @property
    def blind(self) -> bool:
        """Whether it was run blind: panels shuffled, names hidden until the vote."""
        return bool(self.params.get("blind"))

    @property
    def votable(self) -> bool:
        """Whether a vote means something: at least two models answered."""
        return sum(p.ok for p in self.panels) >= 2

    def vote_options(self) -> list[str]:
        """What a vote may name: the models that answered, then ``tie`` and ``all_bad``."""
        return [p.model for p in self.panels if p.ok] + [TIE, ALL_BAD]
