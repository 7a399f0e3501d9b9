"""ui helpers that do not need a page: the browser identity from the XSRF cookie."""

from __future__ import annotations

import os

from blossom_dash.ui import xsrf_token


def _masked_cookie(token: bytes) -> str:
    """A cookie as Tornado writes it: version 2, a fresh random mask each time."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(token))
    return f"2|{mask.hex()}|{masked.hex()}|1795000000"


class TestXsrfToken:
    def test_same_browser_same_token_across_reloads(self) -> None:
        """Two re-masked cookies of one token give the same identity token."""
        token = os.urandom(16)
        first, second = _masked_cookie(token), _masked_cookie(token)
        assert first != second
        assert xsrf_token(first) == xsrf_token(second) == token

    def test_other_browser_other_token(self) -> None:
        """Different tokens stay different."""
        assert xsrf_token(_masked_cookie(b"a" * 16)) != xsrf_token(_masked_cookie(b"b" * 16))

    def test_unknown_format_is_none(self) -> None:
        """A cookie in another format is not trusted as an identity."""
        assert xsrf_token("plain-token") is None
        assert xsrf_token("2|zz|00|1") is None
        assert xsrf_token("1|abcd|0011|1") is None
