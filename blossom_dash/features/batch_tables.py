"""Batch persistence: the ``batch_jobs`` and ``batch_rows`` tables, and a job's status.

The tables are on the shared ``store.metadata`` and are created on first use in the
usage database (``ensure_batch_schema``, called by ``BatchRunner``; it also adds the
lease columns to the tables of an older data directory). A job's state and results
survive a browser reload and a restart of the server, and every replica on the same
database sees them. ``BatchStatus`` is where a job stands, as read from them;
``store_errors`` turns a database failure into a ``DashError``.

A row is ``pending``, ``running`` (claimed by a replica: ``lease_owner`` holds it until
``lease_until``, and ``fence`` is the claim's fencing token, raised by every claim),
then ``ok``, ``error`` or ``cancelled``. See ``batch_leases`` for the rules.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Boolean, Column, Float, Index, Integer, String, Table, Text, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..errors import BackendUnavailable
from ..telemetry.store import Pollen, lock_schema, metadata

log = logging.getLogger("blossom_dash.batch")

JOB_RUNNING, JOB_FINISHED, JOB_CANCELLED, JOB_INTERRUPTED = "running", "finished", "cancelled", "interrupted"
ROW_PENDING, ROW_RUNNING, ROW_OK, ROW_ERROR, ROW_CANCELLED = "pending", "running", "ok", "error", "cancelled"
#: Row states that are settled: a claim never takes them, a resume may run some again.
ROW_SETTLED = (ROW_OK, ROW_ERROR, ROW_CANCELLED)

batch_jobs = Table(
    "batch_jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user", String(128), nullable=False, index=True),
    Column("session", String(64), nullable=False, default=""),
    Column("name", String(256), nullable=False, default=""),
    Column("status", String(16), nullable=False, index=True),
    Column("total", Integer, nullable=False),
    Column("created_ts", Float, nullable=False),  # epoch seconds, UTC
    Column("run_started_ts", Float, nullable=False),  # start of the current run (submit or resume)
    Column("finished_ts", Float, nullable=True),
    Column("heartbeat_ts", Float, nullable=False),  # last stamp of a replica holding its key (own_key)
    Column("runner_id", String(128), nullable=False),  # who submitted or resumed it: "<host>/<pid>/<random>"
    # The job runs with its user's own API key, which only the replica it was given to
    # holds (in memory): only that replica works its rows (see BatchRunner).
    Column("own_key", Boolean, nullable=False, default=False, server_default="0"),
    # A backend's 429 pauses the job on every replica until then (epoch s); our own
    # limits pause it too (shown on the page), but each replica checks those itself.
    Column("wait_until", Float, nullable=True),
    Column("wait_scope", String(16), nullable=True),  # "user", "global" or "upstream"
)

batch_rows = Table(
    "batch_rows",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("idx", Integer, primary_key=True),  # 0-based position in the job
    Column("row_no", Integer, nullable=False),  # the row number in the uploaded file (header = 1)
    Column("prompt", Text, nullable=False),
    Column("model", String(128), nullable=True),
    Column("system", Text, nullable=True),
    Column("temperature", Float, nullable=True),
    Column("max_tokens", Integer, nullable=True),
    Column("seed", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("answer", Text, nullable=True),
    Column("answered_by", String(128), nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("cached", Boolean, nullable=True),
    Column("request_id", String(32), nullable=True),
    Column("error", Text, nullable=True),
    Column("error_type", String(64), nullable=True),
    Column("finished_ts", Float, nullable=True),
    Column("lease_owner", String(128), nullable=True),  # the replica holding a running row
    Column("lease_until", Float, nullable=True),  # epoch s: after this, any replica may claim it again
    Column("fence", Integer, nullable=False, default=0, server_default="0"),  # fencing token, +1 per claim
    Column("cost", Pollen(), nullable=True),  # pollen (a cached answer: what it saved); NULL: unpriced
    Index("ix_batch_rows_job_status", "job_id", "status"),
)

#: Columns added after the first release, per table: ``ensure_batch_schema`` adds those
#: an existing database lacks (``create_all`` never alters a table that exists).
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    "batch_jobs": ("own_key", "wait_until", "wait_scope"),
    "batch_rows": ("lease_owner", "lease_until", "fence", "cost"),
}


def ensure_batch_schema(engine: Engine) -> list[str]:
    """Create the batch tables, or add the columns an older database lacks, in one
    transaction under the schema lock (so replicas may start at once on PostgreSQL).

    Rows of an older database get ``fence`` 0 and no lease (a ``running`` job of an
    older version has only ``pending`` and settled rows, which is what a claim expects).

    Returns:
        The columns added, as ``table.column`` (empty for a new or current database).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database refused.
    """
    added: list[str] = []
    with engine.begin() as conn:
        lock_schema(conn)
        metadata.create_all(conn, tables=[batch_jobs, batch_rows])
        inspector = inspect(conn)
        for table in (batch_jobs, batch_rows):
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for name in ADDED_COLUMNS[table.name]:
                if name in have:
                    continue
                column = table.c[name]
                ddl = f"ALTER TABLE {table.name} ADD COLUMN {name} {column.type.compile(dialect=conn.dialect)}"
                if column.server_default is not None:
                    default = str(column.server_default.arg)
                    if isinstance(column.type, Boolean) and conn.dialect.name == "postgresql":
                        default = "false" if default == "0" else "true"
                    ddl += f" NOT NULL DEFAULT {default}"
                conn.execute(text(ddl))
                added.append(f"{table.name}.{name}")
    return added

#: Columns of ``batch_results`` and of the downloads, in order.
RESULT_COLUMNS: tuple[str, ...] = (
    "row", "prompt", "model", "system", "temperature", "max_tokens", "seed", "status", "answer",
    "answered_by", "latency_ms", "prompt_tokens", "completion_tokens", "cost", "cached", "request_id", "error",
)

# ----- status --------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchStatus:
    """Where a job stands.

    Attributes:
        status: ``running``, ``finished``, ``cancelled`` or ``interrupted`` (it ran
            with its user's own key and the replica holding that key stopped; the
            finished rows are kept and ``resume`` runs the rest).
        total: Rows in the job.
        done / failed / cancelled: Rows answered, failed, skipped by a cancel.
        running: Rows claimed right now, by any replica.
        created_ts / finished_ts: Epoch seconds.
        eta_s: Estimated seconds to finish (running jobs; ``batch_eta``): None until a
            row has settled, unless the rate limit alone already says how long.
        eta_paced: Whether the rate limit, not the rows' own pace, sets ``eta_s``.
        pace_rpm: Requests per minute the job's rows may take (the user's batch share
            of their limit), for a running job; None otherwise.
        waiting_s: Seconds until the job tries again after a rate limit (0: not waiting).
        wait_reason: Which limit it waits for, in words.
    """

    job_id: str
    name: str
    user: str
    status: str
    total: int
    done: int
    failed: int
    cancelled: int
    running: int
    created_ts: float
    finished_ts: float | None
    eta_s: float | None = None
    waiting_s: float = 0.0
    wait_reason: str = ""
    eta_paced: bool = False
    pace_rpm: int | None = None

    @property
    def remaining(self) -> int:
        """Rows not yet answered nor failed nor cancelled."""
        return max(0, self.total - self.done - self.failed - self.cancelled)

    @property
    def active(self) -> bool:
        """Whether the job is running."""
        return self.status == JOB_RUNNING

    @property
    def resumable(self) -> bool:
        """Whether ``resume`` has rows to run (interrupted or cancelled, rows left)."""
        return self.status in (JOB_INTERRUPTED, JOB_CANCELLED) and self.remaining + self.cancelled > 0


# ----- database errors -----------------------------------------------------------------


@contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Turn a database failure into ``BackendUnavailable`` (only ``DashError`` leaves the service).

    Args:
        what: What was being done, for the message ("read", "saved").
    """
    try:
        yield
    except SQLAlchemyError as exc:
        log.exception("batch store: could not be %s", what)
        raise BackendUnavailable(f"The batch job could not be {what}: the database failed "
                                 f"({type(exc).__name__}).",
                                 "Try again in a moment; if it repeats, check BLOSSOM_DASH_DATA_DIR or "
                                 "BLOSSOM_DASH_DATABASE_URL.") from None
