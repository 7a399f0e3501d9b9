"""Leased batch rows: how replicas share a job's rows without answering one twice.

A replica **claims** a row before it sends it: the row becomes ``running``, with
``lease_owner`` (the replica's id), ``lease_until`` (now + the lease) and its ``fence``
(the fencing token) raised by one. Only ``pending`` rows, and ``running`` rows whose
lease has expired (their replica stalled or died), of a ``running`` job can be claimed.
The answer is **saved** only if the row still carries the claim's token and is still
``running``; a replica that stalled past its lease, and whose row was claimed again in
the meantime, finds the token changed and its late answer is discarded (logged), so a
row is answered once (Kleppmann, *Designing Data-Intensive Applications*, ch. 8,
"fencing tokens"). A holder **renews** its leases while a request is in flight, so a
request longer than the lease does not lose its row.

Every statement here is ONE SQL statement run in autocommit mode. On PostgreSQL the
claim is ``WITH pick AS MATERIALIZED (SELECT … LIMIT n FOR UPDATE SKIP LOCKED) UPDATE …
FROM pick … RETURNING``:
concurrent claimers skip each other's rows instead of waiting, and a replica frozen
between the statements of a longer transaction (``SIGSTOP``, a long GC or VM pause)
would keep its rows locked past its lease, where one statement commits on the server
whatever the client does next. SQLite ignores ``FOR UPDATE`` and runs the same
statement under its single writer lock, which is just as exclusive.

Times are epoch seconds from the replica's clock (``wall``): replicas' clocks must
agree to well within a lease (NTP does).

We write this rather than use a queue library (Celery, RQ, procrastinate): the rows
already live in the usage database with the job's results, and a lease, a token and
``SKIP LOCKED`` are three columns and four statements; a broker would add a service to
run and a second copy of every row's state to keep in step.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, tuple_, update
from sqlalchemy.engine import Engine

from .batch_files import BatchRow
from .batch_tables import (
    JOB_FINISHED,
    JOB_RUNNING,
    ROW_PENDING,
    ROW_RUNNING,
    ROW_SETTLED,
    batch_jobs,
    batch_rows,
)

log = logging.getLogger("blossom_dash.batch")

__all__ = ["ActiveJob", "Claim", "RowLeases"]


@dataclass(eq=False)
class Claim:
    """A row this replica holds: its key, its fencing token and its inputs.

    Attributes:
        job_id / idx: The row's key.
        fence: The token of this claim; the save must carry it.
        row: The row's inputs.
        renewed: ``wall`` time of the claim or of its last renewal (epoch s).
    """

    job_id: str
    idx: int
    fence: int
    row: BatchRow = field(repr=False)
    renewed: float = 0.0


def _runnable(now: float, table: Any = batch_rows) -> Any:
    """Rows of ``table`` a claim may take at ``now``: pending, or running with an expired lease."""
    r = table.c
    return or_(r.status == ROW_PENDING, and_(r.status == ROW_RUNNING, r.lease_until < now))


class RowLeases:
    """The SQL of leased rows, for one replica (``owner``).

    Args:
        engine: The usage database holding ``batch_jobs`` and ``batch_rows``.
        owner: This replica's id (``"<host>/<pid>/<random>"``), stored in ``lease_owner``.
        lease_s: Seconds a claim (or a renewal) holds a row.
        wall: Epoch seconds (injectable for tests).
    """

    def __init__(self, engine: Engine, owner: str, *, lease_s: float,
                 wall: Callable[[], float] = time.time) -> None:
        self._auto = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.owner = owner
        self.lease_s = float(lease_s)
        self._wall = wall

    def claim(self, job_id: str, n: int = 1) -> list[Claim]:
        """Claim up to ``n`` runnable rows of ``job_id``, lowest index first.

        Nothing is claimed when the job is not ``running`` (cancelled on any replica)
        or waits for a backend's Retry-After (``wait_until`` in the future, scope
        ``upstream``; a wait for our own limits is each replica's to check).

        Returns:
            The claims (empty: nothing to run now).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed.
        """
        now = self._wall()
        r, j = batch_rows.c, batch_jobs.c
        job_open = exists().where(j.id == job_id, j.status == JOB_RUNNING,
                                  or_(j.wait_until.is_(None), j.wait_until <= now,
                                      func.coalesce(j.wait_scope, "") != "upstream"))
        # A MATERIALIZED CTE, run once: as "idx IN (SELECT … LIMIT n FOR UPDATE SKIP
        # LOCKED)" PostgreSQL may rescan the subquery for each row it updates, and each
        # scan skips the rows the last one locked, so more than n rows get claimed.
        p = batch_rows.alias("candidates")
        pick = (select(p.c.job_id, p.c.idx).where(p.c.job_id == job_id, _runnable(now, p), job_open)
                .order_by(p.c.idx).limit(n).with_for_update(skip_locked=True)
                .cte("pick").prefix_with("MATERIALIZED"))
        stmt = (update(batch_rows)
                .where(r.job_id == pick.c.job_id, r.idx == pick.c.idx, _runnable(now))
                .values(status=ROW_RUNNING, lease_owner=self.owner, lease_until=now + self.lease_s,
                        fence=r.fence + 1)
                .returning(r.idx, r.fence, r.row_no, r.prompt, r.model, r.system, r.temperature, r.max_tokens,
                           r.seed))
        with self._auto.connect() as conn:
            found = conn.execute(stmt).all()
        return sorted((Claim(job_id, x.idx, x.fence, BatchRow(row=x.row_no, prompt=x.prompt, model=x.model,
                                                               system=x.system, temperature=x.temperature,
                                                               max_tokens=x.max_tokens, seed=x.seed), now)
                       for x in found), key=lambda c: c.idx)

    def save(self, claim: Claim, values: Mapping[str, Any]) -> bool:
        """Store a row's outcome if ``claim`` still holds it (same token, still running).

        Returns:
            True if stored; False if the row was claimed again (or released, or
            cancelled after its lease expired): the outcome is discarded.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed.
        """
        r = batch_rows.c
        with self._auto.connect() as conn:
            stored = conn.execute(update(batch_rows).where(
                r.job_id == claim.job_id, r.idx == claim.idx, r.fence == claim.fence, r.status == ROW_RUNNING)
                .values(**values, finished_ts=self._wall(), lease_owner=None, lease_until=None)).rowcount
        if not stored:
            log.warning("batch row %s/%s: a late answer was discarded (fencing token %s is stale: the lease "
                        "expired and another replica claimed the row)", claim.job_id, claim.idx, claim.fence)
        return bool(stored)

    def release(self, claims: Iterable[Claim]) -> int:
        """Hand rows back (``pending``) so that any replica claims them at once.

        Returns:
            How many were still held and are released.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed.
        """
        keys = [(c.job_id, c.idx, c.fence) for c in claims]
        if not keys:
            return 0
        r = batch_rows.c
        with self._auto.connect() as conn:
            return int(conn.execute(update(batch_rows).where(
                tuple_(r.job_id, r.idx, r.fence).in_(keys), r.status == ROW_RUNNING)
                .values(status=ROW_PENDING, lease_owner=None, lease_until=None)).rowcount or 0)

    def renew(self, claims: Sequence[Claim]) -> list[Claim]:
        """Push the lease of ``claims`` to now + ``lease_s``.

        Returns:
            The claims that are lost (their row was claimed again: token changed);
            their answers will be discarded by ``save``.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed.
        """
        if not claims:
            return []
        now = self._wall()
        r = batch_rows.c
        with self._auto.connect() as conn:
            kept = conn.execute(update(batch_rows).where(
                tuple_(r.job_id, r.idx, r.fence).in_([(c.job_id, c.idx, c.fence) for c in claims]),
                r.status == ROW_RUNNING)
                .values(lease_until=now + self.lease_s).returning(r.job_id, r.idx)).all()
        held = {(k.job_id, k.idx) for k in kept}
        for c in claims:
            if (c.job_id, c.idx) in held:
                c.renewed = now
        return [c for c in claims if (c.job_id, c.idx) not in held]

    def finish_if_done(self, job_id: str) -> bool:
        """Mark ``job_id`` finished if it is running and has no pending or running row.

        One conditional statement, so of the replicas that answer a job's last rows
        exactly one finishes it.

        Returns:
            Whether this call finished it.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed.
        """
        r, j = batch_rows.c, batch_jobs.c
        open_rows = exists().where(r.job_id == job_id, r.status.not_in(ROW_SETTLED))
        with self._auto.connect() as conn:
            return bool(conn.execute(update(batch_jobs).where(j.id == job_id, j.status == JOB_RUNNING, ~open_rows)
                                     .values(status=JOB_FINISHED, finished_ts=self._wall(), wait_until=None,
                                             wait_scope=None)).rowcount)

    def runnable_jobs(self) -> list[Mapping[str, Any]]:
        """Running jobs with a row a claim could take now (any replica's).

        Returns:
            Mappings with ``id``, ``user``, ``session``, ``own_key``.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed.
        """
        now = self._wall()
        r, j = batch_rows.c, batch_jobs.c
        has_rows = exists().where(r.job_id == j.id, _runnable(now))
        with self._auto.connect() as conn:
            return list(conn.execute(select(j.id, j.user, j.session, j.own_key)
                                     .where(j.status == JOB_RUNNING, has_rows)
                                     .order_by(j.created_ts)).mappings().all())

    def states(self, job_ids: Iterable[str]) -> dict[str, str]:
        """``{job_id: status}`` of those jobs that exist."""
        ids = list(job_ids)
        if not ids:
            return {}
        with self._auto.connect() as conn:
            return dict(conn.execute(select(batch_jobs.c.id, batch_jobs.c.status)
                                     .where(batch_jobs.c.id.in_(ids))).all())

    def settled_open_jobs(self) -> list[str]:
        """Running jobs with no pending or running row left (their finisher failed or
        never ran, or they had no rows): ``finish_if_done`` ends them."""
        r, j = batch_rows.c, batch_jobs.c
        open_rows = exists().where(r.job_id == j.id, r.status.not_in(ROW_SETTLED))
        with self._auto.connect() as conn:
            return list(conn.execute(select(j.id).where(j.status == JOB_RUNNING, ~open_rows)).scalars())

    def running_count(self, job_id: str) -> int:
        """Rows of ``job_id`` claimed right now (live leases, any replica)."""
        r = batch_rows.c
        with self._auto.connect() as conn:
            return int(conn.execute(select(func.count()).where(
                r.job_id == job_id, r.status == ROW_RUNNING, r.lease_until >= self._wall())).scalar() or 0)


@dataclass(eq=False)
class ActiveJob:
    """A job this replica is working, with the claims it holds (in memory; the database has
    the durable state). ``BatchRunner``'s bookkeeping, one per job it works."""

    job_id: str
    user: str
    session: str
    parallel: int
    in_flight: dict[int, Claim] = field(default_factory=dict)  # idx -> this replica's claim
    reserved: int = 0  # workers claiming a row of this job right now
    drained: bool = False  # the last claim found nothing; the poller looks again
    cancelled: bool = False
    not_before: float = 0.0  # monotonic s: paused on a rate limit until then
    wait_scope: str = ""  # "user" / "global" / "batch" (our limiter), "upstream" (a 429), "budget"
    waits: Counter[int] = field(default_factory=Counter)
    shared_wait: tuple[float | None, str | None] = (None, None)  # what we wrote to the job's row
    budget_seen: Any = None  # the budgets in force when one refused a row (a change resumes the job)
    ended: bool = False

    @property
    def idle(self) -> bool:
        return not self.in_flight and not self.reserved
