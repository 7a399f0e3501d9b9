"""One real-browser test: headless Chromium drives the running app end to end.

Starts ``streamlit run app.py`` on a free loopback port (demo backend, its own data
dir), then types a prompt in the Playground, reads the streamed answer, opens
Monitor and finds the request on a chart. Needs Debian's ``chromium`` (``.ci/run``
installs it); Playwright cannot download browsers here.
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
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


def _need_chromium() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run should have installed Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app served by a real ``streamlit run`` on loopback, on the demo backend."""
    yield from _serve({"BLOSSOM_DASH_BACKEND": "demo", "BLOSSOM_DASH_DEMO_LATENCY": "true",
                       "BLOSSOM_DASH_DATA_DIR": str(tmp_path_factory.mktemp("browser-data"))})


@pytest.fixture(scope="module")
def dead_backend_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on a custom backend nobody listens on, opening its circuit after 2 failures."""
    yield from _serve({"BLOSSOM_DASH_BACKEND": f"http://127.0.0.1:{_free_port()}", "BLOSSOM_DASH_BREAKER_FAILURES": "2",
                       "BLOSSOM_DASH_REQUEST_TIMEOUT_S": "2",
                       "BLOSSOM_DASH_DATA_DIR": str(tmp_path_factory.mktemp("browser-dead"))})


def _serve(overrides: dict[str, str]) -> Iterator[str]:
    """Run ``streamlit run app.py`` with ``overrides`` in its environment; yield its URL."""
    _need_chromium()
    port = _free_port()
    env = {**os.environ, **overrides}
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
        _keep(page, tmp_path, "playground.png")

        page.get_by_role("link", name="Monitor").click()
        expect(page.get_by_text("Requests per minute by outcome")).to_be_visible(timeout=30_000)
        requests_metric = page.get_by_test_id("stMetric").filter(has_text="Requests").first
        expect(requests_metric).to_contain_text("1", timeout=30_000)
        assert page.locator(".js-plotly-plot").count() >= 4
        _keep(page, tmp_path, "monitor.png")
        assert page.get_by_text("Traceback").count() == 0
        browser.close()


def _keep(page: object, tmp_path: Path, name: str) -> None:
    """Save a screenshot; also under $BLOSSOM_DASH_SCREENSHOTS when set, to look at."""
    page.screenshot(path=str(tmp_path / name), full_page=True)  # type: ignore[attr-defined]
    if folder := os.environ.get("BLOSSOM_DASH_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(folder) / name)


def test_badge_goes_red_on_a_dead_backend(dead_backend_url: str, tmp_path: Path) -> None:
    """On a backend that refuses connections, the Playground says so in words and after two
    failed calls (its text models, then the Image page's image models) every page's badge is
    red: failing, requests paused, when it is tried again."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(dead_backend_url)
        box = page.get_by_placeholder("Ask a model…")
        expect(box).to_be_visible(timeout=30_000)
        box.fill("anyone there?")
        box.press("Enter")
        expect(page.get_by_test_id("stAlert").first).to_be_visible(timeout=30_000)
        page.get_by_role("link", name="Image").click()  # the second failed call: the image models
        expect(page.get_by_text("Describe the image").first).to_be_visible(timeout=30_000)
        page.get_by_role("link", name="Playground").click()
        page.reload()
        badge = page.get_by_text("failing, requests paused").first
        expect(badge).to_be_visible(timeout=30_000)
        expect(page.get_by_text("circuit breaker open").first).to_be_visible(timeout=30_000)
        _keep(page, tmp_path, "dead-backend-playground.png")
        page.get_by_role("link", name="Controls").click()
        expect(page.get_by_text("failing, requests paused").first).to_be_visible(timeout=30_000)
        expect(page.get_by_text("circuit breaker").first).to_be_visible(timeout=30_000)
        _keep(page, tmp_path, "dead-backend-controls.png")
        assert page.get_by_text("Traceback").count() == 0
        browser.close()


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a 1×1 PNG and counts it (the test's tripwire)."""

    hits: list[str] = []
    PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.PNG)))
        self.end_headers()
        self.wfile.write(self.PNG)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_answer_cannot_load_an_image(app_url: str, tmp_path: Path) -> None:
    """A model answer holding image markdown (the demo echoes the prompt) loads nothing: no request
    reaches a loopback image server, and the answer shows "[image: x]" and the URL as plain text."""
    from playwright.sync_api import expect, sync_playwright

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    _CountingHandler.hits = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    img = f"http://127.0.0.1:{server.server_address[1]}/x.png"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url)
            box = page.get_by_placeholder("Ask a model…")
            expect(box).to_be_visible(timeout=30_000)
            # The demo echoes the first 80 characters of the prompt: the image and the link fit.
            box.fill(f"![x]({img}) [l]({img}?link) <img src=\"{img}?html\">")
            box.press("Enter")
            answer = page.get_by_test_id("stChatMessage").filter(has_text="You asked").last
            expect(answer).to_contain_text("[image: x]", timeout=30_000)
            expect(page.get_by_text("TTFT").last).to_be_visible(timeout=30_000)
            expect(answer).to_contain_text(f"{img}?link")
            page.wait_for_timeout(1000)  # a grace period for any image fetch to arrive; not a timing claim
            _keep(page, tmp_path, "inert-answer.png")
            assert _CountingHandler.hits == [], "the page fetched from the image server"
            assert page.locator(f"img[src^='{img}']").count() == 0
            assert page.locator(f"a[href^='{img}']").count() == 0
            # The tripwire works: the same browser does reach the server when an image is made.
            page.evaluate("url => new Promise(done => { const i = new Image(); i.onload = i.onerror = done;"
                          " i.src = url; })", img + "?control")
            assert _CountingHandler.hits == ["/x.png?control"]
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
