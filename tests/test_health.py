"""The readiness check ``python -m blossom_dash.health``: real SQLite files, real Redis and PostgreSQL."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import make_service
from services import free_port

from blossom_dash import health

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No database or Redis URL but the ones a test sets."""
    monkeypatch.delenv("BLOSSOM_DASH_DATABASE_URL", raising=False)
    monkeypatch.delenv("BLOSSOM_DASH_REDIS_URL", raising=False)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = health.main(list(args))
    return code, capsys.readouterr().out


def _by_name(out: str) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(out)["checks"]}


class TestDatabase:
    def test_the_apps_own_sqlite_store_is_ready(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
        """A store the service created and closed: SELECT 1 and quick_check say ok; exit 0."""
        make_service(tmp_path).close()
        monkeypatch.setenv("BLOSSOM_DASH_DATA_DIR", str(tmp_path))
        code, out = _run(capsys, "--json")
        assert code == 0
        db = _by_name(out)["database"]
        assert db["ready"] and "quick_check: ok" in db["detail"] and db["target"].endswith("usage.db")

    def test_not_created_yet_in_a_writable_folder_is_ready(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
        """The store creates its file on first start: a writable folder is enough."""
        monkeypatch.setenv("BLOSSOM_DASH_DATA_DIR", str(tmp_path / "not" / "yet"))
        code, out = _run(capsys)
        assert code == 0 and "not created yet" in out
        assert not (tmp_path / "not").exists()  # the check creates nothing

    @pytest.mark.parametrize(("content", "words"), [
        (b"", "zero-length"),
        (b"this is not a database at all" * 200, "corrupt"),
    ], ids=["zero-length", "garbage"])
    def test_a_broken_file_is_not_ready(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str], content: bytes, words: str) -> None:
        """A zero-length or garbage file: exit 1 and what to do."""
        (tmp_path / "usage.db").write_bytes(content)
        monkeypatch.setenv("BLOSSOM_DASH_DATA_DIR", str(tmp_path))
        code, out = _run(capsys)
        assert code == 1 and "NOT READY" in out and words in out and "backup" in out

    def test_damage_in_the_middle_is_caught_by_quick_check(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
        """Garbage over the pages of a valid database: the header still opens, PRAGMA quick_check does not say ok."""
        path = tmp_path / "usage.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            conn.execute("CREATE INDEX t_v ON t (v)")
            conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}" * 20,) for i in range(3000)])
        conn.close()
        size = path.stat().st_size
        with path.open("r+b") as f:
            f.seek(size // 2)
            f.write(os.urandom(8192))
        monkeypatch.setenv("BLOSSOM_DASH_DATA_DIR", str(tmp_path))
        code, out = _run(capsys, "--json")
        db = _by_name(out)["database"]
        assert code == 1 and not db["ready"]
        assert "quick_check" in db["detail"] or "corrupt" in db["detail"]

    def test_a_read_only_data_folder_is_not_ready(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
        """History cannot be recorded in a read-only folder: exit 1, saying so."""
        data = tmp_path / "ro"
        data.mkdir()
        make_service(data).close()
        with _read_only(data):
            monkeypatch.setenv("BLOSSOM_DASH_DATA_DIR", str(data))
            code, out = _run(capsys)
        assert code == 1 and "read-only" in out

    def test_postgresql_is_ready(self, postgres_url: str, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
        """A real PostgreSQL answers SELECT 1: exit 0."""
        monkeypatch.setenv("BLOSSOM_DASH_DATABASE_URL", postgres_url)
        code, out = _run(capsys)
        assert code == 0, out
        assert "database  ready" in out and "SELECT 1: ok" in out

    def test_postgresql_down_is_not_ready_and_hides_the_password(self, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
        """Nothing listens: exit 1, the database named, the password masked."""
        url = f"postgresql+psycopg://blossom:pg-s3cret@127.0.0.1:{free_port()}/blossom"
        monkeypatch.setenv("BLOSSOM_DASH_DATABASE_URL", url)
        code, out = _run(capsys, "--timeout", "2")
        assert code == 1 and "database  NOT READY" in out and "not reachable" in out
        assert "pg-s3cret" not in out and "blossom:***@127.0.0.1" in out


class TestRedis:
    def test_redis_is_ready(self, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
        """A real Redis answers PING and the SQLite store is fine: exit 0, one line per check."""
        monkeypatch.setenv("BLOSSOM_DASH_REDIS_URL", redis_url)
        code, out = _run(capsys)
        assert code == 0, out
        assert [line.split()[:2] for line in out.splitlines()] == [["database", "ready"], ["redis", "ready"]]

    @pytest.mark.parametrize("as_json", [False, True], ids=["lines", "json"])
    def test_redis_down_is_not_ready_and_hides_the_password(self, as_json: bool, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
        """Redis on a dead port: exit 1, a message naming Redis, and never the password."""
        monkeypatch.setenv("BLOSSOM_DASH_REDIS_URL", f"redis://:s3cret@127.0.0.1:{free_port()}/0")
        code, out = _run(capsys, *(["--json"] if as_json else []), "--timeout", "1")
        assert code == 1 and "s3cret" not in out
        if as_json:
            checks = _by_name(out)
            assert json.loads(out)["ready"] is False and checks["redis"]["ready"] is False
            assert checks["redis"]["target"].startswith("redis://:***@127.0.0.1:")
        else:
            assert "redis     NOT READY" in out and "BLOSSOM_DASH_REDIS_URL" in out

    def test_no_redis_url_means_no_redis_check(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Single-process mode: only the database is checked."""
        code, out = _run(capsys, "--json")
        assert code == 0 and list(_by_name(out)) == ["database"]


class TestCommand:
    def test_invalid_settings_exit_1_without_quoting_them(self, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
        """A bad BLOSSOM_DASH_* value: exit 1, which setting, not the value typed."""
        monkeypatch.setenv("BLOSSOM_DASH_PER_USER_RPM", "hunter2-secret")
        code, out = _run(capsys)
        assert code == 1 and "per_user_rpm" in out and "hunter2" not in out

    def test_streamlit_down_is_not_ready(self, capsys: pytest.CaptureFixture[str]) -> None:
        """``--streamlit`` at a dead port: exit 1 and the streamlit check says so."""
        code, out = _run(capsys, "--json", "--streamlit", f"http://127.0.0.1:{free_port()}", "--timeout", "1")
        assert code == 1 and _by_name(out)["streamlit"]["ready"] is False

    def test_python_dash_m(self, tmp_path: Path, redis_url: str) -> None:
        """The documented command itself, in a fresh process: exit 0 with JSON, exit 1 once Redis is wrong."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLOSSOM_DASH_")}
        env.update({"BLOSSOM_DASH_DATA_DIR": str(tmp_path), "BLOSSOM_DASH_REDIS_URL": redis_url})
        ok = subprocess.run([sys.executable, "-m", "blossom_dash.health", "--json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and json.loads(ok.stdout)["ready"] is True
        env["BLOSSOM_DASH_REDIS_URL"] = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
        bad = subprocess.run([sys.executable, "-m", "blossom_dash.health"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "redis" in bad.stdout and "s3cret" not in bad.stdout + bad.stderr


class TestMaskUrl:
    @pytest.mark.parametrize(("url", "masked"), [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:p%40ss@h:6380/1", "rediss://user:***@h:6380/1"),
        ("postgresql+psycopg://u:pw@db:5432/x?sslmode=require&password=pw",
         "postgresql+psycopg://u:***@db:5432/x?sslmode=require&password=***"),
        ("postgresql+psycopg://u@db/x", "postgresql+psycopg://u@db/x"),
        ("sqlite:///data/usage.db", "sqlite:///data/usage.db"),
        ("redis://:a/b@c@h:1/0", "redis://:***@h:1/0"),
    ])
    def test_passwords_are_masked_and_the_rest_kept(self, url: str, masked: str) -> None:
        """User-part passwords and password query values become ``***``; nothing else changes."""
        assert health.mask_url(url) == masked


@contextmanager
def _read_only(folder: Path) -> Iterator[Path]:
    """Make ``folder`` read-only: chmod for a normal user; a read-only tmpfs over it for root (root ignores modes)."""
    if os.geteuid() != 0:
        for p in [folder, *folder.iterdir()]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield folder
        finally:
            for p in [folder, *folder.iterdir()]:
                p.chmod(0o755 if p.is_dir() else 0o644)
        return
    copy = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"needs mount as root for a read-only folder: {done.stderr.strip()}")
    try:
        for name, data in copy.items():
            (folder / name).write_bytes(data)
        done = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot remount read-only: {done.stderr.strip()}")
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
