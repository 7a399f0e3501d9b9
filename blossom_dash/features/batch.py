"""Batch jobs: a CSV of prompts, run in the background by the service.

Three parts, none of which imports streamlit:

- **Parsing and validation** (``parse_csv``): pandas reads the file (``dtype=str``,
  ``keep_default_na=False``, so "NA" stays a prompt and "007" stays a seed); the rules
  for each row are this module's (``row_problems``), the same ones the service applies
  to one request, so a row that passes here is not refused later.
- **Persistence**: the ``batch_jobs`` and ``batch_rows`` tables on the shared
  ``store.metadata``, created on first use in the usage database. A job's state and
  results survive a browser reload and a restart of the server.
- **The runner** (``BatchRunner``): owned by ``BlossomService``, created lazily, a
  bounded pool of daemon worker threads. Each row goes through
  ``BlossomService.generate_text`` (cache, rate limits, retries, one request event of
  kind ``text``). A full rate-limit window pauses the job until the window has room
  instead of failing rows.

Limits: ``MAX_FILE_BYTES`` (5 MB) and ``MAX_ROWS`` (10,000) per file.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from .. import service as _service  # the request limits (bound lazily: service.py imports this module)
from ..errors import BackendUnavailable, DashError, InvalidRequest, RateLimited
from ..telemetry.analytics import neutralise_formulas
from ..telemetry.store import metadata

if TYPE_CHECKING:
    from ..service import BlossomService

log = logging.getLogger("blossom_dash.batch")

#: Largest CSV accepted, bytes (5 MB holds 10,000 prompts of ~500 characters).
MAX_FILE_BYTES = 5 * 1024 * 1024
#: Most rows in one batch.
MAX_ROWS = 10_000
#: The columns a batch file may have; only ``prompt`` is required.
COLUMNS: tuple[str, ...] = ("prompt", "model", "system", "temperature", "max_tokens", "seed")
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

JOB_RUNNING, JOB_FINISHED, JOB_CANCELLED, JOB_INTERRUPTED = "running", "finished", "cancelled", "interrupted"
ROW_PENDING, ROW_OK, ROW_ERROR, ROW_CANCELLED = "pending", "ok", "error", "cancelled"

RESAVE_HINT = ("Re-save it as UTF-8: in Excel, File › Save As › “CSV UTF-8 (Comma delimited)”; in LibreOffice, "
               "tick “Edit filter settings” and pick “Unicode (UTF-8)”; Google Sheets' File › Download › CSV "
               "is already UTF-8.")
FORMAT_HINT = ("The first row names the columns: “prompt” (required), and optionally “model”, “system”, "
               "“temperature”, “max_tokens”, “seed”. Then one prompt per row.")

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

# ----- parsing and validation ----------------------------------------------------------


@dataclass(frozen=True)
class BatchRow:
    """One prompt of a batch, with its own parameters.

    Attributes:
        row: Its row number in the uploaded file, as a spreadsheet numbers it (the
            header is row 1, the first prompt row 2).
        prompt: The user message.
        model / system / temperature / max_tokens / seed: ``None`` = the service's default.
        errors: Why the row cannot run (empty when it can).
    """

    row: int
    prompt: str
    model: str | None = None
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    errors: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        """Whether the row can run."""
        return not self.errors

    def params(self) -> dict[str, Any]:
        """Keyword arguments for ``BlossomService.generate_text`` (besides the prompt)."""
        return {"model": self.model, "system": self.system, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "seed": self.seed}


@dataclass(frozen=True)
class ParsedBatch:
    """A parsed batch file.

    Attributes:
        rows: Every non-blank row, valid or not, in file order.
        columns: The recognised columns the file has (``prompt`` first).
        notes: Things worth knowing that are not errors (ignored columns, skipped
            blank rows, a semicolon delimiter).
    """

    rows: tuple[BatchRow, ...]
    columns: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def valid(self) -> list[BatchRow]:
        """The rows that can run."""
        return [r for r in self.rows if r.valid]

    @property
    def invalid(self) -> list[BatchRow]:
        """The rows that cannot run, each with its ``errors``."""
        return [r for r in self.rows if not r.valid]

    def frame(self) -> pd.DataFrame:
        """The preview: one row per ``BatchRow``, with a ``problem`` column ("" when valid)."""
        cols = ["row", *COLUMNS, "problem"]
        data = [[r.row, r.prompt, r.model or "", r.system or "", r.temperature, r.max_tokens, r.seed,
                 "; ".join(r.errors)] for r in self.rows]
        df = pd.DataFrame(data, columns=cols)
        return df.astype({"temperature": "Float64", "max_tokens": "Int64", "seed": "Int64"})


def _norm_column(name: object) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def decode_csv(data: bytes) -> str:
    """The text of an uploaded CSV: UTF-8, with or without a byte-order mark.

    Args:
        data: The file's bytes.

    Returns:
        The decoded text (a UTF-8 BOM, as Excel's "CSV UTF-8" writes, removed).

    Raises:
        InvalidRequest: empty, an Excel workbook, UTF-16, or not UTF-8 (the message
            names the first bad byte and its line, the hint how to re-save the file).
    """
    if not data or not data.strip():
        raise InvalidRequest("The file is empty.", FORMAT_HINT)
    if data.startswith(b"PK\x03\x04"):
        raise InvalidRequest("This is an Excel workbook (.xlsx), not a CSV file.",
                             "In Excel, use File › Save As › “CSV UTF-8 (Comma delimited)” and upload that.")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InvalidRequest("The file is UTF-16 (Excel's “Unicode Text”), not UTF-8.", RESAVE_HINT)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InvalidRequest(
            f"The file is not UTF-8: byte 0x{data[exc.start]:02X} on line {line} is not valid UTF-8 "
            "(the file was probably saved as Windows-1252 / Latin-1, e.g. Excel's plain “CSV”).",
            RESAVE_HINT) from None


def _read_frame(text: str, sep: str) -> pd.DataFrame:
    """pandas' reader with every cell as text and blank lines kept (row numbers stay true)."""
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, sep=sep, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise InvalidRequest("The file has no header row.", FORMAT_HINT) from None
    except pd.errors.ParserError as exc:
        msg = str(exc)
        if m := re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", msg):
            expected, line, saw = m.groups()
            raise InvalidRequest(
                f"Row {line} has {saw} cells but the header has {expected}.",
                "A prompt that contains the delimiter (a comma) must be in double quotes, and a quote inside it "
                "doubled (\"\"); spreadsheet programs do this when they save as CSV.") from None
        raise InvalidRequest(f"The file is not a readable CSV: {msg.splitlines()[-1][:200]}",
                             "Open it in a spreadsheet program and save it again as CSV UTF-8.") from None
    return df.fillna("")


def parse_csv(data: bytes, *, known_models: Collection[str] | None = None, max_prompt_chars: int = 5000,
              max_rows: int = MAX_ROWS, max_bytes: int = MAX_FILE_BYTES) -> ParsedBatch:
    """Parse and validate a batch file.

    Args:
        data: The uploaded bytes (UTF-8, optionally with a BOM).
        known_models: The backend's text models; a row naming another is invalid.
            ``None`` when the list is not known (then any name passes).
        max_prompt_chars: Longest prompt (system prompt included), as the service's
            ``Settings.max_prompt_chars``.
        max_rows / max_bytes: The file limits (``MAX_ROWS``, ``MAX_FILE_BYTES``).

    Returns:
        ``ParsedBatch`` with every non-blank row; invalid rows carry their ``errors``.

    Raises:
        InvalidRequest: the file as a whole cannot be used (too large, empty, not
            UTF-8, no ``prompt`` column, no rows, too many rows, unreadable CSV).
    """
    if len(data) > max_bytes:
        raise InvalidRequest(f"The file is {len(data) / 1_048_576:.1f} MB; the limit is "
                             f"{max_bytes / 1_048_576:.0f} MB.", "Split it into smaller files.")
    text = decode_csv(data)
    header = text.split("\n", 1)[0]
    df = _read_frame(text, ",")
    notes: list[str] = []
    if "prompt" not in {_norm_column(c) for c in df.columns}:
        # Excel in many European locales saves "CSV" with semicolons; some tools use tabs.
        for sep, label in ((";", "semicolons"), ("\t", "tabs")):
            if sep in header and "prompt" in {_norm_column(c) for c in header.split(sep)}:
                df = _read_frame(text, sep)
                notes.append(f"The columns are separated by {label}; read that way.")
                break
    names = [_norm_column(c) for c in df.columns]
    duplicated = sorted({n for n in names if names.count(n) > 1 and n in COLUMNS})
    if duplicated:
        raise InvalidRequest(f"The column “{duplicated[0]}” appears more than once.", "Keep one of them.")
    if "prompt" not in names:
        found = ", ".join(f"“{c}”" for c in df.columns[:8]) or "none"
        raise InvalidRequest(f"The file has no “prompt” column (its columns: {found}).", FORMAT_HINT)
    df.columns = names
    ignored = [c for c in df.columns if c not in COLUMNS]
    if ignored:
        notes.append("Ignored columns: " + ", ".join(ignored[:10]) + (" …" if len(ignored) > 10 else "") + ".")
    used = [c for c in COLUMNS if c in df.columns]
    df = df[used]
    blank = df.apply(lambda col: col.str.strip() == "").all(axis=1)
    if blank.any():
        notes.append(f"Skipped {int(blank.sum()):,} blank row(s).")
    df = df[~blank]
    if df.empty:
        raise InvalidRequest("The file has a header but no prompts.", FORMAT_HINT)
    if len(df) > max_rows:
        raise InvalidRequest(f"The file has {len(df):,} rows; a batch holds at most {max_rows:,}.",
                             f"Split it into files of up to {max_rows:,} rows and run them one after another.")
    known = frozenset(known_models) if known_models is not None else None
    rows = tuple(validate_row(int(pos) + 2, record, known_models=known, max_prompt_chars=max_prompt_chars)
                 for pos, record in zip(df.index, df.to_dict("records"), strict=True))
    return ParsedBatch(rows, tuple(used), tuple(notes))


def _number(name: str, raw: str, errors: list[str], *, whole: bool) -> float | int | None:
    value = raw.strip()
    if not value:
        return None
    if re.fullmatch(r"[+-]?\d+,\d+", value):  # a decimal comma, as European spreadsheets write it
        value = value.replace(",", ".")
    try:
        number = float(value)
    except ValueError:
        errors.append(f"{name} “{raw.strip()[:20]}” is not a {'whole number' if whole else 'number'}")
        return None
    if not math.isfinite(number):
        errors.append(f"{name} “{raw.strip()[:20]}” is not a {'whole number' if whole else 'number'}")
        return None
    if whole:
        if not number.is_integer():
            errors.append(f"{name} {value} is not a whole number")
            return None
        return int(number)
    return number


def validate_row(row: int, values: Mapping[str, str], *, known_models: Collection[str] | None = None,
                 max_prompt_chars: int = 5000) -> BatchRow:
    """One file row (cells as text) as a ``BatchRow``, with its problems.

    Args:
        row: The row's number in the file (header = 1).
        values: Cells by column name (``COLUMNS``); missing or blank = not given.
        known_models / max_prompt_chars: As in ``parse_csv``.

    Returns:
        ``BatchRow``; ``errors`` lists bad numbers and everything ``row_problems`` finds.
    """
    errors: list[str] = []
    temperature = _number("temperature", values.get("temperature", ""), errors, whole=False)
    max_tokens = _number("max_tokens", values.get("max_tokens", ""), errors, whole=True)
    seed = _number("seed", values.get("seed", ""), errors, whole=True)
    parsed = BatchRow(row=row, prompt=values.get("prompt", ""), model=values.get("model", "").strip() or None,
                      system=values.get("system", "").strip() or None, temperature=temperature,
                      max_tokens=None if max_tokens is None else int(max_tokens),
                      seed=None if seed is None else int(seed))
    errors += row_problems(parsed, known_models=known_models, max_prompt_chars=max_prompt_chars)
    return replace(parsed, errors=tuple(errors))


def row_problems(row: BatchRow, *, known_models: Collection[str] | None = None,
                 max_prompt_chars: int = 5000) -> list[str]:
    """What stops ``row`` from running, in short phrases (empty list: it can run).

    The rules are ``BlossomService.generate_text``'s (``_text_request``): a non-blank
    prompt, prompt and system prompt within ``max_prompt_chars`` together,
    temperature 0-2, max_tokens 1-``MAX_TOKENS_LIMIT``, seed 0-``SEED_MAX``; plus a
    model from ``known_models`` when that list is given.
    """
    max_tokens_limit, seed_max = _service.MAX_TOKENS_LIMIT, _service.SEED_MAX
    problems: list[str] = []
    prompt = row.prompt if isinstance(row.prompt, str) else ""
    if not prompt.strip():
        problems.append("empty prompt")
    elif len(prompt) > max_prompt_chars:
        problems.append(f"prompt too long: {len(prompt):,} characters (limit {max_prompt_chars:,})")
    elif row.system and len(prompt.strip()) + len(row.system.strip()) > max_prompt_chars:
        problems.append(f"system prompt and prompt too long together: "
                        f"{len(prompt.strip()) + len(row.system.strip()):,} characters (limit {max_prompt_chars:,})")
    t = row.temperature
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 2.0):
        problems.append(f"temperature {t:g} out of range (0 to 2)" if isinstance(t, (int, float))
                        else "temperature is not a number")
    m = row.max_tokens
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= max_tokens_limit):
        problems.append(f"max_tokens {m} out of range (1 to {max_tokens_limit:,})")
    s = row.seed
    if s is not None and (isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= seed_max):
        problems.append(f"seed {s} out of range (0 to {seed_max:,})")
    if row.model is not None and (not isinstance(row.model, str) or len(row.model) > 128):
        problems.append("model is not a model name")
    elif row.model is not None and known_models is not None and row.model not in known_models:
        problems.append(f"unknown model “{row.model}”")
    return problems


def apply_defaults(rows: Sequence[BatchRow], *, model: str | None = None, max_tokens: int | None = None
                   ) -> list[BatchRow]:
    """``rows`` with ``model`` / ``max_tokens`` filled in where a row left them blank."""
    return [replace(r, model=r.model or model, max_tokens=r.max_tokens if r.max_tokens is not None else max_tokens)
            for r in rows]


def template_csv() -> bytes:
    """A small example batch file (UTF-8), to download and fill in."""
    df = pd.DataFrame([
        {"prompt": "Summarise the benefits of moving-window rate limits in two sentences.", "model": "",
         "system": "", "temperature": "", "max_tokens": "", "seed": ""},
        {"prompt": "Write a haiku about latency percentiles.", "model": "", "system": "You are a poet.",
         "temperature": "0.7", "max_tokens": "120", "seed": "42"},
    ], columns=list(COLUMNS))
    return df.to_csv(index=False).encode("utf-8")


# ----- export --------------------------------------------------------------------------


def results_csv(df: pd.DataFrame) -> bytes:
    """Batch results as UTF-8 CSV (with a BOM, so that Excel reads it as UTF-8), formulas neutralised."""
    return neutralise_formulas(df).to_csv(index=False).encode("utf-8-sig")


def results_jsonl(df: pd.DataFrame) -> bytes:
    """Batch results as JSON Lines: one object per row, missing values ``null``.

    JSON is not opened as formulas, so the values are exported as stored.
    """
    records = df.astype(object).where(df.notna(), None).to_dict("records")
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


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
    a short one. A row goes through ``service.generate_text`` as the job's user:
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
        service: The owning service (``generate_text``, ``limiter``, ``store``).
        workers: Rows run at the same time.
        clock: Monotonic seconds (injectable for tests).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the tables cannot be created.
    """

    def __init__(self, service: BlossomService, *, workers: int = DEFAULT_WORKERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._svc = service
        self._engine: Engine = service.store.engine
        metadata.create_all(self._engine, tables=[batch_jobs, batch_rows])  # idempotent
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
            rpm = self._svc.limiter.limits[0]
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
        status = self._svc.limiter.status(job.user)
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
            result = self._svc.generate_text(row.prompt, **row.params(), user=job.user, session=job.session,
                                             api_key=job.api_key)
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


def check_rows(rows: Sequence[BatchRow | Mapping[str, Any]], *, max_prompt_chars: int = 5000,
               max_rows: int = MAX_ROWS) -> list[BatchRow]:
    """The rows of a job to submit, checked again (a script may build them by hand).

    Args:
        rows: ``BatchRow`` objects (``parse_csv``'s valid rows) or mappings with a
            ``prompt`` and optional ``model``, ``system``, ``temperature``,
            ``max_tokens``, ``seed`` (typed values; ``row`` defaults to the position + 2).

    Returns:
        ``BatchRow`` objects, in order.

    Raises:
        InvalidRequest: no rows, more than ``max_rows``, or a row ``row_problems`` refuses.
    """
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise InvalidRequest("A batch is a list of rows.", "Upload a CSV file on the Batch page.")
    if not rows:
        raise InvalidRequest("The batch has no rows to run.", "Upload a file with at least one valid prompt.")
    if len(rows) > max_rows:
        raise InvalidRequest(f"The batch has {len(rows):,} rows; the limit is {max_rows:,}.",
                             f"Split it into batches of up to {max_rows:,} rows.")
    known = {f.name for f in fields(BatchRow)} - {"errors"}
    out: list[BatchRow] = []
    bad: list[str] = []
    for pos, item in enumerate(rows):
        if isinstance(item, BatchRow):
            row = replace(item, errors=())
        elif isinstance(item, Mapping):
            row = BatchRow(**{"row": pos + 2, "prompt": "", **{k: v for k, v in item.items() if k in known}})
        else:
            raise InvalidRequest(f"Row {pos + 2} is not a row of the batch.", "Upload a CSV file on the Batch page.")
        problems = row_problems(row, max_prompt_chars=max_prompt_chars)
        if problems:
            bad.append(f"row {row.row}: {'; '.join(problems)}")
        out.append(row)
    if bad:
        raise InvalidRequest(f"{len(bad):,} of {len(rows):,} rows cannot run ({bad[0]}"
                             + (f", and {len(bad) - 1:,} more)." if len(bad) > 1 else ")."),
                             "Fix them in the file, or run only the valid rows.")
    return out


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


__all__ = [
    "COLUMNS", "MAX_FILE_BYTES", "MAX_ROWS", "RESULT_COLUMNS", "BatchRow", "BatchRunner", "BatchStatus",
    "ParsedBatch", "apply_defaults", "decode_csv", "neutralise_formulas", "parse_csv", "results_csv",
    "check_owner", "check_rows", "results_jsonl", "row_problems", "store_errors", "template_csv", "validate_row",
]
