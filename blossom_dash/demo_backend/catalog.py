"""The demo backend's model catalog and account, in Pollinations' shapes, with made-up prices.

``/text/models``, ``/image/models`` and ``/audio/models``: bare arrays of entries as
gen.pollinations.ai serves them (``shared/registry/model-info.ts`` in
pollinations/pollinations): ``name``, ``aliases``, ``description``,
``input_modalities``, ``output_modalities``, ``paid_only``, ``health``, ``voices``,
``context_length`` and ``pricing`` (decimal strings in pollen per unit, zero values
omitted, ``currency: "pollen"``). The prices are **made up**, and every description
says so ("demo prices"). ``/v1/models`` is bare as Pollinations' may be: ``id``,
``object``, ``created`` only, so no client can read modalities from it.

``/account/key`` and ``/account/balance`` answer as enter.pollinations.ai's do for the
key the request carries (``Authorization: Bearer ...``): a ``pk_`` key is publishable,
any other a secret key; no key is 401. The balance is a fixed made-up 1000 pollen.
"""

from __future__ import annotations

import json

from aiohttp import web

from .audio import VOICES
from .content import IMAGE_MODELS, TEXT_MODELS

#: Made-up prices, pollen per unit (decimal strings, as Pollinations publishes them).
DEMO_PRICES: dict[str, dict[str, str]] = {
    "demo-swift": {"promptTextTokens": "0.00000005", "completionTextTokens": "0.0000002"},
    "demo-balanced": {"promptTextTokens": "0.00000015", "promptCachedTokens": "0.0000000375",
                      "completionTextTokens": "0.0000006"},
    "demo-deep": {"promptTextTokens": "0.000001", "completionTextTokens": "0.000004",
                  "completionReasoningTokens": "0.000004"},
    "demo-coder": {"promptTextTokens": "0.0000003", "completionTextTokens": "0.0000012"},
    "demo-vision": {"promptTextTokens": "0.0000002", "promptImageTokens": "0.0000002",
                    "completionTextTokens": "0.0000008"},
    "demo-voice": {"promptTextTokens": "0.0000002", "completionTextTokens": "0.0000008",
                   "completionAudioTokens": "0.000008"},
    "demo-sketch": {"completionImageTokens": "0.0001"},
    "demo-mosaic": {"completionImageTokens": "0.0002"},
    "demo-gradient": {"completionImageTokens": "0.0005"},
}
#: The demo account's balance, pollen (made up).
DEMO_BALANCE = 1000.0
_LABEL = " Demo prices: made up, not Pollinations'."


def _pricing(name: str) -> dict[str, str]:
    return {"currency": "pollen", **DEMO_PRICES.get(name, {})}


def _text_entry(name: str) -> dict[str, object]:
    m = TEXT_MODELS[name]
    speaks = "audio" in m.output_modalities
    return {"name": m.name, "aliases": [], "description": m.description + _LABEL,
            "input_modalities": list(m.input_modalities), "output_modalities": list(m.output_modalities),
            "paid_only": False, "health": "ok", "context_length": 8192,
            **({"voices": list(VOICES)} if speaks else {}), "pricing": _pricing(m.name)}


TEXT_MODELS_BODY = json.dumps([_text_entry(n) for n in TEXT_MODELS])
IMAGE_MODELS_BODY = json.dumps([
    {"name": m.name, "aliases": [], "description": m.description + _LABEL, "input_modalities": ["text"],
     "output_modalities": ["image"], "paid_only": m.name == "demo-gradient", "health": "ok",
     "pricing": _pricing(m.name)}
    for m in IMAGE_MODELS.values()
])
AUDIO_MODELS_BODY = json.dumps([_text_entry(n) for n, m in TEXT_MODELS.items() if "audio" in m.output_modalities])
V1_MODELS_BODY = json.dumps({"object": "list", "data": [
    {"id": name, "object": "model", "created": 1_767_225_600} for name in TEXT_MODELS]})


def _key(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else request.query.get("key", "")


def _no_key() -> web.Response:
    return web.json_response({"error": {"code": "UNAUTHORIZED", "message": "No API key given (demo backend)."}},
                             status=401)


async def account_key(request: web.Request) -> web.Response:
    """``GET /account/key``: ``valid``, ``type``, ``name``, ``pollenBudget`` of the request's key."""
    key = _key(request)
    if not key:
        return _no_key()
    publishable = key.startswith(("pk_", "plln_pk_"))
    return web.json_response({"valid": True, "type": "publishable" if publishable else "secret",
                              "name": "demo key", "pollenBudget": 10.0 if publishable else None,
                              "rateLimitEnabled": publishable})


async def account_balance(request: web.Request) -> web.Response:
    """``GET /account/balance``: ``balance`` in pollen (made up)."""
    if not _key(request):
        return _no_key()
    return web.json_response({"balance": DEMO_BALANCE})


__all__ = ["AUDIO_MODELS_BODY", "DEMO_BALANCE", "DEMO_PRICES", "IMAGE_MODELS_BODY", "TEXT_MODELS_BODY",
           "V1_MODELS_BODY", "account_balance", "account_key"]
