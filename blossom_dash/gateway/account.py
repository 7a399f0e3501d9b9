"""The live backend's account (key type, balance), read at most once a minute per backend and key.

The backend's own key, or a session's own key (which that session's requests already
carry to the live backend; its fingerprint, never the key, is the cache key).

``sdk.account.read_account`` asks the backend; this keeps its answer for ``ttl_s`` so
that the sidebar, drawn on every page run of every session, costs no request. Only a
backend with a key of its own is asked (the demo backend and a keyless backend have no
account), and a backend that answers neither account endpoint (an OpenAI-compatible
server without Pollinations' account API) gives None unless it is Pollinations
itself, whose failure is worth saying.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

from ..sdk.account import Account, read_account
from ..sdk.backend import Backend
from ..sdk.loop import LoopThread


class AccountReader:
    """Cached ``read_account`` per backend URL and key fingerprint.

    Args:
        loop: The loop that owns the backends' clients.
        ttl_s: How long an answer is kept, seconds (60: balances move slowly; the
            Controls page can refresh at once).
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(self, loop: LoopThread, *, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._loop = loop
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, str], tuple[float, Account | None]] = {}

    def get(self, backend: Backend, *, api_key: str | None = None, refresh: bool = False, offline: bool = False,
            timeout_s: float = 3.0) -> Account | None:
        """The account behind ``backend``'s own key, or behind ``api_key``.

        Args:
            api_key: A session's own key (which its requests carry to this backend);
                None: the backend's own key.
            refresh: Ask now even when an answer is kept.
            offline: Do not ask (the backend's circuit is open): the last answer kept,
                however old, or None.
            timeout_s: Longest wait per endpoint, seconds (short: the sidebar waits for it
                once a minute).

        Returns:
            ``Account``, or None when the backend has no key of its own or reports no
            account (see the module's docstring). Never raises for a backend failure.
        """
        key = api_key or backend.config.api_key
        if not key or backend.name == "demo":
            return None
        # The key is never part of a cache key in clear (DESIGN.md, "Settings").
        ident = (backend.base_url, hashlib.sha256(key.encode()).hexdigest()[:16])
        now = self._clock()
        with self._lock:
            kept = self._kept.get(ident)
            if offline:
                return kept[1] if kept else None
            if kept and not refresh and now < kept[0]:
                return kept[1]
        try:
            account: Account | None = self._loop.run(
                read_account(backend.http, key, timeout_s=timeout_s, send_key=api_key is not None),
                timeout=2 * timeout_s + 1)
        except Exception as exc:  # noqa: BLE001 - the loop's own timeout or a closed client: say so, never raise
            account = Account(detail=f"the account could not be read ({type(exc).__name__})")
        if account is not None and not account.reported and backend.name != "pollinations":
            account = None
        with self._lock:
            self._kept[ident] = (self._clock() + self.ttl_s, account)
        return account

    def forget(self) -> None:
        """Drop every kept answer."""
        with self._lock:
            self._kept.clear()


__all__ = ["AccountReader"]
