"""Small file systems for storage-fault tests: a tmpfs of a few MB, filled to the last
block, or remounted read-only (RECIPES.md, "Small file systems").

Mounting needs root (or CAP_SYS_ADMIN); where ``mount`` is not permitted the test is
skipped with the reason. Every mount is unmounted in a ``finally`` (``umount -l`` as a
fallback, so a file still open does not leave it behind).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (created), unmounted afterwards.

    Skips the test when mounting is not permitted here.
    """
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"needs a small tmpfs, and mount is not permitted here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(where: Path) -> Path:
    """Fill the file system holding ``where`` with one file, to the last block.

    Returns:
        The filler file (delete it to free the space).
    """
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 512, 1):  # big writes first, then the last bytes
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    stat = os.statvfs(where)
    assert stat.f_bavail == 0, f"{stat.f_bavail} blocks still free on {where}"
    return filler


def remount_read_only(where: Path) -> None:
    """Make the tmpfs at ``where`` read-only (root's permissions do not stop writes to a
    file mode 0444; a read-only mount does)."""
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)
