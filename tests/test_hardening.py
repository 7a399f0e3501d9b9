"""Hardening: upload limits agree between Streamlit's config, the uploaders and what the code accepts."""

from __future__ import annotations

import tomllib

from pages_helpers import ROOT, app

from blossom_dash.features import batch
from blossom_dash.policies import replay

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
