"""The SQL of batch jobs: create, resume, cancel, delete and read them, on any replica.

``BatchJobs`` is the job-level half of the batch tables (``batch_tables``); the row
leases are ``batch_leases``, the threads ``batch_runner``. Every method is a short
transaction on the shared usage database, so what one replica does (a cancel, a
resume) every other sees at its next look.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

import pandas as pd
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.engine import Engine

from ..errors import InvalidRequest
from .batch_files import BatchRow
from .batch_tables import (
    JOB_CANCELLED,
    JOB_INTERRUPTED,
    JOB_RUNNING,
    RESULT_COLUMNS,
    ROW_CANCELLED,
    ROW_ERROR,
    ROW_OK,
    ROW_PENDING,
    ROW_RUNNING,
    BatchStatus,
    batch_jobs,
    batch_rows,
)

__all__ = ["BatchJobs", "check_owner", "job_status", "local_runner_dead"]


class _Owners(Protocol):
    def owner(self, job_id: str) -> str | None: ...


def check_owner(jobs: _Owners, job_id: object, user: str | None) -> str:
    """``job_id`` if it names a job of ``user`` (any user when None), as ``jobs.owner``
    (a ``BatchRunner`` or ``BatchJobs``) tells.

    Raises:
        InvalidRequest: no such job, or another user's (which is not revealed).
    """
    if not isinstance(job_id, str) or not job_id:
        raise InvalidRequest("No batch job was given.", "Pick one of your jobs from the list.")
    owner = jobs.owner(job_id)
    if owner is None or (user is not None and owner != user):
        raise InvalidRequest(f"There is no batch job {job_id[:40]!r} among your jobs.",
                             "Pick one of your jobs from the list.")
    return job_id


def job_status(job: Mapping[str, Any], counts: Mapping[str, int], **extra: Any) -> BatchStatus:
    """A ``BatchStatus`` from a ``batch_jobs`` row and its rows' ``{status: count}``."""
    return BatchStatus(job_id=job["id"], name=job["name"], user=job["user"], status=job["status"],
                       total=int(job["total"]), done=counts.get(ROW_OK, 0), failed=counts.get(ROW_ERROR, 0),
                       cancelled=counts.get(ROW_CANCELLED, 0), running=counts.get(ROW_RUNNING, 0),
                       created_ts=job["created_ts"], finished_ts=job["finished_ts"], **extra)


def local_runner_dead(runner_id: str) -> bool:
    """Whether ``runner_id`` (``"<host>/<pid>/<random>"``) names a process on this host
    that no longer exists (False for another host: we cannot tell)."""
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


class BatchJobs:
    """Jobs in the usage database, for one replica (``runner_id``).

    Args:
        engine: The usage database (the batch tables exist: ``ensure_batch_schema``).
        runner_id: This replica's id, recorded on the jobs it submits or resumes.
        wall: Epoch seconds (injectable for tests).
    """

    def __init__(self, engine: Engine, runner_id: str, *, wall: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self.runner_id = runner_id
        self._wall = wall

    def create(self, rows: Sequence[BatchRow], *, user: str, session: str, name: str, own_key: bool) -> str:
        """Store a new running job with its rows pending; returns its id (32 hex characters)."""
        job_id, now = uuid.uuid4().hex, self._wall()
        with self._engine.begin() as conn:
            conn.execute(insert(batch_jobs).values(
                id=job_id, user=user, session=session, name=name[:256], status=JOB_RUNNING, total=len(rows),
                created_ts=now, run_started_ts=now, finished_ts=None, heartbeat_ts=now, runner_id=self.runner_id,
                own_key=own_key))
            conn.execute(insert(batch_rows), [
                {"job_id": job_id, "idx": i, "row_no": r.row, "prompt": r.prompt, "model": r.model,
                 "system": r.system, "temperature": r.temperature, "max_tokens": r.max_tokens, "seed": r.seed,
                 "status": ROW_PENDING, "fence": 0} for i, r in enumerate(rows)])
        return job_id

    def reopen(self, job_id: str, *, session: str, own_key: bool, retry_failed: bool) -> int:
        """Make a stopped job running again with its unfinished rows (and failed ones
        if ``retry_failed``) pending; rows whose lease expired run again too.

        Returns:
            How many rows are pending.

        Raises:
            InvalidRequest: the job is running, or has nothing left to run.
        """
        if self.job(job_id)["status"] == JOB_RUNNING:
            raise InvalidRequest("This job is still running.", "Wait for it to finish, or cancel it first.")
        again = [ROW_PENDING, ROW_CANCELLED] + ([ROW_ERROR] if retry_failed else [])
        now = self._wall()
        r = batch_rows.c
        with self._engine.begin() as conn:
            claimed = conn.execute(update(batch_jobs).where(batch_jobs.c.id == job_id,
                                                            batch_jobs.c.status != JOB_RUNNING)
                                   .values(status=JOB_RUNNING, run_started_ts=now, finished_ts=None,
                                           heartbeat_ts=now, runner_id=self.runner_id, session=session,
                                           own_key=own_key, wait_until=None, wait_scope=None)).rowcount
            if not claimed:
                raise InvalidRequest("This job has just been started again.", "Watch its progress below.")
            conn.execute(update(batch_rows).where(
                r.job_id == job_id,
                or_(r.status.in_(again), (r.status == ROW_RUNNING) & (r.lease_until < now)))
                .values(status=ROW_PENDING, error=None, error_type=None, lease_owner=None, lease_until=None))
            queued = conn.execute(select(func.count()).where(r.job_id == job_id, r.status == ROW_PENDING)).scalar()
            if not queued:  # leaving the block by an exception rolls the claim back
                raise InvalidRequest("This job has no rows left to run.", "Upload a new file to run more prompts.")
        return int(queued)

    def cancel(self, job_id: str) -> None:
        """Cancel a running or interrupted job: pending rows, and running rows whose
        lease has expired, become ``cancelled``; rows under a live lease finish."""
        now = self._wall()
        r = batch_rows.c
        with self._engine.begin() as conn:
            conn.execute(update(batch_jobs).where(batch_jobs.c.id == job_id,
                                                  batch_jobs.c.status.in_([JOB_RUNNING, JOB_INTERRUPTED]))
                         .values(status=JOB_CANCELLED, finished_ts=now, wait_until=None, wait_scope=None))
            conn.execute(update(batch_rows).where(
                r.job_id == job_id,
                or_(r.status == ROW_PENDING, (r.status == ROW_RUNNING) & (r.lease_until < now)))
                .values(status=ROW_CANCELLED, finished_ts=now, lease_owner=None, lease_until=None))

    def delete(self, job_id: str) -> None:
        """Delete a stopped job and its rows.

        Raises:
            InvalidRequest: no such job, or it is running.
        """
        if self.job(job_id)["status"] == JOB_RUNNING:
            raise InvalidRequest("A running job cannot be deleted.", "Cancel it first.")
        with self._engine.begin() as conn:
            conn.execute(delete(batch_rows).where(batch_rows.c.job_id == job_id))
            conn.execute(delete(batch_jobs).where(batch_jobs.c.id == job_id))

    def owner(self, job_id: str) -> str | None:
        """The user who started ``job_id``, or None if there is no such job."""
        with self._engine.connect() as conn:
            return conn.execute(select(batch_jobs.c.user).where(batch_jobs.c.id == job_id)).scalar()

    def job(self, job_id: str) -> Mapping[str, Any]:
        """The job's ``batch_jobs`` row.

        Raises:
            InvalidRequest: no such job.
        """
        with self._engine.connect() as conn:
            job = conn.execute(select(batch_jobs).where(batch_jobs.c.id == job_id)).mappings().first()
        if job is None:
            raise InvalidRequest(f"There is no batch job {str(job_id)[:40]!r}.",
                                 "Pick one of your jobs from the list.")
        return job

    def counts(self, job_id: str, since_ts: float) -> tuple[dict[str, int], int]:
        """``({row status: count}, rows answered or failed since since_ts)`` of a job."""
        r = batch_rows.c
        with self._engine.connect() as conn:
            counts = dict(conn.execute(select(r.status, func.count()).where(r.job_id == job_id)
                                       .group_by(r.status)).all())
            recent = conn.execute(select(func.count()).where(
                r.job_id == job_id, r.status.in_([ROW_OK, ROW_ERROR]), r.finished_ts >= since_ts)).scalar() or 0
        return counts, int(recent)

    def list(self, user: str | None, *, limit: int = 50) -> list[BatchStatus]:
        """The newest ``limit`` jobs of ``user`` (all users when None), newest first."""
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
        return [job_status(j, counts[j["id"]]) for j in jobs]

    def results(self, job_id: str, *, limit: int | None = None) -> pd.DataFrame:
        """The job's rows in file order (the first ``limit``), with answers and errors
        (``RESULT_COLUMNS``); ``status`` is ``pending``, ``running`` (claimed by a
        replica), ``ok``, ``error`` or ``cancelled``.

        Raises:
            InvalidRequest: no such job.
        """
        self.job(job_id)
        r = batch_rows.c
        query = (select(r.row_no.label("row"), r.prompt, r.model, r.system, r.temperature, r.max_tokens, r.seed,
                        r.status, r.answer, r.answered_by, r.latency_ms, r.prompt_tokens, r.completion_tokens,
                        r.cost, r.cached, r.request_id, r.error)
                 .where(r.job_id == job_id).order_by(r.idx).limit(limit))
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        df = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
        for col in ("max_tokens", "seed", "prompt_tokens", "completion_tokens"):
            df[col] = df[col].astype("Int64")
        df["cached"] = df["cached"].astype("boolean")
        return df

    def interrupt_orphans(self, held: Collection[str], *, stale_after_s: float) -> int:
        """Interrupt running jobs run with a user's own key whose replica is gone: its
        process on this host no longer exists, or it has not stamped the job for
        ``stale_after_s`` (and ``held``, the jobs whose key this replica has, are not
        among them). Their finished rows are kept; ``reopen`` runs the rest.

        Returns:
            How many jobs were interrupted.
        """
        now = self._wall()
        j = batch_jobs.c
        with self._engine.connect() as conn:
            candidates = conn.execute(select(j.id, j.runner_id, j.heartbeat_ts)
                                      .where(j.status == JOB_RUNNING, j.own_key.is_(True),
                                             j.runner_id != self.runner_id)).all()
        dead = [job_id for job_id, runner, beat in candidates
                if job_id not in held and (beat < now - stale_after_s or local_runner_dead(runner))]
        if not dead:
            return 0
        with self._engine.begin() as conn:
            return int(conn.execute(update(batch_jobs).where(j.id.in_(dead), j.status == JOB_RUNNING,
                                                             j.runner_id != self.runner_id)
                                    .values(status=JOB_INTERRUPTED, finished_ts=now)).rowcount or 0)

    def interrupt(self, job_ids: Collection[str]) -> None:
        """Interrupt those running ``job_ids`` that this replica holds the key of (it stops)."""
        if job_ids:
            with self._engine.begin() as conn:
                conn.execute(update(batch_jobs).where(batch_jobs.c.id.in_(list(job_ids)),
                                                      batch_jobs.c.status == JOB_RUNNING,
                                                      batch_jobs.c.runner_id == self.runner_id)
                             .values(status=JOB_INTERRUPTED, finished_ts=self._wall()))

    def stamp(self, job_ids: Collection[str]) -> None:
        """Record that this replica is alive and holds the key of ``job_ids``."""
        if job_ids:
            with self._engine.begin() as conn:
                conn.execute(update(batch_jobs).where(batch_jobs.c.id.in_(list(job_ids)),
                                                      batch_jobs.c.status == JOB_RUNNING)
                             .values(heartbeat_ts=self._wall(), runner_id=self.runner_id))

    def share_wait(self, job_id: str, until: float | None, scope: str | None) -> None:
        """Record a running job's rate-limit pause (epoch s, ``user``/``global``/``upstream``;
        None: not waiting): every replica's page shows it, and an ``upstream`` one holds
        every replica's claims until ``until`` (``RowLeases.claim``)."""
        with self._engine.begin() as conn:
            conn.execute(update(batch_jobs).where(batch_jobs.c.id == job_id, batch_jobs.c.status == JOB_RUNNING)
                         .values(wait_until=until, wait_scope=scope))
