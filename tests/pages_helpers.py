"""Helpers shared by the AppTest page tests."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent


def app(path: str, timeout: float = 30) -> AppTest:
    """An AppTest for ``path`` relative to the repository root (not to the test file)."""
    return AppTest.from_file(str(ROOT / path), default_timeout=timeout)


def texts(at: AppTest, kind: str) -> list[str]:
    """The ``.value`` of every element of one kind (``error``, ``caption``, ...)."""
    return [str(e.value) for e in getattr(at, kind)]


def demo_url(at: AppTest) -> str:
    """The live demo backend's base URL, read from the page's backend badge."""
    for caption in texts(at, "caption"):
        if match := re.search(r"http://127\.0\.0\.1:\d+", caption):
            return match.group(0)
    raise AssertionError("the page does not name the demo backend's URL")


def queue_fault(at: AppTest, fault: str, count: int = 1) -> None:
    """Make the demo backend fail its next ``count`` requests with ``fault``."""
    httpx.post(f"{demo_url(at)}/_demo/faults", json={"fault": fault, "count": count}).raise_for_status()
