"""The launcher: refuse a non-loopback address in local mode before anything listens, else run the app.

``python -m blossom_dash.ui.launch [streamlit run options]`` (what ``scripts/run.sh``
runs). ``streamlit run`` has no hook before its server binds, so the check is here:
the address comes from ``--server.address``, else ``STREAMLIT_SERVER_ADDRESS``, else
``.streamlit/config.toml`` (the project's over the user's), as Streamlit reads it.
Team mode (an ``[auth]`` section in a secrets file) and kiosk mode may listen anywhere.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .auth import LOOPBACK_ONLY, is_loopback

ROOT = Path(__file__).resolve().parents[2]


def _option(argv: Sequence[str], name: str) -> list[str]:
    """Every value given as ``--name value`` or ``--name=value``, in order."""
    values = []
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(f"--{name}="):
            values.append(arg.split("=", 1)[1])
    return values


def _toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def server_address(argv: Sequence[str], env: Mapping[str, str], cwd: Path, home: Path) -> str | None:
    """The ``server.address`` Streamlit will use, None when nothing sets it (every interface)."""
    if given := _option(argv, "server.address"):
        return given[-1]
    if "STREAMLIT_SERVER_ADDRESS" in env:
        return env["STREAMLIT_SERVER_ADDRESS"]
    address = None
    for path in (home / ".streamlit" / "config.toml", cwd / ".streamlit" / "config.toml"):
        value = _toml(path).get("server", {}).get("address")
        if value is not None:
            address = str(value)
    return address


def has_auth(argv: Sequence[str], cwd: Path, home: Path) -> bool:
    """Whether a secrets file Streamlit will read has an ``[auth]`` section (team mode)."""
    given = [p for value in _option(argv, "secrets.files") for p in value.split(",") if p.strip()]
    files = [Path(p.strip()) for p in given] or [home / ".streamlit" / "secrets.toml",
                                                  cwd / ".streamlit" / "secrets.toml"]
    return any(isinstance(_toml(f if f.is_absolute() else cwd / f).get("auth"), dict) for f in files)


def _kiosk(env: Mapping[str, str]) -> bool:
    """``BLOSSOM_DASH_ALLOW_ANONYMOUS`` parsed as ``Settings.allow_anonymous`` parses it."""
    value = env.get("BLOSSOM_DASH_ALLOW_ANONYMOUS", "false")
    try:
        return TypeAdapter(bool).validate_python(value.strip() or "false")
    except ValidationError:
        return False  # a bad value: the page names it; do not widen the address on a guess


def refusal(argv: Sequence[str], env: Mapping[str, str], cwd: Path, home: Path) -> str | None:
    """Why the app must not start with these arguments, or None when it may.

    Local mode (no ``[auth]``, kiosk off) must listen on loopback only.
    """
    address = server_address(argv, env, cwd, home)
    if is_loopback(address) or has_auth(argv, cwd, home) or _kiosk(env):
        return None
    return LOOPBACK_ONLY.format(address=address or "every interface")


def main(argv: Sequence[str] | None = None) -> int:
    """Check, then replace this process with ``streamlit run app.py <argv>``.

    Returns:
        2 when refused (the message is on stderr); on success it does not return.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if message := refusal(args, os.environ, Path.cwd(), Path.home()):
        print(message, file=sys.stderr)
        return 2
    os.execv(sys.executable, [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), *args])
    return 0  # unreachable: execv does not return


if __name__ == "__main__":
    sys.exit(main())
