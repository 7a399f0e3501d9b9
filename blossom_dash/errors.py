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
        scope: ``"user"``, ``"global"`` or ``"upstream"``.
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


class BackendUnavailable(DashError):
    """The backend cannot be reached, timed out, or its circuit is open."""


class UpstreamError(DashError):
    """The backend answered, but with an error or a response we cannot use.

    Args:
        status_code: The HTTP status (200 when the body itself was unusable).
    """


class AuthenticationFailed(DashError):
    """The backend refused the API key (401/403), or the key is not allowed."""


class NotRecorded(DashError):
    """Replay-only mode: the request was never recorded, so it is refused unsent.

    Its own type rather than ``InvalidRequest`` (the request is fine: turning
    replay-only off would send it) or ``BackendUnavailable`` (no backend was tried,
    and it may be up): the Monitor then counts refused replays apart, and the page
    says exactly what to do.
    """


__all__ = [
    "AuthenticationFailed",
    "BackendUnavailable",
    "DashError",
    "InvalidRequest",
    "NotRecorded",
    "RateLimited",
    "UpstreamError",
]
