"""Benchmark: what journaling one event costs (``MetricsCollector.record``).

Run ``python bench/journal.py [--n 200000] [--dir PATH]``. It records ``n`` events of a
typical size (a 200-character prompt) into a collector over a SQLite store in a
temporary folder (or ``--dir``: put it on the file system to measure), its flusher
running as in the app, and prints the median and p95 per event, timed in blocks of
1,000 (a single event is below the clock's useful resolution), and the mean. The
collector's design note asks for far less than a cache hit (~20 µs). Figures, not
assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the project, not an installed copy
    sys.path.insert(0, str(ROOT))

from blossom_dash.telemetry.collector import Event, MetricsCollector, new_request_id  # noqa: E402
from blossom_dash.telemetry.store import UsageStore  # noqa: E402

BLOCK = 1000


def main() -> None:
    """Parse the arguments, time the events, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="events to record")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the store and journals")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = UsageStore(f"sqlite:///{tmp}/usage.db")
        collector = MetricsCollector(store, Path(tmp) / "journal")
        prompt = "x" * 200
        per_event_us: list[float] = []
        t_all = time.perf_counter()
        for _ in range(args.n // BLOCK):
            events = [Event(time.time(), new_request_id(), "bench", "s1", "text", "openai", "demo", "ok", "", 200,
                            12.5, None, 10, 20, 512, prompt) for _ in range(BLOCK)]
            t0 = time.perf_counter()
            for ev in events:
                collector.record(ev)
            per_event_us.append((time.perf_counter() - t0) / BLOCK * 1e6)
        wall = time.perf_counter() - t_all
        collector.close()
        stored = store.count()
        store.close()
    per_event_us.sort()
    p95 = per_event_us[int(len(per_event_us) * 0.95)]
    print(f"record(): median {statistics.median(per_event_us):.2f} µs, p95 {p95:.2f} µs per event "
          f"(blocks of {BLOCK}), mean {statistics.fmean(per_event_us):.2f} µs; "
          f"{args.n:,} events, {stored:,} stored, {wall:.1f} s wall")


if __name__ == "__main__":
    main()
