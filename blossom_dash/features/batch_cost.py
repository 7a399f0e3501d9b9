"""What a batch would cost before it runs: an upper-bound estimate per row, summed exactly.

Each valid row is priced with ``pricing.estimate_cost`` (the same upper bound a budget
reserves): its prompt (system + user message) in tokens, estimated from its length at
``CHARS_PER_TOKEN`` characters per token, and a completion of its full ``max_tokens``
(the file's value, else the job's default). A row whose model has no price is counted
as unpriced and left out of the sum, never added as 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from ..pricing import Price, estimate_cost
from .batch_files import BatchRow

#: Characters per token for the prompt estimate: OpenAI's rule of thumb for English
#: ("one token is roughly 4 characters", help.openai.com, "What are tokens and how to
#: count them"). Other languages and code use more tokens per character.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class BatchEstimate:
    """The estimated cost of a batch.

    Attributes:
        total: Pollen over the priced rows (an upper bound: every completion at its
            ``max_tokens``); None when no row is priced.
        priced_rows / unpriced_rows: Rows whose model has / has no price.
        unpriced_models: The models without a price, sorted.
        prompt_tokens: Estimated prompt tokens of all rows.
        completion_tokens: Completion tokens assumed (the sum of every row's max_tokens).
        sources: Where the prices used came from (``Price.source``: ``backend``,
            ``settings`` or ``demo``), sorted.
        typical_total: Pollen over the priced rows whose model has a history, each
            answer at that model's mean completion length (capped by its max_tokens),
            the other priced rows at their max_tokens; None without any history.
        typical_rows: Priced rows whose model had a history.
    """

    total: Decimal | None
    priced_rows: int
    unpriced_rows: int
    unpriced_models: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    sources: tuple[str, ...] = ()
    typical_total: Decimal | None = None
    typical_rows: int = 0

    @property
    def method(self) -> str:
        """How the estimate was made, in one sentence for the page."""
        prices = "the demo backend's made-up prices" if "demo" in self.sources else "the models' current prices"
        return (f"An estimate, not a bill: prompts at about {CHARS_PER_TOKEN} characters per token "
                f"(~{self.prompt_tokens:,} tokens) and every answer at its full max_tokens "
                f"({self.completion_tokens:,} tokens), at {prices}. Answers that "
                "stop early, and cache hits, cost less.")


def prompt_tokens_estimate(row: BatchRow) -> int:
    """The prompt tokens of ``row`` (system + prompt) at ``CHARS_PER_TOKEN``, rounded up."""
    return math.ceil((len(row.system or "") + len(row.prompt)) / CHARS_PER_TOKEN)


def estimate_batch(rows: Sequence[BatchRow], price_of: Callable[[str], Price | None], *,
                   model: str | None = None, max_tokens: int = 512,
                   typical: Mapping[str, tuple[float, int]] | None = None) -> BatchEstimate:
    """The estimated cost of running ``rows``.

    Args:
        rows: The rows to run (invalid ones are skipped).
        price_of: Model name -> its ``Price``, or None when unpriced (the catalog's).
        model: The job's default model, for rows that name none.
        max_tokens: The job's default max_tokens, for rows that leave it blank.
        typical: Model -> ``(mean completion tokens, requests behind it)`` from our own
            history (``telemetry.spend.typical_completion_tokens``), for ``typical_total``.

    Returns:
        ``BatchEstimate``; a row with no model at all counts as unpriced.

    Raises:
        ValueError: ``max_tokens`` is negative.
    """
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be zero or more, not {max_tokens}")
    prices: dict[str, Price | None] = {}
    typical = typical or {}
    total, priced, unpriced, missing = Decimal(0), 0, 0, set()
    usual, usual_rows = Decimal(0), 0
    prompt_sum = completion_sum = 0
    for row in rows:
        if not row.valid:
            continue
        name = row.model or model or ""
        if name not in prices:
            prices[name] = price_of(name) if name else None
        tokens_in = prompt_tokens_estimate(row)
        tokens_out = row.max_tokens if row.max_tokens is not None else max_tokens
        prompt_sum += tokens_in
        completion_sum += tokens_out
        cost = estimate_cost(prices[name], prompt_tokens=tokens_in, max_tokens=tokens_out)
        if cost is None:
            unpriced += 1
            missing.add(name or "(no model)")
        else:
            priced += 1
            total += cost
            if name in typical:
                usual_rows += 1
                tokens_out = min(tokens_out, math.ceil(typical[name][0]))
                cost = estimate_cost(prices[name], prompt_tokens=tokens_in, max_tokens=tokens_out) or Decimal(0)
            usual += cost
    sources = sorted({p.source for p in prices.values() if p is not None})
    return BatchEstimate(total if priced else None, priced, unpriced, tuple(sorted(missing)), prompt_sum,
                         completion_sum, tuple(sources), usual if usual_rows else None, usual_rows)


__all__ = ["CHARS_PER_TOKEN", "BatchEstimate", "estimate_batch", "prompt_tokens_estimate"]
