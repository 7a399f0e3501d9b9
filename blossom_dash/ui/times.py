"""The one time rule: every time on screen is the viewer's local time with its zone shown.

A page never formats a timestamp itself: it calls `local_time` (one value) or
`local_series` (a DataFrame column), which read the viewer's zone from the browser
(`st.context.timezone`, an IANA name such as ``"Europe/Berlin"``). Exports are the other
half of the rule: they stay UTC ISO 8601 (``2026-12-01T13:05:00Z``), from `utc_iso`,
so a file means the same thing wherever it is opened.

When the browser sent no zone (a non-browser client, a bare AppTest run) or a name this
server's tz database does not know, the zone is UTC, and the label says "UTC", so a
time is never shown in an unnamed zone.
"""
from __future__ import annotations

import datetime as dt
import time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import streamlit as st

__all__ = ["local_series", "local_time", "utc_iso", "viewer_tz", "zone_label"]

_UTC = ZoneInfo("UTC")


def viewer_tz() -> ZoneInfo:
    """The viewer's time zone, from the browser.

    Returns:
        `ZoneInfo` for `st.context.timezone`; `ZoneInfo("UTC")` when the browser sent no
        zone, the value is not a valid IANA name, or the call runs outside a script run.
        Never raises.
    """
    try:
        name = st.context.timezone
    except Exception:  # noqa: BLE001 - outside a script run there is no context
        name = None
    if not name or not isinstance(name, str):
        return _UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return _UTC


def zone_label(tz: ZoneInfo | None = None, *, at_ts: float | None = None) -> str:
    """The short name of a zone at an instant, e.g. "CET", "CEST", "UTC", "+0530".

    Args:
        tz: the zone; the viewer's when None.
        at_ts: epoch seconds the abbreviation is taken at (daylight saving changes it);
            now when None.
    """
    tz = tz or viewer_tz()
    when = dt.datetime.fromtimestamp(time.time() if at_ts is None else at_ts, tz)
    # Zones without an abbreviation in the tz database report an offset ("+0530", "-03").
    return when.tzname() or "UTC"


def local_time(ts_epoch_s: float | None, *, seconds: bool = False,
               tz: ZoneInfo | None = None, now_ts: float | None = None) -> str:
    """One instant as the viewer reads it: "14:05 CET", or "2026-12-01 14:05 CET".

    The date is shown when the instant is not today in the viewer's zone.

    Args:
        ts_epoch_s: epoch seconds (UTC); None or NaN gives "" (blank, never "None").
        seconds: include seconds ("14:05:09 CET").
        tz: the zone; the viewer's (`viewer_tz`) when None.
        now_ts: "today" is taken at this epoch second (tests); now when None.

    Returns:
        The formatted time with the zone's abbreviation.
    """
    if ts_epoch_s is None or ts_epoch_s != ts_epoch_s:  # NaN check without math import
        return ""
    tz = tz or viewer_tz()
    when = dt.datetime.fromtimestamp(float(ts_epoch_s), tz)
    today = dt.datetime.fromtimestamp(time.time() if now_ts is None else now_ts, tz).date()
    clock = when.strftime("%H:%M:%S" if seconds else "%H:%M")
    zone = when.tzname() or "UTC"
    if when.date() != today:
        return f"{when.strftime('%Y-%m-%d')} {clock} {zone}"
    return f"{clock} {zone}"


def local_series(values: pd.Series, *, tz: ZoneInfo | None = None) -> pd.Series:
    """A column of instants as tz-aware datetimes in the viewer's zone.

    Args:
        values: epoch seconds (float/int) or datetimes; naive datetimes are read as UTC
            (the store keeps UTC).
        tz: the zone; the viewer's when None.

    Returns:
        A ``datetime64[ns, <zone>]`` Series with the same index; missing values stay NaT.
        Streamlit's dataframe shows it in that zone.
    """
    tz = tz or viewer_tz()
    if pd.api.types.is_numeric_dtype(values):
        out = pd.to_datetime(values, unit="s", utc=True)
    else:
        out = pd.to_datetime(values, utc=True)
    return out.dt.tz_convert(tz)


def utc_iso(ts_epoch_s: float | None) -> str:
    """An instant for an export: UTC ISO 8601 to the second, e.g. "2026-12-01T13:05:00Z".

    Args:
        ts_epoch_s: epoch seconds; None or NaN gives "".
    """
    if ts_epoch_s is None or ts_epoch_s != ts_epoch_s:
        return ""
    return dt.datetime.fromtimestamp(float(ts_epoch_s), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
