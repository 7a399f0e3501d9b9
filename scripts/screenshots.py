"""Take the README's screenshots: the app on the demo backend, driven by headless Chromium.

Run: ``python scripts/screenshots.py [--out docs/screenshots] [--chromium /usr/bin/chromium]``.

It starts ``streamlit run app.py`` on a free loopback port with the demo backend (its
simulated latency on, a temporary data directory, no key), walks the 60-second tour
(chat, stop, image, compare blind, batch from a CSV, prompts, Monitor, Controls) at a
presenter's 1440×900, plus Monitor at a phone's 390×844, and saves one PNG a step. A
step that fails prints why and the rest go on; the exit status is the number of failed
steps. Needs Playwright (requirements-dev.txt) and Debian's ``chromium``; install
``fonts-noto-color-emoji`` so the icons render.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-quic"]
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
BATCH_CSV = ("prompt,model\nSummarise the moving-window rate limit,demo-swift\n"
             "What is a fencing token?,demo-swift\nExplain p95 latency,demo-swift\n"
             "What does TTFT measure?,demo-swift\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(data_dir: str) -> tuple[subprocess.Popen[str], str]:
    """``streamlit run app.py`` on the demo backend; the process and its URL once healthy.

    Raises:
        RuntimeError: the server did not answer its health check within 60 s.
    """
    port = _free_port()
    env = {**os.environ, "BLOSSOM_DASH_BACKEND": "demo", "BLOSSOM_DASH_DEMO_LATENCY": "true",
           "BLOSSOM_DASH_DATA_DIR": data_dir}
    env.pop("POLLINATIONS_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.terminate()
    raise RuntimeError("streamlit did not start within 60 s")


def _settle(page: object, ms: int = 1500) -> None:
    """Wait for the script run to end (no running indicator) and the page to draw."""
    page.wait_for_timeout(300)  # type: ignore[attr-defined]
    try:
        page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=30_000)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a page that never idles is still worth a picture
        pass
    page.wait_for_timeout(ms)  # type: ignore[attr-defined]


def _nav(page: object, url: str, path: str) -> None:
    page.goto(f"{url}/{path}")  # type: ignore[attr-defined]
    _settle(page)


def _ask(page: object, text: str) -> None:
    box = page.get_by_placeholder("Ask a model…")  # type: ignore[attr-defined]
    box.wait_for(timeout=30_000)
    box.fill(text)
    box.press("Enter")


def _pick_model(page: object, name: str) -> None:
    """Choose ``name`` in the Playground's model popover (beside the chat input)."""
    import re

    page.get_by_role("button", name=re.compile(r"^(Model:|Model and parameters)")).click()  # type: ignore[attr-defined]
    picker = page.get_by_test_id("stPopoverBody").get_by_test_id("stSelectbox").first  # type: ignore[attr-defined]
    picker.click()
    page.keyboard.type(name)  # type: ignore[attr-defined]
    page.get_by_role("option", name=name, exact=True).first.click()  # type: ignore[attr-defined]
    page.get_by_role("button", name=f"Model: {name}").wait_for(timeout=15_000)  # type: ignore[attr-defined]
    page.keyboard.press("Escape")  # type: ignore[attr-defined]


def tour(page: object, url: str, shoot: Callable[[str], None]) -> list[tuple[str, Callable[[], None]]]:
    """The steps, in order: ``(file name, action)``; ``shoot(name)`` saves the picture."""
    from playwright.sync_api import expect

    def playground() -> None:
        _nav(page, url, "")
        _ask(page, "What is a moving-window rate limit?")
        expect(page.get_by_role("button", name="Regenerate")).to_be_visible(timeout=30_000)  # type: ignore[attr-defined]
        _ask(page, "And how does a fencing token protect a lease?")
        page.wait_for_timeout(3500)  # type: ignore[attr-defined]
        expect(page.get_by_role("button", name="Regenerate")).to_be_visible(timeout=30_000)  # type: ignore[attr-defined]
        _settle(page, 500)
        shoot("playground")

    def stopped() -> None:
        _pick_model(page, "demo-deep")
        _ask(page, "Explain p95 latency to a stakeholder, at length")
        page.wait_for_timeout(2500)  # type: ignore[attr-defined]
        stop = page.get_by_test_id("stChatInputStopButton")  # type: ignore[attr-defined]
        if stop.count():
            stop.click()
        expect(page.get_by_text("Stopped").last).to_be_visible(timeout=15_000)  # type: ignore[attr-defined]
        _settle(page, 800)
        shoot("playground-stopped")

    def image_in() -> None:
        from PIL import Image, ImageDraw

        picture = Path(tempfile.mkdtemp()) / "chart.png"
        drawn = Image.new("RGB", (480, 320), (250, 246, 240))
        pen = ImageDraw.Draw(drawn)
        for i, h in enumerate((120, 190, 150, 260, 210)):  # a small bar chart to ask about
            pen.rectangle((40 + i * 85, 300 - h, 100 + i * 85, 300), fill=(214, 51, 108))
        drawn.save(picture)
        page.get_by_role("button", name="New chat").first.click()  # type: ignore[attr-defined]
        _settle(page, 500)
        _pick_model(page, "demo-vision")
        page.get_by_test_id("stChatInput").locator("input[type=file]").set_input_files(str(picture))  # type: ignore[attr-defined]
        _ask(page, "What does this chart show?")
        expect(page.get_by_test_id("stChatMessage").nth(1)).to_contain_text("TTFT", timeout=30_000)  # type: ignore[attr-defined]
        _settle(page, 800)
        shoot("playground-image-in")

    def image() -> None:
        _nav(page, url, "image")
        page.get_by_label("Describe the image").fill("A watercolour lighthouse at dawn, soft light")  # type: ignore[attr-defined]
        page.get_by_role("button", name="Generate image").click()  # type: ignore[attr-defined]
        expect(page.get_by_role("button", name="Download")).to_be_visible(timeout=30_000)  # type: ignore[attr-defined]
        _settle(page)
        shoot("image")

    def compare() -> None:
        _nav(page, url, "compare")
        page.get_by_test_id("stCheckbox").filter(has_text="Blind vote").first.click()  # type: ignore[attr-defined]
        _settle(page, 500)
        page.get_by_label("Prompt").first.fill("Explain p95 latency to a product manager in three sentences.")  # type: ignore[attr-defined]
        picker = page.get_by_test_id("stMultiSelect").first  # type: ignore[attr-defined]
        for name in ("demo-swift", "demo-deep"):
            if name not in picker.inner_text():
                picker.click()
                page.keyboard.type(name)  # type: ignore[attr-defined]
                page.keyboard.press("Enter")  # type: ignore[attr-defined]
        page.keyboard.press("Escape")  # type: ignore[attr-defined]
        page.get_by_role("button", name="Compare", exact=True).first.click()  # type: ignore[attr-defined]
        expect(page.get_by_role("button", name="👍 Best").first).to_be_enabled(timeout=60_000)  # type: ignore[attr-defined]
        _settle(page)
        shoot("compare-blind")
        page.get_by_role("button", name="👍 Best").first.click()  # type: ignore[attr-defined]
        _settle(page)
        shoot("compare-revealed")

    def batch() -> None:
        _nav(page, url, "batch")
        path = Path(tempfile.mkdtemp()) / "prompts.csv"
        path.write_text(BATCH_CSV, encoding="utf-8")
        page.locator("input[type=file]").first.set_input_files(str(path))  # type: ignore[attr-defined]
        _settle(page)
        run = page.get_by_role("button", name="Run")  # type: ignore[attr-defined]
        if run.count():
            run.first.click()
            page.wait_for_timeout(6000)  # type: ignore[attr-defined]
        _settle(page)
        shoot("batch")

    def prompts() -> None:
        _nav(page, url, "prompts")
        shoot("prompts")

    def monitor() -> None:
        _nav(page, url, "monitor")
        page.wait_for_timeout(3000)  # type: ignore[attr-defined]
        shoot("monitor")

    def controls() -> None:
        _nav(page, url, "controls")
        shoot("controls")

    return [("playground", playground), ("playground-stopped", stopped),
            ("playground-image-in", image_in), ("image", image),
            ("compare-blind", compare), ("batch", batch), ("prompts", prompts), ("monitor", monitor),
            ("controls", controls)]


def main(argv: list[str] | None = None) -> int:
    """Take every screenshot; returns the number of steps that failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="folder for the PNGs")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="blossom-shots-") as data:
        proc, url = serve(data)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
                page = browser.new_page(viewport=DESKTOP)
                page.emulate_media(color_scheme="light")

                def shoot(name: str, target: object = page) -> None:
                    target.screenshot(path=str(out / f"{name}.png"))  # type: ignore[attr-defined]
                    print(f"saved {out / f'{name}.png'}")

                for name, step in tour(page, url, shoot):
                    try:
                        step()
                    except Exception as exc:  # noqa: BLE001 - report the step and go on with the tour
                        failed += 1
                        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                        where = next((ln for ln in lines if ln.startswith("- waiting for")), "")
                        print(f"step {name} failed: {type(exc).__name__}: {lines[0] if lines else ''} {where}")
                phone = browser.new_page(viewport=PHONE, is_mobile=True, device_scale_factor=2)
                try:
                    _nav(phone, url, "monitor")
                    phone.wait_for_timeout(3000)
                    shoot("monitor-phone", phone)
                except Exception as exc:  # noqa: BLE001
                    failed += 1
                    print(f"step monitor-phone failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    return failed


if __name__ == "__main__":
    sys.exit(main())
