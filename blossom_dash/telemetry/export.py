"""Monitor exports: frames as CSV or JSON bytes, and the request log as a file.

CSV cells a spreadsheet would run as formulas are neutralised (``neutralise_formulas``,
which batch exports use too); JSON keeps values as stored. Times are ISO 8601 UTC.
The aggregate tables are built from a snapshot in ``analytics`` and encoded here.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pandas as pd

from .query import E, MonitorQuery, _frame, _to_time
from .requests_log import _log_select
from .store import ROW_COLUMNS, UsageStore

#: Cells beginning with one of these are read as formulas by spreadsheets (OWASP,
#: https://owasp.org/www-community/attacks/CSV_Injection): prefixed with ``'`` on export.
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
#: Rows end in CRLF (RFC 4180). Python's csv writer quotes a cell only for the delimiter,
#: the quote or a character of the line terminator: with "\n" alone, a bare CR in a cell
#: went out unquoted and readers split the row there.
CSV_LINE_TERMINATOR = "\r\n"


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells cannot run as spreadsheet formulas.

    A text cell beginning with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a
    leading single quote, as OWASP advises against CSV injection
    (https://owasp.org/www-community/attacks/CSV_Injection). Numbers (a negative
    latency, say) are left alone: they are not text, and a spreadsheet reads them as
    numbers, not formulas.
    """
    out = df.copy()
    for col in out.columns:
        values = out[col]
        if not (values.dtype == object or pd.api.types.is_string_dtype(values)):
            continue
        if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
            risky = values.str.startswith(FORMULA_PREFIXES).fillna(False).to_numpy(dtype=bool)
            cells = values.to_numpy(dtype=object, copy=True)
            cells[risky] = ["'" + v for v in cells[risky]]
            out[col] = pd.Series(cells, index=values.index, dtype=values.dtype, name=col)
        else:  # mixed text and other values: test each cell
            out[col] = values.map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_PREFIXES) else v)
    return out


def _for_export(df: pd.DataFrame) -> pd.DataFrame:
    """Times as ISO 8601 UTC strings (``2025-01-31T12:00:00.250000+00:00``); amounts in
    pollen (``Decimal``, e.g. ``cost``) as exact plain decimal strings (``0.000138``)."""
    out = df.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.DatetimeTZDtype):
            text = out[col].dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
            out[col] = text.astype(object).where(out[col].notna(), None)
        elif out[col].dtype == object and out[col].map(lambda v: isinstance(v, Decimal)).any():
            out[col] = out[col].map(lambda v: plain_decimal(v) if isinstance(v, Decimal) else v)
    return out


def plain_decimal(value: Decimal) -> str:
    """``value`` in plain digits, trailing zeros dropped: ``0.000138000000`` -> ``0.000138``."""
    return format(value.normalize(), "f") if value else "0"


def to_csv(df: pd.DataFrame) -> bytes:
    """``df`` as UTF-8 CSV with formulas neutralised (``neutralise_formulas``); CRLF rows, CR and LF in cells quoted."""
    buf = io.StringIO()
    neutralise_formulas(_for_export(df)).to_csv(buf, index=False, lineterminator=CSV_LINE_TERMINATOR)
    return buf.getvalue().encode("utf-8")


def to_json(data: pd.DataFrame | Mapping[str, Any]) -> bytes:
    """A frame as a JSON array of records, or a mapping of frames/values as one object.

    JSON is not opened as formulas by spreadsheets, so values are exported as stored;
    times are ISO 8601 UTC strings, missing values ``null``.
    """
    def plain(value: Any) -> Any:
        if isinstance(value, pd.DataFrame):
            frame = _for_export(value).astype(object)
            return frame.where(frame.notna(), None).to_dict(orient="records")
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return value

    return orjson.dumps(plain(data), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
                        default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):  # exact: a JSON number would go through a float
        return plain_decimal(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if value is pd.NA:
        return None
    raise TypeError(f"cannot export {type(value).__name__}")


#: The request-log export keeps at most this many (newest) events.
EXPORT_MAX_ROWS = 100_000


def request_log_export(store: UsageStore, q: MonitorQuery, search: str = "",
                       max_rows: int = EXPORT_MAX_ROWS) -> pd.DataFrame:
    """The newest ``max_rows`` events matching ``q`` and ``search``, every stored field."""
    stmt = _log_select(store, q, search, ROW_COLUMNS).order_by(E.ts.desc(), E.id.desc()).limit(max_rows)
    log = _frame(store, stmt, ROW_COLUMNS)
    log["ts"] = _to_time(log["ts"])
    log["status_code"] = log["status_code"].astype("Int64")
    return log


def export_log(store: UsageStore, q: MonitorQuery, search: str = "", fmt: str = "csv") -> bytes:
    """The filtered request log (newest ``EXPORT_MAX_ROWS`` events) as CSV or JSON.

    Raises:
        ValueError: ``fmt`` is neither ``csv`` nor ``json``.
    """
    return encode(request_log_export(store, q, search), fmt)


def encode(df: pd.DataFrame, fmt: str) -> bytes:
    """``df`` as ``to_csv`` or ``to_json`` bytes.

    Raises:
        ValueError: ``fmt`` is neither ``csv`` nor ``json``.
    """
    if fmt == "csv":
        return to_csv(df)
    if fmt == "json":
        return to_json(df)
    raise ValueError(f"unknown export format {fmt!r}; use csv or json")
