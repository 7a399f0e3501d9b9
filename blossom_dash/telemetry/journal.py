"""Journal files: the collector's write-ahead log of events, one JSON line each.

A journal is appended with ``pwrite``, never through a memory map: a store into a
mapped page with no disk block behind it kills the process with SIGBUS when the file
system is full, where a failed ``pwrite`` is an ``ENOSPC`` error the collector can
handle. A failed or short write is cut back with ``ftruncate`` (which needs no space),
so no torn line stays behind. Each file is locked with ``flock`` by its owner, so
processes sharing a data folder tell a live writer's journal from a dead one's by its
lock, not by a process id (process ids repeat across containers and restarts). A
journal is created under a name the replay ignores, locked, then renamed, so no
process ever sees it unlocked. Written for this collector (no library offers a
write-ahead buffer in front of SQLAlchemy).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Any

import orjson

from .store import DETAIL_COLUMNS, ROW_COLUMNS, upgrade_row

#: Journal file names; a journal being created is ``.<name>.new`` until it is locked.
PATTERN = "journal-*.jsonl"
CREATING = ".journal-*.new"
#: The lengths of a journal line: today's, schema 5's, and before schema 5.
_LENGTHS = (len(ROW_COLUMNS), len(ROW_COLUMNS) - len(DETAIL_COLUMNS), len(ROW_COLUMNS) - len(DETAIL_COLUMNS) - 1)


class Journal:
    """One append-only journal file of JSON lines, ``flock``-ed by its owner (module notes).

    Args:
        fd: The open file, already locked.
        path: Its name.
        pos: Where the next line goes (the end of the last whole line).
    """

    def __init__(self, fd: int, path: str, pos: int = 0) -> None:
        self.fd, self.path, self.pos = fd, path, pos

    @classmethod
    def create(cls, directory: Path) -> Journal:
        """A new, empty, locked journal in ``directory``.

        Raises:
            OSError: it could not be created (disk full, read-only, folder gone).
        """
        name = f"journal-{os.getpid()}-{os.urandom(4).hex()}.jsonl"
        tmp = directory / f".{name}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, directory / name)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return cls(fd, str(directory / name))

    @classmethod
    def adopt(cls, path: str) -> Journal | None:
        """Lock the journal at ``path`` if its writer is gone; None if it is alive (its
        lock is held, in this process or another) or the file is gone.

        Raises:
            OSError: the file cannot be opened (permissions, I/O error).
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink == 0:  # replayed and removed by another process meanwhile
                raise BlockingIOError
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path, os.fstat(fd).st_size)

    def append(self, line: bytes) -> None:
        """Write ``line`` after the last one; on any failure the file is cut back to its
        last whole line.

        Raises:
            OSError: the write failed (``ENOSPC``: the disk is full).
        """
        try:
            written = os.pwrite(self.fd, line, self.pos)
        except OSError:
            self._cut()
            raise
        if written != len(line):
            self._cut()
            raise OSError(errno.ENOSPC, "No space left on device (short write)")
        self.pos += written

    def _cut(self) -> None:
        with contextlib.suppress(OSError):  # truncating needs no space; if even that fails the reader skips it
            os.ftruncate(self.fd, self.pos)

    def rows(self) -> list[tuple[Any, ...]]:
        """Its events, in today's terms (``upgrade_row``: a journal may predate schema 4)."""
        return [upgrade_row(r) for r in self.read(self.path)]

    def discard(self) -> None:
        """Remove the file (its events are stored), then release the lock."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.release()

    def release(self) -> None:
        """Close the file and its lock, leaving the file for the next start to replay."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @staticmethod
    def read(path: str) -> list[tuple[Any, ...]]:
        """The whole lines of a journal file (a torn or foreign line is skipped)."""
        with open(path, "rb") as fh:
            data = fh.read().rstrip(b"\0")  # journals of earlier versions were NUL-padded memory maps
        rows = []
        for line in data.split(b"\n"):
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # empty or torn line: its result never returned
            # Shorter lines were written before schema 6 (no context, params, answer) or
            # before schema 5 (no cost either); upgrade_row pads them.
            if isinstance(row, list) and len(row) in _LENGTHS:
                rows.append(tuple(row))
        return rows


__all__ = ["CREATING", "PATTERN", "Journal"]
