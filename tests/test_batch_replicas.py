"""Batch jobs across replicas: leased rows, fencing tokens, any replica cancels and resumes.

The lease rules are checked on ``RowLeases`` with a fake clock (no waiting), on SQLite
and on PostgreSQL; then whole services: two in one process on one database, and two OS
processes on one PostgreSQL with one of them frozen (SIGSTOP) past its lease. Both
replicas of a pair talk to one standalone demo backend, as replicas behind a proxy
share Pollinations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import demo_stats, make_service
from services import free_port
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import Engine

from blossom_dash import BlossomService
from blossom_dash.features.batch import (
    BatchJobs,
    BatchRow,
    RowLeases,
    batch_jobs,
    batch_rows,
    ensure_batch_schema,
)
from blossom_dash.telemetry import collector

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "replica_batch_driver.py"
LEASE_S = 2.0
#: Rows short enough to keep the tests quick, long enough to be caught in flight
#: (demo-swift with latency: 150 ms to the first token, 120 tokens/s).
ROW = {"model": "demo-swift", "max_tokens": 30}


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``timeout_s`` (a guard, not a timing claim)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class FakeClock:
    """Epoch seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The batch tables on SQLite, then on PostgreSQL."""
    eng = create_engine(database_url)
    ensure_batch_schema(eng)
    yield eng
    eng.dispose()


def new_job(engine: Engine, clock: FakeClock, n: int = 3) -> str:
    rows = [BatchRow(row=i + 2, prompt=f"q{i}") for i in range(n)]
    return BatchJobs(engine, "submitter", wall=clock).create(rows, user="ana", session="", name="", own_key=False)


def ok(text_: str) -> dict[str, Any]:
    return {"status": "ok", "answer": text_, "error": None, "error_type": None}


def answers(engine: Engine, job_id: str) -> list[tuple[int, str, str | None, int]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(batch_rows.c.idx, batch_rows.c.status, batch_rows.c.answer, batch_rows.c.fence)
            .where(batch_rows.c.job_id == job_id).order_by(batch_rows.c.idx))]


class TestLeases:
    """The rules of a claim, a lease and a fencing token (``RowLeases``), with a fake clock."""

    def test_claims_do_not_overlap(self, engine: Engine) -> None:
        """Two replicas claiming at once get different rows, in file order; then nothing is left."""
        clock = FakeClock()
        job = new_job(engine, clock, 3)
        a, b = (RowLeases(engine, name, lease_s=10, wall=clock) for name in ("A", "B"))
        first, second = a.claim(job, 2), b.claim(job, 2)
        assert [(c.idx, c.fence) for c in first] == [(0, 1), (1, 1)]
        assert [(c.idx, c.fence) for c in second] == [(2, 1)]
        assert a.claim(job) == [] and b.claim(job) == []
        assert first[0].row.prompt == "q0" and first[0].row.row == 2

    def test_a_stalled_replicas_late_answer_is_discarded(self, engine: Engine) -> None:
        """A's lease expires, B claims the row again (token 2): A's answer is refused, B's is stored."""
        clock = FakeClock()
        job = new_job(engine, clock, 1)
        a, b = (RowLeases(engine, name, lease_s=10, wall=clock) for name in ("A", "B"))
        [held] = a.claim(job)
        clock.now += 9.9
        assert b.claim(job) == [], "the lease still holds"
        clock.now += 0.2
        [taken] = b.claim(job)
        assert taken.fence == held.fence + 1
        assert b.save(taken, ok("from B")) is True
        assert a.save(held, ok("from A")) is False
        assert answers(engine, job) == [(0, "ok", "from B", 2)]
        assert b.finish_if_done(job) is True

    def test_a_late_answer_before_the_row_is_taken_again_is_kept(self, engine: Engine) -> None:
        """Past its lease but not yet claimed again, the holder's answer is still the only one: stored."""
        clock = FakeClock()
        job = new_job(engine, clock, 1)
        a = RowLeases(engine, "A", lease_s=10, wall=clock)
        [held] = a.claim(job)
        clock.now += 60
        assert a.save(held, ok("late")) is True
        assert answers(engine, job) == [(0, "ok", "late", 1)]

    def test_renewal_keeps_the_row_and_tells_a_holder_it_lost_it(self, engine: Engine) -> None:
        """A renewed lease outlives the first one; after losing the row, renew names it as lost."""
        clock = FakeClock()
        job = new_job(engine, clock, 1)
        a, b = (RowLeases(engine, name, lease_s=10, wall=clock) for name in ("A", "B"))
        [held] = a.claim(job)
        clock.now += 8
        assert a.renew([held]) == []
        clock.now += 8  # 16 s after the claim, 8 s after the renewal
        assert b.claim(job) == []
        clock.now += 3
        [taken] = b.claim(job)
        assert a.renew([held]) == [held]
        assert b.renew([taken]) == []

    def test_release_hands_rows_back(self, engine: Engine) -> None:
        """Released rows are pending again and the next claim takes them (with a new token)."""
        clock = FakeClock()
        job = new_job(engine, clock, 2)
        a, b = (RowLeases(engine, name, lease_s=10, wall=clock) for name in ("A", "B"))
        held = a.claim(job, 2)
        assert a.release(held) == 2
        assert [(c.idx, c.fence) for c in b.claim(job, 5)] == [(0, 2), (1, 2)]
        assert a.save(held[0], ok("stale")) is False

    def test_the_last_row_finishes_the_job_once(self, engine: Engine) -> None:
        """Of two replicas that look after the last save, exactly one finishes the job."""
        clock = FakeClock()
        job = new_job(engine, clock, 2)
        a, b = (RowLeases(engine, name, lease_s=10, wall=clock) for name in ("A", "B"))
        [ra], [rb] = a.claim(job), b.claim(job)
        a.save(ra, ok("a"))
        assert a.finish_if_done(job) is False, "a row is still running"
        b.save(rb, ok("b"))
        assert [b.finish_if_done(job), a.finish_if_done(job)] == [True, False]
        with engine.connect() as conn:
            assert conn.execute(select(batch_jobs.c.status).where(batch_jobs.c.id == job)).scalar() == "finished"

    def test_no_claim_on_a_cancelled_job_or_during_a_backend_wait(self, engine: Engine) -> None:
        """A cancelled job has nothing to claim; a backend 429's wait holds every claim until it ends,
        our own limiter's wait (each replica checks the shared window itself) does not."""
        clock = FakeClock()
        jobs = BatchJobs(engine, "A", wall=clock)
        a = RowLeases(engine, "A", lease_s=10, wall=clock)
        cancelled, waiting = new_job(engine, clock), new_job(engine, clock)
        jobs.cancel(cancelled)
        assert a.claim(cancelled) == []
        jobs.share_wait(waiting, clock.now + 5, "upstream")
        assert a.claim(waiting) == []
        clock.now += 6
        assert len(a.claim(waiting)) == 1
        jobs.share_wait(waiting, clock.now + 30, "user")
        assert len(a.claim(waiting)) == 1

    def test_cancel_keeps_live_rows_and_drops_expired_ones(self, engine: Engine) -> None:
        """Cancel: pending rows and rows whose lease expired are cancelled; a live claim may still save."""
        clock = FakeClock()
        job = new_job(engine, clock, 3)
        a, b = (RowLeases(engine, name, lease_s=10, wall=clock) for name in ("A", "B"))
        [stale] = a.claim(job)
        clock.now += 11
        [live] = b.claim(job)  # row 0's lease has expired, so B takes it again...
        assert live.idx == 0
        clock.now += 11
        [again] = a.claim(job)  # ...and now B's has expired too: A takes it (token 3)
        [fresh] = b.claim(job)  # row 1, live
        clock.now += 11  # row 0 (A, token 3) expired; row 1 (B) expired as well
        [fresh2] = b.claim(job)
        BatchJobs(engine, "B", wall=clock).cancel(job)
        assert b.save(fresh2, ok("kept")) is True
        assert a.save(again, ok("late")) is False and a.save(stale, ok("late")) is False
        states = {idx: status for idx, status, _a, _f in answers(engine, job)}
        assert states[fresh2.idx] == "ok" and list(states.values()).count("cancelled") == 2
        assert fresh.idx != fresh2.idx


class TestSchema:
    def test_an_older_database_gets_the_lease_columns(self, database_url: str) -> None:
        """Tables of the release before leases: the columns are added, a running job there finishes."""
        eng = create_engine(database_url)
        with eng.begin() as conn:
            conn.execute(text('CREATE TABLE batch_jobs (id VARCHAR(32) PRIMARY KEY, "user" VARCHAR(128) NOT NULL, '
                              "session VARCHAR(64) NOT NULL, name VARCHAR(256) NOT NULL, status VARCHAR(16) NOT NULL,"
                              " total INTEGER NOT NULL, created_ts FLOAT NOT NULL, run_started_ts FLOAT NOT NULL, "
                              "finished_ts FLOAT, heartbeat_ts FLOAT NOT NULL, runner_id VARCHAR(128) NOT NULL)"))
            conn.execute(text("CREATE TABLE batch_rows (job_id VARCHAR(32) NOT NULL, idx INTEGER NOT NULL, "
                              "row_no INTEGER NOT NULL, prompt TEXT NOT NULL, model VARCHAR(128), system TEXT, "
                              "temperature FLOAT, max_tokens INTEGER, seed INTEGER, status VARCHAR(16) NOT NULL, "
                              "answer TEXT, answered_by VARCHAR(128), latency_ms FLOAT, prompt_tokens INTEGER, "
                              "completion_tokens INTEGER, cached BOOLEAN, request_id VARCHAR(32), error TEXT, "
                              "error_type VARCHAR(64), finished_ts FLOAT, PRIMARY KEY (job_id, idx))"))
            conn.execute(text("INSERT INTO batch_jobs VALUES ('old', 'ana', '', 'old.csv', 'running', 2, 1, 1, NULL, "
                              "1, 'gone-host/1/x')"))
            conn.execute(text("INSERT INTO batch_rows (job_id, idx, row_no, prompt, status, answer) VALUES "
                              "('old', 0, 2, 'done already', 'ok', 'kept'), ('old', 1, 3, 'left', 'pending', NULL)"))
        assert sorted(ensure_batch_schema(eng)) == sorted(
            ["batch_jobs.own_key", "batch_jobs.wait_until", "batch_jobs.wait_scope",
             "batch_rows.lease_owner", "batch_rows.lease_until", "batch_rows.fence", "batch_rows.cost"])
        assert ensure_batch_schema(eng) == [], "a second start adds nothing"
        assert {"fence", "lease_until"} <= {c["name"] for c in inspect(eng).get_columns("batch_rows")}
        clock = FakeClock()
        leases = RowLeases(eng, "A", lease_s=10, wall=clock)
        [claim] = leases.claim("old")
        assert (claim.idx, claim.fence) == (1, 1)
        assert leases.save(claim, ok("new")) and leases.finish_if_done("old")
        assert [a for _i, _s, a, _f in answers(eng, "old")] == ["kept", "new"]
        eng.dispose()


# ----- whole services ------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_backend() -> Iterator[str]:
    """One standalone demo backend with latency on, shared by every replica of a test."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "blossom_dash.demo_backend", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), "the demo backend to start", 30)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v1/models", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def chat_requests(url: str) -> int:
    """Chat requests the shared demo backend has served."""
    return int(httpx.get(f"{url}/_demo/stats", timeout=5).json().get("chat", 0))


def replica(tmp_path: Path, name: str, database_url: str, backend: str = "demo") -> BlossomService:
    """A service in this process: its own data directory, the shared database; its own
    embedded demo backend (latency on) unless ``backend`` names a shared one."""
    return make_service(tmp_path / name, database_url=database_url, backend=backend, demo_latency=True,
                        batch_lease_s=LEASE_S)


def stored(svc: BlossomService, job_id: str) -> Any:
    return svc.batch_results(job_id)


class TestTwoServices:
    def test_a_job_is_shared_and_each_row_answered_once(self, tmp_path: Path, database_url: str) -> None:
        """A 40-row job submitted on A: B takes its share; every row answered exactly once; one finish.

        Each service has its own demo backend here, so its request count is its share.
        """
        with replica(tmp_path, "a", database_url) as a, replica(tmp_path, "b", database_url) as b:
            job = a.submit_batch([{"prompt": f"question {i}", **ROW} for i in range(40)], user="ana")
            wait_for(lambda: not b.batch_status(job).active, "the job to finish")
            status = a.batch_status(job)
            assert (status.status, status.done, status.failed, status.running) == ("finished", 40, 0, 0)
            df = stored(b, job)
            assert df["answer"].notna().all() and df["request_id"].is_unique
            shares = [demo_stats(a).get("chat", 0), demo_stats(b).get("chat", 0)]
            assert sum(shares) == 40, f"no row was sent twice: {shares}"
            assert min(shares) > 0, f"both replicas answered rows: {shares}"
            assert a._batch_runner().discarded == b._batch_runner().discarded == 0


def start_driver(tmp_path: Path, database_url: str, backend: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Replica A: ``replica_batch_driver.py`` in its own process, on the shared database and backend."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BLOSSOM_DASH_DATABASE_URL": database_url,
           "BLOSSOM_DASH_BACKEND": backend, "BLOSSOM_DASH_BATCH_LEASE_S": str(LEASE_S),
           "BLOSSOM_DASH_DATA_DIR": str(tmp_path / "driver"), "BLOSSOM_DASH_RETRIES": "0",
           "BLOSSOM_DASH_PER_USER_RPM": "100000", "BLOSSOM_DASH_GLOBAL_RPM": "100000"}
    proc = subprocess.Popen([sys.executable, str(DRIVER)], cwd=ROOT, env=env, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    hello = json.loads(proc.stdout.readline() or "{}")
    if not hello.get("ready"):
        proc.kill()
        pytest.fail("the replica process did not start")
    return proc, hello


def ask(proc: subprocess.Popen[str], **cmd: Any) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(cmd) + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def stop_driver(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGCONT)
    try:
        ask(proc, op="close")
        proc.wait(timeout=30)
    except Exception:  # noqa: BLE001 - a broken pipe or a hang: kill it
        proc.kill()
        proc.wait(timeout=10)


def rows_of(engine: Engine, job_id: str, *columns: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*columns).where(batch_rows.c.job_id == job_id)
                                               .order_by(batch_rows.c.idx))]


class TestTwoProcesses:
    """Replica A is another OS process; B is a service in this process. PostgreSQL only:
    that is where replicas on several hosts meet (SQLite serves the processes of one host)."""

    def test_a_replica_frozen_past_its_lease(self, tmp_path: Path, postgres_url: str, demo_backend: str) -> None:
        """SIGSTOP A while it holds rows; B takes them once the lease expires and finishes the job; on
        SIGCONT A's late answers are discarded: 40 rows, 40 answers, each stored once."""
        engine = create_engine(postgres_url)
        proc, hello = start_driver(tmp_path, postgres_url, demo_backend)
        try:
            job = ask(proc, op="submit", n=40, **ROW)["job"]
            r = batch_rows.c

            def held_by_a() -> list[int]:
                return [i for i, owner, st in rows_of(engine, job, r.idx, r.lease_owner, r.status)
                        if st == "running" and owner == hello["runner_id"]]

            wait_for(lambda: len(held_by_a()) >= 2, "replica A to hold rows")
            os.kill(proc.pid, signal.SIGSTOP)
            time.sleep(LEASE_S + 0.5)  # A's statements in flight have landed; its leases have run out
            frozen = held_by_a()
            assert frozen, "A held rows when it froze"
            with replica(tmp_path, "b", postgres_url, demo_backend) as b:
                wait_for(lambda: not b.batch_status(job).active, "B to finish the job while A is frozen")
                status = b.batch_status(job)
                assert (status.status, status.done, status.failed) == ("finished", 40, 0)
                os.kill(proc.pid, signal.SIGCONT)
                wait_for(lambda: ask(proc, op="stats")["discarded"] >= len(frozen), "A's late answers")
                assert ask(proc, op="stats")["discarded"] == len(frozen)
                df = stored(b, job)
            assert len(df) == 40 and (df["status"] == "ok").all()
            assert df["answer"].notna().sum() == 40 and df["request_id"].is_unique
            taken = df.iloc[frozen]["request_id"]
            assert taken.str.startswith(collector._ID_PREFIX).all(), "the rows A froze on hold B's answers"
            fences = [fence for (fence,) in rows_of(engine, job, r.fence)]
            assert all(fences[i] >= 2 for i in frozen), "each frozen row was claimed again"
            with engine.connect() as conn:
                assert conn.execute(select(func.count()).where(r.job_id == job, r.answer.is_not(None))).scalar() == 40
        finally:
            stop_driver(proc)
            engine.dispose()

    def test_cancel_and_resume_from_the_other_replica(self, tmp_path: Path, postgres_url: str,
                                                      demo_backend: str) -> None:
        """Cancel on B stops a job running on A (rows in flight finish, no new row is sent); resume
        on A runs the rest; every row is answered once."""
        proc, _hello = start_driver(tmp_path, postgres_url, demo_backend)
        engine = create_engine(postgres_url)
        try:
            job = ask(proc, op="submit", n=40, **ROW)["job"]
            wait_for(lambda: ask(proc, op="status", job=job)["done"] >= 4, "A to answer a few rows")
            with replica(tmp_path, "b", postgres_url, demo_backend) as b:
                status = b.cancel_batch(job, user=None)
                assert status.status == "cancelled" and status.cancelled > 0
                wait_for(lambda: b.batch_status(job).running == 0, "the rows in flight to finish", 10)
                sent = chat_requests(demo_backend)
                time.sleep(3 * LEASE_S / 2)  # several poller rounds on A: it must send nothing more
                assert chat_requests(demo_backend) == sent
                seen_by_a = ask(proc, op="status", job=job)
                assert seen_by_a["status"] == "cancelled" and seen_by_a["running"] == 0
                left = seen_by_a["cancelled"]
                assert left > 0 and seen_by_a["done"] + left == 40
                resumed = ask(proc, op="resume", job=job)
                assert resumed["status"] == "running"
                wait_for(lambda: not b.batch_status(job).active, "the resumed job to finish")
                status = b.batch_status(job)
                assert (status.status, status.done, status.failed, status.cancelled) == ("finished", 40, 0, 0)
                assert stored(b, job)["request_id"].is_unique
        finally:
            stop_driver(proc)
            engine.dispose()


class TestOwnKey:
    def test_a_job_with_the_users_own_key_stays_on_its_replica(self, tmp_path: Path, database_url: str) -> None:
        """The key is never stored: B does not take the job's rows; when A closes, the job is
        interrupted, and a resume on B with the key finishes it there."""
        with replica(tmp_path, "b", database_url) as b:
            with replica(tmp_path, "a", database_url) as a:
                job = a.submit_batch([{"prompt": f"question {i}", **ROW} for i in range(12)], user="ana",
                                     api_key="sk_member_own_key")
                wait_for(lambda: a.batch_status(job).done >= 6, "A to answer half the rows")
            assert demo_stats(b).get("chat", 0) == 0, "B sent none of the job's rows"
            status = b.batch_status(job)
            assert status.status == "interrupted" and status.resumable
            with b.store.engine.connect() as conn:  # nothing but a flag is kept of the key
                job_row = conn.execute(select(batch_jobs).where(batch_jobs.c.id == job)).mappings().one()
            assert job_row["own_key"] and "sk_member_own_key" not in repr(dict(job_row))
            b.resume_batch(job, user="ana", api_key="sk_member_own_key")
            wait_for(lambda: not b.batch_status(job).active, "the resumed job to finish")
            assert b.batch_status(job).done == 12
            assert demo_stats(b).get("chat", 0) == 12 - status.done
