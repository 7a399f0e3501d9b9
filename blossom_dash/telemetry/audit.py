"""The audit log: every admin action, who did it, when, and the value before and after.

One table, ``audit_log``, in the usage database (created on first use, beside the
events). Values are stored as short JSON; secrets never reach it (the service passes
only settings that carry none: backend names and URLs without credentials, limits,
cache and replay switches, counts).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pandas as pd
from sqlalchemy import Column, Float, Integer, String, Table, Text, insert, select
from sqlalchemy.engine import Engine

from .store import ensure_tables, metadata

#: Longest stored rendering of a value, characters.
VALUE_CHARS = 500

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False, index=True),
    Column("user", String(320), nullable=False),
    Column("action", String(64), nullable=False),
    Column("old", Text),
    Column("new", Text),
)

COLUMNS = ("ts", "user", "action", "old", "new")


def _render(value: Any) -> str | None:
    if value is None:
        return None
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


class AuditLog:
    """Append-only record of admin actions.

    Args:
        engine: The usage database.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the table cannot be created.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        ensure_tables(engine, [audit_log])  # idempotent, under the schema lock

    def record(self, user: str, action: str, old: Any = None, new: Any = None) -> None:
        """Append one entry (``old`` and ``new`` as JSON, cut to ``VALUE_CHARS``).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the write failed.
        """
        with self._engine.begin() as conn:
            conn.execute(insert(audit_log).values(ts=time.time(), user=user[:320], action=action[:64],
                                                  old=_render(old), new=_render(new)))

    def frame(self, limit: int = 1000) -> pd.DataFrame:
        """The newest ``limit`` entries, newest first, with ``COLUMNS`` (``ts`` as UTC time)."""
        stmt = select(*(audit_log.c[c] for c in COLUMNS)).order_by(audit_log.c.id.desc()).limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).fetchall()
        df = pd.DataFrame(rows, columns=list(COLUMNS))
        df["ts"] = pd.to_datetime(df["ts"], unit="s", utc=True)
        return df


__all__ = ["COLUMNS", "AuditLog", "audit_log"]
