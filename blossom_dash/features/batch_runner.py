"""The batch runner: works the rows of batch jobs in the background, on every replica.

``BatchRunner`` is owned by ``BlossomService`` and starts with it: a bounded pool of
daemon worker threads and one poller thread. The durable state is in the tables of
``batch_tables``, in the usage database every replica shares; any replica works any
job. A worker **claims** one row at a time (a lease and a fencing token,
``batch_leases``), sends it through the gateway as the job's user (cache, rate limits,
retries, one request event of kind ``text``) and **saves** the answer only if its token
still holds, so a replica that stalled past its lease cannot answer a row a second
time. The **poller** (about once a second, jittered) finds running jobs with rows to
claim (new, resumed on another replica, or whose lease expired), renews the leases of
the rows in flight, notices jobs cancelled on another replica, and ends jobs whose
rows are all settled. A full rate-limit window pauses a job until the window has room
instead of failing rows. No streamlit here.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy.engine import Engine

from ..errors import BudgetExceeded, DashError, RateLimited
from ..gateway.requests import Caller, TextRequest
from .batch_eta import EtaSmoother, estimate_eta, recent_finishes
from .batch_files import BatchRow
from .batch_leases import ActiveJob, Claim, RowLeases
from .batch_store import BatchJobs, check_owner, job_status
from .batch_tables import (
    JOB_RUNNING,
    ROW_CANCELLED,
    ROW_ERROR,
    ROW_OK,
    BatchStatus,
    ensure_batch_schema,
)

if TYPE_CHECKING:
    from ..gateway import Gateway

__all__ = ["DEFAULT_WORKERS", "HEARTBEAT_S", "LIMIT_POLL_S", "MAX_RATE_LIMIT_WAITS", "MAX_WAIT_S", "POLL_S",
           "STALE_AFTER_S", "BatchRunner", "check_owner"]

log = logging.getLogger("blossom_dash.batch")

#: Rows run at the same time per process (a thread each).
DEFAULT_WORKERS = 4
#: How often the poller looks for work, renews leases and notices cancels, seconds
#: (jittered by ±20 % so replicas do not poll in step; at most a third of the lease).
POLL_S = 1.0
#: How often a replica holding a job's own key stamps the job as alive, seconds.
HEARTBEAT_S = 2.0
#: A job run with its user's own key, whose replica has not stamped it for this long,
#: is interrupted: no other replica has the key (it stays in one server's memory).
STALE_AFTER_S = 30.0
#: Longest single wait on a rate limit, seconds (a moving window frees a slot within 60 s).
MAX_WAIT_S = 60.0
#: Rate-limit refusals one row may meet (on this replica) before it is given up as failed.
MAX_RATE_LIMIT_WAITS = 30
#: While paused on our own limiter, look again this often, seconds (a raised limit
#: on the Controls page resumes the job at once).
LIMIT_POLL_S = 1.0
_WAIT_REASONS = {"user": "your requests-per-minute limit", "global": "the limit for all users",
                 "batch": "this batch's share of your requests-per-minute limit (the rest is kept for your chats)",
                 "upstream": "the backend's rate limit (HTTP 429)",
                 "budget": "a spending budget used up (until it resets or an admin raises it)"}


# ----- the runner ----------------------------------------------------------------------


class BatchRunner:
    """Works batch jobs on a bounded pool of daemon threads; owned by ``BlossomService``.

    Any number of replicas may run one each on the same database: rows are leased
    (``batch_leases.RowLeases``), so each row is answered once, a job whose replica
    stalls or dies is finished by the others once the leases expire (``lease_s``), and
    cancel, resume and retry work from any replica (they change the database; the
    workers check the job's state with every claim, the poller about once a second).
    A job is finished by the replica that saves its last row. On SQLite, replicas are
    the processes on one file; it serialises their writes.

    Rows of all running jobs are taken round-robin, so one long job does not hold up
    a short one. A row goes through the gateway (``Gateway.run``) as the job's user:
    cache hits are instant, misses take a rate-limit slot and record a ``text``
    event that the Monitor shows. Before a row is claimed, the user's and the global
    moving windows are checked, and the user's batch window (their batch share,
    ``policies.ratelimit``: a row is a ``Caller`` of purpose ``"batch"``, so a running
    batch leaves the rest of the user's limit to their chats); when one is full, the job
    waits until it has room
    (re-checked every ``LIMIT_POLL_S``). A refusal anyway (a race, or the backend's
    own 429) hands the row back and pauses the job for ``retry_after_s`` (at most
    ``MAX_WAIT_S``); an upstream 429 pauses the job on every replica (``wait_until``)
    and halves this replica's concurrency for it (Pollinations' publishable keys allow
    one request at a time). A row refused ``MAX_RATE_LIMIT_WAITS`` times fails.
    A spending budget's refusal (``BudgetExceeded``) hands the row back and pauses the
    job until the budget's period resets or an admin changes the budgets; no row fails on it.

    A job submitted or resumed with the user's own API key is worked only by the
    replica that was given the key (it is never stored); if that replica stops, the
    job becomes ``interrupted`` (at once on close or on this host, else after
    ``STALE_AFTER_S`` without its stamp) and ``resume`` with the key runs the rest.

    Leases are renewed while a row's request is in flight, so a request longer than
    the lease keeps its row; a replica that cannot renew (paused, cut off from the
    database) loses it after ``lease_s``.

    The worker threads are our own daemon threads rather than a
    ``concurrent.futures.ThreadPoolExecutor``: the executor's threads are joined at
    interpreter exit, which would keep a stopped server alive until a long batch drained.

    Args:
        gateway: The request pipeline rows go through (and whose limits pace them).
        engine: The usage database, where the jobs and rows are kept.
        workers: Rows run at the same time by this replica.
        lease_s: Seconds a claim holds a row (``Settings.batch_lease_s``).
        clock: Monotonic seconds, for rate-limit pauses (injectable for tests).
        wall: Epoch seconds, for leases and timestamps (injectable for tests).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the tables cannot be created or migrated.
    """

    def __init__(self, gateway: Gateway, engine: Engine, *, workers: int = DEFAULT_WORKERS, lease_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._gateway = gateway
        self._engine: Engine = engine
        added = ensure_batch_schema(self._engine)  # idempotent, under the schema lock
        if added:
            log.info("batch tables: added columns %s", ", ".join(added))
        self.runner_id = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.workers = workers
        self._clock = clock
        self._wall = wall
        self._leases = RowLeases(engine, self.runner_id, lease_s=lease_s, wall=wall)
        self._db = BatchJobs(engine, self.runner_id, wall=wall)
        self._etas = EtaSmoother()
        self._cond = threading.Condition()
        self._jobs: dict[str, ActiveJob] = {}
        self._order: deque[str] = deque()
        #: job id -> the user's own key, for the jobs submitted or resumed here with one.
        self._keys: dict[str, str] = {}
        #: job id -> when (``clock``) it was last submitted or resumed here: the poller
        #: does not undo that with job states it read before.
        self._activated: dict[str, float] = {}
        self._stopping = False
        self._stop = threading.Event()
        self._poll_failing = False
        self._discarded = 0
        self._threads = [threading.Thread(target=self._work, name=f"blossom-batch-{i}", daemon=True)
                         for i in range(workers)]
        self._threads.append(threading.Thread(target=self._poller, name="blossom-batch-poller", daemon=True))
        for t in self._threads:
            t.start()

    # ----- public -------------------------------------------------------------------

    @property
    def alive_threads(self) -> int:
        """How many of the runner's threads are still running."""
        return sum(t.is_alive() for t in self._threads)

    @property
    def discarded(self) -> int:
        """Answers this replica got too late and threw away (its lease had expired and
        another replica claimed the row: the fencing token no longer matched)."""
        return self._discarded

    @property
    def lease_s(self) -> float:
        """Seconds a claim holds a row."""
        return self._leases.lease_s

    def submit(self, rows: Sequence[BatchRow], *, user: str, session: str = "", api_key: str | None = None,
               name: str = "") -> str:
        """Store a new job and start running it; returns its id (32 hex characters)."""
        job_id = self._db.create(rows, user=user, session=session, name=name, own_key=bool(api_key))
        self._activate(job_id, user=user, session=session, api_key=api_key)
        return job_id

    def resume(self, job_id: str, *, user: str, session: str = "", api_key: str | None = None,
               retry_failed: bool = False) -> int:
        """Run a stopped job's unfinished rows (and its failed ones if ``retry_failed``).

        Works from any replica; every replica may then work the job (only this one if
        ``api_key`` is given). Rows whose lease expired under a replica that stopped
        run again; their late answers, should they come, are discarded.

        Returns:
            How many rows were queued.

        Raises:
            InvalidRequest: the job is running, or has nothing left to run.
        """
        queued = self._db.reopen(job_id, session=session, own_key=bool(api_key), retry_failed=retry_failed)
        self._activate(job_id, user=user, session=session, api_key=api_key)
        return queued

    def cancel(self, job_id: str) -> None:
        """Stop a job, on whichever replicas run it: no further rows start; rows being
        answered finish and are kept (a row whose lease had expired is cancelled, and
        its late answer discarded)."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is not None:
                job.cancelled = True
                if job.idle:
                    self._forget(job)
            self._keys.pop(job_id, None)
        self._db.cancel(job_id)

    def delete(self, job_id: str) -> None:
        """Delete a stopped job and its rows.

        Raises:
            InvalidRequest: the job is running.
        """
        self._db.delete(job_id)

    def owner(self, job_id: str) -> str | None:
        """The user who started ``job_id``, or None if there is no such job."""
        return self._db.owner(job_id)

    def status(self, job_id: str) -> BatchStatus:
        """The job's counts, ETA and rate-limit wait, as every replica sees them.

        Raises:
            InvalidRequest: no such job.
        """
        self.reap()
        job = self._db.job(job_id)
        # The windows before the rows: a row claimed in between then counts as running
        # without its slot (an ETA a row short), not with its slot and not running (a row
        # counted twice, which at a window's edge reads a whole window longer).
        limits = self._gateway.limit_status(job["user"]) if job["status"] == JOB_RUNNING else None
        now = self._wall()
        counts, _ = self._db.counts(job_id, job["run_started_ts"])
        st = job_status(job, counts)
        waiting_s, scope = 0.0, ""
        if job["wait_until"] is not None and job["wait_until"] > now:
            waiting_s, scope = job["wait_until"] - now, job["wait_scope"] or ""
        with self._cond:
            active = self._jobs.get(job_id)
            if active is not None:
                if active.not_before > self._clock():  # fresher than what the poller wrote
                    waiting_s, scope = active.not_before - self._clock(), active.wait_scope
        if not st.active or limits is None:
            self._etas.forget(job_id)
            return replace(st, waiting_s=0.0)
        window = limits.batch or limits.user
        started = job["run_started_ts"]
        est = estimate_eta(remaining=st.remaining, finishes=recent_finishes(self._engine, job_id, started),
                           now=now, parallel=active.parallel if active is not None else self.workers,
                           running=st.running, rpm=window.limit,
                           free=min(window.remaining, limits.user.remaining), used=window.used,
                           reset_in_s=window.reset_in_s, waiting_s=waiting_s)
        return replace(st, eta_s=self._etas.smooth(job_id, est.eta_s, now), eta_paced=est.paced,
                       pace_rpm=window.limit, waiting_s=round(waiting_s, 1),
                       wait_reason=_WAIT_REASONS.get(scope, "") if waiting_s else "")

    def list(self, user: str | None, *, limit: int = 50) -> list[BatchStatus]:
        """The newest ``limit`` jobs of ``user`` (all users when None), newest first."""
        self.reap()
        return self._db.list(user, limit=limit)

    def results(self, job_id: str, *, limit: int | None = None) -> pd.DataFrame:
        """The job's rows in file order (``BatchJobs.results``).

        Raises:
            InvalidRequest: no such job.
        """
        return self._db.results(job_id, limit=limit)

    def reap(self) -> int:
        """End what no live replica will: finish running jobs with every row settled,
        and interrupt jobs run with a user's own key whose replica is gone
        (``BatchJobs.interrupt_orphans``, after ``STALE_AFTER_S``); their finished
        rows are kept.

        Returns:
            How many jobs were finished or interrupted.
        """
        ended = sum(self._leases.finish_if_done(job_id) for job_id in self._leases.settled_open_jobs())
        with self._cond:
            held = set(self._keys)
        return ended + self._db.interrupt_orphans(held, stale_after_s=STALE_AFTER_S)

    def close(self) -> None:
        """Stop the threads and hand this replica's rows back.

        Rows in flight are released (``pending``), so another replica, or this one
        after a restart, runs them at once; an answer that arrives later is
        discarded. Jobs stay ``running``, except those run with a user's own key held
        here, which become ``interrupted`` (resumable with the key).
        """
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            claims = [c for job in self._jobs.values() for c in job.in_flight.values()]
            keyed = list(self._keys)
            self._jobs.clear()
            self._order.clear()
            self._keys.clear()
            self._cond.notify_all()
        self._stop.set()
        try:
            self._leases.release(claims)
            self._db.interrupt(keyed)
        except Exception:  # shutting down: the leases expire and another replica takes the rows
            log.exception("could not hand batch rows back")

    # ----- internals ------------------------------------------------------------------

    def _activate(self, job_id: str, *, user: str, session: str, api_key: str | None) -> None:
        with self._cond:
            self._activated[job_id] = self._clock()
            if api_key:
                self._keys[job_id] = api_key
            else:
                self._keys.pop(job_id, None)
            job = self._jobs.get(job_id)
            if job is None or job.cancelled:
                if job is not None:
                    self._forget(job)
                self._jobs[job_id] = ActiveJob(job_id, user, session, self.workers)
                self._order.append(job_id)
            else:
                job.drained, job.session = False, session
            self._cond.notify_all()

    def _forget(self, job: ActiveJob) -> None:
        """Drop ``job`` from the schedule (caller holds the lock)."""
        job.ended = True
        if self._jobs.get(job.job_id) is job:
            del self._jobs[job.job_id]
            if job.job_id in self._order:
                self._order.remove(job.job_id)

    def _has_room(self, job: ActiveJob, now: float) -> bool:
        """Whether the user's, their batch share's and the global windows have a slot; else pause ``job``."""
        status = self._gateway.limit_status(job.user)
        for scope, window in (("user", status.user), ("batch", status.batch), ("global", status.global_)):
            if window is not None and window.remaining <= 0:
                job.not_before = now + min(max(window.reset_in_s, 0.05), MAX_WAIT_S)
                job.wait_scope = scope
                return False
        return True

    def _pick(self) -> tuple[ActiveJob | None, float | None]:
        """The next job to claim a row of (round-robin), or how long to wait (caller holds the lock)."""
        now = self._clock()
        wait: float | None = None
        for _ in range(len(self._order)):
            job = self._jobs[self._order[0]]
            self._order.rotate(-1)
            if job.cancelled or job.drained or len(job.in_flight) + job.reserved >= job.parallel:
                continue
            if job.wait_scope == "budget" and now < job.not_before and self._gateway.budget.budgets == job.budget_seen:
                wait = _sooner(wait, min(LIMIT_POLL_S, job.not_before - now))
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
            return job, None
        return None, wait

    def _next(self) -> tuple[ActiveJob, Claim] | None:
        """Claim the next row to run, or None when stopping."""
        while True:
            with self._cond:
                job: ActiveJob | None = None
                while not self._stopping:
                    job, wait = self._pick()
                    if job is not None:
                        job.reserved += 1
                        break
                    self._cond.wait(timeout=wait)
                if job is None:
                    return None
            failed = False
            try:
                claims = self._leases.claim(job.job_id, 1)
            except Exception:  # the database failed: the poller tries the job again
                log.warning("could not claim a row of batch job %s", job.job_id, exc_info=True)
                claims, failed = [], True
            with self._cond:
                job.reserved -= 1
                if claims and not self._stopping and not job.ended:
                    claim = claims[0]
                    job.in_flight[claim.idx] = claim
                    return job, claim
                job.drained = True
                idle = job.idle and not job.ended
                if idle:
                    self._forget(job)  # the poller brings it back when it has rows to claim
            if claims:  # stopping, or cancelled here under the claim
                self._leases.release(claims)
            elif idle and not failed:
                self._end_if_done(job.job_id)
            if failed:
                self._stop.wait(LIMIT_POLL_S)

    def _work(self) -> None:
        while (task := self._next()) is not None:
            job, claim = task
            try:
                values = self._answer(job, claim)
            except Exception:  # a bug must not kill the worker thread
                if self._stopping:  # the loop was stopped under the call: close() hands the row back
                    values = None
                else:
                    log.exception("batch row %s/%s failed unexpectedly", job.job_id, claim.idx)
                    values = {"status": ROW_ERROR, "error_type": "InternalError",
                              "error": "Internal error while answering this row (see the server log)."}
            saved = False
            try:
                if values is None:
                    self._leases.release([claim])
                elif not (saved := self._leases.save(claim, values)):
                    with self._cond:
                        self._discarded += 1
            except Exception:  # the row stays claimed until its lease expires, then runs again
                log.exception("could not save batch row %s/%s", job.job_id, claim.idx)
            self._done_with(job, claim, saved=saved)

    def _answer(self, job: ActiveJob, claim: Claim) -> dict[str, Any] | None:
        """Run one row; its columns to save, or None to hand it back (rate limit, stopping)."""
        row = claim.row
        with self._cond:
            key = self._keys.get(job.job_id)
        try:
            result = self._gateway.run(TextRequest(row.prompt, **row.params(), context=f"batch:{job.job_id}"),
                                       Caller(job.user, job.session, key, purpose="batch"))
        except RateLimited as err:
            upstream_until: float | None = None
            with self._cond:
                job.waits[claim.idx] += 1
                if self._stopping:
                    return None
                if job.cancelled:
                    return {"status": ROW_CANCELLED}
                if job.waits[claim.idx] <= MAX_RATE_LIMIT_WAITS:
                    pause = min(err.retry_after_s, MAX_WAIT_S)
                    job.not_before = max(job.not_before, self._clock() + pause)
                    job.wait_scope = err.scope
                    if err.scope == "upstream":
                        job.parallel = max(1, job.parallel // 2)
                        upstream_until = self._wall() + pause
                        job.shared_wait = (upstream_until, "upstream")
            if upstream_until is not None:
                self._share_wait(job.job_id, upstream_until, "upstream")  # every replica waits too
            if job.waits[claim.idx] <= MAX_RATE_LIMIT_WAITS:
                return None
            return _error_values(err)
        except BudgetExceeded as err:  # the job waits for its period to reset (or a raised budget); no row fails
            with self._cond:
                if not self._stopping and not job.cancelled:
                    job.not_before = max(job.not_before, self._clock() + err.retry_after_s)
                    job.wait_scope, job.budget_seen = "budget", self._gateway.budget.budgets
            return {"status": ROW_CANCELLED} if job.cancelled and not self._stopping else None
        except DashError as err:
            return None if self._stopping else _error_values(err)
        return {"status": ROW_OK, "answer": result.text, "answered_by": result.model,
                "latency_ms": round(result.latency_ms, 1), "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens, "cost": result.cost, "cached": result.cached,
                "request_id": result.request_id, "error": None, "error_type": None}

    def _done_with(self, job: ActiveJob, claim: Claim, *, saved: bool) -> None:
        with self._cond:
            if job.in_flight.get(claim.idx) is claim:
                del job.in_flight[claim.idx]
            if job.cancelled and job.idle:
                self._forget(job)
            self._cond.notify_all()
        if saved:
            self._end_if_done(job.job_id)

    def _end_if_done(self, job_id: str) -> None:
        """Finish the job if its last row is settled (exactly one replica does)."""
        try:
            if self._leases.finish_if_done(job_id):
                with self._cond:
                    self._keys.pop(job_id, None)
                    if (job := self._jobs.get(job_id)) is not None and job.idle:
                        self._forget(job)
        except Exception:  # the poller's reap finishes it later
            log.warning("could not finish batch job %s", job_id, exc_info=True)

    def _share_wait(self, job_id: str, until: float | None, scope: str | None) -> None:
        try:
            self._db.share_wait(job_id, until, scope)
        except Exception:  # only the page's wait notice and other replicas' pause miss it
            log.warning("could not record the wait of batch job %s", job_id, exc_info=True)

    # ----- the poller -----------------------------------------------------------------

    def _poll_period(self) -> float:
        return min(POLL_S, self.lease_s / 3) * random.uniform(0.8, 1.2)

    def _poller(self) -> None:
        beats = 0
        while not self._stop.is_set():
            try:
                self._poll(heartbeat=beats % max(1, round(HEARTBEAT_S / POLL_S)) == 0)
                if self._poll_failing:
                    log.warning("batch poller: the database answers again")
                self._poll_failing = False
            except Exception:  # the database failed: try again on the next round, say so once
                if not self._poll_failing:
                    log.warning("batch poller: the database failed; retrying every second", exc_info=True)
                self._poll_failing = True
            beats += 1
            self._stop.wait(self._poll_period())

    def _poll(self, *, heartbeat: bool) -> None:
        """One round: renew leases, pick up runnable jobs, notice cancels, share waits, reap."""
        with self._cond:
            if self._stopping:
                return
            due = [c for job in self._jobs.values() for c in job.in_flight.values()
                   if self._wall() - c.renewed >= self.lease_s / 3]
        for lost in self._leases.renew(due):
            log.warning("batch row %s/%s: lease lost to another replica (this replica stalled past "
                        "its lease); its answer will be discarded", lost.job_id, lost.idx)
        found = self._leases.runnable_jobs()
        with self._cond:
            for j in found:
                if j["own_key"] and j["id"] not in self._keys:
                    continue  # only the replica holding the user's key may send its rows
                job = self._jobs.get(j["id"])
                if job is None:
                    self._jobs[j["id"]] = ActiveJob(j["id"], j["user"], j["session"], self.workers)
                    self._order.append(j["id"])
                else:
                    job.drained = False
            ids = set(self._jobs) | set(self._keys)
            self._cond.notify_all()
        read_at = self._clock()
        states = self._leases.states(ids)
        waits: list[tuple[str, float | None, str | None]] = []
        with self._cond:
            self._activated = {i: t for i, t in self._activated.items() if t >= read_at}

            def stopped(job_id: str) -> bool:  # cancelled, finished or deleted (on any replica)
                return states.get(job_id) != JOB_RUNNING and job_id not in self._activated

            for job_id in [i for i in self._keys if stopped(i)]:
                del self._keys[job_id]
            keyed = list(self._keys)
            for job in list(self._jobs.values()):
                if stopped(job.job_id):
                    job.cancelled = True
                    if job.idle:
                        self._forget(job)
                    continue
                left = job.not_before - self._clock()
                want = (self._wall() + left, job.wait_scope) if left > 0 else (None, None)
                have = job.shared_wait
                if want[1] != have[1] or (want[0] is not None and abs(want[0] - (have[0] or 0.0)) > 1.0):
                    job.shared_wait = want
                    waits.append((job.job_id, *want))
        for job_id, until, scope in waits:
            self._share_wait(job_id, until, scope)
        if heartbeat:
            self._db.stamp(keyed)
            self.reap()


def _sooner(wait: float | None, candidate: float) -> float:
    return candidate if wait is None else min(wait, candidate)


def _error_values(err: DashError) -> dict[str, Any]:
    message = err.message + (f" {err.hint}" if err.hint else "")
    return {"status": ROW_ERROR, "error": message, "error_type": type(err).__name__}
