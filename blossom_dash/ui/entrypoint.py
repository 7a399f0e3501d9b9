"""The container's entrypoint: Streamlit's sign-in secrets from the environment, then the launcher.

``python -m blossom_dash.ui.entrypoint [streamlit run options]`` (the Dockerfile's
``ENTRYPOINT``). Replicas behind a proxy must sign cookies with one key, and Streamlit
reads its ``[auth]`` section only from a secrets file (``secrets.toml`` does not expand
environment variables), so this turns environment variables into that file:

- ``BLOSSOM_DASH_COOKIE_SECRET``: the cookie key every replica shares (at least 32
  characters). It becomes Streamlit's ``server.cookieSecret`` (through
  ``STREAMLIT_SERVER_COOKIE_SECRET``, unless that is already set: it signs the XSRF
  cookie, in kiosk mode too) and ``[auth] cookie_secret`` (the sign-in cookie; Streamlit
  prefers it over ``server.cookieSecret`` when both exist).
- ``BLOSSOM_DASH_AUTH_REDIRECT_URI``, ``BLOSSOM_DASH_AUTH_CLIENT_ID``,
  ``BLOSSOM_DASH_AUTH_CLIENT_SECRET``, ``BLOSSOM_DASH_AUTH_SERVER_METADATA_URL``: one
  OpenID Connect provider directly under ``[auth]`` (a single "Sign in" button); all
  four or none.
- Providers already in a secrets file Streamlit would read (``~/.streamlit/secrets.toml``
  and ``.streamlit/secrets.toml``, e.g. one mounted read-only, or the files given with
  ``--secrets.files``) are kept; the values above are laid over that file's ``[auth]``.

When the result has a provider, the merged ``[auth]`` is written to a new file readable
by this user only (0600, in a fresh 0700 temporary folder) and given to Streamlit with
``--secrets.files`` after the files it would read anyway: Streamlit merges secrets
files top-level key by key, the last one winning, so that file's ``[auth]`` wins and
the other keys (``POLLINATIONS_API_KEY``) still come from the first ones. Then
``blossom_dash.ui.launch`` runs as it always does: without a provider (and without kiosk
mode) it refuses a non-loopback address, so a container missing its sign-in settings
exits with status 2 instead of serving everyone as the local admin.

Nothing secret is ever printed; a refusal names the variable to fix, never its value.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import launch

__all__ = ["AUTH_VARIABLES", "COOKIE_VARIABLE", "MIN_COOKIE_SECRET_CHARS", "Plan", "Refused", "main", "plan",
           "to_toml", "write_secrets"]

#: The one variable that holds the shared cookie key.
COOKIE_VARIABLE = "BLOSSOM_DASH_COOKIE_SECRET"
#: ``[auth]`` key -> the variable that sets it (one provider directly under ``[auth]``).
AUTH_VARIABLES = {
    "redirect_uri": "BLOSSOM_DASH_AUTH_REDIRECT_URI",
    "client_id": "BLOSSOM_DASH_AUTH_CLIENT_ID",
    "client_secret": "BLOSSOM_DASH_AUTH_CLIENT_SECRET",
    "server_metadata_url": "BLOSSOM_DASH_AUTH_SERVER_METADATA_URL",
}
#: Streamlit warns below 32 bytes (``auth_util``): a short key lets a guessed one forge a sign-in.
MIN_COOKIE_SECRET_CHARS = 32


class Refused(Exception):
    """The environment cannot make a working sign-in; ``str()`` says which variable to fix."""


@dataclass
class Plan:
    """What to start: the launcher's arguments, environment changes, and the ``[auth]`` to write.

    Attributes:
        args: ``streamlit run`` options for the launcher, without the secrets file still to be written.
        secrets_files: Files Streamlit must read before the one written from ``auth``.
        env: Variables to set before starting (Streamlit's cookie secret).
        auth: The merged ``[auth]`` section, or None when sign-in is not configured.
    """

    args: list[str]
    secrets_files: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    auth: dict[str, Any] | None = None


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        # The error's position only: its text could quote a line of the file.
        raise Refused(f"cannot read the secrets file {path} ({type(exc).__name__}): fix or remove it") from None


def _has_provider(auth: Mapping[str, Any]) -> bool:
    return "client_id" in auth or any(isinstance(v, dict) and "client_id" in v for v in auth.values())


def plan(argv: Sequence[str], env: Mapping[str, str], cwd: Path, home: Path) -> Plan:
    """Decide, from the arguments and the environment, what the container starts with.

    Args:
        argv: ``streamlit run`` options (``--server.address 0.0.0.0`` ...).
        env: The environment (``BLOSSOM_DASH_COOKIE_SECRET``, ``BLOSSOM_DASH_AUTH_*``).
        cwd, home: Where Streamlit looks for ``.streamlit/secrets.toml``.

    Returns:
        The plan; ``auth`` is None when no provider is configured anywhere.

    Raises:
        Refused: Only some of the ``BLOSSOM_DASH_AUTH_*`` variables are set, a provider is
            configured without any cookie secret, the cookie secret is shorter than
            ``MIN_COOKIE_SECRET_CHARS``, or a secrets file cannot be parsed.
    """
    args = list(argv)
    cookie = env.get(COOKIE_VARIABLE, "").strip()
    if cookie and len(cookie) < MIN_COOKIE_SECRET_CHARS:
        raise Refused(f"{COOKIE_VARIABLE} is shorter than {MIN_COOKIE_SECRET_CHARS} characters: use a long random "
                      "string, e.g. python -c \"import secrets; print(secrets.token_urlsafe(32))\"")
    given = {key: env[var].strip() for key, var in AUTH_VARIABLES.items() if env.get(var, "").strip()}
    if given and len(given) < len(AUTH_VARIABLES):
        missing = [var for key, var in AUTH_VARIABLES.items() if key not in given]
        raise Refused(f"sign-in is half configured: set {', '.join(missing)} too (or none of the BLOSSOM_DASH_AUTH_* "
                      "variables)")
    named = [Path(p) for p in launch._option(args, "secrets.files")]
    existing = named or [p for p in (home / ".streamlit" / "secrets.toml", cwd / ".streamlit" / "secrets.toml")
                         if p.is_file()]
    auth: dict[str, Any] = {}
    for path in existing:
        section = _read(path if path.is_absolute() else cwd / path).get("auth")
        if isinstance(section, dict):
            auth = dict(section)  # Streamlit's merge is by top-level key: the last [auth] wins whole
    auth.update(given)
    result = Plan(args=args, env={})
    if cookie:
        auth["cookie_secret"] = cookie
        if "STREAMLIT_SERVER_COOKIE_SECRET" not in env:
            result.env["STREAMLIT_SERVER_COOKIE_SECRET"] = cookie
    if not _has_provider(auth):
        return result
    if not str(auth.get("cookie_secret", "")).strip():
        raise Refused(f"sign-in is configured but no cookie secret is: set {COOKIE_VARIABLE} (the same on every "
                      "replica)")
    result.auth = auth
    result.secrets_files = [] if named else existing
    return result


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() and name.isascii() else _string(name)


def _string(value: str) -> str:
    # A JSON string is a TOML basic string once DEL is escaped too (TOML forbids it raw);
    # non-ASCII stays raw because TOML rejects the surrogate pairs json would write.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise Refused(f"the [auth] section holds a {type(value).__name__}, which this entrypoint cannot copy: "
                  "use strings, numbers, booleans, lists and tables")


def to_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """``{"auth": {...}}`` as TOML text; nested dicts become ``[auth.name]`` tables.

    Raises:
        Refused: A value is not a string, number, boolean, list or table (e.g. a date),
            or the text would not read back as the same data.
    """
    lines: list[str] = []

    def table(path: list[str], mapping: Mapping[str, Any]) -> None:
        lines.append("[" + ".".join(_key(p) for p in path) + "]")
        lines.extend(f"{_key(k)} = {_value(v)}" for k, v in mapping.items() if not isinstance(v, dict))
        for k, v in mapping.items():
            if isinstance(v, dict):
                table([*path, k], v)

    for name, mapping in tables.items():
        table([name], mapping)
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != tables:
        raise Refused("the [auth] section could not be copied faithfully: check its keys and values")
    return text


def write_secrets(auth: Mapping[str, Any], directory: Path | None = None) -> Path:
    """Write ``[auth]`` to a new file only this user can read; return its path.

    Args:
        auth: The merged section.
        directory: Where to create it; None makes a fresh 0700 temporary folder.

    Raises:
        Refused: ``auth`` holds a value TOML cannot take (see ``to_toml``).
        OSError: The file cannot be created (e.g. it exists already).
    """
    text = to_toml({"auth": dict(auth)})
    folder = directory or Path(tempfile.mkdtemp(prefix="blossom-dash-secrets-"))
    path = folder / "auth.toml"  # Streamlit reads a secrets path as TOML only when it ends in .toml
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Plan, write the secrets file, set the environment, then hand over to ``launch.main``.

    Returns:
        2 when refused (the reason on stderr, no secret in it); on success ``launch.main``
        replaces this process with Streamlit and does not return.
    """
    try:
        decided = plan(list(sys.argv[1:] if argv is None else argv), os.environ, Path.cwd(), Path.home())
        args = list(decided.args)
        if decided.auth is not None:
            files = [*decided.secrets_files, write_secrets(decided.auth)]
            for path in files:
                args += ["--secrets.files", str(path)]
    except (Refused, OSError) as exc:
        print(f"blossom-dash: {exc}", file=sys.stderr)
        return 2
    os.environ.update(decided.env)
    return launch.main(args)


if __name__ == "__main__":
    sys.exit(main())
