"""One real-browser test: headless Chromium drives the running app end to end.

Starts ``streamlit run app.py`` on a free loopback port (demo backend, its own data
dir), then types a prompt in the Playground, reads the streamed answer, opens
Monitor and finds the request on a chart. Needs Debian's ``chromium`` (``.ci/run``
installs it); Playwright cannot download browsers here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app served by a real ``streamlit run`` on loopback."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run should have installed Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    port = _free_port()
    env = {**os.environ, "BLOSSOM_DASH_BACKEND": "demo", "BLOSSOM_DASH_DEMO_LATENCY": "true",
           "BLOSSOM_DASH_DATA_DIR": str(tmp_path_factory.mktemp("browser-data"))}
    env.pop("POLLINATIONS_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            proc.terminate()
            pytest.fail(f"streamlit did not start: {proc.communicate(timeout=10)[0][-2000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            output = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
        assert "Traceback" not in output, output[-3000:]


def test_prompt_stream_then_monitor(app_url: str, tmp_path: Path) -> None:
    """A user prompts, sees the streamed answer with its figures, then sees it on Monitor."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app_url)
        box = page.get_by_placeholder("Ask a model…")
        expect(box).to_be_visible(timeout=30_000)
        box.fill("Explain a moving-window rate limit")
        box.press("Enter")
        answer = page.get_by_test_id("stChatMessage").filter(has_text="Demo backend").last
        expect(answer).to_be_visible(timeout=30_000)
        expect(page.get_by_text("TTFT").last).to_be_visible(timeout=30_000)
        assert "moving-window rate limit" in answer.inner_text()
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)

        page.get_by_role("link", name="Monitor").click()
        expect(page.get_by_text("Requests per minute by outcome")).to_be_visible(timeout=30_000)
        requests_metric = page.get_by_test_id("stMetric").filter(has_text="Requests").first
        expect(requests_metric).to_contain_text("1", timeout=30_000)
        assert page.locator(".js-plotly-plot").count() >= 4
        page.screenshot(path=str(tmp_path / "monitor.png"), full_page=True)
        assert page.get_by_text("Traceback").count() == 0
        browser.close()
