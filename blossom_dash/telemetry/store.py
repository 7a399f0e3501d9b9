"""The usage store: one row per request event, plus hourly and daily rollups, through SQLAlchemy.

Default: a SQLite file in WAL mode (``<data_dir>/usage.db``); any SQLAlchemy URL works
(PostgreSQL with psycopg for a team). Events do not reach this store on the request's
path: the collector (``collector.py``) journals each event to a memory-mapped file
before the request's result returns, and its background flusher writes journaled
events here in batches (``write_many``) about every quarter second. A reader that goes
through the collector (``MetricsCollector.flush``, ``frame``; the Monitor page flushes
first) sees every recorded event, and journals left by a killed process are replayed
into the store on the next start, so a result the user saw is not missing from the
history; a reader of the store alone may lag the last quarter second.

Rollups (schema 3) let the Monitor answer a 30-day question from a few thousand rows
instead of a million events (SQLite has no hash aggregate: every ``GROUP BY`` over raw
events sorts all of them). Four tables, keyed by a whole UTC hour or day and the
filterable dimensions the Monitor's passes group or filter by:

- ``rollup_hour``: ``hour, model, kind, backend, outcome, error_type, status_code ->
  requests, prompt_tokens, completion_tokens, last_ts``. Feeds the per-bucket cube,
  the totals, the errors table and the filter lists. ``status_code`` -1 stands for
  "no response" (a NULL would never match itself in a unique key, so upserts could
  not find the row); error type and status follow the outcome, so they add few rows.
- ``rollup_latency_hour`` and ``rollup_latency_day``: ``hour|day, which, bin, model,
  kind, backend -> count``: the latency (``which = 'latency'``) and TTFT (``'ttft'``,
  which only streams have since schema 4) histograms of served (``ok``) events, in the Monitor's log-spaced bins
  (``latency_bin``), one row per non-empty bin. They are the long tables (~40 bins per
  model and hour: half a million rows for 30 days of the benchmark's traffic), so the
  histograms of a whole range read whole days from the daily table and only the hours
  at its edges from the hourly one; latency over time (buckets of >= 1 h) reads hours.
  The two histograms are kept apart, not joint: every reader wants one of them, and a
  joint histogram would hold ~bins x bins rows per hour.
- ``rollup_user_day``: ``day, user, model, kind, backend, outcome -> requests,
  prompt_tokens, completion_tokens, last_ts``. The per-user table and the user filter
  list. By day, not hour: a team's hundreds of users make an hourly table nearly as
  long as the events themselves (few users are active in the same hour with the same
  model), while a day groups their requests; the readers take the partial days at a
  range's edges from the events (an index on ``(user, ts)`` keeps that cheap, and
  serves the user filter on the other passes).

Token sums count every event of the key (NULL as 0); readers keep the ``ok`` rows,
as the raw aggregations do. Hours and days are ``floor(ts / 3600)`` and
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
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
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
from sqlalchemy.sql.elements import ColumnElement

#: 1: first schema. 2: ``request_id`` unique (journal replays must not duplicate).
#: 3: rollup tables and an index on ``(user, ts)``. 4: outcome ``rejected`` and TTFT
#: for streams only, with the history brought to both (``upgrade_row``).
SCHEMA_VERSION = 4

#: Latency histogram resolution: bin ``k`` holds ``[e^(k/N), e^((k+1)/N))`` ms, so one
#: bin spans a factor ``e^(1/16) ≈ 1.0645`` (6.45 %); bin ``-1`` holds ``[0, 1)`` ms.
#: Defined here because the latency rollups store these bins (``analytics`` reads them).
LATENCY_BINS_PER_E = 16
#: Seconds in one hour and one day, the time units of the rollup tables.
HOUR_S = 3600
DAY_S = 86_400
#: ``status_code`` of a rollup row whose events got no response (NULL in ``events``).
NO_STATUS = -1
#: Rollup deltas are computed for at most this many new event ids per statement (bound
#: parameters; SQLite allows 32,766).
_ID_CHUNK = 10_000

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
    # The Monitor's user filter reads one user's range of events without a full scan.
    Index("ix_events_user_ts", "user", "ts"),
)

#: Events that schema 4 moved from ``error`` to ``rejected``: a replay-only refusal
#: (``NotRecorded``), or the user's own invalid request, refused before it was sent
#: (``InvalidRequest`` without an upstream status). ``error`` is left to backend and
#: system failures.
_LEGACY_REJECTED = (events.c.outcome == "error") & (
    (events.c.error_type == "NotRecorded")
    | ((events.c.error_type == "InvalidRequest") & events.c.status_code.is_(None)))
_COL = {name: i for i, name in enumerate(ROW_COLUMNS)}


def upgrade_row(row: Sequence[Any]) -> tuple[Any, ...]:
    """An event row (``ROW_COLUMNS`` order) recorded before schema 4, in today's terms.

    Its outcome becomes ``rejected`` where ``_LEGACY_REJECTED`` says so, and its
    ``ttft_ms`` None unless it is a stream (earlier versions recorded the whole
    latency as the TTFT of other kinds). A row already in today's terms is returned
    unchanged. The migration applies the same rules in SQL; journals replayed after a
    crash (``MetricsCollector.recover``) may predate it.
    """
    out = list(row)
    outcome, error_type = out[_COL["outcome"]], out[_COL["error_type"]]
    if outcome == "error" and (error_type == "NotRecorded"
                               or (error_type == "InvalidRequest" and out[_COL["status_code"]] is None)):
        out[_COL["outcome"]] = "rejected"
    if out[_COL["kind"]] != "stream":
        out[_COL["ttft_ms"]] = None
    return tuple(out)


#: SQLite: ``WITHOUT ROWID`` stores rows in key order, so a range of hours is read
#: sequentially instead of through an index and a row lookup each.
_CLUSTERED = {"sqlite_with_rowid": False}


def _key(name: str, type_: Any) -> Column[Any]:
    return Column(name, type_, primary_key=True, autoincrement=False)


rollup_hour = Table(
    "rollup_hour",
    metadata,
    _key("hour", Integer),  # floor(ts / 3600)
    _key("model", String(128)),
    _key("kind", String(16)),
    _key("backend", String(256)),
    _key("outcome", String(16)),
    _key("error_type", String(64)),
    _key("status_code", Integer),  # NO_STATUS when the event has none
    Column("requests", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("last_ts", Float, nullable=False),  # the newest event's ts
    **_CLUSTERED,
)


def _latency_table(name: str, unit: str) -> Table:
    # Key order (unit, which, bin, ...): "GROUP BY unit, which, bin" then reads the rows
    # in key order and needs no sort, whatever the filters on model, kind and backend.
    return Table(
        name,
        metadata,
        _key(unit, Integer),
        _key("which", String(8)),  # 'latency' (latency_ms) or 'ttft' (ttft_ms)
        _key("bin", Integer),  # latency_bin()
        _key("model", String(128)),
        _key("kind", String(16)),
        _key("backend", String(256)),
        Column("count", BigInteger, nullable=False),
        **_CLUSTERED,
    )


rollup_latency_hour = _latency_table("rollup_latency_hour", "hour")
rollup_latency_day = _latency_table("rollup_latency_day", "day")

rollup_user_day = Table(
    "rollup_user_day",
    metadata,
    _key("day", Integer),  # floor(ts / 86400)
    _key("user", String(128)),
    _key("model", String(128)),
    _key("kind", String(16)),
    _key("backend", String(256)),
    _key("outcome", String(16)),
    Column("requests", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("last_ts", Float, nullable=False),
    **_CLUSTERED,
)

#: The rollup tables, each with the length of its time unit in seconds.
ROLLUPS: tuple[tuple[Table, int], ...] = ((rollup_hour, HOUR_S), (rollup_latency_hour, HOUR_S),
                                          (rollup_latency_day, DAY_S), (rollup_user_day, DAY_S))


meta_table = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)


def unit_column(table: Table) -> str:
    """The name of a rollup table's time column: ``hour`` or ``day``."""
    return "day" if "day" in table.c else "hour"


#: Whether this SQLite has ``ln()`` (built with SQLITE_ENABLE_MATH_FUNCTIONS, >= 3.35).
SQLITE_HAS_LN = True
try:
    sqlite3.connect(":memory:").execute("SELECT ln(1)")
except sqlite3.OperationalError:  # built without SQLITE_ENABLE_MATH_FUNCTIONS (< 3.35 or trimmed)
    SQLITE_HAS_LN = False


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
    with ``table``'s columns, key first (in key order, so inserts are sequential)."""
    E = events.c
    unit = floor_int(E.ts / float(DAY_S if unit_column(table) == "day" else HOUR_S), is_sqlite)
    if table in (rollup_latency_hour, rollup_latency_day):
        parts = []
        for which, column in (("latency", E.latency_ms), ("ttft", E.ttft_ms)):
            b = latency_bin(column, is_sqlite)
            keys = [unit, literal_column(f"'{which}'", String), b, E.model, E.kind, E.backend]
            parts.append(select(*keys, func.count()).where(where, E.outcome == "ok", column.is_not(None))
                         .group_by(unit, b, E.model, E.kind, E.backend))
        return union_all(*parts)
    if table is rollup_hour:
        keys = [unit, E.model, E.kind, E.backend, E.outcome, E.error_type, func.coalesce(E.status_code, NO_STATUS)]
    else:
        keys = [unit, E.user, E.model, E.kind, E.backend, E.outcome]
    values = [func.count(), _sum0(E.prompt_tokens), _sum0(E.completion_tokens), func.max(E.ts)]
    return select(*keys, *values).where(where).group_by(*keys)


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

    def _upgrade_events(self, conn: Connection) -> list[int]:
        """Schema 4 on the events (``upgrade_row``'s rules, in SQL).

        Returns:
            The hours (``floor(ts / 3600)``) holding an event whose outcome changed.
        """
        E = events.c
        hour = floor_int(E.ts / float(HOUR_S), self.is_sqlite)
        hours = [int(h) for (h,) in conn.execute(select(hour).where(_LEGACY_REJECTED).distinct())]
        conn.execute(update(events).where(_LEGACY_REJECTED).values(outcome="rejected"))
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

        Returns:
            How many rows were given.
        """
        if not rows:
            return 0
        params = [dict(zip(ROW_COLUMNS, row, strict=True)) for row in rows]
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

