"""Replicas on one PostgreSQL database: starting at the same moment on an empty database,
and reading each other's events.

Two processes that create the tables at once collide without the store's schema lock
(``psycopg.errors.UniqueViolation: duplicate key value violates unique constraint
"pg_type_typname_nsp_index"``: both ``CREATE TABLE`` the same name). Here two OS
processes import everything first, then wait for a barrier file, and start a whole
service (the store's migration and every feature's tables) on the same empty database
the moment it appears; five databases in a row, each round starting when both have
finished the last, so a race would show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from helpers import make_service
from sqlalchemy import create_engine, text

from blossom_dash.telemetry.analytics import MonitorQuery
from blossom_dash.telemetry.store import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 5

#: One replica: imports, says it is ready, then for each round waits for the round's
#: barrier, starts a service on that round's database, touches every feature's tables,
#: answers one request, and prints what happened as one JSON line.
REPLICA = textwrap.dedent("""
    import json, os, sys, time, traceback
    from pathlib import Path
    from blossom_dash import BlossomService, Settings

    work, name, urls = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    (work / f"ready-{name}").touch()
    for i, url in enumerate(urls):
        barrier = work / f"go-{i}"
        while not barrier.exists():
            time.sleep(0.001)
        out = {"round": i, "name": name}
        try:
            svc = BlossomService(Settings(database_url=url, backend="demo", demo_latency=False, retries=0,
                                          data_dir=work / f"data-{name}-{i}"))
            try:
                svc._comparisons(), svc._conversations(), svc._audit_log(), svc._batch_runner()
                out["request_id"] = svc.generate_text(f"round {i} from {name}").request_id
                svc.flush_events()
                out["schema_version"] = svc.store.schema_version()
            finally:
                svc.close()
        except BaseException as exc:
            out["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()[-800:]
        print(json.dumps(out), flush=True)
""")

#: Tables the store and the features create.
TABLES = {"events", "meta", "rollup_hour", "rollup_latency_hour", "rollup_latency_day", "rollup_user_day",
          "comparisons", "comparison_answers", "comparison_votes", "conversations", "audit_log",
          "batch_jobs", "batch_rows"}


def _wait_for(path: Path, procs: list[subprocess.Popen[str]], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, dead[0].stderr.read() if dead[0].stderr else "a replica exited"
        assert time.monotonic() < deadline, f"no {path.name} within {timeout_s} s"
        time.sleep(0.01)


def test_two_replicas_start_at_once_on_an_empty_database(postgres_server: object, tmp_path: Path) -> None:
    """Both replicas come up on each of five empty databases, at today's schema, with
    every table, and both their events are stored."""
    urls = [postgres_server.fresh_url() for _ in range(ROUNDS)]  # type: ignore[attr-defined]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", REPLICA, str(tmp_path), name, *urls], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in ("a", "b")]
    try:
        for name in ("a", "b"):
            _wait_for(tmp_path / f"ready-{name}", procs)
        results = []
        for i in range(ROUNDS):
            (tmp_path / f"go-{i}").touch()  # both are polling for it: they start within a millisecond
            lines = [p.stdout.readline() for p in procs]  # type: ignore[union-attr]
            assert all(lines), [p.communicate(timeout=30)[1][-2000:] for p in procs]
            results += [json.loads(line) for line in lines]
        for p in procs:
            p.communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failed = [r for r in results if "error" in r]
    assert not failed, failed
    for i, url in enumerate(urls):
        mine = [r for r in results if r["round"] == i]
        assert {r["schema_version"] for r in mine} == {SCHEMA_VERSION}
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                tables = set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
                             .scalars())
                stored = set(conn.execute(text("SELECT request_id FROM events")).scalars())
                versions = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalars().all()
        finally:
            engine.dispose()
        assert TABLES <= tables
        assert stored == {r["request_id"] for r in mine}
        assert versions == [str(SCHEMA_VERSION)]  # one row: the second start did not record it again


def test_an_event_written_by_one_service_is_on_the_others_monitor_within_a_second(
        postgres_url: str, tmp_path: Path) -> None:
    """Service A answers a request; service B, on the same database with its own data
    directory, counts it in a Monitor read within 1 s (A's collector flushes about every
    quarter second; B reads the database, not A's memory)."""
    with make_service(tmp_path / "a", database_url=postgres_url) as a, \
            make_service(tmp_path / "b", database_url=postgres_url) as b:
        assert b.monitor("kpis", MonitorQuery.last(3600, now=time.time() + 5))["requests"] == 0
        rid = a.generate_text("Seen by the other replica").request_id
        answered = time.monotonic()
        seen = None
        while time.monotonic() - answered < 1.0:
            q = MonitorQuery.last(3600, now=time.time() + 5)
            if b.monitor("kpis", q)["requests"] == 1:
                seen = b.monitor("request_detail", rid)
                break
            time.sleep(0.02)
        assert seen is not None, "B's Monitor did not count A's request within 1 s"
        assert seen["request_id"] == rid
