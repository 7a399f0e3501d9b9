"""Hardening: upload limits agree between Streamlit's config, the uploaders and what the code accepts."""

from __future__ import annotations

import csv
import io
import tomllib

import pandas as pd
from pages_helpers import ROOT, app

from blossom_dash.features import batch
from blossom_dash.policies import replay
from blossom_dash.telemetry.export import to_csv

MIB = 1 << 20


def test_the_server_upload_cap_is_the_largest_file_the_app_accepts() -> None:
    """``server.maxUploadSize`` (MB) is the replay import cap, the larger of the two accepted files."""
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    largest = max(batch.MAX_FILE_BYTES, replay.MAX_IMPORT_BYTES)
    assert config["server"]["maxUploadSize"] * MIB == largest


def test_each_uploader_states_its_own_limit() -> None:
    """The batch CSV uploader refuses past 5 MB in the browser; the replay import past its cap."""
    at = app("app_pages/batch.py").run()
    assert at.file_uploader(key="batch_file").proto.max_upload_size_mb * MIB == batch.MAX_FILE_BYTES
    at = app("app_pages/controls.py").run()
    uploader = at.file_uploader(key="controls_replay_upload")
    assert uploader.proto.max_upload_size_mb * MIB == replay.MAX_IMPORT_BYTES


def test_log_csv_keeps_cr_and_lf_inside_their_cells() -> None:
    """``telemetry.export.to_csv`` quotes a bare CR (and LF, CRLF): every cell reads back whole."""
    prompts = ["one\rtwo", "three\nfour", "five\r\nsix", "plain"]
    df = pd.DataFrame({"prompt": prompts, "latency_ms": [1.0, 2.0, 3.0, 4.0]})
    rows = list(csv.reader(io.StringIO(to_csv(df).decode("utf-8"), newline="")))
    assert rows[0] == ["prompt", "latency_ms"]
    assert [r[0] for r in rows[1:]] == prompts and [r[1] for r in rows[1:]] == ["1.0", "2.0", "3.0", "4.0"]
