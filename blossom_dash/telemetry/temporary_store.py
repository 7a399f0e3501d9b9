"""History off: a usage store for one run, when the SQLite file cannot be used.

A damaged, empty or read-only ``usage.db`` must not take the app down (Streamlit's
crash page) nor be silently replaced by an empty history. ``open_usage_store`` gives
the service a throw-away SQLite database in a new temporary folder instead, with the
reason: the Playground and every page keep working, conversations, comparisons and
batch jobs live for this run only, and every page says history is off and what to do
(``BlossomService.storage_status``). The damaged file is never opened for writing.
A server database (PostgreSQL) that cannot be reached is not replaced: replicas must
share one history, so the service refuses to start and says why.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import Any

from ..errors import StorageUnavailable
from .store import UsageStore

log = logging.getLogger("blossom_dash.metrics")


class TemporaryStore(UsageStore):
    """A ``UsageStore`` in a new temporary folder, removed on ``close()``.

    Raises:
        StorageUnavailable: not even a temporary database can be made (the
            temporary folder's disk is full or read-only).
    """

    def __init__(self) -> None:
        try:
            self._tmp = tempfile.mkdtemp(prefix="blossom-dash-history-")
        except OSError as exc:
            raise StorageUnavailable(f"No temporary folder can be made ({exc.strerror or exc}).") from exc
        try:
            super().__init__(f"sqlite:///{self._tmp}/usage.db")
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def close(self) -> None:
        """Release the connections and remove the folder with its database."""
        super().close()
        shutil.rmtree(self._tmp, ignore_errors=True)


def open_usage_store(url: str, **options: Any) -> tuple[UsageStore, StorageUnavailable | None]:
    """The usage store at ``url``, or a ``TemporaryStore`` and why (history off).

    Args:
        url: The SQLAlchemy URL (``Settings.resolved_database_url()``).
        **options: ``UsageStore``'s pool options.

    Returns:
        ``(store, None)``, or ``(TemporaryStore(), error)`` when ``url`` is a SQLite
        file that cannot be used (empty, damaged, read-only, full: ``error`` says
        which and what to do).

    Raises:
        StorageUnavailable: a server database cannot be used, or not even a
            temporary database can be made (then the original error is raised).
    """
    try:
        return UsageStore(url, **options), None
    except StorageUnavailable as err:
        if not url.startswith("sqlite"):
            raise
        log.error("history is off for this run: %s %s", err.message, err.hint)
        try:
            return TemporaryStore(), err
        except StorageUnavailable:
            raise err from None


__all__ = ["TemporaryStore", "open_usage_store"]
