"""Helpers shared by the core test modules."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from blossom_dash import BlossomService, Settings


def make_service(tmp_path: Path, **overrides: Any) -> BlossomService:
    """A fresh service on its own demo backend and SQLite file (latency off, faults on, no retries)."""
    opts: dict[str, Any] = {"backend": "demo", "demo_latency": False, "demo_faults": True, "retries": 0,
                            "data_dir": tmp_path,
                            "per_user_rpm": 100_000, "global_rpm": 100_000}
    opts.update(overrides)
    return BlossomService(Settings(**opts))


def demo_stats(svc: BlossomService) -> dict[str, int]:
    """Requests the service's demo backend has served, per route kind."""
    return httpx.get(f"{svc.backend.base_url}/_demo/stats", timeout=5).json()


def run_in_threads(worker: Callable[[int], object], n: int, timeout_s: float = 60) -> list[BaseException]:
    """Run ``worker(0..n-1)`` on ``n`` threads at once and return what they raised.

    Callers assert the list is empty (or inspect it): an exception in a thread would
    otherwise vanish and the test pass on whatever the other threads did.
    """
    errors: list[BaseException] = []

    def wrapped(k: int) -> None:
        try:
            worker(k)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    assert not any(t.is_alive() for t in threads), f"a worker did not finish within {timeout_s} s"
    return errors
