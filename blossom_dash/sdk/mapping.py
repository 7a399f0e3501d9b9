"""Every failure a backend call can produce, mapped to one ``DashError`` with words.

The one place wire errors become messages (BLOSSOM_SDK.md, "Errors", lists what the
SDK, httpx and the backend can raise). A message names the backend, the HTTP status
and one plain line of what the backend said, never its HTML or a long body; the hint
says what to do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import json
import re
from decimal import Decimal

import httpx
from blossom_ai import BlossomError, EmptyResponseError
from blossom_ai import ValidationError as SdkValidationError

from ..errors import (
    AuthenticationFailed,
    BackendUnavailable,
    DashError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
)
from .account import payment_required_figures
from .transport import Observation

#: Longest upstream summary quoted in a message.
SUMMARY_CHARS = 160
_HTML_RE = re.compile(r"<\s*(!doctype|html|head|body|title|div|p|h1)\b", re.I)
_TITLE_RE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
_TAG_RE = re.compile(r"<[^>]{0,200}>")


def upstream_summary(body: str) -> str:
    """One plain line (at most ``SUMMARY_CHARS``) of what an error body says.

    JSON in Pollinations' or OpenAI's shapes gives its message; an HTML page (a
    gateway's 5xx page) gives its ``<title>`` or nothing, never its markup; plain text
    gives its first line. Never raises.
    """
    text = body.strip()
    if not text:
        return ""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            said = err.get("message") or err.get("code") or ""
        else:
            said = data.get("message") or err
        return _one_line(str(said or ""))
    if data is not None:
        return ""
    if _HTML_RE.search(text):
        title = _TITLE_RE.search(text)
        return _one_line(_TAG_RE.sub(" ", html.unescape(title.group(1)))) if title else ""
    return _one_line(text.splitlines()[0])


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    text = _TAG_RE.sub("", text) if "<" in text else text
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1].rstrip() + "…"


def _payment_required(where: str, model: str, body: str | None, said: str) -> UpstreamError:
    """A 402 in words: what the model costs and what the balance is, when the backend said
    (``account.payment_required_figures``; only the two numbers are read, so they are
    shown even for a backend whose words are never quoted)."""
    cost, balance = payment_required_figures(body)
    if cost is not None or balance is not None:
        costs = f"{model!r} costs about {_figure(cost)} pollen per request" if cost is not None else \
            f"{model!r} costs more than the balance"
        left = f"the key's balance is {_figure(balance)} pollen" if balance is not None else "the balance is too low"
        message = f"Not enough pollen on {where}: {costs} and {left} (HTTP 402 Payment Required)."
    else:
        message = f"{where} says the account has no balance left (HTTP 402 Payment Required).{said}"
    return UpstreamError(message, "Top up the key's balance at enter.pollinations.ai, use another key, "
                                  "or pick a cheaper or free model.", status_code=402)


def _figure(value: Decimal | None) -> str:
    return format(value, "f") if value is not None else "?"


def _dash_error_in(exc: BaseException) -> DashError | None:
    """A ``DashError`` the SDK wrapped in one of its own (our transport raised it)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, DashError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def to_dash_error(exc: BaseException, obs: Observation | None, *, where: str, model: str,
                  timeout_s: float) -> DashError:
    """Map anything a backend call raised to a ``DashError``.

    The observation is trusted first: the SDK turns a 429 into ``TypeError`` and a 402
    into a bare ``BlossomError``, but the transport saw the real status.

    Args:
        exc: What the call raised.
        obs: What the transport recorded during the call.
        where: The backend's label (named in messages).
        model: The model that was asked for.
        timeout_s: The deadline that applied, for the timeout message.

    Returns:
        The error to raise; never raises itself.
    """
    if (inner := _dash_error_in(exc)) is not None:
        return inner
    status = obs.status_code if obs is not None else None
    if status is None and isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
    # A backend off the allow-list is never quoted: its body could be anything it read.
    detail = upstream_summary(obs.error_body) if obs is not None and obs.error_body and obs.quote else ""
    said = f" It said: “{detail}”" if detail else ""
    if status is not None and status >= 400:
        if status == 429:
            wait = obs.retry_after_s if obs is not None and obs.retry_after_s is not None else 60.0
            return RateLimited(
                f"{where} is rate-limiting requests (HTTP 429).{said}",
                f"Wait {wait:.0f} s and try again. With Pollinations, a secret key (sk_) is not rate-limited.",
                retry_after_s=max(wait, 0.001), scope="upstream", status_code=429,
            )
        if status in (401, 403):
            what = "rejected the API key" if status == 401 else "does not allow this key to do that"
            return AuthenticationFailed(
                f"{where} {what} (HTTP {status}).{said}",
                "Check POLLINATIONS_API_KEY, or enter a key for this session on the Controls page.",
                status_code=status,
            )
        if status == 402:
            return _payment_required(where, model, obs.error_body if obs is not None else "", said)
        if status in (400, 404, 422) and ("model" in detail.lower() or status == 404):
            return InvalidRequest(
                f"Model {model!r} is not available on {where} (HTTP {status}).{said}",
                "Pick a model from the list on the page.",
                status_code=status,
            )
        if status < 500:
            return InvalidRequest(
                f"{where} refused the request (HTTP {status}).{said}",
                "Check the prompt and parameters, then try again.",
                status_code=status,
            )
        err = UpstreamError(
            f"{where} failed to answer (HTTP {status}).{said}",
            "The problem is on the backend's side: try again in a moment, or pick another model.",
            status_code=status,
        )
        err.retry_after_s = obs.retry_after_s if obs is not None else None
        return err
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError, httpx.TimeoutException)):
        return BackendUnavailable(
            f"{where} did not answer within {timeout_s:.0f} s.",
            "The model may be overloaded: try again, pick a faster model, or raise the timeout.",
        )
    if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)) or (
        isinstance(exc, BlossomError) and "connection" in str(exc).lower()
    ):
        err = BackendUnavailable(
            f"Cannot reach {where}: the connection failed or was dropped.",
            "Check that the backend is running and reachable, or switch backend on the Controls page.",
        )
        # Reset or closed before any status line: nothing was answered, so a retry is safe.
        err.retryable = status is None and not isinstance(exc, httpx.ConnectError)
        return err
    if isinstance(exc, httpx.RequestError):
        return BackendUnavailable(
            f"The request to {where} failed: {type(exc).__name__}.",
            "Check the network and the backend, then try again.",
        )
    if isinstance(exc, SdkValidationError):
        return InvalidRequest(f"The request was refused before sending: {getattr(exc, 'message', exc)}",
                              "Check the prompt and parameters.")
    if isinstance(exc, EmptyResponseError):
        return UpstreamError(
            f"Model {model!r} on {where} returned an empty answer.",
            "Try again, raise max tokens, or pick another model.",
            status_code=status or 200,
        )
    if isinstance(exc, BlossomError) and ("json" in str(exc).lower() or "parse" in str(exc).lower()):
        return UpstreamError(
            f"{where} sent a response that could not be read (not the JSON an answer should be).",
            "Try again; if it persists, the backend is misbehaving: pick another model or backend.",
            status_code=status or 200,
        )
    if isinstance(exc, BlossomError):
        message = _one_line(getattr(exc, "message", None) or str(exc).splitlines()[0])
        return UpstreamError(f"{where}: {message}", "Try again, or pick another model.", status_code=status)
    return UpstreamError(
        f"Unexpected failure talking to {where}: {type(exc).__name__}: {_one_line(str(exc))}",
        "Try again; if it keeps happening, report it with the request id.",
        status_code=status,
    )


__all__ = ["SUMMARY_CHARS", "to_dash_error", "upstream_summary"]
