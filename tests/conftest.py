"""Shared fixtures: a loopback-only network guard, isolated data dirs, a demo service."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from blossom_dash import BlossomService, Settings

ROOT = Path(__file__).resolve().parent.parent
_outbound: list[str] = []
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _is_local(host: object) -> bool:
    if not isinstance(host, str):
        return True  # AF_UNIX paths and the like
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: object) -> object:
    host = address[0] if isinstance(address, tuple) else address
    if not _is_local(host):
        _outbound.append(str(address))
        raise ConnectionRefusedError(f"test guard: no traffic to {address!r}, loopback only")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    host = address[0] if isinstance(address, tuple) else address
    if not _is_local(host):
        _outbound.append(str(address))
        return 111  # ECONNREFUSED
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and not _is_local(name):
        _outbound.append(f"dns:{name}")
        raise socket.gaierror(socket.EAI_NONAME, f"test guard: no lookups of {name!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
socket.getaddrinfo = _guarded_getaddrinfo  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def _no_outbound_traffic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test: its own data dir, the demo backend, and no traffic off loopback."""
    monkeypatch.setenv("BLOSSOM_DASH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BLOSSOM_DASH_BACKEND", "demo")
    # Tests switch to loopback servers of their own; the product default (off) has its own tests.
    monkeypatch.setenv("BLOSSOM_DASH_ALLOW_CUSTOM_BACKEND", "true")
    # The tests inject faults on the demo backend; the product default (off) has its own test.
    monkeypatch.setenv("BLOSSOM_DASH_DEMO_FAULTS", "true")
    monkeypatch.delenv("POLLINATIONS_API_KEY", raising=False)
    before = len(_outbound)
    yield
    attempts = _outbound[before:]
    assert not attempts, f"a test tried to reach beyond loopback: {attempts}"


@pytest.fixture(scope="module")
def demo_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlossomService]:
    """A service on the embedded demo backend, latency off, its own SQLite file."""
    data = tmp_path_factory.mktemp("svc")
    svc = BlossomService(Settings(backend="demo", demo_latency=False, demo_faults=True, data_dir=data, retries=0,
                                  per_user_rpm=100_000, global_rpm=100_000))
    yield svc
    svc.close()


@pytest.fixture(autouse=True)
def _fresh_streamlit_caches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """AppTest runs share Streamlit's process-wide caches: start and end each test empty.

    Clearing ``cache_resource`` also closes the cached service (its ``on_release``).
    """
    import streamlit as st

    monkeypatch.setenv("BLOSSOM_DASH_DEMO_LATENCY", "false")
    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[object]:
    """A real ``redis-server`` on a free loopback port for the whole session (skipped,
    with the reason, where it cannot be started)."""
    from services import start_redis

    try:
        server = start_redis()
    except RuntimeError as exc:
        pytest.skip(f"needs Redis: {exc}")
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: object) -> str:
    """The URL of the session's Redis, emptied for this test."""
    return redis_server.fresh_url()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """A real PostgreSQL cluster on a free loopback port for the whole session (skipped,
    with the reason, where it cannot be started)."""
    from services import start_postgres

    try:
        server = start_postgres()
    except RuntimeError as exc:
        pytest.skip(f"needs PostgreSQL: {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: object) -> str:
    """A SQLAlchemy URL of a new, empty PostgreSQL database for this test."""
    return postgres_server.fresh_url()  # type: ignore[attr-defined]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's URL on each supported database: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{(tmp_path / 'usage.db').as_posix()}"
    return request.getfixturevalue("postgres_url")
