"""Batch persistence: the ``batch_jobs`` and ``batch_rows`` tables, and a job's status.

The tables are on the shared ``store.metadata`` and are created on first use in the
usage database (by ``BatchRunner``). A job's state and results survive a browser
reload and a restart of the server. ``BatchStatus`` is where a job stands, as read
from them; ``store_errors`` turns a database failure into a ``DashError``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Boolean, Column, Float, Index, Integer, String, Table, Text
from sqlalchemy.exc import SQLAlchemyError

from ..errors import BackendUnavailable
from ..telemetry.store import metadata

log = logging.getLogger("blossom_dash.batch")

JOB_RUNNING, JOB_FINISHED, JOB_CANCELLED, JOB_INTERRUPTED = "running", "finished", "cancelled", "interrupted"
ROW_PENDING, ROW_OK, ROW_ERROR, ROW_CANCELLED = "pending", "ok", "error", "cancelled"

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
    Column("heartbeat_ts", Float, nullable=False),
    Column("runner_id", String(128), nullable=False),  # "<host>/<pid>/<random>"
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
    Index("ix_batch_rows_job_status", "job_id", "status"),
)

#: Columns of ``batch_results`` and of the downloads, in order.
RESULT_COLUMNS: tuple[str, ...] = (
    "row", "prompt", "model", "system", "temperature", "max_tokens", "seed", "status", "answer",
    "answered_by", "latency_ms", "prompt_tokens", "completion_tokens", "cached", "request_id", "error",
)

# ----- status --------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchStatus:
    """Where a job stands.

    Attributes:
        status: ``running``, ``finished``, ``cancelled`` or ``interrupted`` (its
            process stopped; the finished rows are kept and ``resume`` runs the rest).
        total: Rows in the job.
        done / failed / cancelled: Rows answered, failed, skipped by a cancel.
        running: Rows being answered right now (in this process).
        created_ts / finished_ts: Epoch seconds.
        eta_s: Estimated seconds to finish (running jobs, once a row has finished).
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
