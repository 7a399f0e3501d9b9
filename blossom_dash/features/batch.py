"""Batch jobs: a CSV of prompts, run in the background by the service.

Three parts, none of which imports streamlit, each in its own module; this module
re-exports their names, so ``from blossom_dash.features.batch import ...`` is the one
place to import them from:

- **Parsing and validation** (``batch_files``: ``parse_csv``): pandas reads the file
  (``dtype=str``, ``keep_default_na=False``, so "NA" stays a prompt and "007" stays a
  seed); the rules for each row are that module's (``row_problems``), the same ones the
  service applies to one request, so a row that passes here is not refused later. The
  template and the downloads (``template_csv``, ``results_csv``, ``results_jsonl``)
  live there too.
- **Persistence** (``batch_tables``, ``batch_store``): the ``batch_jobs`` and
  ``batch_rows`` tables on the shared ``store.metadata``, created (or given their
  newer columns) on first use in the usage database, and the SQL of jobs. A job's
  state and results survive a browser reload and a restart of the server, and every
  replica on the database sees them.
- **Leases** (``batch_leases``): a row is claimed with a lease and a fencing token
  (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL), so replicas share a job's rows
  and a stalled replica's late answer is discarded instead of stored twice.
- **The runner** (``batch_runner``: ``BatchRunner``): owned by ``BlossomService``,
  started with it, a bounded pool of daemon worker threads and a poller. Each row
  goes through the gateway as the job's user (cache, rate limits, retries, one
  request event of kind ``text``). A full rate-limit window pauses the job until the
  window has room instead of failing rows.

Limits: ``MAX_FILE_BYTES`` (5 MB) and ``MAX_ROWS`` (10,000) per file.
"""

from __future__ import annotations

from .batch_files import (
    COLUMNS,
    FORMAT_HINT,
    MAX_FILE_BYTES,
    MAX_ROWS,
    RESAVE_HINT,
    BatchRow,
    ParsedBatch,
    apply_defaults,
    check_rows,
    decode_csv,
    neutralise_formulas,
    parse_csv,
    results_csv,
    results_jsonl,
    row_problems,
    template_csv,
    validate_row,
)
from .batch_leases import Claim, RowLeases
from .batch_runner import (
    DEFAULT_WORKERS,
    HEARTBEAT_S,
    LIMIT_POLL_S,
    MAX_RATE_LIMIT_WAITS,
    MAX_WAIT_S,
    POLL_S,
    STALE_AFTER_S,
    BatchRunner,
    check_owner,
)
from .batch_store import BatchJobs
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
    ROW_RUNNING,
    BatchStatus,
    batch_jobs,
    batch_rows,
    ensure_batch_schema,
    store_errors,
)

__all__ = [
    "COLUMNS", "MAX_FILE_BYTES", "MAX_ROWS", "RESULT_COLUMNS", "BatchJobs", "BatchRow", "BatchRunner",
    "BatchStatus", "Claim", "RowLeases", "ensure_batch_schema",
    "ParsedBatch", "apply_defaults", "decode_csv", "neutralise_formulas", "parse_csv", "results_csv",
    "check_owner", "check_rows", "results_jsonl", "row_problems", "store_errors", "template_csv", "validate_row",
    # The states, tables and runner limits as well: tests and scripts read them from here.
    "DEFAULT_WORKERS", "FORMAT_HINT", "HEARTBEAT_S", "JOB_CANCELLED", "JOB_FINISHED", "JOB_INTERRUPTED",
    "JOB_RUNNING", "LIMIT_POLL_S", "MAX_RATE_LIMIT_WAITS", "MAX_WAIT_S", "POLL_S", "RESAVE_HINT",
    "ROW_CANCELLED", "ROW_ERROR", "ROW_OK", "ROW_PENDING", "ROW_RUNNING", "STALE_AFTER_S", "batch_jobs", "batch_rows",
]
