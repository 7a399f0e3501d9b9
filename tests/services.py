"""Real Redis and PostgreSQL servers for the tests, started on free loopback ports.

Both come from Debian's packages (``scripts/test.sh`` installs ``redis-server`` and
``postgresql`` when they are missing). Each server lives in a temporary directory,
writes nothing elsewhere, and is stopped at the end of the test session. PostgreSQL's
``initdb`` refuses to run as root, so the cluster is created and run as the
``postgres`` user (``runuser``) when the tests run as root.

A test that needs one of them and finds it impossible to start is skipped with the
reason (``pytest.skip``), never silently passed.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class RedisServer:
    """A ``redis-server`` on 127.0.0.1, no persistence; ``url`` is ``redis://127.0.0.1:<port>/0``."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    _next_db: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def fresh_url(self) -> str:
        """The URL of an emptied database (``FLUSHDB`` on db 0): one per test."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.flushdb()
        finally:
            client.close()
        return self.url

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_redis() -> RedisServer:
    """Start a throwaway Redis.

    Raises:
        RuntimeError: ``redis-server`` is missing or did not answer within 15 s.
    """
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server is not installed (scripts/test.sh installs Debian's redis-server)")
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="bd-redis-"))
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--logfile", str(directory / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not _wait_port(port, 15):
        proc.kill()
        raise RuntimeError(f"redis-server did not listen on 127.0.0.1:{port} within 15 s")
    return RedisServer(port=port, directory=directory, process=proc)


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust authentication, fsync off)."""

    port: int
    directory: Path
    bindir: Path
    as_postgres: list[str]
    _dbs: list[str] = field(default_factory=list)

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3) of ``database`` on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def fresh_url(self) -> str:
        """Create an empty database with a unique name; return its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._dbs.append(name)
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.as_postgres, str(self.bindir / "pg_ctl"), "-D", str(self.directory / "data"),
                        "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Create and start a throwaway PostgreSQL cluster.

    Raises:
        RuntimeError: PostgreSQL is not installed, or ``initdb``/``pg_ctl`` failed
            (their output is in the message).
    """
    bindir = _pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/test.sh installs Debian's postgresql)")
    as_postgres: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="bd-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(directory, "postgres")
        os.chmod(directory, 0o700)
    port = free_port()
    data = directory / "data"
    init = subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                           "-E", "UTF8", "--no-sync"], capture_output=True, text=True, timeout=120)
    if init.returncode:
        raise RuntimeError(f"initdb failed: {init.stderr.strip()[-500:]}")
    opts = (f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200")
    start = subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(directory / "log"),
                            "-w", "-t", "60", "-o", opts, "start"], capture_output=True, text=True, timeout=90)
    if start.returncode:
        log = (directory / "log").read_text(errors="replace")[-500:] if (directory / "log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {start.stderr.strip()[-300:]} {log}")
    return PostgresServer(port=port, directory=directory, bindir=bindir, as_postgres=as_postgres)
