"""Compare in ``BlossomService``: run and store comparisons, vote, the leaderboard, and
the checks before a comparison is sent (can its N requests be covered now; which models
were recorded for a prompt in replay-only mode).

A base class of ``service.BlossomService``: thin methods over ``features.compare``
(running, storage), ``features.compare_quota`` (the admission check, read only) and
``policies.replay_prompts``. ``delete_comparison`` is with the other owner-or-admin
deletions in ``service_features``.
"""

from __future__ import annotations

import random
from typing import Any

from .errors import DashError, InvalidRequest
from .features.compare import (
    Comparison,
    ComparisonStore,
    TextComparison,
    Vote,
    blind_order,
    check_request,
    image_panel,
    new_comparison_id,
    run_all,
)
from .features.compare_quota import quota_refusal
from .gateway import Caller, ImageRequest, TextRequest, TextStream
from .gateway.requests import SEED_MAX
from .results import ImageResult
from .sdk.backend import Backend
from .service_access import AccessMethods


class CompareMethods(AccessMethods):
    """The comparison admission check and the recorded models; mixed into ``BlossomService``."""

    limiter: Any  # the service's RateLimiter (or SharedRateLimiter)
    gateway: Any

    @property
    def backend(self) -> Backend:  # provided by BlossomService
        raise NotImplementedError

    def stream_text(self, prompt: str, **kwargs: Any) -> TextStream:  # provided by BlossomService
        raise NotImplementedError

    def generate_image(self, prompt: str, **kwargs: Any) -> ImageResult:  # provided by BlossomService
        raise NotImplementedError

    def _check_quota(self, needed: int, user: str) -> None:
        if (refusal := self.comparison_refusal(needed, user=user)) is not None:
            raise refusal

    def comparison_refusal(self, needed: int, *, user: str = "anonymous") -> DashError | None:
        """Why a comparison of ``needed`` requests cannot all be admitted now, or None.

        Reads ``user``'s and the global rate-limit windows (a kiosk visitor's lower
        limit included) and the budgets that apply, without taking anything. In
        replay-only mode nothing is admitted through the windows (answers come from
        recordings), so nothing is refused here.

        Returns:
            None, or the ``RateLimited`` / ``BudgetExceeded`` to show (how many are
            needed, how many are left, ``retry_after_s``): see ``compare_quota``.
        """
        if self.cache.replay_only:
            return None
        kiosk = self.settings.kiosk_rpm if Caller(user, role="member").is_kiosk else None
        budget = self.gateway.budget.status(user) if self.gateway.budget.budgets.any else None
        return quota_refusal(needed, self.limiter.status(user), kiosk_rpm=kiosk, budget=budget)

    def models_recorded_for(self, kind: str, prompt: str) -> list[str]:
        """Models whose answer to ``prompt`` (one turn, ``kind`` ``"text"`` or ``"image"``) is
        recorded for replay, most recorded first; [] without recordings.

        Raises:
            OSError: the recordings folder exists but cannot be read.
        """
        store = self.cache.recordings(create=False)
        return store.models_recorded_for(kind, prompt) if store is not None else []

    def _comparisons(self) -> ComparisonStore:
        """The comparison tables, created in the usage database on first use."""
        with self._lock:
            store = getattr(self, "_comparison_store", None)
            if store is None:
                store = self._comparison_store = ComparisonStore(self.store.engine)
            return store

    def compare_text(self, prompt: str, models: list[str], *, system: str | None = None,
                     max_tokens: int | None = None, temperature: float | None = None, seed: int | None = None,
                     blind: bool = False, user: str = "anonymous", session: str = "",
                     api_key: str | None = None) -> TextComparison:
        """Start one streamed answer per model to the same prompt, all at once.

        Each stream is a ``stream_text`` request (cache, rate limit, one event each, its
        ``context`` ``"comparison:<id>"``, the id it is stored under).
        First the whole comparison must fit the caller's rate-limit window and budgets
        (``comparison_refusal``): else it is refused before anything is sent. A model
        whose request is still refused at its start (another tab took the slot, a bad
        model name) gets its error in its own panel; the others still run.

        Args:
            prompt: The one prompt.
            models: 2 to 4 distinct model names, in column order (as picked).
            system / max_tokens / temperature / seed: As in ``generate_text``, for all models.
            blind: A blind vote: the columns are shuffled (``compare.blind_order``) and
                the comparison is stored so, with ``params["blind"]`` set; the page hides
                the names until the vote.

        Returns:
            ``TextComparison`` (``models`` in column order; ``id`` the id it will be
            stored under): iterate ``updates()``, then ``finish()`` stores it.

        Raises:
            InvalidRequest: the prompt, the model list or a parameter is invalid.
            RateLimited / BudgetExceeded: the comparison cannot be covered now (nothing sent).
        """
        models = check_request(prompt, models, max_prompt_chars=self.settings.max_prompt_chars)
        params = {"system": system, "max_tokens": max_tokens, "temperature": temperature, "seed": seed}
        # Parameters are checked once here, not as one identical error per panel.
        TextRequest(prompt, models[0], system, None, max_tokens, temperature, seed).validate(
            self.settings.max_prompt_chars)
        self._check_quota(len(models), user)
        cid = new_comparison_id()
        stored = {**params, "blind": True} if blind else params
        models = blind_order(models) if blind else models
        starts: list[Any] = []
        for model in models:
            try:
                starts.append(self.stream_text(prompt, model=model, **params, user=user, session=session,
                                               api_key=api_key, context=f"comparison:{cid}"))
            except DashError as err:
                starts.append(err)
        return TextComparison(prompt, models, stored, starts, lambda panels: self._comparisons().save(
            kind="text", prompt=prompt, params=stored, panels=panels, user=user, session=session,
            backend=self.backend.name, comparison_id=cid), comparison_id=cid)

    def compare_images(self, prompt: str, models: list[str], *, width: int = 1024, height: int = 1024,
                       seed: int | None = None, blind: bool = False, user: str = "anonymous", session: str = "",
                       api_key: str | None = None) -> Comparison:
        """Generate the same prompt with the same seed on 2 to 4 image models at once, and store it.

        As ``compare_text``: refused before anything is sent when the caller's window
        or budgets cannot cover every model; ``blind`` shuffles the columns.

        Args:
            prompt: What to draw.
            models: 2 to 4 distinct image model names.
            width / height: Pixels, 64 to 2048.
            seed: One seed for every model; None picks one at random.

        Returns:
            The stored ``Comparison``; a model that failed has its error in its panel.

        Raises:
            InvalidRequest: the prompt, the models, the size or the seed is invalid.
            RateLimited / BudgetExceeded: the comparison cannot be covered now (nothing sent).
            StorageFailed: the comparison could not be stored.
        """
        models = check_request(prompt, models, max_prompt_chars=self.settings.max_prompt_chars)
        seed = random.randint(0, SEED_MAX) if seed is None else seed
        ImageRequest(prompt, models[0], width, height, seed).validate(self.settings.max_prompt_chars)
        self._check_quota(len(models), user)
        cid = new_comparison_id()
        models = blind_order(models) if blind else models
        outcomes = run_all([lambda m=m: self.generate_image(prompt, model=m, width=width, height=height, seed=seed,
                                                            user=user, session=session, api_key=api_key,
                                                            context=f"comparison:{cid}")
                            for m in models])
        invalid = [o for o, _ in outcomes if isinstance(o, InvalidRequest)]
        if len(invalid) == len(outcomes):
            raise invalid[0]  # the request itself is wrong: say it once, not once per cell
        panels = [image_panel(i, m, o, ms) for i, (m, (o, ms)) in enumerate(zip(models, outcomes, strict=True))]
        params: dict[str, Any] = {"width": width, "height": height, "seed": seed, **({"blind": True} if blind else {})}
        return self._comparisons().save(kind="image", prompt=prompt, panels=panels, user=user, session=session,
                                        params=params, backend=self.backend.name, comparison_id=cid)

    def compare_record(self, kind: str, prompt: str, panels: list[Any], *, params: dict[str, Any] | None = None,
                       user: str = "anonymous", session: str = "", api_key: str | None = None) -> Comparison:
        """Store a comparison made elsewhere (``compare.Panel`` per model).

        Raises:
            InvalidRequest: unknown kind, or not 2 to 4 panels.
            StorageFailed: the write failed.
        """
        if kind not in ("text", "image"):
            raise InvalidRequest(f"Unknown comparison kind {kind!r}.", "Use 'text' or 'image'.")
        check_request(prompt, [p.model for p in panels], max_prompt_chars=self.settings.max_prompt_chars)
        return self._comparisons().save(kind=kind, prompt=prompt, params=params or {}, panels=panels, user=user,
                                        session=session, backend=self.backend.name)

    def vote(self, comparison_id: str, choice: str, *, user: str = "anonymous", session: str = "",
             api_key: str | None = None) -> Vote:
        """Vote on a stored comparison: a model that answered, ``"tie"`` or ``"all_bad"``.

        Voting again on the same comparison replaces the earlier vote.

        Raises:
            InvalidRequest: unknown comparison or choice. StorageFailed: the write failed.
        """
        return self._comparisons().vote(comparison_id, choice, user=user, session=session)

    def leaderboard(self, kind: str = "text") -> Any:
        """Votes, wins, ties, losses, win rate and its 95 % interval per model (a DataFrame).

        See ``compare.ComparisonStore.leaderboard``.
        """
        return self._comparisons().leaderboard(kind)

    def load_comparison(self, comparison_id: str) -> Comparison:
        """A stored comparison (prompt, models, answers, figures, vote) for its permalink.

        Raises:
            InvalidRequest: malformed or unknown id. StorageFailed: the read failed.
        """
        return self._comparisons().load(comparison_id)


__all__ = ["CompareMethods"]
