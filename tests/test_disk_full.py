"""Disk full: requests keep being answered, history pauses, nothing is corrupted or lost.

The data folder lives on a 4 MB tmpfs that the test fills to the last block. The
service runs in a child process, so a SIGBUS (what the memory-mapped journal of
earlier versions died of) shows as a negative return code with its signal's name
instead of killing pytest. Skipped, with the reason, where ``mount`` is not permitted.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from small_fs import fill, tmpfs

from blossom_dash.telemetry.collector import Event, MetricsCollector, new_request_id
from blossom_dash.telemetry.store import UsageStore

ROOT = Path(__file__).resolve().parent.parent

#: A service on the demo backend answering commands on stdin, one JSON line per answer.
CHILD = textwrap.dedent("""
    import dataclasses, json, sys
    from blossom_dash import BlossomService, Settings
    svc = BlossomService(Settings(backend="demo", demo_latency=False, data_dir=sys.argv[1], retries=0,
                                  per_user_rpm=100000, global_rpm=1000000))
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "req":  # n requests: new prompts, and every third one a cache hit
            ids = []
            for i in range(int(arg.split()[1])):
                prompt = f"{arg.split()[0]} prompt {i - 1 if i % 3 == 2 else i}"
                ids.append(svc.generate_text(prompt).request_id)
            out = ids
        elif cmd == "stream":
            stream = svc.stream_text(f"streamed {arg}")
            "".join(stream)
            out = [stream.result.request_id]
        elif cmd == "status":
            out = dataclasses.asdict(svc.storage_status())
        elif cmd == "stored":
            svc.flush_events()
            out = list(svc.metrics.frame(limit=10**7)["request_id"])
        elif cmd == "quit":
            svc.close()
            out = "bye"
        print(json.dumps(out), flush=True)
        if cmd == "quit":
            break
""")


class Child:
    """The service in a child process, driven line by line."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self._log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir)], cwd=ROOT, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.ask(None) == "ready"

    def ask(self, command: str | None) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            code = self.proc.returncode
            died = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
            pytest.fail(f"the service process {died}; its log ends: {self._log.read_text()[-1500:]}")
        return json.loads(line)

    def wait_for(self, command: str, done: Callable[[Any], bool], timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self.ask(command)
            if done(answer):
                return answer
            if time.monotonic() > deadline:
                pytest.fail(f"{what} within {timeout_s} s; last answer: {str(answer)[:500]}")
            time.sleep(0.1)


def _events(n: int) -> list[Event]:
    return [Event(time.time(), new_request_id(), "u", "s", "text", "m", "demo", "ok", prompt=f"p{i}")
            for i in range(n)]


def _integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_full_disk_keeps_the_server_answering_and_loses_no_event(tmp_path: Path) -> None:
    """Fill the data folder's disk: requests are answered, the status says history is
    paused, the process lives; free it: every answered request is stored once, intact."""
    with tmpfs(tmp_path / "fs") as fs:
        child = Child(fs / "data", tmp_path / "child.log")
        try:
            before = child.ask("req warmup 20")
            filler = fill(fs)
            during = child.ask("req full 300") + child.ask("stream 1") + child.ask("req full2 200")
            assert len(during) == 501, "every request was answered on the full disk"
            paused = child.wait_for("status", lambda s: s["history"] == "paused", 10, "history did not pause")
            assert "full" in paused["reason"], paused
            assert paused["waiting"] >= 1 and paused["lost"] == 0
            assert child.proc.poll() is None, "the service is alive"

            filler.unlink()
            wanted = set(before + during)
            stored = child.wait_for("stored", lambda ids: wanted <= set(ids), 20,
                                    "the waiting events did not reach the store")
            assert len(stored) == len(set(stored)) == len(wanted), "no event stored twice"
            status = child.ask("status")
            assert status["history"] == "ok" and status["waiting"] == 0, status
            assert child.ask("quit") == "bye"
            assert child.proc.wait(timeout=30) == 0
        finally:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(timeout=10)
        assert _integrity(fs / "data" / "usage.db") == "ok"


def test_a_full_journal_disk_keeps_events_in_memory(tmp_path: Path) -> None:
    """Journal on a full disk, store elsewhere: events are kept in memory (the journal
    says so), reach the store, and the journal holds no torn line."""
    with tmpfs(tmp_path / "fs") as fs:
        store = UsageStore(f"sqlite:///{tmp_path / 'usage.db'}")
        collector = MetricsCollector(store, fs / "journal", flush_interval_s=3600)
        try:
            fill(fs)
            events = _events(500)
            for ev in events:
                collector.record(ev)
            status = collector.status()
            assert status.journal == "failing" and "space" in status.journal_reason.lower()
            assert status.history == "ok" and status.memory_only == 500
            assert collector.flush() == 500
            assert set(store.frame(limit=10_000)["request_id"]) == {e.request_id for e in events}
            for journal in (fs / "journal").glob("journal-*.jsonl"):
                data = journal.read_bytes()
                assert not data or data.endswith(b"\n"), "a failed write is cut back to the last whole line"
        finally:
            collector.close()
            store.close()


def test_waiting_events_are_bounded_and_the_overflow_counted(tmp_path: Path) -> None:
    """Store and journal on a full disk, at most 100 events held: 250 recorded leave
    100 waiting and 150 counted lost; freed, the 100 are stored."""
    with tmpfs(tmp_path / "fs") as fs:
        store = UsageStore(f"sqlite:///{fs / 'usage.db'}")
        collector = MetricsCollector(store, fs / "journal", flush_interval_s=3600, max_waiting=100)
        try:
            filler = fill(fs)
            events = _events(250)
            for ev in events:
                collector.record(ev)
            collector.flush()
            status = collector.status()
            assert (status.history, status.waiting, status.memory_only, status.lost) == ("paused", 100, 100, 150)
            filler.unlink()
            time.sleep(1.1)  # the next attempt after a refusal is RETRY_S later
            assert collector.flush() == 100
            assert set(store.frame(limit=10_000)["request_id"]) == {e.request_id for e in events[150:]}
            assert collector.status().history == "ok"
        finally:
            collector.close()
            store.close()


def test_journaled_events_are_let_go_from_memory_not_lost(tmp_path: Path) -> None:
    """Store on a full disk, journal on a roomy one, at most 100 events held: nothing is
    lost, the journal keeps them, and all 250 are stored once the disk frees."""
    with tmpfs(tmp_path / "fs") as fs:
        store = UsageStore(f"sqlite:///{fs / 'usage.db'}")
        collector = MetricsCollector(store, tmp_path / "journal", flush_interval_s=3600, max_waiting=100)
        try:
            filler = fill(fs)
            events = _events(250)
            for ev in events[:120]:
                collector.record(ev)
            collector.flush()  # refused: one batch waits
            for ev in events[120:]:
                collector.record(ev)
            time.sleep(1.1)
            collector.flush()  # refused again; more than 100 held: the journaled ones are let go
            status = collector.status()
            assert (status.history, status.waiting, status.memory_only, status.lost) == ("paused", 250, 0, 0)
            filler.unlink()
            time.sleep(1.1)
            assert collector.flush() == 250
            assert set(store.frame(limit=10_000)["request_id"]) == {e.request_id for e in events}
        finally:
            collector.close()
            store.close()
