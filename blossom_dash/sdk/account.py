"""The Pollinations account behind a key: its type, name, budget and balance; the figures of a 402.

What Pollinations publishes (``gen.pollinations.ai``; the gateway's OpenAPI document as
generated clients carry it, e.g. ``GetAccountKey200Response`` /
``GetAccountBalance200Response``; ``enter.pollinations.ai/src/routes/account.ts`` in
pollinations/pollinations). blossom-ai 0.8.0 has no account API at all (its only
mention of a balance is the hint of its ``PaymentError``), so these are read here,
through the backend's own HTTP client (which sends the backend's key):

- ``GET /account/key``: ``valid`` (bool), ``type`` (``secret``/``publishable``; ``sk``/``pk``
  are accepted too), ``name``, ``expiresAt``, ``pollenBudget`` (a number or null:
  no cap), ``rateLimitEnabled``; 401/403 for a bad key.
- ``GET /account/balance``: ``balance`` (pollen: the key's remaining budget if it has
  one, else the account's balance; needs the key's ``account:balance`` permission,
  else 403).

Not confirmed (no live call is made from here): the exact ``type`` strings of every
gateway version (the key's own prefix decides when ``type`` is missing or unknown) and
whether a ``pk_`` key may read its balance at all; a 403 reads "not allowed".

A 402 from Pollinations says, in its ``error.message``: "This model costs ~0.0136
pollen per request, but your available balance is 0.0000";
``payment_required_figures`` reads both numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from blossom_ai.core.config import ENDPOINTS

KEY_PATH = "/account/key"
BALANCE_PATH = "/account/balance"
#: What each key type means, in words (BLOSSOM_SDK.md, "Pollinations facts").
KEY_TYPES = {"sk": "secret key (sk_): spends the balance, no rate limit",
             "pk": "publishable key (pk_): rate-limited, for browsers and demos"}
_TYPE_WORDS = {"secret": "sk", "sk": "sk", "server": "sk", "publishable": "pk", "pk": "pk", "frontend": "pk"}

_COST_RE = re.compile(r"costs?\s*~?\s*(\d+(?:\.\d+)?)\s*pollen", re.I)
_BALANCE_RE = re.compile(r"balance\s+(?:is|of)\s*~?\s*(-?\d+(?:\.\d+)?)", re.I)


@dataclass(frozen=True)
class Account:
    """What the backend says about the key it is given.

    Attributes:
        key_type: ``"sk"`` (secret), ``"pk"`` (publishable) or None (unknown).
        key_name: The key's name on enter.pollinations.ai ("" when not given).
        valid: Whether the backend says the key is valid (None: it did not say).
        pollen_budget: The key's own spending cap in pollen (None: no cap, or not said).
        balance: Pollen left (None when the backend did not give it).
        detail: What could not be read, in words ("" when everything was).
        reported: Whether either endpoint answered (False: this backend has no account API,
            or it could not be reached).
    """

    key_type: str | None = None
    key_name: str = ""
    valid: bool | None = None
    pollen_budget: Decimal | None = None
    balance: Decimal | None = None
    detail: str = ""
    reported: bool = False

    @property
    def key_words(self) -> str:
        """The key type in words (``KEY_TYPES``), or ``"unknown key type"``."""
        return KEY_TYPES.get(self.key_type or "", "unknown key type")


def _pollen(value: Any) -> Decimal | None:
    """A JSON number or decimal string as a finite ``Decimal`` (through ``str``: no float error)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return out if out.is_finite() else None


def key_type_of(api_key: str | None, said: Any = None) -> str | None:
    """``"sk"``/``"pk"`` from the backend's ``type`` (preferred) or the key's own prefix."""
    if isinstance(said, str) and (found := _TYPE_WORDS.get(said.strip().lower())):
        return found
    if api_key:
        key = api_key.strip().lower().removeprefix("plln_")  # newer keys may read plln_sk_… / plln_pk_…
        if key[:3] in ("sk_", "pk_"):
            return key[:2]
    return None


def _why(exc: BaseException, what: str) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return f"the key may not read its {what} (HTTP {status})"
    if status == 404:
        return f"the backend does not report a {what} (HTTP 404)"
    if status:
        return f"the {what} could not be read (HTTP {status})"
    if isinstance(exc, ValueError):
        return f"the {what} answer was not the JSON expected"
    return f"the {what} could not be read ({type(exc).__name__})"


async def read_account(http: Any, api_key: str | None, *, timeout_s: float = 5.0,
                       send_key: bool = False) -> Account:
    """Ask the backend about its key: ``GET /account/key``, then ``GET /account/balance``.

    Args:
        http: The backend's HTTP client (``ObservingHttpClient``: it rewrites
            Pollinations' base URL to the backend's and sends the backend's key).
        api_key: That key (only its prefix is read, when the backend names no type).
        timeout_s: Longest wait per request, seconds.
        send_key: Send ``api_key`` as the bearer token instead of the client's own key
            (a session's own key, which its requests already carry to this backend).

    Returns:
        ``Account``; a part that could not be read is None with the reason in
        ``detail``. Never raises for a backend failure.
    """
    key_type, name, valid, budget, balance, notes = key_type_of(api_key), "", None, None, None, []
    reported = False
    extra = {"headers": {"Authorization": f"Bearer {api_key}"}} if send_key and api_key else {}
    try:
        resp = await http.get(ENDPOINTS.BASE + KEY_PATH, timeout=timeout_s, **extra)
        body = resp.json()
        if not isinstance(body, dict):
            raise ValueError("not an object")
        key_type = key_type_of(api_key, body.get("type"))
        name = str(body.get("name") or "")[:80]
        valid = body.get("valid") if isinstance(body.get("valid"), bool) else None
        budget = _pollen(body.get("pollenBudget"))
        reported = True
    except (httpx.HTTPError, ValueError) as exc:
        notes.append(_why(exc, "key's details"))
    try:
        resp = await http.get(ENDPOINTS.BASE + BALANCE_PATH, timeout=timeout_s, **extra)
        body = resp.json()
        if not isinstance(body, dict):
            raise ValueError("not an object")
        balance = _pollen(body.get("balance"))
        if balance is None:
            raise ValueError("no balance")
        reported = True
    except (httpx.HTTPError, ValueError) as exc:
        notes.append(_why(exc, "balance"))
    return Account(key_type, name, valid, budget, balance, "; ".join(notes), reported)


def payment_required_figures(body: str | None) -> tuple[Decimal | None, Decimal | None]:
    """``(cost per request, balance)`` in pollen from a 402's body, each None when absent.

    Reads Pollinations' wording, "This model costs ~0.0136 pollen per request, but your
    available balance is 0.0000", anywhere in the body (JSON or text).
    """
    if not body:
        return None, None
    cost = _COST_RE.search(body)
    balance = _BALANCE_RE.search(body)
    return (_pollen(cost.group(1)) if cost else None), (_pollen(balance.group(1)) if balance else None)


__all__ = ["BALANCE_PATH", "KEY_PATH", "KEY_TYPES", "Account", "key_type_of", "payment_required_figures",
           "read_account"]
