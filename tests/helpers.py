"""Helpers shared by the core test modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from blossom_dash import BlossomService, Settings


def make_service(tmp_path: Path, **overrides: Any) -> BlossomService:
    """A fresh service on its own demo backend and SQLite file (latency off, no retries)."""
    opts: dict[str, Any] = {"backend": "demo", "demo_latency": False, "retries": 0, "data_dir": tmp_path,
                            "per_user_rpm": 100_000, "global_rpm": 100_000}
    opts.update(overrides)
    return BlossomService(Settings(**opts))


def demo_stats(svc: BlossomService) -> dict[str, int]:
    """Requests the service's demo backend has served, per route kind."""
    return httpx.get(f"{svc.backend.base_url}/_demo/stats", timeout=5).json()
