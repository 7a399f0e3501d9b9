"""Prices in both of Pollinations' shapes and from the settings file; the cost of one request."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from blossom_dash.pricing import (
    COST_QUANTUM,
    Price,
    estimate_cost,
    format_cost,
    load_prices_file,
    parse_pricing,
    request_cost,
)

TODAY = {"name": "openai", "pricing": {"currency": "pollen", "promptTextTokens": "0.00000015",
                                       "promptCachedTokens": "0.0000000375", "completionTextTokens": "0.0000006"}}


class TestParsePricing:
    def test_today_shape_decimal_strings(self) -> None:
        """A ``pricing`` map of decimal strings gives exact Decimals in pollen."""
        price = parse_pricing(TODAY)
        assert price is not None and price.currency == "pollen" and price.source == "backend"
        assert price.get("promptTextTokens") == Decimal("0.00000015")
        assert price.get("completionTextTokens") == Decimal("0.0000006")
        assert price.per_1k_tokens == (Decimal("0.00015"), Decimal("0.0006"))

    def test_older_numeric_shape(self) -> None:
        """Numbers ``input_token_price``/``output_token_price``/``image_price`` map to today's units, exactly."""
        price = parse_pricing({"name": "x", "input_token_price": 0.1, "output_token_price": 0.2})
        assert price is not None
        assert price.get("promptTextTokens") == Decimal("0.1")
        assert price.get("completionTextTokens") == Decimal("0.2")
        image = parse_pricing({"name": "flux", "pricing": {"image_price": 0.00012}})
        assert image is not None and image.per_image == Decimal("0.00012")

    def test_no_price_is_none(self) -> None:
        """No ``pricing``, an empty one, or an unreadable value: None, never a 0."""
        assert parse_pricing({"name": "x"}) is None
        assert parse_pricing({"name": "x", "pricing": {}}) is None
        assert parse_pricing({"name": "x", "pricing": {"currency": "pollen", "promptTextTokens": "n/a"}}) is None
        assert parse_pricing({"name": "x", "pricing": {"currency": "usd", "promptTextTokens": "1"}}) is None

    def test_currency_alone_is_free(self) -> None:
        """A map naming its currency but no unit is free (Pollinations omits zero values)."""
        price = parse_pricing({"name": "x", "pricing": {"currency": "pollen"}})
        assert price is not None and request_cost(price, prompt_tokens=10, completion_tokens=5) == Decimal(0)


class TestRequestCost:
    def test_text(self) -> None:
        """Prompt plus completion tokens at their prices, quantised to 1e-12 pollen."""
        cost = request_cost(parse_pricing(TODAY), prompt_tokens=120, completion_tokens=200)
        assert cost == Decimal("0.000138000000")
        assert cost.as_tuple().exponent == COST_QUANTUM.as_tuple().exponent

    def test_cached_tokens_at_their_price(self) -> None:
        """Cached prompt tokens cost ``promptCachedTokens``."""
        cost = request_cost(parse_pricing(TODAY), prompt_tokens=100, cached_tokens=40, completion_tokens=0)
        assert cost == Decimal("60") * Decimal("0.00000015") + Decimal("40") * Decimal("0.0000000375")

    def test_image_and_speech(self) -> None:
        """An image costs its per-image unit; speech its audio tokens and seconds."""
        image = Price((("completionImageTokens", Decimal("0.00012")),))
        assert request_cost(image, images=2) == Decimal("0.00024")
        speech = Price((("completionAudioTokens", Decimal("0.00002")), ("perRequest", Decimal("0.001"))))
        assert request_cost(speech, audio_tokens=50) == Decimal("0.002")

    def test_unpriced_is_none(self) -> None:
        """No price, no cost."""
        assert request_cost(None, prompt_tokens=10) is None
        assert estimate_cost(None, prompt_tokens=10, max_tokens=10) is None

    def test_negative_count_is_refused(self) -> None:
        """A negative count is a clear ValueError."""
        with pytest.raises(ValueError, match="prompt_tokens"):
            request_cost(parse_pricing(TODAY), prompt_tokens=-1)

    def test_rounding_half_up_to_the_quantum(self) -> None:
        """Sub-quantum remainders round half up."""
        price = Price((("promptTextTokens", Decimal("0.0000000000005")),))
        assert request_cost(price, prompt_tokens=1) == Decimal("0.000000000001")


class TestEstimateCost:
    def test_upper_bound(self) -> None:
        """The estimate never falls below the cost of a request within ``max_tokens``."""
        price = Price((("completionReasoningTokens", Decimal("0.000002")),
                       ("completionTextTokens", Decimal("0.0000006")), ("promptCachedTokens", Decimal("0.00000001")),
                       ("promptTextTokens", Decimal("0.00000015"))))
        estimate = estimate_cost(price, prompt_tokens=100, max_tokens=50)
        assert estimate == Decimal("100") * Decimal("0.00000015") + Decimal("50") * Decimal("0.000002")
        real = request_cost(price, prompt_tokens=100, cached_tokens=30, completion_tokens=50, reasoning_tokens=20)
        assert real is not None and real <= estimate

    def test_rounds_up(self) -> None:
        """A sub-quantum estimate rounds up, so a reservation is never short."""
        price = Price((("promptTextTokens", Decimal("0.0000000000001")),))
        assert estimate_cost(price, prompt_tokens=1) == COST_QUANTUM


class TestFormatCost:
    def test_words(self) -> None:
        """Plain digits and the currency; ``unpriced`` for None."""
        assert format_cost(Decimal("0.000136000000")) == "0.000136 pollen"
        assert format_cost(Decimal("0E-12")) == "0 pollen"
        assert format_cost(None) == "unpriced"


class TestLoadPricesFile:
    def test_toml(self, tmp_path: Path) -> None:
        """TOML tables of unit = price, labelled ``settings``."""
        f = tmp_path / "prices.toml"
        f.write_text('[openai]\ncurrency = "pollen"\npromptTextTokens = "0.00000015"\n'
                     'completionTextTokens = "0.0000006"\n[flux]\ncompletionImageTokens = 0.00012\n')
        prices = load_prices_file(f)
        assert prices["openai"].source == "settings"
        assert prices["openai"].get("completionTextTokens") == Decimal("0.0000006")
        assert prices["flux"].per_image == Decimal("0.00012")

    def test_csv(self, tmp_path: Path) -> None:
        """CSV rows model,unit,price,currency, one unit per row."""
        f = tmp_path / "prices.csv"
        f.write_text("model,unit,price,currency\nopenai,promptTextTokens,0.00000015,pollen\n"
                     "openai,completionTextTokens,0.0000006,\n\nflux,completionImageTokens,0.00012,pollen\n")
        prices = load_prices_file(f)
        assert prices["openai"].get("promptTextTokens") == Decimal("0.00000015")
        assert prices["flux"].per_image == Decimal("0.00012")

    @pytest.mark.parametrize(("name", "body", "match"), [
        ("p.csv", "model,unit,price\nopenai,promptTextTokens,abc\n", "line 2 price"),
        ("p.csv", "model,unit,price\nopenai,tokens,1\n", "line 2 unit: unknown unit 'tokens'"),
        ("p.csv", "model,unit,price,currency\nopenai,promptTextTokens,1,usd\n", "not pollen"),
        ("p.csv", "name,cost\n", "header must be model,unit,price,currency"),
        ("p.csv", "model,unit,price\nopenai,promptTextTokens,-1\n", "cannot be negative"),
        ("p.toml", "[openai\n", "not valid TOML"),
        ("p.toml", "openai = 1\n", r"\[openai\]: expected a table"),
        ("p.toml", "[openai]\nwords = 1\n", r"\[openai\] words: unknown unit"),
        ("p.json", "{}", "must end in .toml or .csv"),
    ])
    def test_errors_name_line_and_field(self, tmp_path: Path, name: str, body: str, match: str) -> None:
        """A bad file is a ValueError naming where and what."""
        f = tmp_path / name
        f.write_text(body)
        with pytest.raises(ValueError, match=match):
            load_prices_file(f)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file says which and what to do."""
        with pytest.raises(ValueError, match="cannot read"):
            load_prices_file(tmp_path / "none.toml")
