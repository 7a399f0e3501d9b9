"""The usage store: one row per request event, through SQLAlchemy.

Default: a SQLite file in WAL mode (``<data_dir>/usage.db``); any SQLAlchemy URL works
(PostgreSQL with psycopg for a team). Each event is committed before the request's
result is returned, so a result the user saw is never missing from the history.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url

#: 1: first schema. 2: ``request_id`` unique (journal replays must not duplicate).
SCHEMA_VERSION = 2

#: The columns of one event, in DESIGN.md's order ("One event per request").
EVENT_COLUMNS: tuple[str, ...] = (
    "ts", "request_id", "user", "session", "kind", "model", "backend", "outcome",
    "error_type", "status_code", "latency_ms", "ttft_ms", "prompt_tokens",
    "completion_tokens", "bytes",
)
#: What a stored row holds: the event columns, then the (truncated) prompt.
ROW_COLUMNS: tuple[str, ...] = (*EVENT_COLUMNS, "prompt")

metadata = MetaData()

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False, index=True),  # unix epoch seconds, UTC
    Column("request_id", String(32), nullable=False),
    Column("user", String(128), nullable=False),
    Column("session", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("model", String(128), nullable=False),
    Column("backend", String(256), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("error_type", String(64), nullable=False, default=""),
    Column("status_code", Integer, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("ttft_ms", Float, nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("bytes", Integer, nullable=True),
    Column("prompt", Text, nullable=True),
    # Unique so that replaying a journal after a crash never duplicates an event.
    Index("ix_events_request_id", "request_id", unique=True),
)

meta_table = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the Monitor read while requests write; NORMAL sync is durable against
    # a killed process (the WAL is in the OS page cache), only not against power loss.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


class UsageStore:
    """Event rows in a SQL database.

    Args:
        url: A SQLAlchemy URL. For ``sqlite:///path`` the parent folder is created.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be opened.
    """

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, future=True)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # SQLite allows one writer at a time; serialising writes here avoids
        # "database is locked" retries under many request threads.
        self._write_lock = threading.Lock()
        self._migrate()

    def _migrate(self) -> None:
        """Create the schema, or bring an older one up to ``SCHEMA_VERSION`` in place."""
        with self.engine.begin() as conn:
            fresh = not inspect(conn).has_table("events")
            metadata.create_all(conn)
            row = conn.execute(select(meta_table.c.value).where(meta_table.c.key == "schema_version")).first()
            version = SCHEMA_VERSION if fresh else int(row[0]) if row else 1
            if version < 2:
                # Keep the first row of any duplicated request id, then make the index unique.
                conn.execute(text("DELETE FROM events WHERE id NOT IN "
                                  "(SELECT MIN(id) FROM events GROUP BY request_id)"))
                conn.execute(text("DROP INDEX IF EXISTS ix_events_request_id"))
                conn.execute(text("CREATE UNIQUE INDEX ix_events_request_id ON events (request_id)"))
            if row is None:
                conn.execute(insert(meta_table).values(key="schema_version", value=str(SCHEMA_VERSION)))
            elif version != SCHEMA_VERSION:
                conn.execute(update(meta_table).where(meta_table.c.key == "schema_version")
                             .values(value=str(SCHEMA_VERSION)))

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        with self.engine.connect() as conn:
            value = conn.execute(select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar()
        return int(value or 0)

    def write_many(self, rows: Sequence[Sequence[Any]]) -> int:
        """Insert events (tuples in ``ROW_COLUMNS`` order) in one transaction.

        A row whose ``request_id`` is already stored is skipped, so replaying a
        journal twice is harmless.

        Returns:
            How many rows were given.
        """
        if not rows:
            return 0
        dialect = self.engine.dialect.name
        if dialect in ("sqlite", "postgresql"):
            module = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
            stmt = module.insert(events).on_conflict_do_nothing(index_elements=["request_id"])
        else:  # other databases: plain insert (duplicates only arise from a crash replay)
            stmt = insert(events)
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(stmt, [dict(zip(ROW_COLUMNS, row, strict=True)) for row in rows])
        return len(rows)

    def delete_older_than(self, cutoff_ts: float) -> int:
        """Delete the events recorded before ``cutoff_ts`` (epoch seconds).

        Deleting is explicit (the Monitor page asks first); nothing calls this on its own.

        Returns:
            How many events were deleted.
        """
        with self._write_lock, self.engine.begin() as conn:
            return int(conn.execute(delete(events).where(events.c.ts < cutoff_ts)).rowcount or 0)

    def count(self) -> int:
        """How many events the store holds."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(events)).scalar() or 0)

    def frame(self, since: float | None = None, *, limit: int = 200_000,
              columns: Sequence[str] = EVENT_COLUMNS) -> pd.DataFrame:
        """Events with ``ts >= since`` (epoch seconds), oldest first, at most ``limit``.

        Returns:
            A DataFrame with ``columns``; ``ts`` as UTC datetimes.
        """
        cols = [events.c[name] for name in columns]
        query = select(*cols)
        if since is not None:
            query = query.where(events.c.ts >= since)
        # Newest ``limit`` rows, returned oldest first, so a bounded frame keeps the
        # recent end of a long range.
        inner = query.order_by(events.c.ts.desc()).limit(limit).subquery()
        query = select(inner).order_by(inner.c.ts)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        df = pd.DataFrame(rows, columns=list(columns))
        if "ts" in df:
            df["ts"] = pd.to_datetime(df["ts"].astype("float64"), unit="s", utc=True)
        return df

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()
