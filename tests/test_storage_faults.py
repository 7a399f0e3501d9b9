"""Storage faults at start and between processes: a damaged, empty or read-only usage
database is refused in words and the app runs with history off; two processes share
one SQLite file and one journal folder without losing or doubling an event.

Tests run as root, whose permissions ignore a file's mode: a read-only database is a
tmpfs remounted read-only (skipped where ``mount`` is not permitted) or an immutable
file (``chattr +i``, skipped where the file system has no such flag).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pages_helpers import ROOT, app, texts
from small_fs import fill, remount_read_only, tmpfs

from blossom_dash import BlossomService, Settings
from blossom_dash.errors import StorageUnavailable
from blossom_dash.telemetry.collector import Event, MetricsCollector, new_request_id
from blossom_dash.telemetry.store import UsageStore

PAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "app_pages").glob("*.py"))


def _events(n: int, user: str = "u") -> list[Event]:
    return [Event(time.time(), new_request_id(), user, "s", "text", "m", "demo", "ok", prompt=f"prompt {i} " * 10)
            for i in range(n)]


def _real_db(path: Path, n: int = 4000) -> None:
    """A usage database made by the store, with ``n`` events, checkpointed and closed."""
    store = UsageStore(f"sqlite:///{path}")
    store.write_many(_events(n))
    store.close()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


def _damage(path: Path) -> None:
    """Write garbage over the middle pages of ``path`` (the header stays intact)."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(size // 2 - 16_384)
        fh.write(os.urandom(32_768))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _service(data_dir: Path) -> BlossomService:
    return BlossomService(Settings(backend="demo", demo_latency=False, data_dir=data_dir, retries=0))


class TestRefusedAtStart:
    def test_garbage_in_the_middle_is_found_by_quick_check(self, tmp_path: Path) -> None:
        """A database whose middle pages are garbage is refused as damaged, untouched."""
        db = tmp_path / "usage.db"
        _real_db(db)
        _damage(db)
        with sqlite3.connect(db) as conn:  # what goes unnoticed without the check: it opens and serves
            assert conn.execute("SELECT value FROM meta").fetchone() is not None
        before = _digest(db)
        with pytest.raises(StorageUnavailable) as err:
            UsageStore(f"sqlite:///{db}")
        assert "is damaged (" in err.value.message and str(db) in err.value.message
        assert "mv " in err.value.hint and "new, empty history" in err.value.hint
        assert _digest(db) == before, "nothing was written to the damaged file"

    def test_a_file_that_is_not_a_database_is_damaged(self, tmp_path: Path) -> None:
        """Garbage from the first byte: refused as damaged."""
        db = tmp_path / "usage.db"
        db.write_bytes(os.urandom(8192))
        with pytest.raises(StorageUnavailable, match="is damaged"):
            UsageStore(f"sqlite:///{db}")

    def test_a_zero_length_file_is_not_an_empty_history(self, tmp_path: Path) -> None:
        """A 0-byte usage.db is refused (SQLite would take it for a new database) and left as it is."""
        db = tmp_path / "usage.db"
        db.touch()
        with pytest.raises(StorageUnavailable) as err:
            UsageStore(f"sqlite:///{db}")
        assert "is empty (0 bytes)" in err.value.message and "backup" in err.value.hint
        assert db.stat().st_size == 0

    def test_a_read_only_mount_is_refused(self, tmp_path: Path) -> None:
        """A data folder on a read-only mount: refused with what to make writable."""
        with tmpfs(tmp_path / "fs", "16m") as fs:
            _real_db(fs / "usage.db", 100)
            remount_read_only(fs)
            with pytest.raises(StorageUnavailable) as err:
                UsageStore(f"sqlite:///{fs / 'usage.db'}")
            assert "cannot be written" in err.value.message and "read-only" in err.value.message
            assert "BLOSSOM_DASH_DATA_DIR" in err.value.hint

    def test_an_immutable_file_is_refused(self, tmp_path: Path) -> None:
        """An immutable usage.db (chattr +i; root's writes fail too) is refused as read-only."""
        db = tmp_path / "usage.db"
        _real_db(db, 100)
        done = subprocess.run(["chattr", "+i", str(db)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"needs chattr +i on {tmp_path}: {done.stderr.strip()}")
        try:
            with pytest.raises(StorageUnavailable, match="the file is read-only"):
                UsageStore(f"sqlite:///{db}")
        finally:
            subprocess.run(["chattr", "-i", str(db)], check=True)


class TestHistoryOff:
    @pytest.mark.parametrize("fault", ["damaged", "empty"])
    def test_the_service_answers_with_history_off(self, tmp_path: Path, fault: str) -> None:
        """On a damaged or empty usage.db the service starts, answers, and says history is
        off, why and what to do; the file is left exactly as it was."""
        db = tmp_path / "usage.db"
        if fault == "damaged":
            _real_db(db)
            _damage(db)
        else:
            db.touch()
        before = _digest(db)
        with _service(tmp_path) as svc:
            result = svc.generate_text("hello")
            assert result.text
            status = svc.storage_status()
            assert status.history == "off" and str(db) in status.reason
            assert "temporary database" in status.hint and "mv " in status.hint
            assert result.request_id in set(svc.metrics.frame()["request_id"]), "this run's history is kept"
        assert _digest(db) == before
        assert not (tmp_path / "journal").exists() or not list((tmp_path / "journal").iterdir()), \
            "no journal of this run is left for the real history to replay"

    def test_read_only_data_folder(self, tmp_path: Path) -> None:
        """A read-only data folder: the service answers with history off, nothing written there."""
        with tmpfs(tmp_path / "fs", "16m") as fs:
            _real_db(fs / "usage.db", 100)
            remount_read_only(fs)
            with _service(fs) as svc:
                assert svc.generate_text("hello").text
                status = svc.storage_status()
                assert status.history == "off" and "cannot be written" in status.reason


class TestPages:
    def test_every_page_says_history_is_off_and_the_playground_works(self, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """Every page shows the reason as words, no crash page; a chat prompt is answered."""
        data = tmp_path / "data"
        data.mkdir()
        (data / "usage.db").write_bytes(os.urandom(8192))
        monkeypatch.setenv("BLOSSOM_DASH_DATA_DIR", str(data))
        for page in PAGES:
            at = app(page).run()
            assert not at.exception, (page, at.exception)
            assert any("History is off" in e and "is damaged" in e for e in texts(at, "error")), page
        at = app("app_pages/playground.py").run()
        at.chat_input(key="playground_prompt").set_value("Are you there?").run()
        assert not at.exception
        assert [m for m in at.chat_message if m.name == "assistant"], "the Playground answers"

    def test_a_member_is_told_history_is_off_without_the_servers_paths(self, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        """Signed in as a member: history is off, said in words, but not the server's file names or commands."""
        from test_auth import _team

        data = tmp_path / "data"
        data.mkdir()
        (data / "usage.db").write_bytes(b"")
        monkeypatch.setenv("BLOSSOM_DASH_DATA_DIR", str(data))
        monkeypatch.setenv("BLOSSOM_DASH_ADMINS", "admin@team.test")
        at = _team("app_pages/playground.py", {"is_logged_in": True, "email": "mia@team.test"})
        assert not at.exception
        errors = texts(at, "error")
        assert any("History is off on this server" in e for e in errors), errors
        assert not any(str(data) in e or "mv " in e for e in errors), errors
        admin = _team("app_pages/playground.py", {"is_logged_in": True, "email": "admin@team.test"})
        assert any("History is off" in e and str(data) in e for e in texts(admin, "error"))

    def test_every_page_says_history_is_paused_on_a_full_disk(self, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
        """The data folder's disk fills: a chat is still answered and every page says history
        is paused; freed, the banner goes and the chat's event is stored."""
        with tmpfs(tmp_path / "fs", "8m") as fs:
            monkeypatch.setenv("BLOSSOM_DASH_DATA_DIR", str(fs / "data"))
            at = app("app_pages/playground.py").run()
            assert not at.exception
            filler = fill(fs)
            at.chat_input(key="playground_prompt").set_value("Still there?").run()
            assert [m for m in at.chat_message if m.name == "assistant"], "answered on a full disk"
            deadline = time.monotonic() + 10
            while not any("History is paused" in w for w in texts(at.run(), "warning")):
                assert time.monotonic() < deadline, texts(at, "warning")
                time.sleep(0.3)
            assert any("full" in w for w in texts(at, "warning"))
            for page in PAGES:
                other = app(page).run()
                assert not other.exception, (page, other.exception)
                assert any("History is paused" in w for w in texts(other, "warning")), page
            filler.unlink()
            deadline = time.monotonic() + 10
            while any("History is paused" in w for w in texts(at.run(), "warning")):
                assert time.monotonic() < deadline, "history did not resume"
                time.sleep(0.3)
            with sqlite3.connect(fs / "data" / "usage.db") as conn:
                assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] >= 1
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


WRITER = textwrap.dedent("""
    import sys, threading
    from blossom_dash import BlossomService, Settings
    data_dir, name, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    import time
    while time.time() < start_at:  # both processes start at the same moment
        time.sleep(0.001)
    svc = BlossomService(Settings(backend="demo", demo_latency=False, data_dir=data_dir, retries=0,
                                  per_user_rpm=100000, global_rpm=1000000))
    ids, lock = [], threading.Lock()
    def work(w):
        for i in range(150):
            rid = svc.generate_text(f"{name} worker {w} prompt {i}").request_id
            with lock:
                ids.append(rid)
    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    svc.close()
    print("\\n".join(ids))
""")

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from blossom_dash.telemetry.collector import Event, MetricsCollector, new_request_id
    from blossom_dash.telemetry.store import UsageStore
    store = UsageStore(sys.argv[1])
    collector = MetricsCollector(store, Path(sys.argv[2]), flush_interval_s=3600)  # never flushes by itself
    for i in range(10):
        collector.record(Event(time.time(), new_request_id(), "holder", "s", "text", "m", "demo", "ok"))
    print("ready", flush=True)
    sys.stdin.read()
""")


class TestTwoProcesses:
    def test_two_processes_on_one_sqlite_file_store_every_event_once(self, tmp_path: Path) -> None:
        """Two services started at the same moment on one data folder, writing at once:
        every answered request is stored exactly once, and the file is intact."""
        start_at = time.time() + 3
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name, str(start_at)], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)}) for name in ("a", "b")]
        outputs = [p.communicate(timeout=240)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
        ids = [line for out in outputs for line in out.split()]
        assert len(ids) == len(set(ids)) == 1200
        with sqlite3.connect(tmp_path / "usage.db") as conn:
            stored = [r for (r,) in conn.execute("SELECT request_id FROM events")]
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert sorted(stored) == sorted(ids), "every event exactly once"

    def test_a_live_journal_is_never_replayed_whatever_its_name(self, tmp_path: Path) -> None:
        """Another process's live journal is left alone even when its name carries a dead
        process id (ids repeat across containers); once that process dies, it is replayed."""
        url = f"sqlite:///{tmp_path / 'usage.db'}"
        UsageStore(url).close()
        journal_dir = tmp_path / "journal"
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, url, str(journal_dir)], cwd=ROOT, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
            (live,) = journal_dir.glob("journal-*.jsonl")
            gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout.strip()  # a process id that is certainly not alive
            renamed = live.rename(journal_dir / f"journal-{gone}-00000000.jsonl")
            store = UsageStore(url)
            collector = MetricsCollector(store, journal_dir, flush_interval_s=3600)
            try:
                assert store.count() == 0 and renamed.exists(), "the live journal was not replayed"
                holder.send_signal(signal.SIGKILL)
                holder.wait(timeout=10)
                assert collector.recover() == 10
                assert store.count() == 10 and not renamed.exists()
            finally:
                collector.close()
                store.close()
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait(timeout=10)
