"""The errors the service raises; no other exception type escapes it.

Each error carries ``message`` (what happened, in words a person can read) and
``hint`` (what to do next). Pages show both with ``st.error`` / ``st.warning``; the
metrics record ``type(err).__name__`` as the event's ``error_type``.
"""

from __future__ import annotations


class DashError(Exception):
    """Base of every error the service raises.

    Args:
        message: What happened.
        hint: What the user can do about it.
        status_code: The upstream HTTP status when there was one.
    """

    #: Shown by pages as a warning rather than an error (the user can just wait).
    severity = "error"

    def __init__(self, message: str, hint: str = "", *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status_code = status_code
        #: Seconds the backend asked us to wait (Retry-After), when it said.
        self.retry_after_s: float | None = None

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class InvalidRequest(DashError):
    """The request itself is wrong (empty prompt, out-of-range value, unknown model)."""


class RateLimited(DashError):
    """A rate limit refused the request, ours or the upstream's.

    Args:
        retry_after_s: Seconds until a request will be admitted again (> 0).
        scope: ``"user"``, ``"global"``, ``"batch"`` (a user's batch used its share of
            their limit: ``policies.ratelimit``) or ``"upstream"``.
    """

    severity = "warning"

    def __init__(
        self,
        message: str,
        hint: str = "",
        *,
        retry_after_s: float,
        scope: str = "upstream",
        status_code: int | None = 429,
    ) -> None:
        super().__init__(message, hint, status_code=status_code)
        self.retry_after_s = max(float(retry_after_s), 0.001)
        self.scope = scope


class BudgetExceeded(DashError):
    """A spending budget (``policies.budget``) refused the request unsent.

    The message says what was spent, the budget and when it resets (UTC calendar day
    or month); the hint what to do. Shown as a warning: the budget resets on its own.

    Args:
        scope: ``"user"`` (the caller's own budget) or ``"team"`` (everyone's).
        period: ``"day"`` or ``"month"`` (UTC calendar periods).
        retry_after_s: Seconds until the period ends and the budget resets (> 0).
    """

    severity = "warning"

    def __init__(self, message: str, hint: str = "", *, scope: str, period: str, retry_after_s: float) -> None:
        super().__init__(message, hint)
        self.scope = scope
        self.period = period
        self.retry_after_s = max(float(retry_after_s), 0.001)


class BackendUnavailable(DashError):
    """The backend cannot be reached, timed out, or its circuit breaker is open.

    Attributes:
        retryable: The connection was reset before any byte of an answer arrived, so
            one more attempt cannot duplicate work (``sdk.call`` retries it).
    """

    retryable = False


class CircuitOpen(BackendUnavailable):
    """Refused unsent: the backend's circuit breaker is open (``policies.breaker``).

    Attributes:
        retry_after_s: Seconds until the next probe request is let through.
    """


class UpstreamError(DashError):
    """The backend answered, but with an error or a response we cannot use.

    Args:
        status_code: The HTTP status (200 when the body itself was unusable).
    """


class ResponseTooLarge(UpstreamError):
    """The backend's answer passed ``Settings.max_response_bytes``; it is neither shown nor cached."""

    @classmethod
    def over(cls, limit: int, where: str) -> ResponseTooLarge:
        """The error for a body past ``limit`` bytes from ``where`` (a backend label)."""
        return cls(f"{where} sent an answer larger than {limit / 1_048_576:,.0f} MB, the most accepted.",
                   "Ask for less (fewer tokens, a smaller image), or raise BLOSSOM_DASH_MAX_RESPONSE_BYTES.",
                   status_code=200)


class AuthenticationFailed(DashError):
    """The backend refused the API key (401/403), or the key is not allowed."""


class PermissionDenied(DashError):
    """The caller's role may not do this (an admin action asked by a member or viewer).

    Checked in the service whatever the page shows (DESIGN.md, "Identity and modes").
    """


class NotRecorded(DashError):
    """Replay-only mode: the request was never recorded, so it is refused unsent.

    Its own type rather than ``InvalidRequest`` (the request is fine: turning
    replay-only off would send it) or ``BackendUnavailable`` (no backend was tried,
    and it may be up): the Monitor then counts refused replays apart, and the page
    says exactly what to do.
    """


class StorageUnavailable(DashError):
    """The usage database cannot be used: the server is unreachable, refuses us, or the
    file is corrupt, empty or read-only.

    The message says what is wrong (a server URL appears with its password masked);
    the hint says what to do. Requests can still be answered without history where the
    page says so.
    """


class SharedStateUnavailable(DashError):
    """The Redis that replicas share (``Settings.redis_url``) could not be reached.

    Raised when a request needs a rate-limit slot, or an admin changes the shared
    cache or limits, while Redis does not answer: the limits fail closed (a request
    that cannot be counted is refused, so an outage never lifts them to limit x
    replicas). The message names the store with its URL redacted (no password).
    """


__all__ = [
    "AuthenticationFailed",
    "BackendUnavailable",
    "BudgetExceeded",
    "CircuitOpen",
    "DashError",
    "InvalidRequest",
    "NotRecorded",
    "PermissionDenied",
    "RateLimited",
    "ResponseTooLarge",
    "SharedStateUnavailable",
    "StorageUnavailable",
    "UpstreamError",
]
