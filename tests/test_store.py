"""Tests for the usage store (real SQLite files), the events a service records, and ``Settings``."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from helpers import make_service, run_in_threads
from pydantic import ValidationError
from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy import text as sql_text

from blossom_dash import Settings
from blossom_dash.errors import StorageUnavailable
from blossom_dash.telemetry import analytics
from blossom_dash.telemetry.collector import MetricsCollector
from blossom_dash.telemetry.store import (
    EVENT_COLUMNS,
    LATENCY_BINS_PER_E,
    NO_STATUS,
    ROLLUPS,
    ROW_COLUMNS,
    SCHEMA_LOCK_KEY,
    SCHEMA_VERSION,
    UsageStore,
    events,
    mask_url,
    rollup_hour,
    upgrade_row,
    upsert_statement,
)

SECRET = "sk_unit_test_secret_9f8e7d6c"
#: Columns of an event row before schema 5 (no cost, context, params, answer).
PRE5 = ROW_COLUMNS.index("cost")
COST = ROW_COLUMNS.index("cost")
ROOT = Path(__file__).resolve().parent.parent


#: The first schema (1) as an earlier version created it: migration tests start from it.
SCHEMA_1_DDL = """
CREATE TABLE events (id INTEGER NOT NULL, ts FLOAT NOT NULL, request_id VARCHAR(32) NOT NULL,
  user VARCHAR(128) NOT NULL, session VARCHAR(64) NOT NULL, kind VARCHAR(16) NOT NULL,
  model VARCHAR(128) NOT NULL, backend VARCHAR(256) NOT NULL, outcome VARCHAR(16) NOT NULL,
  error_type VARCHAR(64) NOT NULL, status_code INTEGER, latency_ms FLOAT, ttft_ms FLOAT,
  prompt_tokens INTEGER, completion_tokens INTEGER, bytes INTEGER, prompt TEXT,
  PRIMARY KEY (id));
CREATE INDEX ix_events_request_id ON events (request_id);
CREATE INDEX ix_events_ts ON events (ts);
CREATE TABLE meta ("key" VARCHAR(64) NOT NULL, value VARCHAR(256) NOT NULL, PRIMARY KEY ("key"));
INSERT INTO meta VALUES ('schema_version', '1');
"""


def row(request_id: str, ts: float, **fields: Any) -> tuple[Any, ...]:
    """One event row in ``ROW_COLUMNS`` order, with plausible defaults."""
    values: dict[str, Any] = {
        "ts": ts, "request_id": request_id, "user": "u", "session": "s", "kind": "text", "model": "demo-swift",
        "backend": "demo", "outcome": "ok", "error_type": "", "status_code": 200, "latency_ms": 12.5,
        "ttft_ms": 12.5, "prompt_tokens": 3, "completion_tokens": 9, "bytes": 40, "prompt": "hello",
        "cost": None, "context": "", "params": None, "answer": None,
    }
    values.update(fields)
    return tuple(values[c] for c in ROW_COLUMNS)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path.as_posix()}"


def sql(url: str, statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one SQL statement on the database at ``url`` from outside the store (its own
    engine, committed); the rows it returns, if any. Write ``"user"`` quoted: it is a
    reserved word in PostgreSQL."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sql_text(statement), params or {})
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()



class TestUsageStore:
    def test_creates_the_folder_and_uses_wal(self, tmp_path: Path) -> None:
        """Opening a file in a missing folder creates it; the database is in WAL mode."""
        path = tmp_path / "deep" / "er" / "usage.db"
        store = UsageStore(sqlite_url(path))
        store.write_many([row("a1", 1.0)])
        store.close()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def test_schema_version_is_recorded(self, tmp_path: Path) -> None:
        """The schema version is stored in the meta table and read back."""
        path = tmp_path / "usage.db"
        store = UsageStore(sqlite_url(path))
        assert store.schema_version() == SCHEMA_VERSION >= 1
        store.close()
        with sqlite3.connect(path) as conn:
            value = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        assert int(value) == SCHEMA_VERSION

    def test_events_survive_reopening(self, database_url: str) -> None:
        """Rows written, store closed, database reopened: every row is still there."""
        url = database_url
        store = UsageStore(url)
        store.write_many([row(f"r{i}", 100.0 + i, latency_ms=float(i)) for i in range(3)])
        store.close()
        again = UsageStore(url)
        try:
            assert again.count() == 3
            df = again.frame()
            assert list(df["request_id"]) == ["r0", "r1", "r2"]
            assert list(df["latency_ms"]) == [0.0, 1.0, 2.0]
            assert again.schema_version() == SCHEMA_VERSION
        finally:
            again.close()

    def test_frame_shape(self, database_url: str) -> None:
        """frame() has the event columns (no prompt), ts as UTC datetimes, oldest first."""
        store = UsageStore(database_url)
        store.write_many([row("late", 2_000_000_000.0), row("early", 1_000_000_000.0)])
        df = store.frame()
        store.close()
        assert tuple(df.columns) == EVENT_COLUMNS
        assert "prompt" not in df.columns
        assert list(df["request_id"]) == ["early", "late"]
        assert str(df["ts"].dt.tz) == "UTC"
        assert df["ts"].iloc[0] == pd.Timestamp(1_000_000_000, unit="s", tz="UTC")

    def test_frame_since_filters(self, database_url: str) -> None:
        """frame(since=t) keeps events with ts >= t."""
        store = UsageStore(database_url)
        store.write_many([row(f"r{t}", float(t)) for t in (100, 200, 300)])
        assert list(store.frame(200.0)["request_id"]) == ["r200", "r300"]
        assert list(store.frame(300.5)["request_id"]) == []
        store.close()

    def test_frame_limit_keeps_the_newest(self, database_url: str) -> None:
        """A bounded frame keeps the newest rows, oldest first."""
        store = UsageStore(database_url)
        store.write_many([row(f"r{t}", float(t)) for t in range(10)])
        assert list(store.frame(limit=3)["request_id"]) == ["r7", "r8", "r9"]
        store.close()

    def test_same_request_id_is_stored_once(self, database_url: str) -> None:
        """Writing a row whose request_id is already stored (a replay) adds nothing."""
        store = UsageStore(database_url)
        store.write_many([row("dup", 1.0)])
        store.write_many([row("dup", 1.0), row("new", 2.0)])
        assert store.count() == 2
        store.close()

    def test_texts_that_do_not_fit_are_cut(self, database_url: str) -> None:
        """A user name over its column, a backend URL over 256 characters and a NUL in a
        prompt (PostgreSQL refuses each as it is) are stored cut, with the batch's other
        rows; the rollups count them under the cut name."""
        long_backend = "http://" + "b" * 300
        store = UsageStore(database_url)
        store.write_many([row("fits", DAY0), row("long", DAY0 + 1, user="u" * 300, backend=long_backend,
                                                 prompt="a\x00b")])
        store.close()
        assert sql(database_url, 'SELECT request_id, "user", backend, prompt FROM events ORDER BY id') == [
            ("fits", "u", "demo", "hello"), ("long", "u" * 128, long_backend[:256], "ab")]
        assert_rollups_exact(database_url)

    def test_concurrent_writers(self, database_url: str) -> None:
        """8 threads writing 50 rows each: all 400 are stored."""
        store = UsageStore(database_url)

        def worker(k: int) -> None:
            for i in range(50):
                store.write_many([row(f"t{k}-{i}", float(i))])

        assert run_in_threads(worker, 8) == []
        assert store.count() == 400
        store.close()


class TestServiceStore:
    def test_events_survive_a_restart(self, tmp_path: Path) -> None:
        """Events recorded by one service are read by the next one on the same data dir."""
        with make_service(tmp_path) as svc:
            ids = [svc.generate_text(f"Persist {i}").request_id for i in range(3)]
        with make_service(tmp_path) as svc:
            df = svc.metrics.frame()
            assert list(df["request_id"]) == ids
            assert set(df["outcome"]) == {"ok"}

    def test_events_survive_a_killed_process(self, tmp_path: Path) -> None:
        """Events whose results were returned survive SIGKILL of the process that recorded them."""
        script = textwrap.dedent(f"""
            import json, os, signal, sys
            from blossom_dash import BlossomService, Settings
            svc = BlossomService(Settings(backend="demo", demo_latency=False, retries=0,
                                          data_dir={str(tmp_path)!r}))
            ids = [svc.generate_text(f"Killed {{i}}").request_id for i in range(5)]
            sys.stdout.write(json.dumps(ids))
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                              timeout=60, check=False)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        ids = json.loads(proc.stdout)
        assert len(ids) == 5
        with make_service(tmp_path) as svc:
            stored = list(svc.metrics.frame()["request_id"])
        assert stored == ids

    def test_store_file_is_sqlite_in_wal_mode(self, tmp_path: Path) -> None:
        """The default store is <data_dir>/usage.db in WAL mode, holding the events."""
        with make_service(tmp_path) as svc:
            r = svc.generate_text("Where am I stored?")
            svc.metrics.frame()
        with sqlite3.connect(tmp_path / "usage.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            ids = [x for (x,) in conn.execute("SELECT request_id FROM events")]
        assert ids == [r.request_id]

    def test_frame_since(self, tmp_path: Path) -> None:
        """metrics.frame(since=...) with epoch seconds or a Timestamp keeps later events only."""
        with make_service(tmp_path) as svc:
            svc.generate_text("Before the mark")
            time.sleep(0.01)
            mark = time.time()
            later = svc.generate_text("After the mark")
            assert list(svc.metrics.frame(since=mark)["request_id"]) == [later.request_id]
            ts = pd.Timestamp(mark, unit="s", tz="UTC")
            assert list(svc.metrics.frame(since=ts)["request_id"]) == [later.request_id]
            assert len(svc.metrics.frame()) == 2

    def test_api_key_is_never_stored(self, tmp_path: Path) -> None:
        """A session key used for a request appears nowhere in the data dir."""
        with make_service(tmp_path, api_key=SECRET) as svc:
            handle = svc.session("erin")
            handle.set_api_key("sk_session_secret_1a2b3c4d")
            handle.generate_text("Keys stay secret")
            svc.metrics.frame()
        blob = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
        assert SECRET.encode() not in blob
        assert b"sk_session_secret_1a2b3c4d" not in blob

    def test_database_from_the_first_schema_still_records(self, tmp_path: Path) -> None:
        """A usage.db created by the first schema (non-unique request_id index) still takes events."""
        with sqlite3.connect(tmp_path / "usage.db") as conn:
            conn.executescript(SCHEMA_1_DDL + """
                INSERT INTO events (ts, request_id, user, session, kind, model, backend, outcome, error_type)
                  VALUES (1.0, 'old000000001', 'u', '', 'text', 'demo-swift', 'demo', 'ok', '');
            """)
        with make_service(tmp_path) as svc:
            r = svc.generate_text("Written into an old database")
            ids = list(svc.metrics.frame()["request_id"])
        assert ids == ["old000000001", r.request_id]


# ----- rollups ------------------------------------------------------------------------

#: 2023-11-14 00:00 UTC, a whole day (and hour) in epoch seconds.
DAY0 = 1_699_920_000.0


def random_rows(n: int, seed: int, start: float = DAY0 - 3600 * 5, span_s: float = 3 * 86_400,
                prefix: str = "r") -> list[tuple[Any, ...]]:
    """``n`` varied events in ``[start, start + span_s)``, as today's pipeline records
    them: every outcome, missing latencies, TTFTs (streams only), tokens and status
    codes, sub-millisecond latencies, and events exactly on hour boundaries."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ts = start + rng.random() * span_s
        if i % 17 == 0:
            ts = float(math.floor(ts / 3600) * 3600)  # exactly on an hour boundary
        outcome = rng.choices(["ok", "cache_hit", "rate_limited", "rejected", "error"], weights=[70, 12, 8, 4, 6])[0]
        fields: dict[str, Any] = {"user": rng.choice(["ann", "ben", "cid", "dee"]),
                                  "model": rng.choice(["m-a", "m-b", "m-c"]),
                                  "kind": rng.choice(["text", "stream", "image"]),
                                  "backend": rng.choice(["demo", "demo", "other"]), "outcome": outcome}
        if outcome == "ok":
            lat = rng.choice([rng.lognormvariate(5, 1.3), rng.random(), None])
            stream = fields["kind"] == "stream"
            fields |= {"latency_ms": lat,
                       "ttft_ms": None if lat is None or not stream or rng.random() < 0.3 else lat * rng.random(),
                       "prompt_tokens": rng.choice([None, rng.randint(1, 500)]),
                       "completion_tokens": rng.randint(1, 900), "status_code": 200, "error_type": ""}
        elif outcome == "error":
            error_type = rng.choice(["UpstreamError", "BackendUnavailable", "InvalidRequest"])
            status = 400 if error_type == "InvalidRequest" else rng.choice([500, 502, None])  # the backend's 400
            fields |= {"error_type": error_type, "status_code": status, "latency_ms": rng.choice([None, 40.0]),
                       "ttft_ms": None, "prompt_tokens": None, "completion_tokens": None}
        elif outcome == "rejected":
            fields |= {"error_type": rng.choice(["InvalidRequest", "NotRecorded"]), "status_code": None,
                       "latency_ms": 0.0, "ttft_ms": None, "prompt_tokens": None, "completion_tokens": None}
        else:
            fields |= {"error_type": "RateLimited" if outcome == "rate_limited" else "",
                       "status_code": 429 if outcome == "rate_limited" else 200, "latency_ms": 0.5,
                       "ttft_ms": 0.5 if fields["kind"] == "stream" else None, "prompt_tokens": 7,
                       "completion_tokens": 9}
        if outcome in ("ok", "cache_hit") and rng.random() < 0.7:  # priced, to 1e-12; else unpriced
            fields["cost"] = Decimal(rng.randint(0, 10**9)).scaleb(-12)
        rows.append(row(f"{prefix}{seed}-{i}", ts, **fields))
    return rows


def legacy_rows(n: int, seed: int) -> list[tuple[Any, ...]]:
    """``random_rows`` as versions before schema 4 recorded them: the rejected requests
    as ``error`` (``InvalidRequest`` without a status, ``NotRecorded``), and a TTFT on
    every served or cached answer, the whole latency for the kinds that do not stream."""
    out = []
    for r in random_rows(n, seed, prefix="legacy"):
        fields = dict(zip(ROW_COLUMNS, r, strict=True))
        if fields["outcome"] == "rejected":
            fields["outcome"] = "error"
        if fields["outcome"] in ("ok", "cache_hit") and fields["kind"] != "stream":
            fields["ttft_ms"] = fields["latency_ms"]
        fields["cost"] = None  # before schema 5 nothing was priced
        out.append(tuple(fields[c] for c in ROW_COLUMNS))
    return out


def upgraded(stored: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Stored ``events`` rows (``id`` first) with ``upgrade_row`` applied to the rest."""
    return [(r[0], *upgrade_row(r[1:])) for r in stored]


def expected_rollups(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The rollup tables' rows computed in Python from the events in the database: an
    independent statement of what ``store`` documents."""
    hour: dict[tuple[Any, ...], list[Any]] = {}
    user_day: dict[tuple[Any, ...], list[Any]] = {}
    lat_hour: dict[tuple[Any, ...], int] = {}
    lat_day: dict[tuple[Any, ...], int] = {}

    def add(acc: dict[tuple[Any, ...], list[Any]], key: tuple[Any, ...], ts: float, pt: Any, ct: Any,
            cost: Any) -> None:
        n, p, c, last, spent, priced = acc.get(key, [0, 0, 0, -math.inf, 0, 0])
        acc[key] = [n + 1, p + (pt or 0), c + (ct or 0), max(last, ts), spent + (cost or 0),
                    priced + (cost is not None)]

    # cost as stored: whole steps of 1e-12 pollen (schema.Pollen), summed as integers
    events = sql(url, 'SELECT ts, "user", model, kind, backend, outcome, error_type, status_code, latency_ms,'
                 " ttft_ms, prompt_tokens, completion_tokens, cost FROM events")
    for ts, user, model, kind, backend, outcome, etype, status, lat, ttft, pt, ct, cost in events:
        h, d = math.floor(ts / 3600), math.floor(ts / 86_400)
        add(hour, (h, model, kind, backend, outcome, etype, NO_STATUS if status is None else status), ts, pt, ct,
            cost)
        add(user_day, (d, user, model, kind, backend, outcome), ts, pt, ct, cost)
        if outcome != "ok":
            continue
        for which, value in (("latency", lat), ("ttft", ttft)):
            if value is None:
                continue
            b = -1 if value < 1 else math.floor(math.log(value) * LATENCY_BINS_PER_E)
            for acc, unit in ((lat_hour, h), (lat_day, d)):
                acc[(unit, which, b, model, kind, backend)] = acc.get((unit, which, b, model, kind, backend), 0) + 1
    return {
        "rollup_hour": sorted((*k, *v) for k, v in hour.items()),
        "rollup_latency_hour": sorted((*k, v) for k, v in lat_hour.items()),
        "rollup_latency_day": sorted((*k, v) for k, v in lat_day.items()),
        "rollup_user_day": sorted((*k, *v) for k, v in user_day.items()),
    }


def stored_rollups(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The rollup tables' rows as stored, sorted."""
    return {t.name: sorted(sql(url, f"SELECT * FROM {t.name}")) for t, _unit in ROLLUPS}


def assert_rollups_exact(url: str) -> None:
    """Every rollup table holds exactly what the events in the database add up to."""
    stored, expected = stored_rollups(url), expected_rollups(url)
    for name in expected:
        assert stored[name] == expected[name], name


class TestRollups:
    def test_writes_keep_the_rollups_exact(self, database_url: str) -> None:
        """Batches of every shape (one event, hundreds, a duplicate inside a batch) add up exactly."""
        path = database_url
        store = UsageStore(path)
        rows = random_rows(900, seed=1)
        store.write_many(rows[:1])
        for i in range(1, 900, 97):
            store.write_many(rows[i:i + 97])
        store.write_many([row("twice", DAY0 + 10), row("twice", DAY0 + 20)])
        assert store.count() == 901
        store.close()
        assert_rollups_exact(path)
        assert sum(r[7] for r in stored_rollups(path)["rollup_hour"]) == 901

    def test_a_replayed_batch_counts_once(self, database_url: str) -> None:
        """Replaying a journal (rows already stored, mixed with new ones) leaves every rollup exact."""
        path = database_url
        store = UsageStore(path)
        rows = random_rows(400, seed=2)
        store.write_many(rows[:300])
        before = stored_rollups(path)
        store.write_many(rows[:300])
        assert stored_rollups(path) == before
        store.write_many(rows[250:])  # 50 replayed, 100 new
        assert store.count() == 400
        store.close()
        assert_rollups_exact(path)

    @pytest.mark.parametrize("cutoff", [DAY0 + 1234.5, DAY0 + 7200.0, DAY0 + 86_400 + 0.25, DAY0 - 10 * 86_400])
    def test_delete_older_than_keeps_the_rollups_exact(self, database_url: str, cutoff: float) -> None:
        """Deleting before a cutoff inside an hour and a day, on an hour boundary, or before
        everything drops the older units and recomputes the one holding the cutoff."""
        path = database_url
        store = UsageStore(path)
        store.write_many(random_rows(800, seed=3))
        deleted = store.delete_older_than(cutoff)
        remaining = store.count()
        store.close()
        assert deleted + remaining == 800
        assert_rollups_exact(path)
        assert sql(path, "SELECT count(*) FROM rollup_hour WHERE last_ts < :c", {"c": cutoff}) == [(0,)]

    def test_rebuild_matches_the_incremental_rollups(self, database_url: str) -> None:
        """rebuild_rollups() recomputes from the events what write_many maintained."""
        path = database_url
        store = UsageStore(path)
        store.write_many(random_rows(300, seed=4))
        before = stored_rollups(path)
        store.rebuild_rollups()
        store.close()
        assert stored_rollups(path) == before

    def test_schema_2_database_is_migrated_without_loss(self, database_url: str) -> None:
        """A schema-2 database (no rollups, no user index) opens at today's schema with
        every event, brought to today's outcomes and TTFTs, and exact rollups, and keeps
        them exact on later writes."""
        path = database_url
        store = UsageStore(path)
        rows = legacy_rows(500, seed=5)
        store.write_many(rows[:400])
        store.close()
        for t, _unit in ROLLUPS:  # take the database back to schema 2
            sql(path, f"DROP TABLE {t.name}")
        sql(path, "DROP INDEX ix_events_user_ts")
        sql(path, "UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        events_before = sql(path, "SELECT * FROM events ORDER BY id")
        again = UsageStore(path)
        assert again.schema_version() == SCHEMA_VERSION == 6
        again.write_many([upgrade_row(r) for r in rows[350:]])  # 50 replayed, 100 new
        indexes = {i["name"] for i in inspect(again.engine).get_indexes("events")}
        again.close()
        assert sql(path, "SELECT * FROM events ORDER BY id LIMIT 400") == upgraded(events_before)
        assert sql(path, "SELECT count(*) FROM events") == [(500,)]
        assert "ix_events_user_ts" in indexes
        assert_rollups_exact(path)

    def test_schema_1_file_reaches_today(self, tmp_path: Path) -> None:
        """A first-schema file with a duplicated request id keeps one copy, is brought to
        today's outcomes and TTFTs, and gets its rollups."""
        path = tmp_path / "usage.db"
        legacy = legacy_rows(60, seed=6)
        with sqlite3.connect(path) as conn:
            conn.executescript(SCHEMA_1_DDL)
            conn.executemany(f"INSERT INTO events ({', '.join(ROW_COLUMNS[:PRE5])}) VALUES ({', '.join('?' * PRE5)})",
                             [r[:PRE5] for r in (*legacy, legacy[0])])  # schema 1 had no cost
        store = UsageStore(sqlite_url(path))
        assert (store.schema_version(), store.count()) == (SCHEMA_VERSION, 60)
        store.close()
        with sqlite3.connect(path) as conn:
            stored = conn.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM events ORDER BY id").fetchall()
        assert stored == [upgrade_row(r) for r in legacy]
        assert any(r[ROW_COLUMNS.index("outcome")] == "rejected" for r in stored)
        assert_rollups_exact(sqlite_url(path))

    def test_schema_3_database_is_upgraded_in_place(self, database_url: str) -> None:
        """Schema 3 -> 4 on a database with rollups: the user's invalid requests and replay
        refusals become ``rejected`` (a backend's 400 stays an error), the TTFT of
        everything but streams is cleared, nothing else changes, and the rollups are
        exact, before and after later writes."""
        path = database_url
        none = {"latency_ms": 0.0, "ttft_ms": None, "prompt_tokens": None, "completion_tokens": None}
        hand = [
            row("nr", DAY0 + 10, outcome="error", error_type="NotRecorded", status_code=None, **none),
            row("ir", DAY0 + 20, outcome="error", error_type="InvalidRequest", status_code=None, **none),
            row("ir400", DAY0 + 30, outcome="error", error_type="InvalidRequest", status_code=400, **none),
            row("up", DAY0 + 40, outcome="error", error_type="UpstreamError", status_code=None, **none),
            row("rl", DAY0 + 50, outcome="rate_limited", error_type="RateLimited", status_code=429, **none),
            row("txt", DAY0 + 60, kind="text", latency_ms=80.0, ttft_ms=80.0),
            row("str", DAY0 + 70, kind="stream", latency_ms=900.0, ttft_ms=150.0),
            row("hit", DAY0 + 80, kind="image", outcome="cache_hit", latency_ms=0.5, ttft_ms=0.5),
        ]
        legacy = legacy_rows(600, seed=8)
        store = UsageStore(path)
        store.write_many(hand + legacy)  # rollups as schema 3 kept them: of the events as stored
        store.close()
        sql(path, "UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        before = sql(path, "SELECT * FROM events ORDER BY id")
        # The database holds what the upgrade must change, in the events and in the rollups.
        assert sql(path, "SELECT count(*) FROM rollup_latency_hour WHERE which = 'ttft' AND kind != 'stream'"
                   )[0][0] > 0
        assert sql(path, "SELECT count(*) FROM rollup_hour WHERE outcome = 'rejected'") == [(0,)]
        again = UsageStore(path)
        assert again.schema_version() == SCHEMA_VERSION and again.count() == 608
        df = again.frame().set_index("request_id")
        assert df.loc[["nr", "ir", "ir400", "up", "rl"], "outcome"].tolist() == [
            "rejected", "rejected", "error", "error", "rate_limited"]
        ttft = df.loc[["txt", "str", "hit"], "ttft_ms"]
        assert ttft.isna().tolist() == [True, False, True] and ttft["str"] == 150.0
        assert_rollups_exact(path)
        assert sql(path, "SELECT * FROM events ORDER BY id") == upgraded(before)
        assert sql(path, "SELECT sum(requests) FROM rollup_hour WHERE outcome = 'rejected'")[0][0] \
            == int((df["outcome"] == "rejected").sum())
        again.write_many(random_rows(200, seed=9, prefix="after"))
        again.close()
        assert_rollups_exact(path)

    def test_a_journal_from_before_the_upgrade_is_replayed_in_todays_terms(self, tmp_path: Path,
                                                                          database_url: str) -> None:
        """A journal left by a process killed before the upgrade holds old-style events:
        replaying it stores them as the migration would have."""
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        legacy = legacy_rows(50, seed=10)
        journal = tmp_path / "journal" / f"journal-{dead}-0000.jsonl"
        journal.parent.mkdir()
        journal.write_bytes(b"".join(orjson.dumps(r[:PRE5]) + b"\n" for r in legacy))  # lines without cost
        store = UsageStore(database_url)
        collector = MetricsCollector(store, journal.parent)
        collector.close()
        store.close()
        columns = ", ".join(f'"{c}"' for c in ROW_COLUMNS)  # "user" is a reserved word in PostgreSQL
        stored = sql(database_url, f"SELECT {columns} FROM events ORDER BY id")
        assert stored == [upgrade_row(r) for r in legacy] != legacy
        assert not journal.exists()
        assert_rollups_exact(database_url)

    def test_python_ln_fallback_bins_alike(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """On a SQLite without ln(), the Python ln registered on each connection gives the same bins."""
        import blossom_dash.telemetry.store as store_module

        monkeypatch.setattr(store_module, "SQLITE_HAS_LN", False)
        path = tmp_path / "usage.db"
        store = UsageStore(sqlite_url(path))
        store.write_many(random_rows(300, seed=7))
        store.close()
        assert_rollups_exact(sqlite_url(path))

    def test_postgresql_upsert_adds_counts_and_keeps_the_later_time(self) -> None:
        """On PostgreSQL the rollup upsert is ON CONFLICT on the key, adding counts and
        keeping the greater last_ts (no driver here: checked on the compiled SQL)."""
        from sqlalchemy import select
        from sqlalchemy.dialects import postgresql

        stmt = upsert_statement("postgresql", rollup_hour, select(*rollup_hour.c))
        sql = str(stmt.compile(dialect=postgresql.dialect()))
        assert "ON CONFLICT (hour, model, kind, backend, outcome, error_type, status_code) DO UPDATE" in sql
        assert "requests = (rollup_hour.requests + excluded.requests)" in sql
        assert "last_ts = CASE WHEN (excluded.last_ts > rollup_hour.last_ts) THEN excluded.last_ts" in sql

    def test_rollups_are_a_small_fraction_of_the_events(self, database_url: str) -> None:
        """A busy hour of one model and user becomes a handful of rollup rows."""
        store = UsageStore(database_url)
        store.write_many([row(f"b{i}", DAY0 + i, latency_ms=100.0, ttft_ms=40.0) for i in range(2000)])
        assert store.rollup_rows() == {"rollup_hour": 1, "rollup_latency_hour": 2, "rollup_latency_day": 2,
                                       "rollup_user_day": 1}
        store.close()


class TestServerDatabase:
    """A server database (PostgreSQL): its pool, its failures, its schema lock."""

    def test_unreachable_server_is_a_clear_error(self, tmp_path: Path) -> None:
        """Nothing listening at the URL: StorageUnavailable saying what and what to do,
        with the password masked, not a driver traceback; the service refuses to start
        the same way."""
        from services import free_port

        url = f"postgresql+psycopg://analyst:{SECRET}@127.0.0.1:{free_port()}/usage"
        with pytest.raises(StorageUnavailable) as info:
            UsageStore(url, connect_timeout_s=2)
        said = str(info.value)
        assert "cannot be reached" in info.value.message and "BLOSSOM_DASH_DATABASE_URL" in info.value.hint
        assert SECRET not in said and "analyst:***@127.0.0.1" in said
        assert mask_url(url) == url.replace(SECRET, "***")
        with pytest.raises(StorageUnavailable):
            make_service(tmp_path, database_url=url, db_connect_timeout_s=2)

    def test_the_pool_is_bounded_by_the_settings(self, postgres_url: str, tmp_path: Path) -> None:
        """pool_size 1 and no overflow: a second connection waits pool_timeout_s, then
        fails, while the first one is held; the service passes its settings through."""
        from sqlalchemy.exc import TimeoutError as PoolTimeout

        store = UsageStore(postgres_url, pool_size=1, max_overflow=0, pool_timeout_s=0.2)
        try:
            with store.engine.connect():
                with pytest.raises(PoolTimeout):
                    store.engine.connect()
            assert store.count() == 0  # given back: usable again
        finally:
            store.close()
        with make_service(tmp_path, database_url=postgres_url, db_pool_size=2, db_max_overflow=0,
                          db_pool_timeout_s=0.2) as svc:
            engine = svc.store.engine
            held = [engine.connect(), engine.connect()]
            with pytest.raises(PoolTimeout):
                engine.connect()
            for conn in held:
                conn.close()

    def test_connections_dropped_by_the_server_are_replaced(self, postgres_url: str) -> None:
        """The server closes every pooled connection (a restart, a failover): the next
        call gets a fresh one instead of an error (pre-ping)."""
        store = UsageStore(postgres_url, pool_size=2)
        try:
            store.write_many([row("before", 1.0)])
            with store.engine.connect() as conn:
                mine = conn.execute(sql_text("SELECT pg_backend_pid()")).scalar()
            sql(postgres_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            store.write_many([row("after", 2.0)])
            with store.engine.connect() as conn:
                assert conn.execute(sql_text("SELECT pg_backend_pid()")).scalar() != mine
            assert store.count() == 2
        finally:
            store.close()

    def test_replicas_writing_the_same_hours_never_deadlock(self, postgres_url: str) -> None:
        """Four stores (four replicas' flushers) writing 20-event batches of the same half
        hour at once: every write succeeds and the rollups are exact (before the upserts
        took their rows in key order, a few of these batches failed with ``deadlock
        detected``)."""
        stores = [UsageStore(postgres_url) for _ in range(4)]

        def flusher(k: int) -> None:
            rows = random_rows(800, seed=20 + k, prefix=f"w{k}-", span_s=1800)
            for i in range(0, len(rows), 20):
                stores[k].write_many(rows[i:i + 20])

        try:
            assert run_in_threads(flusher, 4) == []
            assert stores[0].count() == 3200
        finally:
            for store in stores:
                store.close()
        assert_rollups_exact(postgres_url)

    def test_feature_tables_are_created_under_the_schema_lock(self, postgres_url: str) -> None:
        """While another session holds the schema lock, ensure_tables waits for it (the
        same lock the migration takes), then creates the tables."""
        import threading

        from blossom_dash.telemetry.audit import audit_log

        store = UsageStore(postgres_url)
        holder = create_engine(postgres_url)
        try:
            done = threading.Event()
            with holder.begin() as conn:
                conn.execute(sql_text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
                worker = threading.Thread(target=lambda: (store.ensure_tables([audit_log]), done.set()))
                worker.start()
                assert not done.wait(0.5)  # blocked behind the lock
            worker.join(30)
            assert done.is_set()
            assert inspect(store.engine).has_table("audit_log")
        finally:
            holder.dispose()
            store.close()


class TestServiceEvents:
    def test_a_live_service_records_its_requests(self, tmp_path: Path) -> None:
        """The service's requests, cache hit and tokens reach the store and its KPIs."""
        with make_service(tmp_path) as svc:
            a = svc.generate_text("Summarise me")
            svc.generate_text("Summarise me")
            svc.metrics.flush()
            k = analytics.kpis(svc.store, analytics.MonitorQuery.last(3600, now=time.time() + 1))
        assert (k["requests"], k["cache_hits"], k["errors"]) == (2, 1, 0)
        assert k["cache_hit_rate"] == 0.5
        assert k["tokens"] == a.usage.prompt_tokens + a.usage.completion_tokens


class TestSettings:
    def test_reads_prefixed_environment(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """BLOSSOM_DASH_* variables set the matching fields."""
        env = {"BLOSSOM_DASH_BACKEND": "http://127.0.0.1:11434/", "BLOSSOM_DASH_PER_USER_RPM": "7",
               "BLOSSOM_DASH_GLOBAL_RPM": "70", "BLOSSOM_DASH_CACHE_TTL_S": "12.5",
               "BLOSSOM_DASH_CACHE_ENABLED": "false", "BLOSSOM_DASH_RETRIES": "3",
               "BLOSSOM_DASH_DATA_DIR": str(tmp_path / "d"), "BLOSSOM_DASH_DEMO_LATENCY": "0"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s = Settings()
        assert s.backend == "http://127.0.0.1:11434"
        assert (s.per_user_rpm, s.global_rpm, s.cache_ttl_s, s.retries) == (7, 70, 12.5, 3)
        assert s.cache_enabled is False and s.demo_latency is False
        assert s.resolved_database_url() == f"sqlite:///{(tmp_path / 'd' / 'usage.db').as_posix()}"

    def test_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without variables: auto backend, no key, the documented limits."""
        monkeypatch.delenv("BLOSSOM_DASH_BACKEND", raising=False)
        monkeypatch.delenv("BLOSSOM_DASH_DATA_DIR", raising=False)
        s = Settings()
        assert (s.backend, s.api_key, s.per_user_rpm, s.global_rpm) == ("auto", None, 30, 120)
        assert s.max_prompt_chars == 5000

    @pytest.mark.parametrize("var", ["POLLINATIONS_API_KEY", "BLOSSOM_DASH_API_KEY"])
    def test_reads_the_key(self, monkeypatch: pytest.MonkeyPatch, var: str) -> None:
        """The key comes from POLLINATIONS_API_KEY or BLOSSOM_DASH_API_KEY, stripped."""
        monkeypatch.setenv(var, f"  {SECRET}  ")
        key = Settings().api_key
        assert key is not None and key.get_secret_value() == SECRET

    def test_blank_key_is_none(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A blank key counts as no key."""
        monkeypatch.setenv("POLLINATIONS_API_KEY", "   ")
        assert Settings().api_key is None

    def test_unrelated_api_key_variable_is_ignored(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A generic API_KEY variable (another tool's secret) is not taken as the Pollinations key."""
        monkeypatch.setenv("API_KEY", "some-other-service-secret")
        assert Settings().api_key is None

    def test_key_never_shown(self) -> None:
        """repr, str and JSON of Settings never contain the key."""
        s = Settings(api_key=SECRET)
        assert s.api_key is not None and s.api_key.get_secret_value() == SECRET
        for text in (repr(s), str(s), s.model_dump_json(), repr(s.model_dump())):
            assert SECRET not in text

    @pytest.mark.parametrize("value", ["ftp://example.org", "bogus", "http://", "", "demo://x"])
    def test_bad_backend_is_rejected(self, value: str) -> None:
        """A backend that is not auto/demo/pollinations/http(s) URL is a ValidationError."""
        with pytest.raises(ValidationError):
            Settings(backend=value)

    def test_bad_backend_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bad BLOSSOM_DASH_BACKEND is rejected too."""
        monkeypatch.setenv("BLOSSOM_DASH_BACKEND", "carrier-pigeon")
        with pytest.raises(ValidationError):
            Settings()

    @pytest.mark.parametrize("value", ["DEMO", " Pollinations ", "Auto"])
    def test_backend_names_are_normalised(self, value: str) -> None:
        """Backend names are case- and space-insensitive."""
        assert Settings(backend=value).backend == value.strip().lower()

    @pytest.mark.parametrize("field, value", [("per_user_rpm", 0), ("global_rpm", -1), ("retries", 6),
                                              ("request_timeout_s", 0), ("max_prompt_chars", 5001),
                                              ("cache_max_entries", 0)])
    def test_out_of_range_values_are_rejected(self, field: str, value: Any) -> None:
        """Values outside their documented ranges are ValidationErrors."""
        with pytest.raises(ValidationError):
            Settings(**{field: value})

    def test_explicit_database_url_wins(self, tmp_path: Path) -> None:
        """database_url, when set, replaces the default SQLite file."""
        url = sqlite_url(tmp_path / "other.db")
        assert Settings(database_url=url).resolved_database_url() == url


class TestCost:
    def test_cost_is_stored_exactly_and_unpriced_stays_null(self, database_url: str) -> None:
        """A cost to 1e-12 pollen reads back as the same Decimal; an unpriced event reads None."""
        store = UsageStore(database_url)
        store.write_many([row("c1", DAY0, cost=Decimal("0.000138000001")), row("c2", DAY0 + 1),
                          row("c3", DAY0 + 2, cost=Decimal("1234567.123456789012"))])
        df = store.frame().set_index("request_id")
        store.close()
        assert df.loc["c1", "cost"] == Decimal("0.000138000001")
        assert df.loc["c2", "cost"] is None
        assert df.loc["c3", "cost"] == Decimal("1234567.123456789012")

    def test_rollup_cost_sums_equal_the_scan(self, database_url: str) -> None:
        """Rollup cost sums and priced counts equal the events' (random costs, unpriced ones, a duplicate)."""
        store = UsageStore(database_url)
        rows = random_rows(700, seed=21)
        for i in range(0, 700, 101):
            store.write_many(rows[i:i + 101])
        store.write_many(rows[:50])  # replayed: counted once
        with store.engine.connect() as conn:
            spent = conn.execute(select(func.sum(rollup_hour.c.cost)).where(rollup_hour.c.outcome == "ok")).scalar()
            scan = conn.execute(select(func.sum(events.c.cost)).where(events.c.outcome == "ok")).scalar()
        store.close()
        assert isinstance(spent, Decimal) and spent == scan
        assert spent == sum((r[COST] for r in rows if r[ROW_COLUMNS.index("outcome")] == "ok" and r[COST] is not None),
                            Decimal(0))
        assert_rollups_exact(database_url)

    def test_schema_4_database_gains_cost_columns(self, database_url: str) -> None:
        """Schema 4 -> 5: the events gain a NULL cost, the rollups cost 0 and priced 0, and
        later priced writes add up exactly."""
        store = UsageStore(database_url)
        store.write_many(random_rows(200, seed=22, prefix="old"))
        store.close()
        sql(database_url, "UPDATE events SET cost = NULL")
        for table in ("events", "rollup_hour", "rollup_user_day"):
            sql(database_url, f"ALTER TABLE {table} DROP COLUMN cost")
        for table in ("rollup_hour", "rollup_user_day"):
            sql(database_url, f"ALTER TABLE {table} DROP COLUMN priced")
        sql(database_url, "UPDATE meta SET value = '4' WHERE key = 'schema_version'")
        again = UsageStore(database_url)
        assert again.schema_version() == SCHEMA_VERSION == 6 and again.count() == 200
        assert sql(database_url, "SELECT count(*) FROM events WHERE cost IS NOT NULL") == [(0,)]
        assert sql(database_url, "SELECT sum(cost), sum(priced) FROM rollup_hour") == [(0, 0)]
        again.write_many(random_rows(300, seed=23, prefix="new"))
        again.close()
        assert_rollups_exact(database_url)
        assert sql(database_url, "SELECT sum(priced) FROM rollup_user_day")[0][0] > 0


class TestEventDetailColumns:
    def test_detail_columns_round_trip(self, database_url: str) -> None:
        """context, params and answer are stored and read back; a context of None is stored as ""."""
        store = UsageStore(database_url)
        store.write_many([row("d1", DAY0, context="chat:abc", params='{"seed":1}', answer="Tulips."),
                          row("d2", DAY0 + 1, context=None)])
        store.close()
        got = sql(database_url, "SELECT request_id, context, params, answer FROM events ORDER BY id")
        assert got == [("d1", "chat:abc", '{"seed":1}', "Tulips."), ("d2", "", None, None)]

    def test_schema_5_database_gains_the_detail_columns(self, database_url: str) -> None:
        """Schema 5 -> 6: the events gain context "" and NULL params/answer and the (context, ts)
        index; the events and rollups are unchanged, and later writes keep the rollups exact."""
        store = UsageStore(database_url)
        store.write_many(random_rows(200, seed=31, prefix="five"))
        store.close()
        sql(database_url, "DROP INDEX ix_events_context_ts")
        for name in ("context", "params", "answer"):
            sql(database_url, f"ALTER TABLE events DROP COLUMN {name}")
        sql(database_url, "UPDATE meta SET value = '5' WHERE key = 'schema_version'")
        before = sql(database_url, "SELECT * FROM events ORDER BY id")
        again = UsageStore(database_url)
        assert again.schema_version() == SCHEMA_VERSION == 6 and again.count() == 200
        indexes = {i["name"] for i in inspect(again.engine).get_indexes("events")}
        again.write_many(random_rows(100, seed=32, prefix="six"))
        again.close()
        assert "ix_events_context_ts" in indexes
        after = sql(database_url, "SELECT * FROM events ORDER BY id LIMIT 200")
        assert after == [(*r, "", None, None) for r in before]
        assert_rollups_exact(database_url)

    def test_a_schema_5_journal_is_replayed_with_empty_detail(self, tmp_path: Path) -> None:
        """Journal lines written by schema 5 (one cost, no detail columns) replay with context ""."""
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        rows = random_rows(20, seed=33, prefix="j5")
        journal = tmp_path / "journal" / f"journal-{dead}-0000.jsonl"
        journal.parent.mkdir()
        five = len(ROW_COLUMNS) - 3
        journal.write_bytes(b"".join(orjson.dumps([*r[:five - 1], None]) + b"\n" for r in rows))
        store = UsageStore(sqlite_url(tmp_path / "usage.db"))
        MetricsCollector(store, journal.parent).close()
        got = sql(sqlite_url(tmp_path / "usage.db"), "SELECT count(*), min(context), max(context) FROM events")
        store.close()
        assert got == [(20, "", "")]
