"""A SQLite usage database checked before it is used: an empty, read-only, damaged or
busy file is refused with words (``errors.StorageUnavailable``), never a traceback or
an empty history in place of a real one.

- A zero-length file is refused: SQLite takes it for a new, empty database, so a
  history truncated to nothing would silently start again from zero. A database this
  store made is never empty (switching it to WAL writes its first page at once).
- A file or folder that cannot be written is refused before SQLite is asked:
  ``os.access`` also sees a read-only mount and an immutable file, which root's
  permissions do not stop, and on which SQLite may open a WAL database and fail only
  at the first checkpoint.
- ``PRAGMA quick_check`` runs at every start, before anything is written: garbage in
  the middle of the file is found there instead of by the first reader that stumbles
  on it. It reads the whole file (about 0.3 to 0.5 s for 1M events, 200 MB, from the
  page cache; ``integrity_check``, which also checks the indexes against the rows,
  took 1.2 s) and is what the issue asks for.
- Processes starting at once on one file take a start lock (``flock`` on
  ``<file>.lock``), so their schema checks and migrations run one after another
  (with pysqlite's autocommit DDL, two ``CREATE TABLE`` of one name can collide).
  A separate file: ``flock`` on the database itself would meet SQLite's own POSIX
  locks where the kernel emulates one with the other (NFS).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from ..errors import StorageUnavailable


def _aside(path: Path, suffix: str) -> str:
    return (f"Stop the app, move the file and its -wal and -shm companions aside "
            f"(mkdir -p {path.parent}/{suffix} && mv {path}* {path.parent}/{suffix}/) and start again: "
            "a new, empty history is created.")


def damaged(path: Path | None, detail: str, source: str = "quick_check") -> StorageUnavailable:
    """The error for a database SQLite finds damaged (``detail``: its own words, from
    ``source``: ``quick_check`` or ``SQLite`` opening it)."""
    if path is None:
        return StorageUnavailable(f"The in-memory usage database is damaged ({source}: {detail[:300]}).",
                                  "Restart the app.")
    return StorageUnavailable(
        f"The usage database {path} is damaged ({source}: {detail[:300]}). Nothing was written to it.",
        f"{_aside(path, 'damaged')} To salvage what is still readable, afterwards: "
        f"sqlite3 {path.parent}/damaged/{path.name} .recover > salvage.sql")


def unwritable(path: Path | None, detail: str) -> StorageUnavailable:
    """The error for a database or folder that cannot be written (``detail``: why)."""
    folder = path.parent if path else "the data folder"
    return StorageUnavailable(
        f"The usage database {path or ''} cannot be written: {detail}.",
        f"Make {folder} and the files in it writable by the user running the app (is the disk mounted "
        "read-only?), or point BLOSSOM_DASH_DATA_DIR at a writable folder, and restart the app.")


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise unwritable(path, f"it cannot be read ({exc.strerror or exc})") from exc


def check_file(path: Path) -> None:
    """Before SQLite opens ``path``: create its folder, refuse a file or folder that
    cannot be written (the empty file is refused by ``opening``, under the start lock:
    a file another process has just created is empty for a moment).

    Raises:
        StorageUnavailable: what is wrong, and what to do.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(path, f"its folder cannot be created ({exc.strerror or exc})") from exc
    if _size(path) is not None and not os.access(path, os.R_OK | os.W_OK):
        raise unwritable(path, "the file is read-only")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise unwritable(path, f"its folder {path.parent} is read-only")


def empty(path: Path) -> StorageUnavailable:
    """The error for a zero-length database file."""
    return StorageUnavailable(
        f"The usage database {path} is empty (0 bytes): it is not a SQLite database, and opening it would "
        "silently start an empty history in place of the one it held.",
        f"Restore it from a backup if you have one. Otherwise: {_aside(path, 'empty')}")


def explain(exc: BaseException, path: Path | None) -> StorageUnavailable:
    """A SQLite error met while opening the database, as a ``StorageUnavailable``."""
    inner = getattr(exc, "orig", None) or exc
    text = (str(inner).strip().splitlines() or [type(inner).__name__])[0]
    low = text.lower()
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return damaged(path, text, "SQLite")
    if "readonly" in low or "read-only" in low or "unable to open" in low:
        return unwritable(path, f"SQLite says: {text}")
    if "full" in low:
        return StorageUnavailable(f"The disk holding the usage database {path or ''} is full (SQLite: {text}).",
                                  "Free space on it and restart the app.")
    if "locked" in low or "busy" in low:
        return StorageUnavailable(f"The usage database {path or ''} is locked by another process (SQLite: {text}).",
                                  "Wait for it, or stop the other process, and restart the app.")
    return StorageUnavailable(f"The usage database {path or ''} cannot be opened (SQLite: {text}).",
                              "Check the file and its folder, then restart the app.")


@contextlib.contextmanager
def opening(engine: Engine, path: Path | None) -> Iterator[None]:
    """Around a SQLite store's first use (its migration): hold the start lock, refuse
    an empty file, run ``PRAGMA quick_check`` first, and turn SQLite's errors into
    ``StorageUnavailable``.

    Args:
        engine: The store's engine.
        path: The database file; None for an in-memory database (no lock, no file).

    Raises:
        StorageUnavailable: the database is damaged, read-only, full or locked.
    """
    lock = None
    try:
        if path is not None:
            try:
                lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(lock, fcntl.LOCK_EX)  # waits while another process starts on this file
            except OSError as exc:
                raise unwritable(path, f"its lock file cannot be created ({exc.strerror or exc})") from exc
            if _size(path) == 0:
                raise empty(path)
        try:
            with engine.connect() as conn:
                problems = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check").all() if r[0] != "ok"]
            if problems:
                raise damaged(path, "; ".join(problems[:3]))
            yield
        except DBAPIError as exc:
            engine.dispose()
            raise explain(exc, path) from exc
        except StorageUnavailable:
            engine.dispose()
            raise
    finally:
        if lock is not None:
            os.close(lock)


__all__ = ["check_file", "damaged", "empty", "explain", "opening", "unwritable"]
