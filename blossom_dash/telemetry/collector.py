"""The metrics collector: one event per request, durable before the result returns.

Events follow DESIGN.md ("One event per request"). Recording one must cost far less
than the request it describes (a cache hit is ~20 µs; a SQL commit is ~300 µs), yet
no event whose result reached the user may be lost if the process is killed. So an
event is first appended as one JSON line to a journal file with one ``pwrite`` (the
line is then in the OS page cache, which outlives a SIGKILL; ~0.9 µs an event in all,
``bench/journal.py``), and a background thread moves journaled events into the SQL
store in batches. Readers call ``flush()`` first, so they always see every recorded
event; on start-up, journals left by a dead process are replayed (duplicates are
skipped by the store's unique ``request_id``). No library offers this write-ahead
buffer in front of SQLAlchemy, hence the code here.

Storage faults (README, "Storage faults"):

- The journal is written with ``pwrite``, never through a memory map: a store into a
  mapped page with no disk block behind it kills the whole process with SIGBUS on a
  full file system (earlier versions did exactly that), while a failed ``pwrite`` is
  an ``ENOSPC`` error. A failed or short write is cut back (``ftruncate``), so no torn
  line stays; that event is kept in memory instead, and the next one tries the
  journal again.
- A batch the store refuses (``database or disk is full``, a server gone) stays
  queued, in order, and is retried about every ``RETRY_S`` seconds; ``status()`` says
  history is paused, and why, until a write succeeds. While paused, the journal is not
  rotated: it grows, so a long pause holds one file, not hundreds.
- What waits is bounded: at most ``max_waiting`` events are held in memory (100,000
  by default: about 55 MB with 200-character prompts), checked at each flush. Past
  it, journaled events are let go from memory (read back from their journal when
  written), then the oldest events that are in memory only are dropped and counted
  (``StorageStatus.lost``).
- Each journal is locked (``flock``) by its writer while it is alive, so several
  processes may share one data folder: ``recover()`` replays only the journals whose
  lock it can take (their writer is gone), whatever their process ids (in containers
  they repeat). A journal is created under a name ``recover()`` ignores, locked, then
  renamed, so no process ever sees it unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pandas as pd

from .journal import CREATING, PATTERN, Journal
from .store import EVENT_COLUMNS, ROW_COLUMNS, UsageStore

log = logging.getLogger("blossom_dash.metrics")
#: ``rejected``: the user's own invalid request (refused before sending) or a replay-only
#: refusal; ``error``: a backend or system failure; ``rate_limited``: our own limits.
OUTCOMES = ("ok", "cache_hit", "rate_limited", "rejected", "error")


def _json_default(value: Any) -> str:
    """Journal lines carry a ``Decimal`` cost as its exact decimal string."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot journal {type(value).__name__}")


_ID_PREFIX = os.urandom(5).hex()
_ID_COUNTER = itertools.count(1)
#: A journal is rotated once it holds this many bytes (unless history is paused).
JOURNAL_BYTES = 4 * 1024 * 1024
#: Seconds between two attempts to write to a store that refused, or to create a journal.
RETRY_S = 1.0
#: Default bound on the events held in memory while they wait for the store.
MAX_WAITING = 100_000
#: Events per ``write_many`` when a whole journal is written back.
_CHUNK = 10_000


def new_request_id() -> str:
    """A unique request id (16+ hex characters), shown on the page and in logs.

    A random per-process prefix and a counter: unique without a system call per
    request (``os.urandom`` costs ~8 µs on this VM, a third of a cache hit).
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER):06x}"


def _reason(exc: BaseException) -> str:
    """The first line of the driver's or the OS's own message (no SQL, no parameters:
    SQLAlchemy's text of an error quotes the rows, prompts included)."""
    inner = getattr(exc, "orig", None) or exc
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    return (str(inner).strip().splitlines() or [type(inner).__name__])[0][:300]


class _Batch:
    """Events waiting for the store: those in ``journal`` (also in memory as
    ``journaled`` unless let go: None) and those in memory only."""

    __slots__ = ("count", "journal", "journaled", "memory_only")

    def __init__(self, journal: Journal | None, journaled: list[Any] | None, count: int,
                 memory_only: list[Any]) -> None:
        self.journal, self.journaled, self.count, self.memory_only = journal, journaled, count, memory_only

    def rows(self) -> list[Any]:
        """Every event of the batch (a journal let go from memory is read back)."""
        journaled = self.journaled
        if journaled is None:
            journaled = self.journal.rows() if self.journal is not None else []
        return [*journaled, *self.memory_only]

    def held(self) -> int:
        """Events of this batch held in memory."""
        return len(self.journaled or ()) + len(self.memory_only)


@dataclass(frozen=True)
class StorageStatus:
    """Whether request history is being written: what the banner on every page says.

    Attributes:
        history: ``"ok"`` (events reach the usage store), ``"paused"`` (the store
            refuses writes: events wait, and are written by themselves when it accepts
            them again) or ``"off"`` (the service runs without its usage database;
            ``BlossomService.storage_status``).
        reason: What is wrong, in words ("" when nothing is).
        hint: What to do about it.
        waiting: Events recorded but not in the store yet.
        memory_only: Of those, how many are not journaled (a crash would lose them).
        lost: Events dropped since the start because more than ``max_waiting`` waited.
        journal: ``"ok"``, ``"failing"`` (new events are kept in memory only:
            ``journal_reason``) or ``"off"`` (this collector journals nothing).
        journal_reason: Why the journal is failing ("" when it is not).
    """

    history: str = "ok"
    reason: str = ""
    hint: str = ""
    waiting: int = 0
    memory_only: int = 0
    lost: int = 0
    journal: str = "ok"
    journal_reason: str = ""


class Event(NamedTuple):
    """One request, as recorded (field order = ``store.ROW_COLUMNS``).

    Attributes:
        ts: Start time, unix epoch seconds.
        kind: ``text`` | ``stream`` | ``image`` | ``audio``.
        outcome: ``ok`` | ``cache_hit`` | ``rate_limited`` | ``rejected`` | ``error``
            (see ``OUTCOMES``).
        error_type: The ``DashError`` subclass name, "" when none.
        status_code: Upstream HTTP status, None when no response came back.
        latency_ms: Wall time from the call to its result (milliseconds).
        ttft_ms: Time to first token (milliseconds), for ``stream`` events only; None
            for the other kinds.
        prompt_tokens / completion_tokens: As the backend reported them (estimated
            when a stream was stopped before the backend's usage arrived).
        bytes: Size of the response payload.
        prompt: The prompt, truncated to 200 characters; None when absent.
        cost: Pollen (``pricing.request_cost``: usage x the model's price, exact); for
            a ``cache_hit``, the cost the hit saved (what the answer cost when it was
            fetched). None when the model is unpriced or nothing was served. Journaled
            as a decimal string.
        context: What the request belongs to (schema 6): ``"chat:<id>"``,
            ``"comparison:<id>"``, ``"batch:<job_id>"``, "" when nothing.
        params: The request's parameters as JSON text (``gateway.event_detail``:
            model, max_tokens, temperature, seed, width/height, voice...; never a
            key, never the prompt); None when not recorded (before schema 6).
        answer: The answer text, cut to ``settings.prompt_chars`` like the prompt,
            only when ``settings.store_prompts``; None otherwise and for images and
            speech.
    """

    ts: float
    request_id: str
    user: str
    session: str
    kind: str
    model: str
    backend: str
    outcome: str
    error_type: str = ""
    status_code: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    bytes: int | None = None
    prompt: str | None = None
    cost: Decimal | None = None
    context: str = ""
    params: str | None = None
    answer: str | None = None


assert Event._fields == ROW_COLUMNS


class MetricsCollector:
    """Records events durably and answers questions about them.

    Args:
        store: The SQL store every event ends up in.
        journal_dir: Folder for the journal files (created if missing); None journals
            nothing (events wait in memory only: for a store that does not outlive the
            process anyway).
        window: How many recent events stay in memory for ``recent()``.
        flush_interval_s: How often the background thread moves events to the store.
        max_waiting: Most events held in memory while the store refuses them (see the
            module's notes).

    Journals left in ``journal_dir`` by processes that are gone are replayed at once
    (``recover``); one the store refuses is kept and retried like any waiting batch.
    """

    def __init__(self, store: UsageStore, journal_dir: Path | None, *, window: int = 5000,
                 flush_interval_s: float = 0.25, max_waiting: int = MAX_WAITING) -> None:
        self.store = store
        self._dir = Path(journal_dir) if journal_dir is not None else None
        self._lock = threading.Lock()  # guards the journal, the waiting events and the status
        self._flush_lock = threading.Lock()  # one flush at a time, in order
        self._recent: deque[Event] = deque(maxlen=window)
        self._journal: Journal | None = None
        self._pending: list[Event] = []  # journaled in self._journal since the last rotation
        self._pending_count = 0  # how many events self._journal holds
        self._pending_released = False  # _pending let go from memory (the journal holds them)
        self._memory_only: list[Event] = []  # since the last rotation, not journaled
        self._full: deque[_Batch] = deque()  # rotated, oldest first, not yet in the store
        self._sinks: list[Callable[[Event], None]] = []
        self._max_waiting = max_waiting
        self.store_errors = 0
        self._lost = 0
        self._store_error = ""  # why the last store write failed; "" once one succeeds
        self._journal_error = ""
        self._retry_at = 0.0
        self._reopen_at = 0.0
        self._closed = False
        if self._dir is not None:
            if self._dir.is_dir():
                self.recover()
            with self._lock:
                self._journal = self._open_journal_locked()
        self._stop = threading.Event()
        self._interval = flush_interval_s
        self._thread = threading.Thread(target=self._flush_loop, name="blossom-dash-metrics", daemon=True)
        self._thread.start()

    def _open_journal_locked(self) -> Journal | None:
        if self._dir is None:
            return None
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            journal = Journal.create(self._dir)
        except OSError as exc:
            if not self._journal_error:
                log.warning("events are kept in memory only: the journal cannot be created in %s (%s)",
                            self._dir, _reason(exc))
            self._journal_error = f"the journal cannot be created in {self._dir}: {_reason(exc)}"
            self._reopen_at = time.monotonic() + RETRY_S
            return None
        if self._journal_error:
            log.info("events are journaled again")
        self._journal_error = ""
        return journal

    def recover(self) -> int:
        """Replay journals left by processes that are gone; returns events written.

        A journal is replayed only when its lock can be taken, so a live writer's is
        never touched, in this process or another. Its rows are brought to today's
        outcomes and TTFT rules first (``store.upgrade_row``: it may predate schema 4).
        One the store refuses stays locked by this collector and waits like any batch.
        """
        if self._dir is None:
            return 0
        for stale in glob.glob(str(self._dir / CREATING)):  # a writer died naming it: empty
            with contextlib.suppress(OSError):
                if (journal := Journal.adopt(stale)) is not None:
                    journal.discard()
        replayed = 0
        for path in sorted(glob.glob(str(self._dir / PATTERN))):
            journal = None
            try:
                journal = Journal.adopt(path)
                rows = journal.rows() if journal is not None else []
            except OSError as exc:
                log.warning("journal %s cannot be read (%s); left for a later start", path, _reason(exc))
                if journal is not None:
                    journal.release()
                continue
            if journal is None:
                continue  # a live collector owns it
            batch = _Batch(journal, rows, len(rows), [])
            if not self._store_error:
                try:
                    replayed += self._write_batch(batch)
                    journal.discard()
                    continue
                except Exception as exc:  # noqa: BLE001 - any store failure: keep it, retry later
                    self._store_failed(exc, batch.count)
            with self._lock:
                self._full.append(batch)
        if replayed:
            log.info("replayed %d journaled events into the store", replayed)
        return replayed

    def record(self, event: Event) -> None:
        """Journal ``event`` (durable on return) and queue it for the store.

        When the journal cannot be written (disk full), the event is kept in memory
        and ``status()`` says so; the request is not failed for it.

        Raises:
            ValueError: the collector is closed.
        """
        line = orjson.dumps(tuple(event), default=_json_default) + b"\n"
        with self._lock:
            if self._closed:
                raise ValueError("the metrics collector is closed")
            journaled = False
            if self._journal is not None:
                try:
                    if self._journal.pos + len(line) > JOURNAL_BYTES and not self._store_error:
                        self._rotate_locked()
                    if self._journal is not None:
                        self._journal.append(line)
                        journaled = True
                        if self._journal_error:
                            self._journal_error = ""
                            log.info("events are journaled again")
                except OSError as exc:
                    if not self._journal_error:
                        log.warning("events are kept in memory only: the journal cannot be written (%s)",
                                    _reason(exc))
                    self._journal_error = f"the journal cannot be written: {_reason(exc)}"
            if journaled:
                self._pending_count += 1
                if not self._pending_released:
                    self._pending.append(event)
            else:
                self._memory_only.append(event)
            self._recent.append(event)
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:  # a broken exporter must not fail the request
                log.exception("event sink %r failed", sink)

    def add_sink(self, sink: Callable[[Event], None]) -> None:
        """Call ``sink(event)`` after every recorded event (Prometheus, JSON logs).

        Sinks run on the request's thread after the event is durable; their errors
        are logged, never raised.
        """
        self._sinks.append(sink)

    def _rotate_locked(self) -> None:
        """Queue the events since the last rotation as one batch; journal the next ones in
        a new file (under the lock)."""
        journal = self._journal if self._pending_count else None
        if journal is None and not self._memory_only:
            return
        self._full.append(_Batch(journal, None if self._pending_released else self._pending, self._pending_count,
                                 self._memory_only))
        self._pending, self._pending_count, self._pending_released, self._memory_only = [], 0, False, []
        if journal is not None:
            self._journal = self._open_journal_locked()

    def _probe_journal_locked(self, now: float) -> None:
        """Whether a journal that failed takes writes again: append an empty line (replay skips it)."""
        assert self._journal is not None
        try:
            self._journal.append(b"\n")
        except OSError:
            self._reopen_at = now + RETRY_S
            return
        self._journal_error = ""
        log.info("events are journaled again")

    def _shed_locked(self) -> None:
        """Keep at most ``max_waiting`` waiting events in memory (the module's notes)."""
        held = len(self._pending) + len(self._memory_only) + sum(b.held() for b in self._full)
        if held <= self._max_waiting:
            return
        for batch in self._full:
            if held <= self._max_waiting:
                return
            if batch.journal is not None and batch.journaled:
                held -= len(batch.journaled)
                batch.journaled = None
        if held > self._max_waiting and self._pending:
            held -= len(self._pending)
            self._pending, self._pending_released = [], True
        dropped = 0
        for lists in [b.memory_only for b in self._full] + [self._memory_only]:
            k = min(len(lists), held - self._max_waiting)
            if k > 0:
                del lists[:k]
                held -= k
                dropped += k
        if dropped:
            self._lost += dropped
            log.error("%d events dropped: more than %d waited for the store in memory", dropped,
                      self._max_waiting)

    def _write_batch(self, batch: _Batch) -> int:
        rows = batch.rows()
        for start in range(0, len(rows), _CHUNK):
            self.store.write_many(rows[start:start + _CHUNK])  # a retry after a partial write skips stored ids
        return len(rows)

    def _store_failed(self, exc: BaseException, waiting: int) -> None:
        reason = f"the usage database refused the write: {_reason(exc)}"
        with self._lock:
            first = not self._store_error
            self._store_error = reason
            self._retry_at = time.monotonic() + RETRY_S
        self.store_errors += 1
        if first:
            log.error("history paused: %s; %d events wait and are retried every %.0f s", reason, waiting, RETRY_S)

    def flush(self) -> int:
        """Move every waiting event into the store now.

        While history is paused (the store refused the last write), at most one
        attempt is made per ``RETRY_S``; a call before the next attempt is due
        returns at once.

        Returns:
            How many events were written.
        """
        written = 0
        with self._flush_lock:
            while True:
                with self._lock:
                    now = time.monotonic()
                    if self._journal is None and self._dir is not None and not self._closed \
                            and now >= self._reopen_at:
                        self._journal = self._open_journal_locked()
                    elif self._journal_error and self._journal is not None and now >= self._reopen_at:
                        self._probe_journal_locked(now)
                    paused = bool(self._store_error)
                    if paused and now < self._retry_at:
                        return written
                    if not paused or not self._full:
                        self._rotate_locked()
                    self._shed_locked()
                    batches = list(self._full)
                if not batches:
                    return written  # nothing to write (while paused: nothing to try the store with yet)
                for batch in batches:
                    try:
                        n = self._write_batch(batch)
                    except Exception as exc:  # noqa: BLE001 - any store failure pauses history, never the app
                        self._store_failed(exc, sum(b.count + len(b.memory_only) for b in batches))
                        return written
                    with self._lock:
                        self._full.popleft()  # it is ``batch``: only a flush removes batches
                    if batch.journal is not None:
                        batch.journal.discard()
                    written += n
                if not paused:
                    return written
                with self._lock:
                    self._store_error = ""
                log.info("history resumed: the usage database accepts writes again")
                # and once more, for what was recorded while the batches above were written

    def status(self) -> StorageStatus:
        """Whether events reach the store, and what waits (see ``StorageStatus``)."""
        with self._lock:
            waiting = self._pending_count + len(self._memory_only) + sum(
                b.count + len(b.memory_only) for b in self._full)
            memory_only = len(self._memory_only) + sum(len(b.memory_only) for b in self._full)
            store_error, journal_error, lost = self._store_error, self._journal_error, self._lost
        journal = "off" if self._dir is None else "failing" if journal_error else "ok"
        if store_error:
            hint = (f"Requests are still answered. {waiting:,} events wait ({memory_only:,} of them in memory "
                    f"only) and are written by themselves as soon as the database accepts them: free space on "
                    f"its disk, or bring the database back. At most {self._max_waiting:,} are held in memory.")
            return StorageStatus("paused", store_error, hint, waiting, memory_only, lost, journal, journal_error)
        hint = ("New events are kept in memory only until the journal can be written again: free space on the "
                "data folder's disk." if journal_error else "")
        return StorageStatus("ok", "", hint, waiting, memory_only, lost, journal, journal_error)

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception:  # the flusher must outlive any surprise: events keep waiting
                log.exception("metrics flush failed")

    def close(self) -> None:
        """Stop the flusher, flush what is left (one last attempt) and remove the empty
        journal; what the store still refuses stays in journals for the next start."""
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            self._retry_at = 0.0
        self.flush()
        with self._lock:
            self._closed = True
            batches = list(self._full)
            memory_only = [*(e for b in batches for e in b.memory_only), *self._memory_only]
            if self._journal is not None:
                if self._pending_count:
                    self._journal.release()  # replayed by the next start
                else:
                    self._journal.discard()
                self._journal = None
            for batch in batches:
                if batch.journal is not None:
                    batch.journal.release()
            self._full.clear()
        if memory_only:
            self._save_memory_only(memory_only)

    def _save_memory_only(self, events: Sequence[Event]) -> None:
        """At close, journal the events that were kept in memory only, if the disk allows now."""
        journal, saved = None, 0
        try:
            if self._dir is None:
                raise OSError(errno.ENOENT, "no journal folder")
            journal = Journal.create(self._dir)
            for ev in events:
                journal.append(orjson.dumps(tuple(ev), default=_json_default) + b"\n")
                saved += 1
        except OSError as exc:
            log.error("%d events kept in memory could not be journaled at close and are lost (%s)",
                      len(events) - saved, _reason(exc))
        finally:
            if journal is not None:
                journal.release()  # replayed by the next start

    def recent(self, n: int = 50) -> list[Event]:
        """The last ``n`` events of this process, newest first."""
        with self._lock:
            return list(self._recent)[-n:][::-1]

    def frame(self, since: float | pd.Timestamp | None = None, *, limit: int = 200_000) -> pd.DataFrame:
        """One row per request since ``since`` (epoch seconds or a Timestamp).

        Returns:
            DataFrame with DESIGN.md's event columns (``ts`` as UTC datetimes),
            oldest first, at most ``limit`` rows (the newest ones).
        """
        self.flush()
        if isinstance(since, pd.Timestamp):
            since = since.timestamp()
        return self.store.frame(since, limit=limit)


__all__ = ["EVENT_COLUMNS", "OUTCOMES", "Event", "MetricsCollector", "StorageStatus", "new_request_id"]
