"""The Monitor's request log: the filtered events searched, sorted and paged in SQL
(``LIMIT``/``OFFSET``), one request's stored fields, the filter lists, and what a
retention deletion would remove.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd
from sqlalchemy import Table, false, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from .passes import _pass_totals
from .query import (
    DIMENSIONS,
    E,
    MonitorQuery,
    _frame,
    _is_raw,
    _iso,
    _merged,
    _parallel,
    _plan,
    _rollup_where,
    _rows,
    _to_time,
    _total,
    _where,
)
from .store import DAY_S, HOUR_S, ROW_COLUMNS, UsageStore, rollup_hour, rollup_user_day, unit_column

#: Columns the request log can be sorted by.
SORTABLE: tuple[str, ...] = ("ts", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "bytes",
                             "model", "user", "kind", "outcome", "error_type", "status_code", "request_id")
#: Columns the request-log search looks in (case-insensitive substring).
SEARCHABLE: tuple[str, ...] = ("request_id", "prompt", "model", "user", "error_type")
#: Columns of one request-log row (the page shows these; the detail view shows all).
LOG_COLUMNS: tuple[str, ...] = ("ts", "request_id", "user", "model", "kind", "outcome", "error_type",
                                "status_code", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens",
                                "prompt")


def _contains(store: UsageStore, column: ColumnElement[Any], text: str) -> ColumnElement[bool]:
    # SQLite's LIKE already ignores ASCII case, and lower() on five columns of every row
    # would triple the cost of a search; elsewhere (PostgreSQL) ILIKE.
    if store.is_sqlite:
        return column.contains(text, autoescape=True)
    return column.icontains(text, autoescape=True)


#: Searchable columns whose few distinct values the rollups hold: column -> rollup table.
_SEARCH_VIA_ROLLUP: dict[str, Table] = {"model": rollup_hour, "error_type": rollup_hour, "user": rollup_user_day}


def _matches(store: UsageStore, q: MonitorQuery, column: str, text: str) -> ColumnElement[bool]:
    """``column`` contains ``text``, for every event of ``q``'s range.

    A search that matches nothing scans every event of the range, so each LIKE per row
    counts (five cost ~0.8 s on 1M events). For the low-cardinality columns, the same
    LIKE runs on the distinct values the rollups hold for the range's hours (every
    event's value is there: the rollups are exact), and the events are matched with
    ``IN``: the same rows, two LIKEs per event instead of five.
    """
    table = _SEARCH_VIA_ROLLUP.get(column)
    if table is None or not getattr(store, "rollups", False):
        return _contains(store, E[column], text)
    unit_s = DAY_S if table is rollup_user_day else HOUR_S
    unit = table.c[unit_column(table)]
    units = (unit >= math.floor(q.since_ts / unit_s), unit <= math.floor(q.until_ts / unit_s))
    stmt = select(table.c[column]).where(*units, _contains(store, table.c[column], text)).group_by(table.c[column])
    values = [v for (v,) in _rows(store, stmt)]
    return E[column].in_(values) if values else false()


def _log_select(store: UsageStore, q: MonitorQuery, search: str, columns: Sequence[str]) -> Any:
    stmt = select(*(E[c] for c in columns)).where(*_where(q))
    if search := search.strip():
        stmt = stmt.where(or_(*(_matches(store, q, c, search) for c in SEARCHABLE)))
    return stmt


def _count(store: UsageStore, q: MonitorQuery, search: str = "") -> int:
    """How many events match ``q`` and ``search``: from the rollups when the range and
    filters allow it and nothing is searched, else counted in the events."""
    if not search.strip() and not _is_raw(_plan(store, q, (HOUR_S,))):
        return _pass_totals(store, q)["requests"]
    base = _log_select(store, q, search, ["id"])
    return int(_rows(store, select(func.count()).select_from(base.subquery()))[0][0] or 0)


def request_log(store: UsageStore, q: MonitorQuery, search: str = "", sort_by: str = "ts",
                descending: bool = True, page: int = 1, page_size: int = 50) -> tuple[pd.DataFrame, int]:
    """One page of the filtered events (``LIMIT``/``OFFSET`` in SQL).

    Args:
        store: The usage store.
        q: Range and filters.
        search: Case-insensitive substring of the request id, prompt, model, user or
            error type (``%`` and ``_`` match themselves); "" matches everything.
        sort_by: One of ``SORTABLE``; ties (and NULLs, last) are ordered by insertion.
        descending: Largest / newest first.
        page: 1-based page number; clamped to the last page.
        page_size: Rows per page.

    Returns:
        ``(frame, total)``: the page with ``LOG_COLUMNS`` (``ts`` as UTC datetimes)
        and how many events match in all.

    Raises:
        ValueError: ``sort_by`` is not sortable or ``page_size`` < 1.
    """
    if sort_by not in SORTABLE:
        raise ValueError(f"cannot sort by {sort_by!r}; choose one of {', '.join(SORTABLE)}")
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    base = _log_select(store, q, search, LOG_COLUMNS)
    key, tie = E[sort_by], E.id
    order = [key.desc().nulls_last(), tie.desc()] if descending else [key.asc().nulls_last(), tie.asc()]

    def rows_of(p: int) -> list[tuple[Any, ...]]:
        return _rows(store, base.order_by(*order).limit(page_size).offset((p - 1) * page_size))

    page = max(1, page)
    rows = rows_of(page)
    if 0 < len(rows) < page_size or (page == 1 and not rows):
        # A short page is the last one: the total follows, no count needed. Counting a
        # search scans the whole range (~0.5 s for 30 days of 1M events), and a rare
        # term is the case where the page itself has just scanned it all.
        total = (page - 1) * page_size + len(rows)
    else:
        total = _count(store, q, search)
        last = max(1, math.ceil(total / page_size))
        if page > last:
            page, rows = last, rows_of(last)
    df = pd.DataFrame.from_records(rows, columns=list(LOG_COLUMNS))
    df["ts"] = _to_time(df["ts"])
    df["status_code"] = df["status_code"].astype("Int64")
    return df, total


def request_detail(store: UsageStore, request_id: str) -> dict[str, Any] | None:
    """Every stored field of one request (``store.ROW_COLUMNS``), or None if unknown.

    ``ts`` is returned as epoch seconds and ``time`` as an ISO 8601 UTC string.
    """
    row = _rows(store, select(*(E[c] for c in ROW_COLUMNS)).where(E.request_id == request_id))
    if not row:
        return None
    detail = dict(zip(ROW_COLUMNS, row[0], strict=True))
    return {"time": _iso(detail["ts"]), **detail}


#: Columns of the conversation view, in this order.
CONVERSATION_COLUMNS: tuple[str, ...] = ("ts", "request_id", "user", "kind", "model", "outcome", "error_type",
                                         "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "cost",
                                         "prompt", "answer")
#: Most requests the conversation view reads for one context (a batch job may hold thousands).
CONVERSATION_MAX_ROWS = 1000


def conversation(store: UsageStore, context: str, *, user: str | None = None,
                 limit: int = CONVERSATION_MAX_ROWS) -> pd.DataFrame:
    """The requests of one conversation (comparison, batch job), oldest first.

    Reads the ``(context, ts)`` index (schema 6), so it costs the chat's own requests,
    not the history.

    Args:
        store: The usage store.
        context: ``"chat:<id>"``, ``"comparison:<id>"`` or ``"batch:<job_id>"`` as the
            requests recorded it; "" gives an empty frame (requests that belong to
            nothing are not one conversation).
        user: Only this user's requests (a member sees their own); None: everyone's.
        limit: At most this many, the oldest first.

    Returns:
        ``CONVERSATION_COLUMNS``: ``ts`` epoch seconds (float), ``latency_ms`` /
        ``ttft_ms`` ms, tokens as nullable integers, ``cost`` pollen (``Decimal`` or
        None: unpriced), ``prompt`` / ``answer`` None when prompts are not stored.
    """
    if not context:
        return pd.DataFrame(columns=list(CONVERSATION_COLUMNS))
    stmt = select(*(E[c] for c in CONVERSATION_COLUMNS)).where(E.context == context)
    if user is not None:
        stmt = stmt.where(E.user == user)
    df = _frame(store, stmt.order_by(E.ts, E.id).limit(limit), CONVERSATION_COLUMNS)
    for col in ("prompt_tokens", "completion_tokens"):
        df[col] = df[col].astype("Int64")
    return df


def filter_options(store: UsageStore, since: float, until: float | None = None, limit: int = 200
                   ) -> dict[str, list[str]]:
    """The distinct values of each filterable column in ``[since, until)``.

    Args:
        store: The usage store.
        since: Range start, epoch seconds.
        until: Range end (default: no end).
        limit: At most this many values per column (the most frequent ones), so a
            store with thousands of users keeps a usable widget.

    Returns:
        ``{"models": [...], "users": [...], "kinds": [...], "outcomes": [...],
        "backends": [...]}``, each sorted.
    """
    if until is not None and until <= since:
        return {name: [] for name in DIMENSIONS}
    q = MonitorQuery(since, math.inf if until is None else until)
    span = (time.time() if until is None else until) - since

    def distinct(column: str) -> list[str]:
        by_user = column == "user"
        table = rollup_user_day if by_user else rollup_hour
        parts = []
        for p in _plan(store, q, (DAY_S,) if by_user else (HOUR_S,), by_user=by_user, span_s=span):
            if p.unit_s:
                parts.append(select(table.c[column], _total(table.c.requests))
                             .where(*_rollup_where(table, q, p)).group_by(table.c[column]))
            else:
                parts.append(select(E[column], func.count()).where(*_where(q, p)).group_by(E[column]))
        counts = [(str(v), int(n)) for v, n in _rows(store, _merged(parts, 1, 1)) if v is not None]
        # The most frequent first, ties by name, so that both paths keep the same values.
        top = sorted(counts, key=lambda vn: (-vn[1], vn[0]))[:limit]
        return sorted(v for v, _n in top)

    values = _parallel(*(lambda c=c: distinct(c) for c in DIMENSIONS.values()))
    return dict(zip(DIMENSIONS, values, strict=True))


# ----- retention ---------------------------------------------------------------------

def retention_cutoff(retention_days: float, now: float | None = None) -> float:
    """The epoch second before which events are older than ``retention_days``."""
    return (time.time() if now is None else now) - retention_days * 86_400


def count_older_than(store: UsageStore, cutoff_ts: float) -> int:
    """How many events were recorded before ``cutoff_ts`` (what a deletion would remove)."""
    return int(_rows(store, select(func.count()).where(E.ts < cutoff_ts))[0][0] or 0)
