"""The backend's account in the sidebar and on Controls: key type (sk_/pk_) and balance.

From ``BlossomService.account()`` (``GET /account/key`` and ``GET /account/balance``, kept
60 s); nothing is drawn when the backend has no key of its own or no account API (the
demo backend). Figures are the backend's own; a part it did not give is said, not
guessed.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import streamlit as st

from ..gateway import Caller
from ..sdk.account import Account
from ..service import BlossomService
from .safe import code_span, safe_markdown

_TYPE_SHORT = {"sk": "secret key (sk_)", "pk": "publishable key (pk_)"}


def pollen_text(value: Decimal | None) -> str:
    """``12.5 pollen`` (trailing zeros dropped, never exponent notation), or ``not given``."""
    if value is None:
        return "not given"
    text = format(value.normalize(), "f") if value else "0"
    return f"{text} pollen"


def account_line(account: Account, *, whose: str = "Server key") -> str:
    """One sidebar line: ``🔑 Server key: secret key (sk_) · balance 12.5 pollen``.

    Args:
        account: What the backend said.
        whose: ``"Server key"`` or ``"Your key"`` (a session's own key).
    """
    kind = _TYPE_SHORT.get(account.key_type or "", "key of unknown type")
    balance = f"balance {pollen_text(account.balance)}" if account.balance is not None else "balance not given"
    warn = " · ⚠️ the backend says the key is **not valid**" if account.valid is False else ""
    return f"🔑 {whose}: {kind} · {balance}{warn}"


def render_account_sidebar(service: BlossomService, caller: Caller | None = None) -> None:
    """The account line in the sidebar: the session's own key's when it has one, else the
    server key's (nothing without an account); the help holds the details."""
    own = caller is not None and caller.api_key is not None
    account = service.account(caller=caller)
    if account is None:
        return
    st.caption(account_line(account, whose="Your key" if own else "Server key"),
               help=account.key_words + (f". Not read: {account.detail}." if account.detail else "."))


def render_account_controls(service: BlossomService, where: Any = None, caller: Caller | None = None) -> None:
    """The account on Controls: key type in words, name, budget, balance, what was not read, a refresh;
    then the session's own key's account when it has one.

    Args:
        service: The facade.
        where: The container (default: the page).
        caller: This session's caller (its own key, if any, is looked up too).
    """
    where = where or st
    refresh = where.button("Refresh balance", key="controls_account_refresh", icon="🔄",
                           help="Ask the backend now (otherwise it is asked at most once a minute).")
    account = service.account(refresh=refresh, caller=dataclasses.replace(caller, api_key=None) if caller else None)
    if account is None:
        where.caption("No account to show: the backend has no key of its own, or does not report one "
                      "(Pollinations does, at /account/key and /account/balance).")
    else:
        _render_account(account, where)
    if caller is not None and caller.api_key is not None:
        mine = service.account(refresh=refresh, caller=caller)
        if mine is not None:
            where.markdown("**Your session key's account**")
            _render_account(mine, where)


def _render_account(account: Account, where: Any) -> None:
    name = f" named {code_span(account.key_name)}" if account.key_name else ""
    lines = [f"**Key:** {account.key_words}{name}."]
    if account.valid is False:
        lines.append("⚠️ The backend says this key is **not valid**: requests with it will be refused.")
    lines.append(f"**Balance:** {pollen_text(account.balance)}.")
    if account.pollen_budget is not None:
        lines.append(f"**The key's own budget:** {pollen_text(account.pollen_budget)}.")
    where.markdown("  \n".join(lines))
    if account.detail:
        where.caption(f"Not read: {safe_markdown(account.detail)}.")


__all__ = ["account_line", "pollen_text", "render_account_controls", "render_account_sidebar"]
