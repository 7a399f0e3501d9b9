"""The batch runner: runs the rows of batch jobs in the background for the service.

``BatchRunner`` is owned by ``BlossomService``, created lazily: a bounded pool of
daemon worker threads. Each row goes through ``BlossomService.generate_text`` (cache,
rate limits, retries, one request event of kind ``text``). A full rate-limit window
pauses the job until the window has room instead of failing rows. The durable state
is in the tables of ``batch_tables``; this module holds what a running job needs in
memory. No streamlit here.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Engine

from ..errors import DashError, InvalidRequest, RateLimited
from ..gateway.requests import Caller, TextRequest
from ..telemetry.store import ensure_tables
from .batch_files import BatchRow
from .batch_tables import (
    JOB_CANCELLED,
    JOB_FINISHED,
    JOB_INTERRUPTED,
    JOB_RUNNING,
    RESULT_COLUMNS,
    ROW_CANCELLED,
    ROW_ERROR,
    ROW_OK,
    ROW_PENDING,
    BatchStatus,
    batch_jobs,
    batch_rows,
)

if TYPE_CHECKING:
    from ..gateway import Gateway

log = logging.getLogger("blossom_dash.batch")

#: Rows run at the same time per process (a thread each).
DEFAULT_WORKERS = 4
#: How often a runner stamps its running jobs as alive, seconds.
HEARTBEAT_S = 2.0
#: A running job whose runner has not stamped it for this long is dead (another host).
STALE_AFTER_S = 30.0
#: Longest single wait on a rate limit, seconds (a moving window frees a slot within 60 s).
MAX_WAIT_S = 60.0
#: Rate-limit refusals one row may meet before it is given up as failed.
MAX_RATE_LIMIT_WAITS = 30
#: While paused on our own limiter, look again this often, seconds (a raised limit
#: on the Controls page resumes the job at once).
LIMIT_POLL_S = 1.0


def _job_status(job: Mapping[str, Any], counts: Mapping[str, int], **extra: Any) -> BatchStatus:
    return BatchStatus(job_id=job["id"], name=job["name"], user=job["user"], status=job["status"],
                       total=int(job["total"]), done=counts.get(ROW_OK, 0), failed=counts.get(ROW_ERROR, 0),
                       cancelled=counts.get(ROW_CANCELLED, 0), running=0, created_ts=job["created_ts"],
                       finished_ts=job["finished_ts"], **extra)


# ----- the runner ----------------------------------------------------------------------


@dataclass(eq=False)
class _Active:
    """A job this process is running (in memory; the database has the durable state)."""

    job_id: str
    user: str
    session: str
    api_key: str | None = field(repr=False)
    rows: dict[int, BatchRow]  # idx -> row, unfinished rows only
    pending: deque[int]
    parallel: int
    in_flight: set[int] = field(default_factory=set)
    cancelled: bool = False
    not_before: float = 0.0  # monotonic s: paused on a rate limit until then
    wait_scope: str = ""  # "user" / "global" (our limiter) or "upstream" (the backend's 429)
    waits: Counter[int] = field(default_factory=Counter)
    limited: bool = False  # has met our own limiter (the ETA then respects the RPM)
    ended: bool = False


def _local_runner_dead(runner_id: str) -> bool:
    """Whether ``runner_id`` names a process on this host that no longer exists."""
    host, _, rest = runner_id.partition("/")
    pid = rest.partition("/")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class BatchRunner:
    """Runs batch jobs on a bounded pool of daemon threads; owned by ``BlossomService``.

    Rows of all running jobs are taken round-robin, so one long job does not hold up
    a short one. A row goes through the gateway (``Gateway.run``) as the job's user:
    cache hits are instant, misses take a rate-limit slot and record a ``text``
    event that the Monitor shows. Before a row is sent, the user's and the global
    moving windows are checked; when one is full, the job waits until it has room
    (re-checked every ``LIMIT_POLL_S``). A refusal anyway (a race, or the backend's
    own 429) puts the row back and pauses the job for ``retry_after_s`` (at most
    ``MAX_WAIT_S``); an upstream 429 also halves the job's concurrency (Pollinations'
    publishable keys allow one request at a time). A row refused
    ``MAX_RATE_LIMIT_WAITS`` times fails.

    The worker threads are our own daemon threads rather than a
    ``concurrent.futures.ThreadPoolExecutor``: the executor's threads are joined at
    interpreter exit, which would keep a stopped server alive until a long batch drained.

    Args:
        gateway: The request pipeline rows go through (and whose limits pace them).
        engine: The usage database, where the jobs and rows are kept.
        workers: Rows run at the same time.
        clock: Monotonic seconds (injectable for tests).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the tables cannot be created.
    """

    def __init__(self, gateway: Gateway, engine: Engine, *, workers: int = DEFAULT_WORKERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._gateway = gateway
        self._engine: Engine = engine
        ensure_tables(self._engine, [batch_jobs, batch_rows])  # idempotent, under the schema lock
        self.runner_id = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.workers = workers
        self._clock = clock
        self._cond = threading.Condition()
        self._jobs: dict[str, _Active] = {}
        self._order: deque[str] = deque()
        self._stopping = False
        self._stop = threading.Event()
        self.reap()
        self._threads = [threading.Thread(target=self._work, name=f"blossom-batch-{i}", daemon=True)
                         for i in range(workers)]
        self._threads.append(threading.Thread(target=self._heartbeat, name="blossom-batch-heartbeat", daemon=True))
        for t in self._threads:
            t.start()

    # ----- public -------------------------------------------------------------------

    @property
    def alive_threads(self) -> int:
        """How many of the runner's threads are still running."""
        return sum(t.is_alive() for t in self._threads)

    def submit(self, rows: Sequence[BatchRow], *, user: str, session: str = "", api_key: str | None = None,
               name: str = "") -> str:
        """Store a new job and start running it; returns its id (32 hex characters)."""
        job_id, now = uuid.uuid4().hex, time.time()
        with self._engine.begin() as conn:
            conn.execute(insert(batch_jobs).values(
                id=job_id, user=user, session=session, name=name[:256], status=JOB_RUNNING, total=len(rows),
                created_ts=now, run_started_ts=now, finished_ts=None, heartbeat_ts=now, runner_id=self.runner_id))
            conn.execute(insert(batch_rows), [
                {"job_id": job_id, "idx": i, "row_no": r.row, "prompt": r.prompt, "model": r.model,
                 "system": r.system, "temperature": r.temperature, "max_tokens": r.max_tokens, "seed": r.seed,
                 "status": ROW_PENDING} for i, r in enumerate(rows)])
        self._activate(job_id, dict(enumerate(rows)), user=user, session=session, api_key=api_key)
        return job_id

    def resume(self, job_id: str, *, user: str, session: str = "", api_key: str | None = None,
               retry_failed: bool = False) -> int:
        """Run a stopped job's unfinished rows (and its failed ones if ``retry_failed``).

        Returns:
            How many rows were queued.

        Raises:
            InvalidRequest: the job is running, or has nothing left to run.
        """
        job = self._job(job_id)
        if job["status"] == JOB_RUNNING:
            raise InvalidRequest("This job is still running.", "Wait for it to finish, or cancel it first.")
        again = [ROW_PENDING, ROW_CANCELLED] + ([ROW_ERROR] if retry_failed else [])
        now = time.time()
        with self._engine.begin() as conn:
            claimed = conn.execute(update(batch_jobs).where(batch_jobs.c.id == job_id,
                                                            batch_jobs.c.status != JOB_RUNNING)
                                   .values(status=JOB_RUNNING, run_started_ts=now, finished_ts=None,
                                           heartbeat_ts=now, runner_id=self.runner_id, session=session)).rowcount
            if not claimed:
                raise InvalidRequest("This job has just been started again.", "Watch its progress below.")
            conn.execute(update(batch_rows).where(batch_rows.c.job_id == job_id, batch_rows.c.status.in_(again))
                         .values(status=ROW_PENDING, error=None, error_type=None))
            found = conn.execute(select(batch_rows).where(batch_rows.c.job_id == job_id,
                                                          batch_rows.c.status == ROW_PENDING)
                                 .order_by(batch_rows.c.idx)).mappings().all()
            if not found:  # leaving the block by an exception rolls the claim back
                raise InvalidRequest("This job has no rows left to run.", "Upload a new file to run more prompts.")
        rows = {r["idx"]: BatchRow(row=r["row_no"], prompt=r["prompt"], model=r["model"], system=r["system"],
                                   temperature=r["temperature"], max_tokens=r["max_tokens"], seed=r["seed"])
                for r in found}
        self._activate(job_id, rows, user=user, session=session, api_key=api_key)
        return len(rows)

    def cancel(self, job_id: str) -> None:
        """Stop a job: no further rows start; rows being answered finish and are kept."""
        in_flight: set[int] = set()
        with self._cond:
            job = self._jobs.get(job_id)
            if job is not None:
                job.cancelled = True
                job.pending.clear()
                in_flight = set(job.in_flight)  # these finish and save their own outcome
                if not job.in_flight:
                    self._forget(job)
        now = time.time()
        with self._engine.begin() as conn:
            conn.execute(update(batch_rows).where(batch_rows.c.job_id == job_id, batch_rows.c.status == ROW_PENDING,
                                                  batch_rows.c.idx.not_in(in_flight))
                         .values(status=ROW_CANCELLED, finished_ts=now))
            conn.execute(update(batch_jobs).where(batch_jobs.c.id == job_id,
                                                  batch_jobs.c.status.in_([JOB_RUNNING, JOB_INTERRUPTED]))
                         .values(status=JOB_CANCELLED, finished_ts=now))

    def delete(self, job_id: str) -> None:
        """Delete a stopped job and its rows.

        Raises:
            InvalidRequest: the job is running.
        """
        if self._job(job_id)["status"] == JOB_RUNNING:
            raise InvalidRequest("A running job cannot be deleted.", "Cancel it first.")
        with self._engine.begin() as conn:
            conn.execute(delete(batch_rows).where(batch_rows.c.job_id == job_id))
            conn.execute(delete(batch_jobs).where(batch_jobs.c.id == job_id))

    def owner(self, job_id: str) -> str | None:
        """The user who started ``job_id``, or None if there is no such job."""
        with self._engine.connect() as conn:
            return conn.execute(select(batch_jobs.c.user).where(batch_jobs.c.id == job_id)).scalar()

    def status(self, job_id: str) -> BatchStatus:
        """The job's counts, ETA and rate-limit wait.

        Raises:
            InvalidRequest: no such job.
        """
        self.reap()
        job = self._job(job_id)
        now = time.time()
        with self._engine.connect() as conn:
            counts = dict(conn.execute(select(batch_rows.c.status, func.count()).where(batch_rows.c.job_id == job_id)
                                       .group_by(batch_rows.c.status)).all())
            recent = conn.execute(select(func.count()).where(
                batch_rows.c.job_id == job_id, batch_rows.c.status.in_([ROW_OK, ROW_ERROR]),
                batch_rows.c.finished_ts >= job["run_started_ts"])).scalar() or 0
        st = _job_status(job, counts)
        running, waiting_s, reason, limited = 0, 0.0, "", False
        with self._cond:
            active = self._jobs.get(job_id)
            if active is not None:
                running, limited = len(active.in_flight), active.limited
                if active.not_before > self._clock():
                    waiting_s = active.not_before - self._clock()
                    reason = {"user": "your requests-per-minute limit", "global": "the limit for all users",
                              "upstream": "the backend's rate limit (HTTP 429)"}.get(active.wait_scope, "")
        eta = None
        if st.active and recent:
            eta = st.remaining * (now - job["run_started_ts"]) / recent
        if st.active and limited:
            # Paced by the moving window: after the wait, up to one window's worth (RPM)
            # goes at once as the old slots free up, the rest at RPM per minute.
            rpm = self._gateway.limits[0]
            floor = waiting_s + max(0, st.remaining - rpm) * 60.0 / rpm
            eta = floor if eta is None else max(eta, floor)
        return replace(st, running=running, eta_s=eta, waiting_s=round(waiting_s, 1), wait_reason=reason)

    def list(self, user: str | None, *, limit: int = 50) -> list[BatchStatus]:
        """The newest ``limit`` jobs of ``user`` (all users when None), newest first."""
        self.reap()
        query = select(batch_jobs).order_by(batch_jobs.c.created_ts.desc()).limit(limit)
        if user is not None:
            query = query.where(batch_jobs.c.user == user)
        with self._engine.connect() as conn:
            jobs = conn.execute(query).mappings().all()
            ids = [j["id"] for j in jobs]
            counts: dict[str, dict[str, int]] = {i: {} for i in ids}
            if ids:
                for job_id, status, n in conn.execute(
                        select(batch_rows.c.job_id, batch_rows.c.status, func.count())
                        .where(batch_rows.c.job_id.in_(ids)).group_by(batch_rows.c.job_id, batch_rows.c.status)):
                    counts[job_id][status] = n
        return [_job_status(j, counts[j["id"]]) for j in jobs]

    def results(self, job_id: str, *, limit: int | None = None) -> pd.DataFrame:
        """The job's rows in file order (the first ``limit``), with answers and errors (``RESULT_COLUMNS``)."""
        self._job(job_id)
        r = batch_rows.c
        query = (select(r.row_no.label("row"), r.prompt, r.model, r.system, r.temperature, r.max_tokens, r.seed,
                        r.status, r.answer, r.answered_by, r.latency_ms, r.prompt_tokens, r.completion_tokens,
                        r.cached, r.request_id, r.error, r.idx)
                 .where(r.job_id == job_id).order_by(r.idx).limit(limit))
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        df = pd.DataFrame(rows, columns=[*RESULT_COLUMNS, "idx"])
        with self._cond:
            active = self._jobs.get(job_id)
            in_flight = set(active.in_flight) if active else set()
        if in_flight:
            df.loc[df["idx"].isin(in_flight), "status"] = "running"
        for col in ("max_tokens", "seed", "prompt_tokens", "completion_tokens"):
            df[col] = df[col].astype("Int64")
        df["cached"] = df["cached"].astype("boolean")
        return df.drop(columns="idx")

    def reap(self) -> int:
        """Mark running jobs whose process is gone as interrupted (finished rows are kept).

        A job is orphaned when its runner's process on this host no longer exists, or
        its runner (on any host) has not stamped it for ``STALE_AFTER_S``.

        Returns:
            How many jobs were marked.
        """
        now = time.time()
        with self._engine.connect() as conn:
            candidates = conn.execute(select(batch_jobs.c.id, batch_jobs.c.runner_id, batch_jobs.c.heartbeat_ts)
                                      .where(batch_jobs.c.status == JOB_RUNNING,
                                             batch_jobs.c.runner_id != self.runner_id)).all()
        dead = [job_id for job_id, runner, beat in candidates
                if beat < now - STALE_AFTER_S or _local_runner_dead(runner)]
        if not dead:
            return 0
        with self._engine.begin() as conn:
            return int(conn.execute(update(batch_jobs).where(batch_jobs.c.id.in_(dead),
                                                             batch_jobs.c.status == JOB_RUNNING,
                                                             batch_jobs.c.runner_id != self.runner_id)
                                    .values(status=JOB_INTERRUPTED, finished_ts=now)).rowcount or 0)

    def close(self) -> None:
        """Stop the threads; this process's running jobs become ``interrupted``.

        Rows being answered are not waited for: a row whose answer arrives later is
        still saved, one that fails is left to ``resume``.
        """
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            ids = list(self._jobs)
            self._jobs.clear()
            self._order.clear()
            self._cond.notify_all()
        self._stop.set()
        if ids:
            try:
                with self._engine.begin() as conn:
                    conn.execute(update(batch_jobs).where(batch_jobs.c.id.in_(ids),
                                                          batch_jobs.c.status == JOB_RUNNING)
                                 .values(status=JOB_INTERRUPTED, finished_ts=time.time()))
            except Exception:  # shutting down: the next start reaps them instead
                log.exception("could not mark batch jobs interrupted")

    # ----- internals ------------------------------------------------------------------

    def _job(self, job_id: str) -> Mapping[str, Any]:
        with self._engine.connect() as conn:
            job = conn.execute(select(batch_jobs).where(batch_jobs.c.id == job_id)).mappings().first()
        if job is None:
            raise InvalidRequest(f"There is no batch job {str(job_id)[:40]!r}.",
                                 "Pick one of your jobs from the list.")
        return job

    def _activate(self, job_id: str, rows: dict[int, BatchRow], *, user: str, session: str,
                  api_key: str | None) -> None:
        with self._cond:
            self._jobs[job_id] = _Active(job_id, user, session, api_key, rows, deque(sorted(rows)), self.workers)
            self._order.append(job_id)
            self._cond.notify_all()

    def _forget(self, job: _Active) -> None:
        """Drop ``job`` from the schedule (caller holds the lock)."""
        job.ended = True
        self._jobs.pop(job.job_id, None)
        if job.job_id in self._order:
            self._order.remove(job.job_id)

    def _has_room(self, job: _Active, now: float) -> bool:
        """Whether the user's and the global windows have a slot; else pause ``job``."""
        status = self._gateway.limit_status(job.user)
        for scope, window in (("user", status.user), ("global", status.global_)):
            if window.remaining <= 0:
                job.not_before = now + min(max(window.reset_in_s, 0.05), MAX_WAIT_S)
                job.wait_scope, job.limited = scope, True
                return False
        return True

    def _next(self) -> tuple[_Active, int, BatchRow] | None:
        """The next row to run (round-robin over jobs), or None when stopping."""
        with self._cond:
            while not self._stopping:
                now = self._clock()
                wait: float | None = None
                for _ in range(len(self._order)):
                    job = self._jobs[self._order[0]]
                    self._order.rotate(-1)
                    if job.cancelled or not job.pending or len(job.in_flight) >= job.parallel:
                        continue
                    if now < job.not_before and job.wait_scope == "upstream":
                        wait = _sooner(wait, job.not_before - now)
                        continue
                    # Our own limiter: look at the windows now, not when the pause ends, so
                    # that a raised limit or a quieter minute resumes the job at once.
                    if not self._has_room(job, now):
                        wait = _sooner(wait, min(LIMIT_POLL_S, job.not_before - now))
                        continue
                    job.not_before, job.wait_scope = 0.0, ""
                    idx = job.pending.popleft()
                    job.in_flight.add(idx)
                    return job, idx, job.rows[idx]
                self._cond.wait(timeout=wait)
        return None

    def _work(self) -> None:
        while (task := self._next()) is not None:
            job, idx, row = task
            try:
                values = self._answer(job, idx, row)
            except Exception:  # a bug must not kill the worker thread
                if self._stopping:  # the loop was stopped under the call: the row stays for resume
                    values = None
                else:
                    log.exception("batch row %s/%s failed unexpectedly", job.job_id, idx)
                    values = {"status": ROW_ERROR, "error_type": "InternalError",
                              "error": "Internal error while answering this row (see the server log)."}
            if values is not None:
                self._save(job, idx, values)
            self._done_with(job, idx, finished=values is not None)

    def _answer(self, job: _Active, idx: int, row: BatchRow) -> dict[str, Any] | None:
        """Run one row; its columns to save, or None if it was put back (rate limit)."""
        try:
            result = self._gateway.run(TextRequest(row.prompt, **row.params()),
                                       Caller(job.user, job.session, job.api_key))
        except RateLimited as err:
            with self._cond:
                job.waits[idx] += 1
                if self._stopping:
                    return None
                if job.cancelled:
                    return {"status": ROW_CANCELLED}
                if job.waits[idx] <= MAX_RATE_LIMIT_WAITS:
                    job.pending.appendleft(idx)
                    job.not_before = max(job.not_before, self._clock() + min(err.retry_after_s, MAX_WAIT_S))
                    job.wait_scope = err.scope
                    job.limited = job.limited or err.scope != "upstream"
                    if err.scope == "upstream":
                        job.parallel = max(1, job.parallel // 2)
                    return None
            return _error_values(err)
        except DashError as err:
            return None if self._stopping else _error_values(err)
        return {"status": ROW_OK, "answer": result.text, "answered_by": result.model,
                "latency_ms": round(result.latency_ms, 1), "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens, "cached": result.cached,
                "request_id": result.request_id, "error": None, "error_type": None}

    def _save(self, job: _Active, idx: int, values: dict[str, Any]) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(update(batch_rows).where(batch_rows.c.job_id == job.job_id, batch_rows.c.idx == idx)
                             .values(**values, finished_ts=time.time()))
        except Exception:  # the row stays pending; the job ends "interrupted", resumable
            log.exception("could not save batch row %s/%s", job.job_id, idx)

    def _done_with(self, job: _Active, idx: int, *, finished: bool) -> None:
        with self._cond:
            job.in_flight.discard(idx)
            if finished:
                job.rows.pop(idx, None)
            last = not job.pending and not job.in_flight and not job.ended and not self._stopping
            if last:
                self._forget(job)
            self._cond.notify_all()
        if last:
            self._finish(job)

    def _finish(self, job: _Active) -> None:
        """Record the end of a job: finished, cancelled, or interrupted if rows were not saved."""
        now = time.time()
        try:
            with self._engine.begin() as conn:
                left = conn.execute(select(func.count()).where(batch_rows.c.job_id == job.job_id,
                                                               batch_rows.c.status == ROW_PENDING)).scalar()
                status = JOB_CANCELLED if job.cancelled else JOB_INTERRUPTED if left else JOB_FINISHED
                conn.execute(update(batch_jobs).where(batch_jobs.c.id == job.job_id,
                                                      batch_jobs.c.runner_id == self.runner_id,
                                                      batch_jobs.c.status.in_([JOB_RUNNING, JOB_CANCELLED]))
                             .values(status=status, finished_ts=now))
        except Exception:  # the heartbeat stops, so the job is reaped as interrupted
            log.exception("could not finish batch job %s", job.job_id)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._cond:
                ids = list(self._jobs)
            if not ids:
                continue
            try:
                with self._engine.begin() as conn:
                    conn.execute(update(batch_jobs).where(batch_jobs.c.id.in_(ids),
                                                          batch_jobs.c.runner_id == self.runner_id)
                                 .values(heartbeat_ts=time.time()))
            except Exception:  # try again on the next beat
                log.warning("batch heartbeat failed", exc_info=True)


def _sooner(wait: float | None, candidate: float) -> float:
    return candidate if wait is None else min(wait, candidate)


def _error_values(err: DashError) -> dict[str, Any]:
    message = err.message + (f" {err.hint}" if err.hint else "")
    return {"status": ROW_ERROR, "error": message, "error_type": type(err).__name__}


def check_owner(runner: BatchRunner, job_id: object, user: str | None) -> str:
    """``job_id`` if it names a job of ``user`` (any user when None).

    Raises:
        InvalidRequest: no such job, or another user's (which is not revealed).
    """
    if not isinstance(job_id, str) or not job_id:
        raise InvalidRequest("No batch job was given.", "Pick one of your jobs from the list.")
    owner = runner.owner(job_id)
    if owner is None or (user is not None and owner != user):
        raise InvalidRequest(f"There is no batch job {job_id[:40]!r} among your jobs.",
                             "Pick one of your jobs from the list.")
    return job_id
