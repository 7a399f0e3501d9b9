"""Prices in pollen and the cost of one request, exact with ``decimal.Decimal``.

Where prices come from: Pollinations' ``/text/models``, ``/image/models`` and
``/audio/models`` entries carry ``pricing``, a map of decimal strings in pollen per unit
plus ``currency: "pollen"`` (``shared/registry/model-info.ts`` in pollinations/pollinations;
zero values are omitted, up to 12 decimals). Older versions sent numbers
(``input_token_price``, ``output_token_price``, ``image_price``). Both shapes are read
here; a settings file (``BLOSSOM_DASH_PRICES``, ``load_prices_file``) fills in for
backends that publish none.

Precision: every cost is quantised to ``COST_QUANTUM`` (1e-12 pollen, the finest step
Pollinations publishes); ``request_cost`` rounds half up, ``estimate_cost`` (an upper
bound for budget reservations) rounds up. No float ever enters the arithmetic: a
number in the older shape is converted through ``str`` (``0.1`` -> ``Decimal("0.1")``).

Unpriced is ``None``, never a ``0`` that pretends: a model with no ``pricing`` (or an
empty one) has no ``Price``, and its cost is ``None``. A ``pricing`` map that names its
currency but no unit is a free model (every unit omitted because it is zero): cost 0.
"""

from __future__ import annotations

import csv
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

#: The step every cost is quantised to, pollen.
COST_QUANTUM = Decimal("1e-12")

#: Pollinations' per-unit keys (pollen per token, per image, per second), and our own
#: ``perRequest`` (a flat price per call, for settings files and per-call backends).
UNITS: tuple[str, ...] = (
    "promptTextTokens", "promptCachedTokens", "promptAudioTokens", "promptImageTokens",
    "completionTextTokens", "completionReasoningTokens", "completionAudioTokens",
    "completionImageTokens", "completionAudioSeconds", "completionVideoSeconds", "perRequest",
)

#: The older numeric shape -> today's unit.
_OLD_KEYS = {"input_token_price": "promptTextTokens", "output_token_price": "completionTextTokens",
             "image_price": "completionImageTokens"}

SOURCES = ("backend", "settings", "demo")


@dataclass(frozen=True)
class Price:
    """Per-unit prices of one model.

    Attributes:
        units: ``(unit, pollen per unit)`` pairs, unit names from ``UNITS`` (others the
            backend sends are kept too); a unit not listed costs 0 (Pollinations omits
            zeros).
        currency: ``"pollen"`` (the only currency costs are summed in).
        source: ``"backend"`` (its model endpoint), ``"settings"`` (``BLOSSOM_DASH_PRICES``)
            or ``"demo"`` (the demo backend's made-up prices).
    """

    units: tuple[tuple[str, Decimal], ...] = field(default=())
    currency: str = "pollen"
    source: str = "backend"

    def get(self, unit: str, default: Decimal = Decimal(0)) -> Decimal:
        """Pollen per ``unit`` (``default`` when the unit is not priced)."""
        for name, value in self.units:
            if name == unit:
                return value
        return default

    def has(self, unit: str) -> bool:
        """Whether ``unit`` has its own price."""
        return any(name == unit for name, _ in self.units)

    @property
    def per_1k_tokens(self) -> tuple[Decimal, Decimal] | None:
        """``(prompt, completion)`` pollen per 1,000 text tokens; None when neither is priced."""
        if not (self.has("promptTextTokens") or self.has("completionTextTokens")):
            return None
        return self.get("promptTextTokens") * 1000, self.get("completionTextTokens") * 1000

    @property
    def per_image(self) -> Decimal | None:
        """Pollen per image; None when images are not priced."""
        return self.get("completionImageTokens") if self.has("completionImageTokens") else None

    def with_source(self, source: str) -> Price:
        """The same prices labelled with another ``source``."""
        return Price(self.units, self.currency, source)


def _decimal(value: Any, where: str) -> Decimal:
    """``value`` (a decimal string, int or float) as a finite, non-negative ``Decimal``.

    Raises:
        ValueError: Not a number, not finite, or negative; the message names ``where``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{where}: {value!r} is not a price (write a number such as 0.000015)")
    try:
        number = Decimal(str(value).strip()) if isinstance(value, (int, float, str)) else None
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise ValueError(f"{where}: {value!r} is not a price (write a number such as 0.000015)")
    if number < 0:
        raise ValueError(f"{where}: a price cannot be negative ({value!r})")
    return number


def parse_pricing(entry: Mapping[str, Any], *, source: str = "backend") -> Price | None:
    """The ``Price`` of one model entry of ``/text/models``, ``/image/models`` or ``/audio/models``.

    Args:
        entry: The model entry: today's shape has ``pricing`` (a map of decimal strings
            per unit plus ``currency``); the older one has numbers ``input_token_price``,
            ``output_token_price``, ``image_price`` on the entry (or in ``pricing``).
        source: The ``Price.source`` label.

    Returns:
        ``Price``, or None when the entry names no price (no ``pricing``, an empty one,
        or one whose values are not numbers: an unreadable price is no price, never 0).
        A currency other than pollen is None as well (costs are summed in pollen).
    """
    pricing = entry.get("pricing")
    raw: dict[str, Any] = dict(pricing) if isinstance(pricing, Mapping) else {}
    for old in _OLD_KEYS:
        if old in entry and old not in raw:
            raw[old] = entry[old]
    if not raw:
        return None
    currency = str(raw.pop("currency", "pollen") or "pollen").strip().lower()
    if currency != "pollen":
        return None
    units: dict[str, Decimal] = {}
    for key, value in raw.items():
        unit = _OLD_KEYS.get(key, key)
        try:
            number = _decimal(value, f"pricing.{key}")
        except ValueError:
            if unit in UNITS:
                return None  # an unreadable price is no price
            continue  # other fields (a note, a tier name) are not units
        units[unit] = units.get(unit, Decimal(0)) + number
    if not units and "currency" not in (pricing if isinstance(pricing, Mapping) else {}):
        return None
    return Price(tuple(sorted(units.items())), "pollen", source)


def _quantise(value: Decimal, rounding: str) -> Decimal:
    return value.quantize(COST_QUANTUM, rounding=rounding)


def _count(name: str, value: int | float | Decimal) -> Decimal:
    if isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a count of zero or more, not {value!r}")
    return Decimal(str(value))


def _cost(price: Price, *, prompt: Decimal, cached: Decimal, completion: Decimal, reasoning: Decimal,
          images: Decimal, audio_tokens: Decimal, audio_seconds: Decimal, requests: Decimal) -> Decimal:
    text_in = price.get("promptTextTokens")
    text_out = price.get("completionTextTokens")
    cached = min(cached, prompt)
    reasoning = min(reasoning, completion)
    return ((prompt - cached) * text_in + cached * price.get("promptCachedTokens", text_in)
            + (completion - reasoning) * text_out + reasoning * price.get("completionReasoningTokens", text_out)
            + images * price.get("completionImageTokens") + audio_tokens * price.get("completionAudioTokens")
            + audio_seconds * price.get("completionAudioSeconds") + requests * price.get("perRequest"))


def request_cost(price: Price | None, *, prompt_tokens: int = 0, completion_tokens: int = 0, images: int = 0,
                 cached_tokens: int = 0, reasoning_tokens: int = 0, audio_tokens: int = 0,
                 audio_seconds: float | Decimal = 0, requests: int = 1) -> Decimal | None:
    """The cost in pollen of one request from its usage.

    Text: ``prompt_tokens`` at ``promptTextTokens`` (of which ``cached_tokens`` at
    ``promptCachedTokens`` when priced) plus ``completion_tokens`` at
    ``completionTextTokens`` (of which ``reasoning_tokens`` at
    ``completionReasoningTokens`` when priced). Image: ``images`` at
    ``completionImageTokens`` (one image is one unit: Pollinations prices its image
    models per image in that unit). Speech: ``audio_tokens`` at ``completionAudioTokens``
    and ``audio_seconds`` at ``completionAudioSeconds``. Plus ``requests`` at
    ``perRequest`` when the price has one.

    Args:
        price: The model's price; None (unpriced) gives None.

    Returns:
        Pollen, quantised to ``COST_QUANTUM`` (half up); None when ``price`` is None.

    Raises:
        ValueError: A negative count.
    """
    if price is None:
        return None
    total = _cost(price, prompt=_count("prompt_tokens", prompt_tokens), cached=_count("cached_tokens", cached_tokens),
                  completion=_count("completion_tokens", completion_tokens),
                  reasoning=_count("reasoning_tokens", reasoning_tokens), images=_count("images", images),
                  audio_tokens=_count("audio_tokens", audio_tokens),
                  audio_seconds=_count("audio_seconds", audio_seconds), requests=_count("requests", requests))
    return _quantise(total, ROUND_HALF_UP)


def estimate_cost(price: Price | None, *, prompt_tokens: int = 0, max_tokens: int = 0, images: int = 0,
                  audio_tokens: int = 0, audio_seconds: float | Decimal = 0) -> Decimal | None:
    """An upper bound of a request's cost before it runs (what a budget reserves).

    The prompt at its full ``promptTextTokens`` price (no cache discount), ``max_tokens``
    completion tokens at the dearer of ``completionTextTokens`` and
    ``completionReasoningTokens``, plus images, audio and ``perRequest`` as in
    ``request_cost``.

    Returns:
        Pollen, quantised to ``COST_QUANTUM`` rounding up (never below the real cost of
        a request that stays within ``max_tokens``); None when ``price`` is None.

    Raises:
        ValueError: A negative count.
    """
    if price is None:
        return None
    out = max(price.get("completionTextTokens"), price.get("completionReasoningTokens"))
    dear = Price(tuple((u, v) for u, v in price.units if u not in ("completionTextTokens", "promptCachedTokens"))
                 + (("completionTextTokens", out),), price.currency, price.source)
    total = _cost(dear, prompt=_count("prompt_tokens", prompt_tokens), cached=Decimal(0),
                  completion=_count("max_tokens", max_tokens), reasoning=Decimal(0), images=_count("images", images),
                  audio_tokens=_count("audio_tokens", audio_tokens),
                  audio_seconds=_count("audio_seconds", audio_seconds), requests=Decimal(1))
    return _quantise(total, ROUND_CEILING)


def format_cost(cost: Decimal | None) -> str:
    """``0.000136 pollen`` (trailing zeros dropped, never exponent notation), or ``unpriced``."""
    if cost is None:
        return "unpriced"
    text = format(cost.normalize(), "f") if cost else "0"
    return f"{text} pollen"


def load_prices_file(path: Path | str) -> dict[str, Price]:
    """Model -> ``Price`` from a ``BLOSSOM_DASH_PRICES`` file (labelled ``source="settings"``).

    Two formats, by suffix:

    - TOML (``.toml``): one table per model, units as keys, values as numbers or
      (better, exact) strings, optional ``currency``::

          [openai]
          promptTextTokens = "0.00000015"
          completionTextTokens = "0.0000006"
          [flux]
          completionImageTokens = "0.00012"

    - CSV (``.csv``): a header ``model,unit,price,currency`` and one row per unit
      (``currency`` may be empty: pollen).

    Raises:
        ValueError: An unreadable file, an unknown unit, a price that is not a
            non-negative number, or a currency other than pollen; the message names
            the file, the line (CSV) or table (TOML) and the field, and what to write.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"BLOSSOM_DASH_PRICES: cannot read {path} ({exc}); "
                         "point it at a readable UTF-8 .toml or .csv file") from exc
    if path.suffix.lower() == ".toml":
        return _from_toml(path, text)
    if path.suffix.lower() == ".csv":
        return _from_csv(path, text)
    raise ValueError(f"BLOSSOM_DASH_PRICES: {path} must end in .toml or .csv")


def _unit(name: str, where: str) -> str:
    unit = _OLD_KEYS.get(name, name)
    if unit not in UNITS:
        raise ValueError(f"{where}: unknown unit {name!r}; use one of {', '.join(UNITS)}")
    return unit


def _currency(value: Any, where: str) -> None:
    if str(value or "pollen").strip().lower() != "pollen":
        raise ValueError(f"{where}: currency {value!r} is not pollen; write prices in pollen")


def _from_toml(path: Path, text: str) -> dict[str, Price]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"BLOSSOM_DASH_PRICES: {path} is not valid TOML ({exc})") from exc
    prices: dict[str, Price] = {}
    for model, table in data.items():
        where = f"{path} [{model}]"
        if not isinstance(table, dict):
            raise ValueError(f"{where}: expected a table of unit = price, e.g. [{model}] then "
                             'promptTextTokens = "0.00000015"')
        units: dict[str, Decimal] = {}
        for key, value in table.items():
            if key == "currency":
                _currency(value, f"{where} currency")
                continue
            units[_unit(key, f"{where} {key}")] = _decimal(value, f"{where} {key}")
        prices[model] = Price(tuple(sorted(units.items())), "pollen", "settings")
    return prices


def _from_csv(path: Path, text: str) -> dict[str, Price]:
    reader = csv.DictReader(text.splitlines())
    need = {"model", "unit", "price"}
    if not reader.fieldnames or not need <= {f.strip().lower() for f in reader.fieldnames}:
        raise ValueError(f"BLOSSOM_DASH_PRICES: {path} line 1: the header must be model,unit,price,currency")
    found: dict[str, dict[str, Decimal]] = {}
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        where = f"{path} line {line}"
        if not any(row.values()):
            continue
        if not row.get("model"):
            raise ValueError(f"{where}: the model field is empty")
        _currency(row.get("currency"), f"{where} currency")
        unit = _unit(row.get("unit", ""), f"{where} unit")
        found.setdefault(row["model"], {})[unit] = _decimal(row.get("price", ""), f"{where} price")
    return {m: Price(tuple(sorted(u.items())), "pollen", "settings") for m, u in found.items()}


__all__ = ["COST_QUANTUM", "SOURCES", "UNITS", "Price", "estimate_cost", "format_cost", "load_prices_file",
           "parse_pricing", "request_cost"]
