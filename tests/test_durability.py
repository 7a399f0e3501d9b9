"""Durability: a process killed with SIGKILL under load loses no event it returned.

A child process runs a service on the demo backend and prints each request id once
its result has been returned; the test kills it at a random moment, several times
over the same data folder, then opens the store as the next start would and checks
that every printed id is there and that SQLite's integrity check passes.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from blossom_dash import BlossomService, Settings

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent("""
    import sys, threading
    from blossom_dash import BlossomService, Settings
    svc = BlossomService(Settings(backend="demo", demo_latency=False, data_dir=sys.argv[1], retries=0,
                                  per_user_rpm=100000, global_rpm=1000000))
    lock = threading.Lock()
    def work(worker):
        for i in range(100000):
            kind = i % 3
            if kind == 2:   # a cache hit: recorded like any other request
                result = svc.generate_text(f"run {sys.argv[2]} worker {worker} prompt {i - 1}")
            else:
                result = svc.generate_text(f"run {sys.argv[2]} worker {worker} prompt {i}")
            with lock:
                sys.stdout.write(result.request_id + "\\n")
                sys.stdout.flush()
    print("ready", flush=True)
    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
""")


def _run_and_kill(data_dir: Path, run: int, rng: random.Random) -> list[str]:
    """Start the child, let it return a random number of results, SIGKILL it."""
    log_path = data_dir / f"child-{run}.log"  # a file, not a pipe: a full pipe would stall the child
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir), str(run)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=log, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", log_path.read_text()[-2000:]
    returned: list[str] = []
    target = rng.randint(150, 600)
    while len(returned) < target:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"child stopped early: {log_path.read_text()[-2000:]}")
        returned.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    returned += [line.strip() for line in rest.splitlines() if line.strip()]  # written before the kill
    assert proc.returncode == -signal.SIGKILL
    return returned


def test_sigkill_under_load_loses_no_returned_event(tmp_path: Path) -> None:
    """Five SIGKILLs mid-load: every returned request id is in the store afterwards."""
    rng = random.Random(20261121)
    returned: list[str] = []
    for run in range(5):
        returned += _run_and_kill(tmp_path, run, rng)
    assert len(returned) == len(set(returned)) >= 5 * 150

    # The next start replays what the killed processes journaled.
    with BlossomService(Settings(backend="demo", demo_latency=False, data_dir=tmp_path)) as svc:
        stored = set(svc.metrics.frame(limit=10_000_000)["request_id"])
    missing = [rid for rid in returned if rid not in stored]
    assert not missing, f"{len(missing)} of {len(returned)} returned events are missing, e.g. {missing[:5]}"

    with sqlite3.connect(tmp_path / "usage.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        duplicates = conn.execute("SELECT COUNT(*) - COUNT(DISTINCT request_id) FROM events").fetchone()[0]
        assert duplicates == 0
    assert not list((tmp_path / "journal").glob("journal-*.jsonl")), "replayed journals are removed"
