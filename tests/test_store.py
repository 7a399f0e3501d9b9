"""Tests for the usage store (real SQLite files), ``summarize``, and ``Settings`` from the environment."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import make_service
from pydantic import ValidationError

from blossom_dash import Settings
from blossom_dash.metrics import summarize
from blossom_dash.store import EVENT_COLUMNS, ROW_COLUMNS, SCHEMA_VERSION, UsageStore

SECRET = "sk_unit_test_secret_9f8e7d6c"
ROOT = Path(__file__).resolve().parent.parent


def row(request_id: str, ts: float, **fields: Any) -> tuple[Any, ...]:
    """One event row in ``ROW_COLUMNS`` order, with plausible defaults."""
    values: dict[str, Any] = {
        "ts": ts, "request_id": request_id, "user": "u", "session": "s", "kind": "text", "model": "demo-swift",
        "backend": "demo", "outcome": "ok", "error_type": "", "status_code": 200, "latency_ms": 12.5,
        "ttft_ms": 12.5, "prompt_tokens": 3, "completion_tokens": 9, "bytes": 40, "prompt": "hello",
    }
    values.update(fields)
    return tuple(values[c] for c in ROW_COLUMNS)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path.as_posix()}"



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

    def test_events_survive_reopening(self, tmp_path: Path) -> None:
        """Rows written, store closed, file reopened: every row is still there."""
        url = sqlite_url(tmp_path / "usage.db")
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

    def test_frame_shape(self, tmp_path: Path) -> None:
        """frame() has the event columns (no prompt), ts as UTC datetimes, oldest first."""
        store = UsageStore(sqlite_url(tmp_path / "usage.db"))
        store.write_many([row("late", 2_000_000_000.0), row("early", 1_000_000_000.0)])
        df = store.frame()
        store.close()
        assert tuple(df.columns) == EVENT_COLUMNS
        assert "prompt" not in df.columns
        assert list(df["request_id"]) == ["early", "late"]
        assert str(df["ts"].dt.tz) == "UTC"
        assert df["ts"].iloc[0] == pd.Timestamp(1_000_000_000, unit="s", tz="UTC")

    def test_frame_since_filters(self, tmp_path: Path) -> None:
        """frame(since=t) keeps events with ts >= t."""
        store = UsageStore(sqlite_url(tmp_path / "usage.db"))
        store.write_many([row(f"r{t}", float(t)) for t in (100, 200, 300)])
        assert list(store.frame(200.0)["request_id"]) == ["r200", "r300"]
        assert list(store.frame(300.5)["request_id"]) == []
        store.close()

    def test_frame_limit_keeps_the_newest(self, tmp_path: Path) -> None:
        """A bounded frame keeps the newest rows, oldest first."""
        store = UsageStore(sqlite_url(tmp_path / "usage.db"))
        store.write_many([row(f"r{t}", float(t)) for t in range(10)])
        assert list(store.frame(limit=3)["request_id"]) == ["r7", "r8", "r9"]
        store.close()

    def test_same_request_id_is_stored_once(self, tmp_path: Path) -> None:
        """Writing a row whose request_id is already stored (a replay) adds nothing."""
        store = UsageStore(sqlite_url(tmp_path / "usage.db"))
        store.write_many([row("dup", 1.0)])
        store.write_many([row("dup", 1.0), row("new", 2.0)])
        assert store.count() == 2
        store.close()

    def test_concurrent_writers(self, tmp_path: Path) -> None:
        """8 threads writing 50 rows each: all 400 are stored."""
        store = UsageStore(sqlite_url(tmp_path / "usage.db"))
        errors: list[BaseException] = []

        def worker(k: int) -> None:
            try:
                for i in range(50):
                    store.write_many([row(f"t{k}-{i}", float(i))])
            except BaseException as exc:  # noqa: BLE001 - asserted empty below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
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
            conn.executescript("""
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
                INSERT INTO events (ts, request_id, user, session, kind, model, backend, outcome, error_type)
                  VALUES (1.0, 'old000000001', 'u', '', 'text', 'demo-swift', 'demo', 'ok', '');
            """)
        with make_service(tmp_path) as svc:
            r = svc.generate_text("Written into an old database")
            ids = list(svc.metrics.frame()["request_id"])
        assert ids == ["old000000001", r.request_id]


def hand_built_frame() -> pd.DataFrame:
    """Eight events: 4 ok, 2 cache hits, 1 error, 1 rate-limited."""
    rows = [
        ("ok", 100.0, 10.0, 5, 10), ("ok", 200.0, 20.0, 5, 10), ("ok", 300.0, 30.0, 5, 10),
        ("ok", 400.0, 40.0, 5, 10), ("cache_hit", 1.0, 1.0, 5, 10), ("cache_hit", 2.0, 2.0, 5, 10),
        ("error", 50.0, None, None, None), ("rate_limited", 0.0, None, None, None),
    ]
    return pd.DataFrame(rows, columns=["outcome", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens"])


class TestSummarize:
    def test_figures_of_a_hand_built_frame(self) -> None:
        """Rates, percentiles and tokens follow their definitions."""
        s = summarize(hand_built_frame())
        assert (s["requests"], s["errors"], s["rate_limited"], s["cache_hits"]) == (8, 1, 1, 2)
        assert s["error_rate"] == pytest.approx(1 / 8)
        assert s["cache_hit_rate"] == pytest.approx(2 / 7)  # rate-limited requests never looked
        assert s["p50_latency_ms"] == pytest.approx(250.0)  # ok requests only
        assert s["p95_latency_ms"] == pytest.approx(385.0)
        assert s["p50_ttft_ms"] == pytest.approx(25.0)
        assert (s["prompt_tokens"], s["completion_tokens"], s["tokens"]) == (20, 40, 60)

    def test_empty_frame(self) -> None:
        """An empty frame gives zeros and no percentiles."""
        s = summarize(pd.DataFrame(columns=list(EVENT_COLUMNS)))
        assert (s["requests"], s["error_rate"], s["cache_hit_rate"], s["tokens"]) == (0, 0.0, 0.0, 0)
        assert s["p50_latency_ms"] is None and s["p95_latency_ms"] is None and s["p50_ttft_ms"] is None

    def test_only_refusals(self) -> None:
        """All requests rate-limited: hit rate 0.0 (no division by zero), no percentiles."""
        df = pd.DataFrame({"outcome": ["rate_limited"] * 3, "latency_ms": [0.0] * 3, "ttft_ms": [None] * 3,
                           "prompt_tokens": [None] * 3, "completion_tokens": [None] * 3})
        s = summarize(df)
        assert (s["requests"], s["rate_limited"], s["cache_hit_rate"], s["error_rate"]) == (3, 3, 0.0, 0.0)
        assert s["p50_latency_ms"] is None

    def test_summary_of_a_live_service(self, tmp_path: Path) -> None:
        """The service's summary counts its own requests, hits and tokens."""
        with make_service(tmp_path) as svc:
            a = svc.generate_text("Summarise me")
            svc.generate_text("Summarise me")
            s = svc.metrics.summary()
        assert (s["requests"], s["cache_hits"], s["errors"]) == (2, 1, 0)
        assert s["cache_hit_rate"] == 0.5
        assert s["tokens"] == a.usage.prompt_tokens + a.usage.completion_tokens


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
