"""Readiness check: can this replica reach its usage database and Redis?

``python -m blossom_dash.health [--json] [--streamlit URL] [--timeout S]``

Streamlit's own ``/_stcore/health`` says the web server is alive (liveness); this says
whether what the app stands on is reachable (readiness), as a container ``HEALTHCHECK``
or a load balancer's probe wants it. It reads ``Settings()`` (the ``BLOSSOM_DASH_*``
environment, as the app does) and runs, each with its own short timeout:

- **database** (``settings.resolved_database_url()``): on a server database
  (PostgreSQL), connect and ``SELECT 1``; on SQLite, open the existing file read-only,
  ``SELECT 1`` and ``PRAGMA quick_check`` (it must say ``ok``), and check the file and
  its folder are writable; a file not created yet is ready when the nearest existing
  folder on its path is writable (the store creates it on first start). A zero-length
  file is not ready: the tables the store creates at start are gone.
- **redis**, only when ``redis_url`` is set: ``PING``.
- **streamlit**, only with ``--streamlit http://host:port``: ``GET /_stcore/health``
  must answer 200 ``ok``.

One line per check on stdout (``name  ready|NOT READY  target  detail``), or one JSON
object with ``--json``: ``{"ready": bool, "checks": [{name, ready, target, detail,
latency_ms}]}``. Passwords in URLs are masked (``***``) and never printed.

Exit codes: 0 every check is ready; 1 at least one is not, or the settings are invalid;
2 bad command-line arguments (argparse).

Imports only ``settings`` and libraries (SQLAlchemy, redis-py), never the service: a
probe must not start a backend, a journal or worker threads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote

from pydantic import ValidationError

from .settings import Settings

__all__ = ["Check", "check_database", "check_redis", "check_streamlit", "main", "mask_url", "run_checks"]

#: Seconds each check may take by default (connect and query each get this much).
DEFAULT_TIMEOUT_S = 3.0

_SECRET_QUERY_KEYS = {"password", "passwd", "pass", "pwd", "sslpassword", "token", "secret"}


@dataclass(frozen=True)
class Check:
    """The outcome of one readiness check.

    Attributes:
        name: ``"database"``, ``"redis"``, ``"streamlit"`` or ``"settings"``.
        ready: True when the dependency answered as expected.
        target: What was checked, with any password masked (``***``).
        detail: What was found, or what is wrong and what to do.
        latency_ms: Time the check took, milliseconds.
    """

    name: str
    ready: bool
    target: str
    detail: str
    latency_ms: float = 0.0


def _parts(url: str) -> tuple[str, str | None, str, str]:
    """``(scheme://user, password or None, @host/path, ?query)``: ``url`` cut where a password can sit.

    Cut by hand rather than with ``urllib.parse``, which rewrites ``sqlite:///x`` as
    ``sqlite:/x`` and stops at a ``/`` or ``@`` typed unencoded in a password.
    """
    head, sep, query = url.partition("?")
    query = sep + query
    if "://" not in head:
        return head, None, "", query
    scheme, rest = head.split("://", 1)
    if "@" not in rest:
        return f"{scheme}://{rest}", None, "", query
    userinfo, host = rest.rsplit("@", 1)
    user, colon, password = userinfo.partition(":")
    return f"{scheme}://{user}", (password if colon else None), f"@{host}", query


_SECRET_QUERY = re.compile(r"([?&](?:" + "|".join(sorted(_SECRET_QUERY_KEYS)) + r")=)([^&#]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` with the password of its user part and of any ``password=`` query value masked.

    ``redis://:s3cret@h:6379/0`` -> ``redis://:***@h:6379/0``;
    ``postgresql+psycopg://u:p@h/db?password=p`` -> ``postgresql+psycopg://u:***@h/db?password=***``.
    Everything else is kept as typed.
    """
    start, password, host, query = _parts(url)
    masked = start + (":***" if password is not None else "") + host
    return masked + _SECRET_QUERY.sub(lambda m: m.group(1) + "***", query)


def _secrets_of(url: str) -> list[str]:
    """The secret substrings of ``url`` (its password, secret query values), to scrub from messages."""
    _, password, _, query = _parts(url)
    found = [password, unquote(password)] if password else []
    found += [m.group(2) for m in _SECRET_QUERY.finditer(query)]
    found += [unquote(s) for s in found]
    # Longest first, so that a secret containing another is replaced whole.
    return sorted({s for s in found if s}, key=len, reverse=True)


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret replaced by ``***`` (a driver may echo its connection string)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return re.sub(r"\s+", " ", text).strip()[:300]


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def _check_sqlite(path_text: str | None, target: str, timeout_s: float) -> Check:
    start = time.perf_counter()
    if not path_text or path_text == ":memory:":
        return Check("database", True, target, "in-memory SQLite (nothing on disk to check)", _ms(start))
    path = Path(path_text)
    if not path.exists():
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if os.access(folder, os.W_OK | os.X_OK):
            return Check("database", True, target, f"not created yet; {folder} is writable", _ms(start))
        return Check("database", False, target,
                     f"{folder} is not writable, so the database cannot be created: give the app's user "
                     "write access or set BLOSSOM_DASH_DATA_DIR to a writable folder", _ms(start))
    if path.is_dir():
        return Check("database", False, target, "is a folder, not a database file", _ms(start))
    if path.stat().st_size == 0:
        return Check("database", False, target,
                     "zero-length file: the history's tables are gone; restore it from a backup, "
                     "or move it aside to start an empty history", _ms(start))
    # Before opening: a WAL database in a read-only folder cannot even be opened (no -shm).
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)):
        return Check("database", False, target,
                     "read-only (the file or its folder): history cannot be recorded; give the app's user "
                     "write access", _ms(start))
    try:
        # Read-only URI so that the check never creates, migrates or locks the file for writing.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout_s)
    except sqlite3.Error as exc:
        return Check("database", False, target, f"cannot be opened: {exc}", _ms(start))
    try:
        conn.execute("SELECT 1").fetchone()
        verdict = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        return Check("database", False, target,
                     f"corrupt ({exc}): restore it from a backup, or move it aside to start an empty history",
                     _ms(start))
    finally:
        conn.close()
    if verdict != ["ok"]:
        first = "; ".join(str(v) for v in verdict[:3])
        return Check("database", False, target,
                     f"PRAGMA quick_check says the file is damaged ({first}): restore it from a backup, "
                     "or move it aside to start an empty history", _ms(start))
    return Check("database", True, target, "SELECT 1 and PRAGMA quick_check: ok", _ms(start))


def check_database(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Check:
    """Whether the usage store at ``url`` (a SQLAlchemy URL) is reachable and sound.

    Args:
        url: The store's URL (``sqlite:///path`` or ``postgresql+psycopg://...``).
        timeout_s: Seconds to connect, and (PostgreSQL) for the query itself
            (``statement_timeout``); SQLite waits this long on a locked file.

    Returns:
        A ``Check`` named ``database``; never raises for an unreachable or broken database.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    target = mask_url(url)
    start = time.perf_counter()
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return Check("database", False, target,
                     "not a SQLAlchemy URL: fix BLOSSOM_DASH_DATABASE_URL", _ms(start))
    if parsed.get_backend_name() == "sqlite":
        return _check_sqlite(parsed.database, target, timeout_s)
    connect_args: dict[str, object] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": max(1, round(timeout_s)),
                        "options": f"-c statement_timeout={int(timeout_s * 1000)}"}
    try:
        engine = create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        return Check("database", False, target, _scrub(f"cannot use this URL: {exc}", _secrets_of(url)), _ms(start))
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).scalar()
    except SQLAlchemyError as exc:
        reason = _scrub(str(getattr(exc, "orig", None) or exc), _secrets_of(url))
        return Check("database", False, target,
                     f"not reachable: {reason}; check the server is up and BLOSSOM_DASH_DATABASE_URL", _ms(start))
    finally:
        engine.dispose()
    return Check("database", True, target, "SELECT 1: ok", _ms(start))


def check_redis(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Check:
    """Whether the Redis at ``url`` answers ``PING`` within ``timeout_s`` seconds (connect and reply).

    Returns:
        A ``Check`` named ``redis``; never raises for an unreachable Redis or a refused password.
    """
    import redis

    target = mask_url(url)
    start = time.perf_counter()
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    except ValueError as exc:
        return Check("redis", False, target, _scrub(f"not a Redis URL ({exc}): fix BLOSSOM_DASH_REDIS_URL",
                                                    _secrets_of(url)), _ms(start))
    try:
        client.ping()
    except redis.AuthenticationError:
        return Check("redis", False, target,
                     "password refused: fix the password in BLOSSOM_DASH_REDIS_URL", _ms(start))
    except redis.RedisError as exc:
        return Check("redis", False, target,
                     _scrub(f"not reachable: {exc}; check Redis is up and BLOSSOM_DASH_REDIS_URL", _secrets_of(url)),
                     _ms(start))
    finally:
        client.close()
    return Check("redis", True, target, "PING: PONG", _ms(start))


def check_streamlit(base_url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Check:
    """Whether the Streamlit server at ``base_url`` answers ``GET /_stcore/health`` with 200 ``ok``.

    Returns:
        A ``Check`` named ``streamlit``; never raises.
    """
    url = base_url.rstrip("/") + "/_stcore/health"
    target = mask_url(url)
    start = time.perf_counter()
    if not url.startswith(("http://", "https://")):
        return Check("streamlit", False, target, "needs an http(s):// URL", _ms(start))
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read(64).decode("utf-8", "replace").strip()
            status = response.status
    except urllib.error.HTTPError as exc:
        return Check("streamlit", False, target, f"answered HTTP {exc.code}", _ms(start))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check("streamlit", False, target, _scrub(f"not reachable: {reason}", _secrets_of(url)), _ms(start))
    if status != 200 or body != "ok":
        return Check("streamlit", False, target, f"answered {status} {body[:20]!r}, not 200 'ok'", _ms(start))
    return Check("streamlit", True, target, "/_stcore/health: ok", _ms(start))


def run_checks(settings: Settings, streamlit_url: str | None = None,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Check]:
    """Every readiness check that applies to ``settings``: database; Redis when set; Streamlit when asked.

    Args:
        settings: The app's settings (database URL, Redis URL).
        streamlit_url: Base URL of the Streamlit server to probe, or None to skip it.
        timeout_s: Timeout of each check, seconds.

    Returns:
        The checks in that order.
    """
    checks = [check_database(settings.resolved_database_url(), timeout_s)]
    if settings.redis_url is not None:
        checks.append(check_redis(settings.redis_url.get_secret_value(), timeout_s))
    if streamlit_url:
        checks.append(check_streamlit(streamlit_url, timeout_s))
    return checks


def _settings_error(exc: ValidationError) -> Check:
    # Only where and what: pydantic's own text would quote the input, which may be a secret.
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
    return Check("settings", False, "BLOSSOM_DASH_* environment", f"invalid: {problems}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks and print them (see the module docstring).

    Returns:
        0 when every check is ready, 1 otherwise (argparse exits 2 on bad arguments).
    """
    parser = argparse.ArgumentParser(prog="python -m blossom_dash.health",
                                     description="Readiness of this replica: database, Redis, Streamlit.")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    parser.add_argument("--streamlit", metavar="URL", help="also check URL/_stcore/health, e.g. http://127.0.0.1:8501")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"seconds per check (default {DEFAULT_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error("--timeout must be positive")
    try:
        checks = run_checks(Settings(), args.streamlit, args.timeout)
    except ValidationError as exc:
        checks = [_settings_error(exc)]
    ready = all(c.ready for c in checks)
    if args.json:
        print(json.dumps({"ready": ready, "checks": [asdict(c) for c in checks]}))
    else:
        for c in checks:
            print(f"{c.name:<9} {'ready' if c.ready else 'NOT READY':<9} {c.target}  {c.detail} ({c.latency_ms:g} ms)")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
