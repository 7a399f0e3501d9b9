"""Who is asking, without Streamlit: the three modes, signed kiosk ids, the loopback rule.

- **Team mode**: ``st.secrets`` has an ``[auth]`` section; the identity is the signed-in
  OIDC user (``identity_of``) and the role comes from ``BlossomService.role_for``.
- **Local mode**: no ``[auth]`` and kiosk off; one user, ``local``, an admin, and the
  server must listen on a loopback address only (``is_loopback``, ``launch``).
- **Kiosk mode** (``BLOSSOM_DASH_ALLOW_ANONYMOUS=true``): each browser session gets a
  random id signed with HMAC-SHA256 (``KioskIds``), a member, never an admin.

Nothing here imports streamlit, so the launcher can decide before a server exists.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
from collections.abc import Mapping
from typing import Any

from ..gateway.requests import KIOSK_PREFIX  # kiosk identities: never an admin
from ..service import BlossomService
from ..session import SessionHandle

LOCAL_USER = "local"

#: Random bytes in a kiosk id (128 bits).
KIOSK_ID_BYTES = 16

#: The message the launcher and the page give when local mode is asked to listen beyond loopback.
LOOPBACK_ONLY = ("blossom-dash refuses to serve on {address!r} without sign-in: local mode has one admin "
                 "user, so anyone who can reach the port could change the backend, the limits and read every "
                 "prompt. Serve on 127.0.0.1 (the default), or turn on sign-in with an [auth] section in "
                 ".streamlit/secrets.toml (README, Sign-in), or kiosk mode with BLOSSOM_DASH_ALLOW_ANONYMOUS=true.")


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` (Streamlit's ``server.address``) accepts loopback connections only.

    None or "" is not loopback: Streamlit then listens on every interface.
    """
    if not address:
        return False
    host = address.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def providers(auth: Mapping[str, Any] | None) -> list[str | None]:
    """The sign-in providers an ``[auth]`` secrets section configures.

    None stands for Streamlit's default provider (``client_id`` directly in ``[auth]``,
    ``st.login()``); a name for each ``[auth.<name>]`` table (``st.login(name)``).
    """
    if not auth:
        return []
    found: list[str | None] = [None] if "client_id" in auth else []
    found += sorted(k for k, v in auth.items() if isinstance(v, Mapping) and "client_id" in v)
    return found


def identity_of(user: Mapping[str, Any]) -> str | None:
    """The identity of a signed-in ``st.user``: its e-mail lower-cased, else its ``sub``.

    Returns:
        None when the user is not signed in or has neither claim.
    """
    if not user.get("is_logged_in"):
        return None
    email = str(user.get("email") or "").strip().lower()
    if email:
        return email
    sub = str(user.get("sub") or "").strip()
    return sub or None


class KioskIds:
    """Random visitor ids signed with HMAC-SHA256, so a page cannot make up another's.

    A token is ``<32 hex id>.<64 hex HMAC>``; the identity is ``kiosk-<id>``.

    Args:
        secret: The signing key; None picks a random one (ids then last as long as the process).
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, raw: str) -> str:
        return hmac.new(self._secret, raw.encode("ascii"), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        """A new signed token for a new visitor."""
        raw = secrets.token_hex(KIOSK_ID_BYTES)
        return f"{raw}.{self._mac(raw)}"

    def verify(self, token: object) -> str | None:
        """The identity a token stands for, or None if it is malformed or its signature is wrong."""
        if not isinstance(token, str) or token.count(".") != 1:
            return None
        raw, mac = token.split(".")
        if len(raw) != 2 * KIOSK_ID_BYTES or any(c not in "0123456789abcdef" for c in raw):
            return None
        if not hmac.compare_digest(mac, self._mac(raw)):
            return None
        return KIOSK_PREFIX + raw


class KeyRing:
    """Members' own API keys in server memory, per identity (not per browser session).

    So a reload or a new tab of the same signed-in user keeps using their key; the
    key never goes to the browser.
    """

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, identity: str) -> str | None:
        """The key set for ``identity``, or None."""
        with self._lock:
            return self._keys.get(identity)

    def set(self, identity: str, key: str | None) -> None:
        """Keep ``key`` for ``identity``; None or "" forgets it."""
        with self._lock:
            if key:
                self._keys[identity] = key
            else:
                self._keys.pop(identity, None)


class KeyedHandle(SessionHandle):
    """A ``SessionHandle`` whose own API key lives in the identity's ``KeyRing`` entry.

    ``SessionHandle`` reads and writes ``self._api_key``; here that is the ring, so a
    reload or a new tab of the same identity keeps the key.
    """

    def __init__(self, service: BlossomService, ring: KeyRing, *, user: str, session_id: str,
                 role: str) -> None:
        self._ring = ring
        super().__init__(service, user=user, session_id=session_id, role=role)
        self._live = True

    @property  # type: ignore[override]
    def _api_key(self) -> str | None:
        return self._ring.get(self.user)

    @_api_key.setter
    def _api_key(self, value: str | None) -> None:
        if getattr(self, "_live", False):  # SessionHandle.__init__'s reset must not forget the identity's key
            self._ring.set(self.user, value)
