"""Scale benchmark: the Monitor over 1,000,000 events spread over 30 days.

Run ``python bench/scale.py`` from the repository root (``--events`` to change the
size). In one run it:

1. seeds a fresh temporary store (``usage.db`` in a temporary folder, deleted at the
   end) with ``--events`` events spread evenly over the 30 days up to now, through the
   project's schema: rows are inserted with the DB-API's ``executemany`` in batches of
   50,000, then ``UsageStore.rebuild_rollups()`` builds the rollups in one
   ``INSERT ... SELECT ... GROUP BY`` per table, the same code the migration to
   schema 3 runs (about 25 s for 1M events; ``write_many`` in batches of 50,000, which
   also aggregates each batch's rollup deltas, took 6.8 s per 200,000 events, so about
   35 s). A second store gets 1,000 events over the same 30 days through ``write_many``
   in flusher-sized batches of 100 (the write path, timed per batch);
2. times every Monitor aggregation of ``blossom_dash.telemetry.analytics`` over the
   last 24 h and the last 30 d of the big store (median of ``--repeat`` runs, after one
   warm-up), ``snapshot`` (everything the page draws) included;
3. times the Monitor page under ``streamlit.testing.v1.AppTest``
   (``app_pages/monitor.py`` with ``BLOSSOM_DASH_DATA_DIR`` on the seeded folder, the
   demo backend, its latency off) on the big store and on the 1,000-event one: a cold
   run (fresh Streamlit caches: the service starts, the store opens) with the default
   1 h range, and warm reruns after switching the range to 30 d; medians of
   ``--repeat`` runs and the 1M / 1k ratios;
4. prints the process's peak resident memory (``getrusage(RUSAGE_SELF).ru_maxrss``),
   after the aggregations and at the end (Streamlit, plotly and the pages loaded).

Targets (from the scale issue): each aggregation <= 1 s on this machine, the page's
1M / 1k time ratio <= 3, memory bounded. Figures, not assertions: the tests never
time anything (DESIGN.md, "Tests").
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the project, not an installed copy
    sys.path.insert(0, str(ROOT))

from blossom_dash.telemetry import analytics as A  # noqa: E402
from blossom_dash.telemetry.analytics import MonitorQuery  # noqa: E402
from blossom_dash.telemetry.store import ROW_COLUMNS, UsageStore  # noqa: E402

DAY_S = 86_400
SPAN_S = 30 * DAY_S
TARGET_S = 1.0
TARGET_RATIO = 3.0
MODELS = ("demo-swift", "demo-balanced", "demo-deep", "demo-coder", "demo-sketch")
USERS = tuple(f"user{i}" for i in range(40))
#: Served requests and cache hits cost ~1e-10 pollen per token; this model has no price.
UNPRICED_MODEL = "demo-coder"
PICO = Decimal("1e-12")
#: Outcome mix: 80 % served, 12 % cache hits, 3 % rate-limited, 2 % rejected, 3 % errors.
OUTCOMES = ("ok",) * 80 + ("cache_hit",) * 12 + ("rate_limited",) * 3 + ("rejected",) * 2 + ("error",) * 3


def synthetic_events(n: int, start: float, end: float, seed: int = 1,
                     prefix: str = "seed") -> Iterator[tuple[Any, ...]]:
    """``n`` events (``ROW_COLUMNS`` tuples) evenly spaced in ``[start, end)``: 40
    users, 5 models (one image model), log-normal latencies around 665 ms, a TTFT on
    served streams only (as the pipeline records it), a ``Decimal`` cost on served
    requests and cache hits of every model but ``UNPRICED_MODEL``."""
    rng = random.Random(seed)
    for i in range(n):
        ts = start + (end - start) * i / n
        outcome, model = rng.choice(OUTCOMES), rng.choice(MODELS)
        ok = outcome == "ok"
        latency = rng.lognormvariate(6.5, 0.6) if ok else (0.1 if outcome == "cache_hit" else 5.0)
        kind = "image" if model == "demo-sketch" else rng.choice(("text", "stream"))
        error_type = {"error": "UpstreamError", "rate_limited": "RateLimited", "rejected": "InvalidRequest"}.get(
            outcome, "")
        status = 200 if ok else 500 if outcome == "error" else None
        prompt, completion = (rng.randint(5, 200), rng.randint(20, 800)) if ok else (None, None)
        cost = None  # unpriced: failures, refusals and the one model without a price
        if outcome in ("ok", "cache_hit") and model != UNPRICED_MODEL:
            cost = (Decimal((prompt or 100) * 150 + (completion or 400) * 600) * PICO).quantize(PICO)
        yield (ts, f"{prefix}{i:08x}", rng.choice(USERS), "s", kind, model, "demo", outcome, error_type, status,
               latency, latency * 0.3 if ok and kind == "stream" else None, prompt, completion,
               rng.randint(100, 5000), "seeded prompt", cost, "", None, None)  # no context, params, answer


_COST = ROW_COLUMNS.index("cost")


def seed_bulk(store: UsageStore, n: int, now: float) -> tuple[float, float]:
    """Insert ``n`` events with raw ``executemany``, then build the rollups.

    Returns:
        Seconds spent inserting and building the rollups.
    """
    t0 = time.perf_counter()
    cols = ", ".join(f'"{c}"' for c in ROW_COLUMNS)
    sql = f"INSERT INTO events ({cols}) VALUES ({', '.join('?' * len(ROW_COLUMNS))})"
    raw = store.engine.raw_connection()
    try:
        cur, batch = raw.cursor(), []
        for event in synthetic_events(n, now - SPAN_S, now):
            cost = event[_COST]  # raw SQL stores schema.Pollen's whole 1e-12 steps
            batch.append((*event[:_COST], None if cost is None else int(cost.scaleb(12)), *event[_COST + 1:]))
            if len(batch) == 50_000:
                cur.executemany(sql, batch)
                raw.commit()
                batch = []
        if batch:
            cur.executemany(sql, batch)
            raw.commit()
    finally:
        raw.close()
    t1 = time.perf_counter()
    store.rebuild_rollups()
    return t1 - t0, time.perf_counter() - t1


def seed_through_write_many(store: UsageStore, n: int, now: float, batch: int = 100) -> float:
    """Write ``n`` events through ``write_many`` in batches of ``batch``; returns ms per batch."""
    rows = list(synthetic_events(n, now - SPAN_S, now, seed=2, prefix="small"))
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        store.write_many(rows[i:i + batch])
    return (time.perf_counter() - t0) * 1000 / -(-n // batch)


def median_time(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` in seconds, after one untimed warm-up call."""
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def aggregations(store: UsageStore, q: MonitorQuery) -> dict[str, Callable[[], object]]:
    """Every Monitor aggregation for ``q``, by name."""
    return {
        "kpis": lambda: A.kpis(store, q),
        "timeseries": lambda: A.timeseries(store, q),
        "latency_percentiles": lambda: A.latency_percentiles(store, q),
        "latency_by_model": lambda: A.latency_by_model(store, q),
        "errors_by_type": lambda: A.errors_by_type(store, q),
        "cache_savings": lambda: A.cache_savings(store, q),
        "per_user": lambda: A.per_user(store, q),
        "rate_limited_by_user": lambda: A.rate_limited_by_user(store, q),
        "filter_options": lambda: A.filter_options(store, q.since_ts),
        "request_log": lambda: A.request_log(store, q),
        "request_log sort=latency": lambda: A.request_log(store, q, sort_by="latency_ms"),
        "request_log search (2.5 %)": lambda: A.request_log(store, q, search="user7"),
        "request_log search (none)": lambda: A.request_log(store, q, search="no-such-text"),
        "kpis, 1 user": lambda: A.kpis(store, MonitorQuery(q.since_ts, q.until_ts, users=("user3",))),
        "kpis, 1 model": lambda: A.kpis(store, MonitorQuery(q.since_ts, q.until_ts, models=("demo-deep",))),
        "snapshot": lambda: A.snapshot(store, q),
        "snapshot, 1 user": lambda: A.snapshot(store, MonitorQuery(q.since_ts, q.until_ts, users=("user3",))),
    }


def page_times(data_dir: Path, repeat: int) -> tuple[float, float]:
    """Median seconds of the Monitor page: cold with the default range, warm on 30 d."""
    from streamlit.testing.v1 import AppTest

    os.environ.update(BLOSSOM_DASH_DATA_DIR=str(data_dir), BLOSSOM_DASH_BACKEND="demo",
                      BLOSSOM_DASH_DEMO_LATENCY="false")
    page = str(ROOT / "app_pages" / "monitor.py")
    cold: list[float] = []
    warm: list[float] = []
    _quiet_streamlit()
    AppTest.from_file(page, default_timeout=120).run()  # untimed: first imports (plotly, pages)
    for _ in range(repeat):
        _clear_caches()  # closes the previous service (on_release)
        at = AppTest.from_file(page, default_timeout=120)
        t0 = time.perf_counter()
        at.run()
        cold.append(time.perf_counter() - t0)
        _check(at)
    at.segmented_control(key="monitor_range").set_value("30 d").run()
    _check(at)
    for _ in range(repeat):
        t0 = time.perf_counter()
        at.run()
        warm.append(time.perf_counter() - t0)
        _check(at)
    _clear_caches()
    return statistics.median(cold), statistics.median(warm)


def _quiet_streamlit() -> None:
    """Streamlit's loggers at ``error``: outside a server, AppTest and cache clears warn
    of a missing runtime. The config is parsed first, as parsing sets the level again
    (and AppTest runs reset it)."""
    from streamlit import config, logger

    config.get_option("logger.level")
    logger.set_log_level("error")


def _clear_caches() -> None:
    import streamlit as st

    _quiet_streamlit()
    st.cache_resource.clear()
    st.cache_data.clear()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _size(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1000:g}k"


def _check(at: Any) -> None:
    if at.exception:
        raise RuntimeError(f"the Monitor page failed: {at.exception[0].value}")


def main(argv: list[str] | None = None) -> None:
    """Seed, time, print (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the big store")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure (the median is printed)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="blossom-scale-") as tmp:
        big_dir, small_dir = Path(tmp) / "big", Path(tmp) / "small"
        now = time.time()
        big = UsageStore(f"sqlite:///{(big_dir / 'usage.db').as_posix()}")
        insert_s, rollup_s = seed_bulk(big, args.events, now)
        rows = big.rollup_rows()
        print(f"seeded {args.events:,} events over 30 d: executemany {insert_s:.1f} s, "
              f"rollups {rollup_s:.1f} s ({', '.join(f'{k} {v:,}' for k, v in rows.items())} rows)")
        small = UsageStore(f"sqlite:///{(small_dir / 'usage.db').as_posix()}")
        per_batch_ms = seed_through_write_many(small, 1000, now)
        small.close()
        print(f"seeded 1,000 events through write_many: {per_batch_ms:.1f} ms per batch of 100 (rollups included)")

        print(f"\naggregations on {args.events:,} events, median of {args.repeat} s (target <= {TARGET_S:g} s)")
        print(f"{'':28} {'24 h':>8} {'30 d':>8}")
        end = now + 1
        q24, q30 = MonitorQuery(end - DAY_S, end), MonitorQuery(end - SPAN_S, end)
        worst = 0.0
        for name, fn24 in aggregations(big, q24).items():
            t24 = median_time(fn24, args.repeat)
            t30 = median_time(aggregations(big, q30)[name], args.repeat)
            worst = max(worst, t24, t30)
            flag = "" if max(t24, t30) <= TARGET_S else "  over target"
            print(f"{name:28} {t24:8.3f} {t30:8.3f}{flag}")
        big.close()
        print(f"peak RSS so far {_peak_rss_mib():.0f} MiB")

        print(f"\nMonitor page (AppTest), median of {args.repeat} s, {_size(args.events)} events against 1k")
        small_cold, small_warm = page_times(small_dir, args.repeat)
        big_cold, big_warm = page_times(big_dir, args.repeat)
        print(f"{'':34} {'1k':>7} {_size(args.events):>7} {'ratio':>7}")
        for label, s, b in (("cold start, 1 h range (default)", small_cold, big_cold),
                            ("rerun, 30 d range", small_warm, big_warm)):
            print(f"{label:34} {s:7.2f} {b:7.2f} {b / s:7.2f}  (target <= {TARGET_RATIO:g})")

    print(f"\nslowest aggregation {worst:.3f} s; peak RSS {_peak_rss_mib():.0f} MiB; "
          f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
