"""The usage store: one row per request event, plus hourly and daily rollups, through SQLAlchemy.

Default: a SQLite file in WAL mode (``<data_dir>/usage.db``); any SQLAlchemy URL works
(PostgreSQL with psycopg for a team). Events do not reach this store on the request's
path: the collector (``collector.py``) appends each event to a journal file
before the request's result returns, and its background flusher writes journaled
events here in batches (``write_many``) about every quarter second. A reader that goes
through the collector (``MetricsCollector.flush``, ``frame``; the Monitor page flushes
first) sees every recorded event, and journals left by a killed process are replayed
into the store on the next start, so a result the user saw is not missing from the
history; a reader of the store alone may lag the last quarter second.

Rollups (schema 3) let the Monitor answer a 30-day question from a few thousand rows
instead of a million events; their tables, and the others of the usage database, are
defined in ``schema.py``.

Token sums count every event of the key (NULL as 0); readers keep the ``ok`` rows,
as the raw aggregations do. Cost (schema 5, ``schema.Pollen``: exact steps of 1e-12
pollen) is summed the same way, with ``priced`` counting the events that had one:
spend is the sum of ``cost`` over outcome ``ok``; the cache's saving is the sum over
``cache_hit`` (a hit's ``cost`` is what the same answer cost from the backend, which
was not paid again); a ``priced`` of 0 means unpriced, not free. Hours and days are ``floor(ts / 3600)`` and
``floor(ts / 86400)``, computed in SQL by the same expression as the Monitor's time
buckets, so a rollup row holds exactly the events ``unit * k <= ts < unit * (k + 1)``
(see ``floor_int``).

Exactness is kept by deriving every rollup row from the events table by one SQL
definition (``_rollup_select``: ``INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO
UPDATE``), in the transaction that changes the events: ``write_many`` adds the rows its
``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` reports as inserted, so an event
whose ``request_id`` was already stored (a replayed journal, or another process that
stored it first) is neither inserted nor counted; ``delete_older_than`` drops the whole
hours and days before its cutoff and recomputes the one that contains it; the
migration to schema 3 (and ``rebuild_rollups``) builds each table from the events in
one ``GROUP BY`` pass (about 10 s for 1M events on SQLite). The migration to schema 4
rewrites the history's outcomes and TTFTs in place (``upgrade_row``), drops the TTFT
rollup rows of the kinds that do not stream, and recomputes only the hours (days) that
hold a reclassified event (``_upgrade_rollups``): about 4 s for 1M events of which
every hour holds one.
Rollups need an upsert, so they are kept on SQLite and PostgreSQL only (``rollups``);
on other databases the Monitor reads the events.

On PostgreSQL (``postgresql+psycopg://...``) the store holds the same tables and runs the
same SQL; the schema is created and migrated under an advisory lock
(``schema.SCHEMA_LOCK_KEY``), so replicas may start at once on an empty database, and
connections come from a bounded pool checked before use (``UsageStore``'s arguments).
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    Integer,
    String,
    Table,
    bindparam,
    case,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    literal_column,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.sql.elements import ColumnElement

from ..errors import StorageUnavailable
from . import sqlite_checks
from .schema import (
    DAY_S,
    DETAIL_COLUMNS,
    EVENT_COLUMNS,
    HOUR_S,
    LATENCY_BINS_PER_E,
    LEGACY_REJECTED,
    NO_STATUS,
    ROLLUPS,
    ROW_COLUMNS,
    SCHEMA_LOCK_KEY,
    SCHEMA_VERSION,
    Pollen,
    ensure_tables,
    events,
    fit_row,
    fit_text,
    lock_schema,
    mask_url,
    meta_table,
    metadata,
    rollup_hour,
    rollup_latency_day,
    rollup_latency_hour,
    rollup_user_day,
    unit_column,
    upgrade_row,
)

#: Rollup deltas are computed for at most this many new event ids per statement (bound
#: parameters; SQLite allows 32,766).
_ID_CHUNK = 10_000

#: Whether this SQLite has ``ln()`` (built with SQLITE_ENABLE_MATH_FUNCTIONS, >= 3.35).
SQLITE_HAS_LN = True
try:
    sqlite3.connect(":memory:").execute("SELECT ln(1)")
except sqlite3.OperationalError:  # built without SQLITE_ENABLE_MATH_FUNCTIONS (< 3.35 or trimmed)
    SQLITE_HAS_LN = False


def _first_line(exc: BaseException) -> str:
    """The driver's own first line of ``exc``, without SQLAlchemy's SQL and links."""
    inner = getattr(exc, "orig", None) or exc
    return (str(inner).strip().splitlines() or [type(inner).__name__])[0][:300]


def sqlite_ln(x: float | None) -> float | None:
    """``ln`` for a SQLite built without math functions (C's ``log``, as SQLite's own)."""
    return math.log(x) if x is not None and x > 0 else None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the Monitor read while requests write; NORMAL sync is durable against
    # a killed process (the WAL is in the OS page cache), only not against power loss.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()
    if not SQLITE_HAS_LN:  # the latency rollups bin with ln() on write
        dbapi_conn.create_function("ln", 1, sqlite_ln, deterministic=True)


def floor_int(expr: ColumnElement[Any], is_sqlite: bool) -> ColumnElement[Any]:
    """``floor(expr)`` as an integer, in SQL.

    SQLite's ``CAST(x AS INTEGER)`` truncates, which is the floor for ``x >= 0`` (times
    and bins here); PostgreSQL's rounds, so it gets ``floor()`` first. For ``ts / d``
    with ``d`` >= 2 the floor of the rounded quotient is the exact floor (a double just
    below ``d * k`` is at least one ulp below it, and dividing by ``d`` keeps more than
    half an ulp of ``k`` below ``k``), so ``floor(ts / 3600) = k`` exactly when
    ``3600 * k <= ts < 3600 * (k + 1)``: an hour's rollup and a range's edges never
    disagree on which events it holds.
    """
    return cast(expr, Integer) if is_sqlite else cast(func.floor(expr), Integer)


def latency_bin(column: ColumnElement[Any], is_sqlite: bool) -> ColumnElement[Any]:
    """The latency histogram bin of ``column`` (ms), in SQL: ``floor(ln(x) * N)``
    (``N = LATENCY_BINS_PER_E``), -1 below 1 ms, NULL where ``column`` is NULL."""
    return case((column < 1.0, -1), else_=floor_int(func.ln(column) * LATENCY_BINS_PER_E, is_sqlite))


def _sum0(column: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(column), 0)


def _rollup_select(table: Table, where: ColumnElement[bool], is_sqlite: bool) -> Any:
    """The rows of ``table`` for the events matching ``where``: a ``SELECT ... GROUP BY``
    with ``table``'s columns, key first, ordered by the key.

    The order is what keeps replicas from deadlocking on PostgreSQL: two flushes that
    upsert the same rollup rows (the current hour, every replica's) take their row locks
    in the order the rows come, so in one agreed order neither can hold a row the other
    holds while waiting for one it has (measured before: 22 of 400 concurrent batches of
    four writers failed with ``deadlock detected``). On SQLite the ``GROUP BY`` already
    yields this order, and inserting in key order is sequential.
    """
    E = events.c
    unit = floor_int(E.ts / float(DAY_S if unit_column(table) == "day" else HOUR_S), is_sqlite)
    if table in (rollup_latency_hour, rollup_latency_day):
        parts = []
        for which, column in (("latency", E.latency_ms), ("ttft", E.ttft_ms)):
            b = latency_bin(column, is_sqlite)
            keys = [unit, literal_column(f"'{which}'", String), b, E.model, E.kind, E.backend]
            parts.append(select(*keys, func.count()).where(where, E.outcome == "ok", column.is_not(None))
                         .group_by(unit, b, E.model, E.kind, E.backend))
        return union_all(*parts).order_by(*(literal_column(str(i)) for i in range(1, 7)))  # the six key columns
    if table is rollup_hour:
        keys = [unit, E.model, E.kind, E.backend, E.outcome, E.error_type, func.coalesce(E.status_code, NO_STATUS)]
    else:
        keys = [unit, E.user, E.model, E.kind, E.backend, E.outcome]
    values = [func.count(), _sum0(E.prompt_tokens), _sum0(E.completion_tokens), func.max(E.ts),
              _sum0(E.cost), func.count(E.cost)]
    return select(*keys, *values).where(where).group_by(*keys).order_by(*keys)


def upsert_statement(dialect: str, table: Table, rows: Any) -> Any:
    """``INSERT ... ON CONFLICT DO UPDATE`` adding ``rows`` (a select of ``table``'s
    columns) to a rollup ``table``: new keys are inserted, existing ones get the counts
    and sums added and the later ``last_ts``.

    Args:
        dialect: ``sqlite`` or ``postgresql`` (both spell the upsert alike).
        table: A rollup table.
        rows: A select of its columns, one row per key.
    """
    module = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
    stmt = module.insert(table).from_select([c.name for c in table.c], rows)
    old, new = table.c, stmt.excluded
    values = {c.name: old[c.name] + new[c.name] for c in table.c if not c.primary_key and c.name != "last_ts"}
    if "last_ts" in table.c:  # greatest(): a CASE, as SQLite's max(a, b) is PostgreSQL's greatest(a, b)
        values["last_ts"] = case((new.last_ts > old.last_ts, new.last_ts), else_=old.last_ts)
    return stmt.on_conflict_do_update(index_elements=[c.name for c in table.primary_key], set_=values)


def _rollup_events(conn: Connection, table: Table, where: ColumnElement[bool], is_sqlite: bool) -> None:
    """Add the events matching ``where`` to ``table`` (they must not be in it yet)."""
    conn.execute(upsert_statement(conn.dialect.name, table, _rollup_select(table, where, is_sqlite)))


class UsageStore:
    """Event rows in a SQL database.

    Args:
        url: A SQLAlchemy URL. For ``sqlite:///path`` the parent folder is created.
        pool_size / max_overflow / pool_timeout_s: The connection pool of a server
            database (SQLAlchemy's ``QueuePool``: connections kept, extra ones under
            load, seconds to wait for one); SQLite keeps SQLAlchemy's own pool.
        connect_timeout_s: Seconds to wait for a server database to accept a connection
            (libpq's ``connect_timeout``, whole seconds, at least 2 as libpq requires).
            Server connections are also checked before use (``pool_pre_ping``), so a
            restarted database costs no request an error.

    Schema creation and migrations run under ``SCHEMA_LOCK_KEY`` on PostgreSQL, so
    replicas may start at the same moment on an empty database.

    Raises:
        StorageUnavailable: a server database cannot be reached or refuses us (the
            message shows the URL with its password masked); a SQLite file is empty,
            read-only, damaged (``PRAGMA quick_check`` runs at every start) or locked
            (``sqlite_checks``).
    """

    def __init__(self, url: str, *, pool_size: int = 5, max_overflow: int = 10, pool_timeout_s: float = 10.0,
                 connect_timeout_s: float = 5.0) -> None:
        parsed = make_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        #: The SQLite file (None: not SQLite, or in memory).
        self.sqlite_path = (Path(parsed.database) if self.is_sqlite and parsed.database
                            and parsed.database != ":memory:" and not parsed.database.startswith("file:") else None)
        if self.sqlite_path is not None:
            sqlite_checks.check_file(self.sqlite_path)  # empty or read-only: refused, in words
        options: dict[str, Any] = {}
        if not self.is_sqlite:
            options = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout_s,
                       "pool_pre_ping": True}
            if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg":
                options["connect_args"] = {"connect_timeout": max(2, math.ceil(connect_timeout_s))}
        self.engine: Engine = create_engine(url, future=True, **options)
        #: Whether the rollup tables are kept (they need an upsert: SQLite, PostgreSQL).
        self.rollups = self.engine.dialect.name in ("sqlite", "postgresql")
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if self.rollups:
            # Built once: composing these statements costs ~2 ms of Python per call,
            # thirty times the SQL they run for a flusher's batch.
            dialect = self.engine.dialect.name
            module = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
            self._insert_new = (module.insert(events).on_conflict_do_nothing(index_elements=["request_id"])
                                .returning(events.c.id))
            new = events.c.id.in_(bindparam("ids", expanding=True))
            self._add_new = [upsert_statement(dialect, t, _rollup_select(t, new, self.is_sqlite)) for t, _u in ROLLUPS]
        # SQLite allows one writer at a time; serialising writes here avoids
        # "database is locked" retries under many request threads.
        self._write_lock = threading.Lock()
        if self.is_sqlite:
            with sqlite_checks.opening(self.engine, self.sqlite_path):  # start lock, quick_check, errors in words
                self._migrate()
            return
        try:
            self._migrate()
        except (OperationalError, InterfaceError) as exc:
            self.engine.dispose()
            raise StorageUnavailable(
                f"The usage database at {mask_url(url)} cannot be reached ({_first_line(exc)}).",
                "Check that the database server is running and accepts connections from this host, and "
                "BLOSSOM_DASH_DATABASE_URL (host, port, database name, user and password); "
                "BLOSSOM_DASH_DB_CONNECT_TIMEOUT_S sets how long to wait for it.") from exc

    def ensure_tables(self, tables: Sequence[Table]) -> None:
        """Create the missing ones of ``tables`` in this database, under the schema lock
        (see ``ensure_tables``).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database refused.
        """
        ensure_tables(self.engine, tables)

    def _migrate(self) -> None:
        """Create the schema, or bring an older one up to ``SCHEMA_VERSION`` in place,
        in one transaction under the schema lock (``lock_schema``)."""
        with self.engine.begin() as conn:
            lock_schema(conn)
            fresh = not inspect(conn).has_table("events")
            metadata.create_all(conn)
            if not fresh:
                self._add_cost_columns(conn)  # schema 5, before any step below reads them
                self._add_detail_columns(conn)  # schema 6
            row = conn.execute(select(meta_table.c.value).where(meta_table.c.key == "schema_version")).first()
            version = SCHEMA_VERSION if fresh else int(row[0]) if row else 1
            if version < 2:
                # Keep the first row of any duplicated request id, then make the index unique.
                conn.execute(text("DELETE FROM events WHERE id NOT IN "
                                  "(SELECT MIN(id) FROM events GROUP BY request_id)"))
                conn.execute(text("DROP INDEX IF EXISTS ix_events_request_id"))
                conn.execute(text("CREATE UNIQUE INDEX ix_events_request_id ON events (request_id)"))
            # Before the rollups are built (< 3) or mended (3), so that they count today's events.
            hours = self._upgrade_events(conn) if version < 4 else []
            if version < 3:
                # create_all() does not add an index to a table that exists already.
                next(i for i in events.indexes if i.name == "ix_events_user_ts").create(conn, checkfirst=True)
                if self.rollups:
                    self._rebuild_rollups(conn)
            elif version < 4 and self.rollups:
                self._upgrade_rollups(conn, hours)
            if row is None:
                conn.execute(insert(meta_table).values(key="schema_version", value=str(SCHEMA_VERSION)))
            elif version != SCHEMA_VERSION:
                conn.execute(update(meta_table).where(meta_table.c.key == "schema_version")
                             .values(value=str(SCHEMA_VERSION)))

    @staticmethod
    def _add_cost_columns(conn: Connection) -> None:
        """Schema 5: ``events.cost`` (NULL: the history is unpriced) and the rollups'
        ``cost`` and ``priced`` (0, which is exact for unpriced events), on the tables
        that lack them (``create_all`` adds no column to a table that exists)."""
        found = inspect(conn)
        for table, columns in ((events, ("cost",)), (rollup_hour, ("cost", "priced")),
                               (rollup_user_day, ("cost", "priced"))):
            have = {c["name"] for c in found.get_columns(table.name)}
            for name in columns:
                if name in have:
                    continue
                kind = "BIGINT" if table is events else "BIGINT NOT NULL DEFAULT 0"
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}"))

    @staticmethod
    def _add_detail_columns(conn: Connection) -> None:
        """Schema 6: ``events.context`` ("" for the history: it belonged to nothing
        recorded), ``params`` and ``answer`` (NULL: not recorded then), and the
        ``(context, ts)`` index; only what is missing. No rollup changes: the rollups
        do not group by these."""
        have = {c["name"] for c in inspect(conn).get_columns(events.name)}
        for name, kind in (("context", "VARCHAR(128) NOT NULL DEFAULT ''"), ("params", "TEXT"),
                           ("answer", "TEXT")):
            if name not in have:
                conn.execute(text(f"ALTER TABLE {events.name} ADD COLUMN {name} {kind}"))
        next(i for i in events.indexes if i.name == "ix_events_context_ts").create(conn, checkfirst=True)

    def _upgrade_events(self, conn: Connection) -> list[int]:
        """Schema 4 on the events (``upgrade_row``'s rules, in SQL).

        Returns:
            The hours (``floor(ts / 3600)``) holding an event whose outcome changed.
        """
        E = events.c
        hour = floor_int(E.ts / float(HOUR_S), self.is_sqlite)
        hours = [int(h) for (h,) in conn.execute(select(hour).where(LEGACY_REJECTED).distinct())]
        conn.execute(update(events).where(LEGACY_REJECTED).values(outcome="rejected"))
        conn.execute(update(events).where(E.kind != "stream", E.ttft_ms.is_not(None)).values(ttft_ms=None))
        return hours

    def _upgrade_rollups(self, conn: Connection, hours: Sequence[int]) -> None:
        """Schema 4 on schema-3 rollups, exactly, after ``_upgrade_events``.

        The latency tables are keyed by kind, so their TTFT rows of other kinds than
        ``stream`` held exactly the TTFTs just cleared: they are deleted. They hold no
        outcome but ``ok``, so the reclassified events never were in them. In the two
        tables keyed by outcome, the hours (days) that hold a reclassified event are
        recomputed from the events; the others are unchanged.
        """
        for table in (rollup_latency_hour, rollup_latency_day):
            conn.execute(delete(table).where(table.c.which == "ttft", table.c.kind != "stream"))
        for table, unit in ((rollup_hour, HOUR_S), (rollup_user_day, DAY_S)):
            units = sorted({h * HOUR_S // unit for h in hours})
            key = table.c[unit_column(table)]
            for start in range(0, len(units), _ID_CHUNK):
                chunk = units[start:start + _ID_CHUNK]
                conn.execute(delete(table).where(key.in_(chunk)))
                _rollup_events(conn, table, floor_int(events.c.ts / float(unit), self.is_sqlite).in_(chunk),
                               self.is_sqlite)

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        with self.engine.connect() as conn:
            value = conn.execute(select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar()
        return int(value or 0)

    def write_many(self, rows: Sequence[Sequence[Any]]) -> int:
        """Insert events (tuples in ``ROW_COLUMNS`` order) and update the rollups, in one
        transaction.

        A row whose ``request_id`` is already stored is skipped, so replaying a journal
        twice is harmless, for the rollups too: the insert is ``ON CONFLICT (request_id)
        DO NOTHING RETURNING id``, and only the ids it returns (the rows it really
        inserted; a duplicate inside the batch is inserted once) are aggregated into the
        rollups, from the stored rows, by the same SQL that builds them on migration.
        Another process that inserts the same id concurrently makes this insert skip it
        as well (PostgreSQL waits for its commit), so it is never counted twice.
        Texts too long for their column, and NUL characters, are cut (``fit_row``).

        Returns:
            How many rows were given.
        """
        if not rows:
            return 0
        params = [dict(zip(ROW_COLUMNS, fit_row(row), strict=True)) for row in rows]
        with self._write_lock, self.engine.begin() as conn:
            if not self.rollups:  # other databases: plain insert (duplicates only arise from a crash replay)
                conn.execute(insert(events), params)
                return len(rows)
            ids = [i for (i,) in conn.execute(self._insert_new, params)]
            for start in range(0, len(ids), _ID_CHUNK):
                for stmt in self._add_new:
                    conn.execute(stmt, {"ids": ids[start:start + _ID_CHUNK]})
        return len(rows)

    def delete_older_than(self, cutoff_ts: float) -> int:
        """Delete the events recorded before ``cutoff_ts`` (epoch seconds).

        Deleting is explicit (the Monitor page asks first); nothing calls this on its own.
        The rollups follow in the same transaction: the hours (days) wholly before the
        cutoff are dropped, and the one that contains it is recomputed from the events
        left in it.

        Returns:
            How many events were deleted.
        """
        with self._write_lock, self.engine.begin() as conn:
            deleted = int(conn.execute(delete(events).where(events.c.ts < cutoff_ts)).rowcount or 0)
            if self.rollups:
                for table, unit in ROLLUPS:
                    k = math.floor(cutoff_ts / unit)  # the unit holding the cutoff
                    conn.execute(delete(table).where(table.c[unit_column(table)] <= k))
                    span = (events.c.ts >= float(k * unit)) & (events.c.ts < float((k + 1) * unit))
                    _rollup_events(conn, table, span, self.is_sqlite)
            return deleted

    def rebuild_rollups(self) -> None:
        """Recompute every rollup table from the events (what the migration to schema 3
        does; also for events written around ``write_many``, e.g. a bulk load)."""
        if not self.rollups:
            return
        with self._write_lock, self.engine.begin() as conn:
            self._rebuild_rollups(conn)

    def _rebuild_rollups(self, conn: Connection) -> None:
        for table, _unit in ROLLUPS:
            conn.execute(delete(table))
            _rollup_events(conn, table, true(), self.is_sqlite)

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

    def rollup_rows(self) -> dict[str, int]:
        """How many rows each rollup table holds, by table name."""
        with self.engine.connect() as conn:
            return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar() or 0)
                    for t, _unit in ROLLUPS}

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()


#: The schema's names are re-exported here, where the readers have always found them.
__all__ = [
    "DETAIL_COLUMNS",
    "DAY_S",
    "EVENT_COLUMNS",
    "HOUR_S",
    "LATENCY_BINS_PER_E",
    "NO_STATUS",
    "ROLLUPS",
    "Pollen",
    "ROW_COLUMNS",
    "SCHEMA_LOCK_KEY",
    "SCHEMA_VERSION",
    "SQLITE_HAS_LN",
    "UsageStore",
    "ensure_tables",
    "events",
    "fit_row",
    "fit_text",
    "floor_int",
    "latency_bin",
    "lock_schema",
    "mask_url",
    "meta_table",
    "metadata",
    "rollup_hour",
    "rollup_latency_day",
    "rollup_latency_hour",
    "rollup_user_day",
    "sqlite_ln",
    "unit_column",
    "upgrade_row",
    "upsert_statement",
]
