"""The usage database's schema: the events, the rollups, the schema version, and the
lock under which replicas create and migrate tables.

Rollups (schema 3) let the Monitor answer a 30-day question from a few thousand rows
instead of a million events (SQLite has no hash aggregate: every ``GROUP BY`` over raw
events sorts all of them). Four tables, keyed by a whole UTC hour or day and the
filterable dimensions the Monitor's passes group or filter by:

- ``rollup_hour``: ``hour, model, kind, backend, outcome, error_type, status_code ->
  requests, prompt_tokens, completion_tokens, last_ts, cost, priced`` (schema 5: ``cost``
  the exact sum of the events' costs, 0 when none is priced, and ``priced`` how many
  events had one, so "unpriced" is told from "free"). Feeds the per-bucket cube,
  the totals, the errors table and the filter lists. ``status_code`` -1 stands for
  "no response" (a NULL would never match itself in a unique key, so upserts could
  not find the row); error type and status follow the outcome, so they add few rows.
- ``rollup_latency_hour`` and ``rollup_latency_day``: ``hour|day, which, bin, model,
  kind, backend -> count``: the latency (``which = 'latency'``) and TTFT (``'ttft'``,
  which only streams have since schema 4) histograms of served (``ok``) events, in
  the Monitor's log-spaced bins (``store.latency_bin``), one row per non-empty bin.
  They are the long tables (~40 bins per model and hour: half a million rows for 30
  days of the benchmark's traffic), so the histograms of a whole range read whole days
  from the daily table and only the hours at its edges from the hourly one; latency
  over time (buckets of >= 1 h) reads hours.
  The two histograms are kept apart, not joint: every reader wants one of them, and a
  joint histogram would hold ~bins x bins rows per hour.
- ``rollup_user_day``: ``day, user, model, kind, backend, outcome -> requests,
  prompt_tokens, completion_tokens, last_ts, cost, priced``. The per-user table and the user filter
  list. By day, not hour: a team's hundreds of users make an hourly table nearly as
  long as the events themselves (few users are active in the same hour with the same
  model), while a day groups their requests; the readers take the partial days at a
  range's edges from the events (an index on ``(user, ts)`` keeps that cheap, and
  serves the user filter on the other passes).

The features keep their own tables on the same ``metadata`` (comparisons, batch jobs,
conversations, the audit log) and create them with ``ensure_tables``: on PostgreSQL
every ``CREATE`` and migration runs under one advisory lock (``SCHEMA_LOCK_KEY``), so
replicas starting at the same moment on an empty database do not collide.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text, text
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.types import TypeDecorator

from ..pricing import COST_QUANTUM

#: 1: first schema. 2: ``request_id`` unique (journal replays must not duplicate).
#: 3: rollup tables and an index on ``(user, ts)``. 4: outcome ``rejected`` and TTFT
#: for streams only, with the history brought to both (``upgrade_row``). 5: ``cost`` on
#: the events (``Pollen``) and ``cost`` and ``priced`` on ``rollup_hour`` and
#: ``rollup_user_day`` (earlier events are unpriced: NULL, so the sums start at 0).
#: 6: ``context``, ``params`` and ``answer`` on the events (earlier events: "", NULL,
#: NULL) and an index on ``(context, ts)`` for the conversation view.
SCHEMA_VERSION = 6

#: Latency histogram resolution: bin ``k`` holds ``[e^(k/N), e^((k+1)/N))`` ms, so one
#: bin spans a factor ``e^(1/16) ≈ 1.0645`` (6.45 %); bin ``-1`` holds ``[0, 1)`` ms.
#: Defined here because the latency rollups store these bins (``analytics`` reads them).
LATENCY_BINS_PER_E = 16
#: Seconds in one hour and one day, the time units of the rollup tables.
HOUR_S = 3600
DAY_S = 86_400
#: ``status_code`` of a rollup row whose events got no response (NULL in ``events``).
NO_STATUS = -1

_BASE_COLUMNS: tuple[str, ...] = (
    "ts", "request_id", "user", "session", "kind", "model", "backend", "outcome",
    "error_type", "status_code", "latency_ms", "ttft_ms", "prompt_tokens",
    "completion_tokens", "bytes",
)
#: The columns of one event, in DESIGN.md's order ("One event per request"), then its
#: ``cost`` (schema 5).
EVENT_COLUMNS: tuple[str, ...] = (*_BASE_COLUMNS, "cost")
#: What a stored row holds: the event columns before schema 5, the (truncated) prompt,
#: then ``cost`` (schema 5), then ``context``, ``params`` and ``answer`` (schema 6): each
#: version appends, so rows and journals of earlier versions are a prefix of it.
ROW_COLUMNS: tuple[str, ...] = (*_BASE_COLUMNS, "prompt", "cost", "context", "params", "answer")
#: The columns schema 6 added (``upgrade_row`` pads older rows with ``DETAIL_DEFAULTS``).
DETAIL_COLUMNS: tuple[str, ...] = ("context", "params", "answer")
DETAIL_DEFAULTS: tuple[Any, ...] = ("", None, None)


class Pollen(TypeDecorator[Decimal]):
    """An amount of pollen, stored exactly as a whole number of ``COST_QUANTUM`` steps
    (1e-12 pollen) in a ``BIGINT``; read back as a ``Decimal`` with 12 decimals.

    Why not ``Numeric``: SQLite has no decimal type (a ``NUMERIC`` column stores a float,
    and its ``SUM`` adds floats), while integers add exactly on every database. A
    ``BIGINT`` holds up to about 9.2 million pollen per row or rollup cell. SQLAlchemy
    reads a ``sum()``/``coalesce()`` of the column back as ``Decimal`` too (the function
    takes the column's type); raw SQL outside SQLAlchemy sees the integer steps (divide
    by 10**12).

    Binds a ``Decimal``, an ``int`` or a decimal string (journal lines carry costs as
    strings); values finer than 1e-12 are rounded half up. None stays NULL (unpriced).
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
        return int(amount.scaleb(12).to_integral_value(rounding="ROUND_HALF_UP"))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return (Decimal(int(value)) * COST_QUANTUM).quantize(COST_QUANTUM)


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
    # Pollen (``Pollen``): usage x price; for a cache hit, the cost the hit saved (what
    # the same answer cost from the backend). NULL when the model is unpriced.
    Column("cost", Pollen(), nullable=True),
    # Schema 6. What the request belongs to: "chat:<id>", "comparison:<id>",
    # "batch:<job_id>", "" when nothing (gateway ``Request.context``).
    Column("context", String(128), nullable=False, default="", server_default=""),
    # The request's parameters as JSON text (model, max_tokens, temperature, seed,
    # width/height, voice...; never a key or the prompt): ``gateway.event_detail``.
    Column("params", Text, nullable=True),
    # The answer text, cut like the prompt, only when prompts are stored; else NULL.
    Column("answer", Text, nullable=True),
    # Unique so that replaying a journal after a crash never duplicates an event.
    Index("ix_events_request_id", "request_id", unique=True),
    # The Monitor's user filter reads one user's range of events without a full scan.
    Index("ix_events_user_ts", "user", "ts"),
    # The conversation view reads one chat's (comparison's, job's) events in order.
    Index("ix_events_context_ts", "context", "ts"),
)

#: Events that schema 4 moved from ``error`` to ``rejected`` (a SQL condition): a replay-only refusal
#: (``NotRecorded``), or the user's own invalid request, refused before it was sent
#: (``InvalidRequest`` without an upstream status). ``error`` is left to backend and
#: system failures.
LEGACY_REJECTED = (events.c.outcome == "error") & (
    (events.c.error_type == "NotRecorded")
    | ((events.c.error_type == "InvalidRequest") & events.c.status_code.is_(None)))
_COL = {name: i for i, name in enumerate(ROW_COLUMNS)}


def upgrade_row(row: Sequence[Any]) -> tuple[Any, ...]:
    """An event row (``ROW_COLUMNS`` order) recorded before schema 4, 5 or 6, in today's terms.

    A row without ``cost`` (before schema 5: four columns short) gets ``cost`` None; a
    row without ``context, params, answer`` (before schema 6: three short) gets
    ``"", None, None`` (``DETAIL_DEFAULTS``). Its
    outcome becomes ``rejected`` where ``LEGACY_REJECTED`` says so, and its
    ``ttft_ms`` None unless it is a stream (earlier versions recorded the whole
    latency as the TTFT of other kinds). A row already in today's terms is returned
    unchanged. The migration applies the same rules in SQL; journals replayed after a
    crash (``MetricsCollector.recover``) may predate it.
    """
    out = list(row)
    if len(out) == len(ROW_COLUMNS) - len(DETAIL_COLUMNS) - 1:
        out.append(None)
    if len(out) == len(ROW_COLUMNS) - len(DETAIL_COLUMNS):
        out.extend(DETAIL_DEFAULTS)
    outcome, error_type = out[_COL["outcome"]], out[_COL["error_type"]]
    if outcome == "error" and (error_type == "NotRecorded"
                               or (error_type == "InvalidRequest" and out[_COL["status_code"]] is None)):
        out[_COL["outcome"]] = "rejected"
    if out[_COL["kind"]] != "stream":
        out[_COL["ttft_ms"]] = None
    return tuple(out)


#: The text columns of an event row: (position in ``ROW_COLUMNS``, most characters, or
#: None for ``Text``).
_TEXT_FIELDS: tuple[tuple[int, int | None], ...] = tuple(
    (i, events.c[name].type.length) for i, name in enumerate(ROW_COLUMNS) if isinstance(events.c[name].type, String))


_CONTEXT = ROW_COLUMNS.index("context")


def fit_row(row: Sequence[Any]) -> Sequence[Any]:
    """An event row (``ROW_COLUMNS`` order) that every database stores as it is: each
    text cut to its column's length, and NUL characters dropped.

    PostgreSQL refuses both (``value too long for type character varying(128)``; text
    cannot contain NUL), where SQLite stores anything; one such row would otherwise
    fail its whole batch, and the collector would retry it forever. A user name over
    128 characters is stored cut (the Monitor shows it so). A row that fits is
    returned as it is. A ``context`` of None (a row built by hand) is stored as "".
    """
    out: list[Any] | None = None
    if row[_CONTEXT] is None:
        out = list(row)
        out[_CONTEXT] = ""
    for i, limit in _TEXT_FIELDS:
        value = (row if out is None else out)[i]
        if isinstance(value, str) and ((limit is not None and len(value) > limit) or "\x00" in value):
            out = list(row) if out is None else out
            value = value.replace("\x00", "")
            out[i] = value[:limit] if limit is not None else value
    return row if out is None else tuple(out)


def fit_text(value: str | None, column: Column[Any]) -> str | None:
    """``value`` as ``column`` (a ``String(n)`` or ``Text`` column) stores it on every
    database: NUL characters dropped, cut to ``n`` characters (see ``fit_row``)."""
    if value is None:
        return None
    value = value.replace("\x00", "")
    length = getattr(column.type, "length", None)
    return value[:length] if length is not None else value


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
    Column("cost", Pollen(), nullable=False, server_default="0"),  # sum over the priced events
    Column("priced", BigInteger, nullable=False, server_default="0"),  # how many events had a cost
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
    Column("cost", Pollen(), nullable=False, server_default="0"),
    Column("priced", BigInteger, nullable=False, server_default="0"),
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


#: The PostgreSQL advisory lock key that serialises schema creation and migrations
#: (``pg_advisory_xact_lock``, held until the transaction ends): replicas starting at
#: once on an empty database would otherwise collide creating the same tables
#: (``UniqueViolation ... pg_type_typname_nsp_index``). A fixed 64-bit number,
#: ``int.from_bytes(b"blossomD", "big")``; any other application sharing the database
#: must not use it.
SCHEMA_LOCK_KEY = 0x626C6F73736F6D44


def lock_schema(conn: Connection) -> None:
    """Take the schema lock for the rest of ``conn``'s transaction (PostgreSQL only).

    Another process holding it makes this wait until its transaction ends; other
    databases need nothing here (SQLite serialises writers by itself).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})


def ensure_tables(engine: Engine, tables: Sequence[Table]) -> None:
    """Create those of ``tables`` that are missing, under the schema lock (``lock_schema``).

    What every feature calls for the tables it owns, instead of ``metadata.create_all``:
    on PostgreSQL two replicas doing it at the same time would collide.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database refused.
    """
    with engine.begin() as conn:
        lock_schema(conn)
        metadata.create_all(conn, tables=list(tables))


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: safe to show or log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as its scheme only
        return url.split(":", 1)[0] + ":…"


__all__ = [
    "DAY_S",
    "DETAIL_COLUMNS",
    "DETAIL_DEFAULTS",
    "EVENT_COLUMNS",
    "HOUR_S",
    "LATENCY_BINS_PER_E",
    "LEGACY_REJECTED",
    "NO_STATUS",
    "ROLLUPS",
    "Pollen",
    "ROW_COLUMNS",
    "SCHEMA_LOCK_KEY",
    "SCHEMA_VERSION",
    "ensure_tables",
    "events",
    "fit_row",
    "fit_text",
    "lock_schema",
    "mask_url",
    "meta_table",
    "metadata",
    "rollup_hour",
    "rollup_latency_day",
    "rollup_latency_hour",
    "rollup_user_day",
    "unit_column",
    "upgrade_row",
]
