"""Monitor benchmark: time to the KPIs and to all charts on 1M events, and what viewers cost.

Run ``python bench/monitor.py`` from the repository root (``--events``, ``--seconds``,
``--viewers``). In one run it:

1. seeds a temporary data folder with ``--events`` events over 30 days, as
   ``bench/scale.py`` does (``executemany`` in batches, then the rollups: about 15 s
   for 1M here);
2. **library level, warm service**: for the 1 h (the page's default), 24 h and 30 d
   ranges, times what one Monitor refresh asks of the service, the way the page asks
   it: the ``headline`` read (the KPI row) and then the ``snapshot`` and ``spend`` reads
   plus the nine figures, serialised as ``st.plotly_chart`` serialises them (all charts). Each timed
   read is the *first* of its interval (a fresh key: the range moved by one interval),
   i.e. the viewer who pays for everyone; then the next viewer of the same interval
   (served from the shared results). Medians of ``--repeat``;
3. **a real server**: ``streamlit run app.py`` on that folder (demo backend, latency
   off), watched by websocket viewers that do what a browser tab does (open the Monitor,
   then ask for the live fragment's rerun every ``run_every`` seconds, as Streamlit's
   frontend does on ``auto_rerun``). It prints, for a new session on the warm server,
   when the last KPI and the ninth chart left the server, and, for 1 and
   ``--viewers`` viewers at the 5 s and the 2 s refresh, the server process's CPU
   (user + system time over ``--seconds`` of wall time, in % of one core) and how many
   of the live refreshes (fragment reruns) the viewers asked for finished;
4. with ``--browser /usr/bin/chromium``, a new tab of headless Chromium at 1440x900
   and 390x844: when the first KPI is on screen and all charts are drawn by plotly.js.

Targets (issue 9): ``--viewers`` (20) viewers at 5 s cost <= 25 % of one core together;
all charts within 1.5 s of opening on a warm server with 1M events. Figures, not
assertions (DESIGN.md, "Tests"). The websocket viewers measure the server; a browser
adds its own rendering (plotly.js) on top, which ``--browser`` times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):  # run as a script from anywhere: this checkout and scale.py
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from scale import seed_bulk  # noqa: E402

from blossom_dash import BlossomService, Settings  # noqa: E402
from blossom_dash.telemetry.analytics import RANGES, MonitorQuery  # noqa: E402
from blossom_dash.telemetry.store import UsageStore  # noqa: E402

TARGET_CPU_PCT = 25.0
TARGET_CHARTS_S = 1.5
KPI_METRICS = 11  # ten KPIs and "Cache time saved" (its placeholder first)
CHARTS = 9  # seven usage charts and the spend panel's two


# ----- library level ----------------------------------------------------------------

def one_refresh(svc: BlossomService, q: MonitorQuery, every_s: int) -> tuple[float, float]:
    """``(seconds to the KPI row, seconds to all charts)`` of one refresh as the page does it."""
    import plotly.io
    import plotly.tools

    from blossom_dash.ui import charts
    from blossom_dash.ui.monitor import monitor_figures

    t0 = time.perf_counter()
    head = svc.monitor("headline", q, every_s=every_s)
    t_kpis = time.perf_counter() - t0
    snap = svc.monitor("snapshot", head.query, every_s=every_s)
    spend = svc.monitor("spend", head.query, every_s=every_s)
    figures = [*monitor_figures(snap).values(), charts.cost_by_model(spend.over_time, bucket_s=spend.bucket_s),
               charts.cost_by_user(spend.by_user)]
    for fig in figures:  # what st.plotly_chart does with each
        plotly.io.to_json(plotly.tools.return_figure_from_figure_or_data(fig, True), validate=False)
    return t_kpis, time.perf_counter() - t0


def library_times(data_dir: Path, repeat: int) -> None:
    """Print the first and the next viewer's times per range on a warm service."""
    svc = BlossomService(Settings(data_dir=data_dir, backend="demo", demo_latency=False))
    try:
        every = 5
        print(f"\nlibrary level, warm service, median of {repeat} (target: all charts <= {TARGET_CHARTS_S:g} s)")
        print(f"{'range':8} {'first viewer: KPIs':>19} {'all charts':>11} {'next viewer: KPIs':>18} "
              f"{'all charts':>11}")
        for label in ("1 h", "24 h", "30 d"):
            one_refresh(svc, MonitorQuery.last(RANGES[label], now=time.time() - 3600), every)  # warm-up
            firsts, nexts = [], []
            for r in range(repeat):
                q = MonitorQuery.last(RANGES[label], now=time.time() + (r + 1) * every)  # a fresh interval
                firsts.append(one_refresh(svc, q, every))
                nexts.append(one_refresh(svc, q, every))
            med = [statistics.median(x[i] for x in rows) for rows in (firsts, nexts) for i in (0, 1)]
            print(f"{label:8} {med[0]:18.3f}s {med[1]:10.3f}s {med[2]:17.3f}s {med[3]:10.3f}s")
        print(f"shared reads: {svc.monitor_stats()}")
    finally:
        svc.close()


# ----- a real server, watched over its websocket ----------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``streamlit run app.py`` on loopback over ``data_dir``; returns it and its URL once healthy."""
    import httpx

    port = _free_port()
    env = {**os.environ, "BLOSSOM_DASH_DATA_DIR": str(data_dir), "BLOSSOM_DASH_BACKEND": "demo",
           "BLOSSOM_DASH_DEMO_LATENCY": "false"}
    env.pop("POLLINATIONS_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise RuntimeError("streamlit did not start within 60 s")


def _rerun(widgets: dict[str, str], fragment_id: str = "") -> bytes:
    """A ``BackMsg`` asking for a run of the Monitor page (or of one fragment), like the frontend's."""
    from streamlit.proto.BackMsg_pb2 import BackMsg

    msg = BackMsg()
    state = msg.rerun_script
    state.page_name = "monitor"
    for widget_id, value in widgets.items():
        state.widget_states.widgets.add(id=widget_id, string_value=value)
    if fragment_id:
        state.fragment_id = fragment_id
        state.is_auto_rerun = True
    return msg.SerializeToString()


class Viewer:
    """One Monitor tab over the websocket: opens the page, then reruns the live fragment
    every ``auto_rerun`` interval, as the frontend does; counts what it asked and got."""

    def __init__(self, url: str, refresh_label: str) -> None:
        self.url, self.refresh_label = url, refresh_label
        self.asked = self.finished = 0  # fragment reruns (the live refreshes) asked for / finished
        self.page_runs = 0  # full runs of the page that finished
        self.kpis_s: float | None = None
        self.charts_s: float | None = None

    async def run(self, until: float, drain_s: float = 5.0) -> None:
        """Watch until ``until`` (monotonic), then wait up to ``drain_s`` for the runs in flight."""
        import aiohttp
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        widgets: dict[str, str] = {}
        fragment, interval, next_at = "", 0.0, 0.0
        metrics = charts = 0
        async with aiohttp.ClientSession() as http, http.ws_connect(
                self.url.replace("http", "ws", 1) + "/_stcore/stream", protocols=("streamlit",),
                max_msg_size=0) as ws:
            t0 = time.monotonic()
            await ws.send_bytes(_rerun(widgets))
            while time.monotonic() < until + drain_s and (time.monotonic() < until or self.finished < self.asked
                                                          or not self.page_runs):
                now = time.monotonic()
                target = until if now < until else until + drain_s
                wait = (min(target, next_at) if next_at else target) - now
                try:
                    msg = await ws.receive(timeout=max(0.01, wait))
                except TimeoutError:
                    msg = None
                if msg is not None:
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        raise RuntimeError(f"the server closed the websocket: {msg.type} {msg.data}")
                    fm = ForwardMsg()
                    fm.ParseFromString(msg.data)
                    kind = fm.WhichOneof("type")
                    if kind == "delta" and fm.delta.WhichOneof("type") == "new_element":
                        element = fm.delta.new_element
                        what = element.WhichOneof("type")
                        if what == "metric" and self.kpis_s is None:
                            metrics += 1
                            if metrics == KPI_METRICS:
                                self.kpis_s = time.monotonic() - t0
                        elif what == "plotly_chart" and self.charts_s is None:
                            charts += 1
                            if charts == CHARTS:
                                self.charts_s = time.monotonic() - t0
                        elif what == "selectbox" and element.selectbox.id.endswith("monitor_refresh_s") \
                                and not widgets:
                            # Pick the refresh interval, as a user would: a full rerun with that value.
                            widgets[element.selectbox.id] = self.refresh_label
                            if self.refresh_label != "5 s":
                                await ws.send_bytes(_rerun(widgets))
                    elif kind == "auto_rerun":
                        fragment, interval = fm.auto_rerun.fragment_id, fm.auto_rerun.interval
                        next_at = time.monotonic() + interval
                    elif kind == "script_finished":
                        if fm.script_finished == ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY:
                            self.finished += 1
                        elif fm.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY:
                            self.page_runs += 1
                if next_at and until > time.monotonic() >= next_at:
                    await ws.send_bytes(_rerun(widgets, fragment))
                    self.asked += 1
                    next_at += interval


def _cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def _watch(url: str, pid: int, n: int, refresh_label: str, seconds: float, settle_s: float = 6.0
                 ) -> tuple[float, int, int]:
    """``(server CPU % of one core over seconds, live refreshes asked, finished)`` of ``n`` viewers.

    CPU is sampled over the ``seconds`` after ``settle_s`` (the sessions open and settle
    on their interval first); the counts cover every fragment rerun the viewers asked
    for and wait for those still in flight at the end.
    """
    viewers = [Viewer(url, refresh_label) for _ in range(n)]
    until = time.monotonic() + settle_s + seconds
    tasks = [asyncio.create_task(v.run(until)) for v in viewers]
    await asyncio.sleep(settle_s)
    cpu0, t0 = _cpu_s(pid), time.monotonic()
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    cpu, wall = _cpu_s(pid) - cpu0, time.monotonic() - t0
    await asyncio.gather(*tasks)
    return 100 * cpu / wall, sum(v.asked for v in viewers), sum(v.finished for v in viewers)


async def _open_once(url: str, seconds: float = 2.0) -> Viewer:
    viewer = Viewer(url, "5 s")
    await viewer.run(time.monotonic() + seconds)
    return viewer


#: What a drawn chart is in the page (plotly.js has laid out its SVG).
_DRAWN = '[data-testid="stPlotlyChart"] .main-svg'


def browser_figures(url: str, repeat: int, chromium: str) -> None:
    """Print when a tab of headless Chromium shows the KPIs and all charts drawn.

    On the warm server, ``repeat`` times per screen size: a fresh browser profile opens
    ``/monitor`` (cold: Streamlit's frontend is downloaded and parsed first), then the
    same profile opens it again (its HTTP cache warm, as for anyone who has opened the
    app before; a new Streamlit session all the same). The clock runs from ``goto`` to
    the first KPI metric on screen, then to ``CHARTS`` charts drawn by plotly.js: what a
    person sees, the browser's own work included.
    """
    from playwright.sync_api import sync_playwright

    def open_monitor(page: object) -> tuple[float, float]:
        t0 = time.perf_counter()
        page.goto(f"{url}/monitor")  # type: ignore[attr-defined]
        page.wait_for_selector('[data-testid="stMetric"]', timeout=60_000)  # type: ignore[attr-defined]
        kpis = time.perf_counter() - t0
        page.wait_for_function(f"n => document.querySelectorAll('{_DRAWN}').length >= n",  # type: ignore[attr-defined]
                               arg=CHARTS, timeout=60_000)
        return kpis, time.perf_counter() - t0

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                                    "--disable-dev-shm-usage"])
        try:
            for size in ({"width": 1440, "height": 900}, {"width": 390, "height": 844}):
                cold, warm = [], []
                for _ in range(repeat):
                    ctx = browser.new_context(viewport=size)
                    page = ctx.new_page()
                    cold.append(open_monitor(page))
                    page.wait_for_timeout(3000)  # the first session's script and fragment finish first
                    warm.append(open_monitor(page))
                    ctx.close()
                for label, runs in (("fresh profile", cold), ("cached frontend", warm)):
                    print(f"  Chromium {size['width']}x{size['height']} {label:15} (median of {repeat}): KPIs on "
                          f"screen at {statistics.median(k for k, _ in runs):.2f} s, all {CHARTS} charts drawn at "
                          f"{statistics.median(c for _, c in runs):.2f} s")
        finally:
            browser.close()


def server_figures(data_dir: Path, n_viewers: int, seconds: float, repeat: int,
                   chromium: str | None = None) -> None:
    """Print a new session's times on a warm server, then the CPU of 1 and ``n_viewers`` viewers."""
    proc, url = start_server(data_dir)
    try:
        cold = asyncio.run(_open_once(url, 10.0))  # warm: the service starts, the store opens, the first snapshot
        print(f"\nreal server, the first Monitor session after start (cold: the service starts, the store opens): "
              f"KPIs sent at {cold.kpis_s or float('nan'):.2f} s, all {CHARTS} charts at "
              f"{cold.charts_s or float('nan'):.2f} s")
        firsts, nexts = [], []
        for _ in range(repeat):
            time.sleep(5 - time.time() % 5 + 0.05)  # just into a new 5 s interval: this session computes
            firsts.append(asyncio.run(_open_once(url)))
            nexts.append(asyncio.run(_open_once(url)))  # 2 s later: the same interval, served shared
        print(f"\nreal server, a new Monitor session (1 h, 5 s) on the warm server, median of {repeat}, "
              f"target: all charts <= {TARGET_CHARTS_S:g} s")
        for label, opens in (("first of its interval", firsts), ("next one", nexts)):
            kpis = statistics.median(v.kpis_s or float("nan") for v in opens)
            charts = statistics.median(v.charts_s or float("nan") for v in opens)
            print(f"  {label:22} KPIs sent at {kpis:.2f} s, all {CHARTS} charts at {charts:.2f} s")
        if chromium:
            browser_figures(url, repeat, chromium)
        print(f"server CPU over {seconds:g} s, % of one core (target: {n_viewers} viewers at 5 s <= "
              f"{TARGET_CPU_PCT:g} %)")
        for label in ("5 s", "2 s"):
            for n in (1, n_viewers):
                pct, asked, done = asyncio.run(_watch(url, proc.pid, n, label, seconds))
                print(f"  {n:3} viewer{'s' if n > 1 else ' '} at {label}: {pct:6.1f} %   "
                      f"({done} of the {asked} live refreshes asked finished)")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> None:
    """Seed, time, watch, print (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the store")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per library figure (medians)")
    parser.add_argument("--viewers", type=int, default=20, help="viewers of the crowded measurement")
    parser.add_argument("--seconds", type=float, default=30, help="wall time of each CPU measurement")
    parser.add_argument("--no-server", action="store_true", help="library figures only")
    parser.add_argument("--browser", default=None, metavar="CHROMIUM",
                        help="also time a new tab in headless Chromium at this path (e.g. /usr/bin/chromium; "
                             "needs Playwright)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="blossom-monitor-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        store = UsageStore(f"sqlite:///{(data_dir / 'usage.db').as_posix()}")
        insert_s, rollup_s = seed_bulk(store, args.events, time.time())
        store.close()
        print(f"seeded {args.events:,} events over 30 d in {insert_s + rollup_s:.1f} s")
        library_times(data_dir, args.repeat)
        if not args.no_server:
            server_figures(data_dir, args.viewers, args.seconds, 3, args.browser)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
