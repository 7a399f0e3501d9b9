"""The one time rule (blossom_dash/ui/times.py): local time with its zone, exports in UTC."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pandas as pd
from streamlit.testing.v1 import AppTest

from blossom_dash.ui.times import local_series, local_time, utc_iso, zone_label

# 2026-12-01 13:05:09 UTC, a winter day: Berlin is CET (UTC+1).
TS = dt.datetime(2026, 12, 1, 13, 5, 9, tzinfo=dt.UTC).timestamp()
BERLIN = ZoneInfo("Europe/Berlin")


class TestLocalTime:
    def test_today_shows_clock_and_zone(self):
        """An instant today shows only the clock and the zone's abbreviation."""
        assert local_time(TS, tz=BERLIN, now_ts=TS + 60) == "14:05 CET"

    def test_seconds(self):
        """seconds=True adds the seconds."""
        assert local_time(TS, seconds=True, tz=BERLIN, now_ts=TS) == "14:05:09 CET"

    def test_other_day_shows_date(self):
        """An instant on another day in the viewer's zone carries its date."""
        assert local_time(TS, tz=BERLIN, now_ts=TS + 2 * 86400) == "2026-12-01 14:05 CET"

    def test_summer_time_abbreviation(self):
        """The abbreviation is the one in force at the instant (CEST in July)."""
        july = dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC).timestamp()
        assert local_time(july, tz=BERLIN, now_ts=july) == "14:00 CEST"
        assert zone_label(BERLIN, at_ts=july) == "CEST"

    def test_missing_is_blank(self):
        """None and NaN give "" rather than "None" or "nan"."""
        assert local_time(None) == ""
        assert local_time(float("nan")) == ""


class TestUtcIso:
    def test_format(self):
        """Exports are UTC ISO 8601 with a Z."""
        assert utc_iso(TS) == "2026-12-01T13:05:09Z"
        assert utc_iso(None) == ""


class TestLocalSeries:
    def test_epoch_seconds_become_zone_aware(self):
        """Epoch seconds become tz-aware datetimes in the viewer's zone."""
        out = local_series(pd.Series([TS]), tz=BERLIN)
        assert str(out.dt.tz) == "Europe/Berlin"
        assert out.iloc[0].hour == 14

    def test_naive_datetimes_are_utc(self):
        """Naive datetimes (how the store returns them) are read as UTC."""
        out = local_series(pd.Series([dt.datetime(2026, 12, 1, 13, 5)]), tz=BERLIN)
        assert out.iloc[0].hour == 14


def _show_zone():
    import streamlit as st

    from blossom_dash.ui.times import viewer_tz
    st.write(str(viewer_tz()))


class TestViewerTz:
    def test_browser_zone(self):
        """The zone comes from st.context.timezone."""
        at = AppTest.from_function(_show_zone)
        at.context = {"timezone": "America/New_York"}
        at.run()
        assert at.markdown[0].value == "America/New_York"

    def test_absent_or_invalid_falls_back_to_utc(self):
        """No zone, or a name the tz database does not know, reads as UTC."""
        at = AppTest.from_function(_show_zone)
        at.run()
        assert at.markdown[0].value == "UTC"
        at = AppTest.from_function(_show_zone)
        at.context = {"timezone": "Mars/Olympus_Mons"}
        at.run()
        assert at.markdown[0].value == "UTC"


class TestChartsInTheViewersZone:
    def test_time_axis_reads_in_the_zone(self):
        """A time chart given tz draws its bars at the wall-clock time of that zone."""
        from blossom_dash.ui import charts
        frame = pd.DataFrame({"ts": pd.to_datetime([TS], unit="s", utc=True), "outcome": ["ok"], "rpm": [2.0],
                              "requests": [2]})
        utc = charts.rpm_by_outcome(frame, bucket_s=60, span=(TS - 60, TS + 60))
        berlin = charts.rpm_by_outcome(frame, bucket_s=60, span=(TS - 60, TS + 60), tz="Europe/Berlin")
        assert pd.Timestamp(utc.data[0].x[0]).hour == 13 and pd.Timestamp(berlin.data[0].x[0]).hour == 14
        assert '"2026-12-01T14:05:09' in berlin.to_json()
