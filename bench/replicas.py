"""Benchmark: one and two replicas on shared Redis + PostgreSQL, against the backend alone.

Run ``python bench/replicas.py [--seconds 20] [--sessions 50]``. It starts, on free
loopback ports in temporary directories, a real ``redis-server`` and a PostgreSQL
cluster (Debian's packages, as the tests do), one standalone demo backend with its
latency simulation ON (``python -m blossom_dash.demo_backend``: a per-model time to
first token and token rate, so a request takes about as long as a small real model's),
then measures, each for ``--seconds``:

- backend: ``--sessions`` threads posting chat completions straight to the backend with
  ``httpx`` (no service): its requests/s and latency percentiles under that load;
- 1 replica: one service process (``tests/replica_server.py``, a ``BlossomService`` on
  the shared Redis and PostgreSQL) running ``--sessions`` sessions (threads calling
  ``generate_text``, each a user of its own, every prompt new: cache misses, rate-limit
  slots taken in Redis, one event per request stored in PostgreSQL);
- 2 replicas: two such processes at once, each with ``--sessions`` sessions (a second
  replica is added to serve more users; the question is whether the shared state lets
  them scale), and, for reference, the same two with half the sessions each.

Printed: requests/s, p50/p95 latency, and the p95 added latency over the backend's
(the replica's p95 minus the backend-alone p95 at the same number of sessions per
process), then the targets with PASS or MISS: 2 replicas >= 1.8 x the throughput of 1,
p95 added latency <= 50 ms. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from services import start_postgres, start_redis  # noqa: E402
from test_replicas import start_demo_backend, start_replicas, stop_replicas  # noqa: E402

SCALE_TARGET = 1.8
"""Target: two replicas serve at least this many times the requests/s of one."""
MODEL = "demo-swift"
"""The model every request asks for (the demo's fastest: ~150 ms to first token)."""
ADDED_P95_MS = 50.0
"""Target: the service adds at most this much to the backend's p95 latency, ms."""


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank), or NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def backend_alone(url: str, sessions: int, seconds: float) -> list[float]:
    """Closed-loop chat completions from ``sessions`` threads; latencies in ms."""
    stop_at = time.monotonic() + seconds
    out: list[float] = []
    lock = threading.Lock()

    def session(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            n = 0
            while time.monotonic() < stop_at:
                body = {"model": MODEL, "messages": [{"role": "user", "content": f"raw {k} {n} {uuid.uuid4().hex}"}],
                        "max_tokens": 16}
                t0 = time.perf_counter()
                client.post("/v1/chat/completions", json=body).raise_for_status()
                with lock:
                    out.append((time.perf_counter() - t0) * 1000)
                n += 1

    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(session, range(sessions)))
    return out


def run_replicas(n: int, sessions: int, seconds: float, env: dict[str, str], tmp: Path) -> tuple[list[float], int]:
    """``n`` replica processes, each running ``sessions`` sessions for ``seconds``."""
    replicas = start_replicas([f"r{i}-{uuid.uuid4().hex[:4]}" for i in range(n)], env, tmp)
    try:
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda r: r.call("load", sessions=sessions, seconds=seconds, model=MODEL),
                                    replicas))
    finally:
        stop_replicas(replicas)
    latencies = [ms for r in results for ms in r["latencies_ms"]]
    return latencies, sum(len(r["errors"]) for r in results)


def line(name: str, latencies: list[float], seconds: float, errors: int = 0, base_p95: float | None = None) -> None:
    rps = len(latencies) / seconds
    added = f"  p95 added {pct(latencies, 0.95) - base_p95:6.1f} ms" if base_p95 is not None else ""
    print(f"{name:<28} {rps:8.1f} req/s  p50 {pct(latencies, 0.5):7.1f} ms  p95 {pct(latencies, 0.95):7.1f} ms"
          f"{added}  errors {errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sessions", type=int, default=50)
    args = parser.parse_args()
    redis, pg = start_redis(), start_postgres()
    backend, url = start_demo_backend(latency=True)
    tmp = Path(tempfile.mkdtemp(prefix="bd-bench-"))
    try:
        def env() -> dict[str, str]:
            return {"BLOSSOM_DASH_BACKEND": url, "BLOSSOM_DASH_ALLOW_CUSTOM_BACKEND": "true",
                    "BLOSSOM_DASH_DATABASE_URL": pg.fresh_url(), "BLOSSOM_DASH_REDIS_URL": redis.fresh_url(),
                    "BLOSSOM_DASH_PER_USER_RPM": "100000", "BLOSSOM_DASH_GLOBAL_RPM": "1000000",
                    "BLOSSOM_DASH_RETRIES": "0", "BLOSSOM_DASH_LOG_LEVEL": "ERROR",
                    "BLOSSOM_DASH_DB_POOL_SIZE": "10"}

        s, half = args.sessions, max(1, args.sessions // 2)
        print(f"demo backend with latency on, {args.seconds:.0f} s per run, {os.cpu_count()} cores, "
              f"Redis + PostgreSQL on loopback")
        raw = backend_alone(url, s, args.seconds)
        raw_half = backend_alone(url, half, args.seconds)
        line(f"backend alone, {s} sessions", raw, args.seconds)
        one, e1 = run_replicas(1, s, args.seconds, env(), tmp)
        line(f"1 replica, {s} sessions", one, args.seconds, e1, pct(raw, 0.95))
        two, e2 = run_replicas(2, s, args.seconds, env(), tmp)
        line(f"2 replicas, {s} sessions each", two, args.seconds, e2, pct(raw, 0.95))
        two_half, e3 = run_replicas(2, half, args.seconds, env(), tmp)
        line(f"2 replicas, {half} sessions each", two_half, args.seconds, e3, pct(raw_half, 0.95))
        scale = len(two) / max(1, len(one))
        added = max(pct(one, 0.95) - pct(raw, 0.95), pct(two, 0.95) - pct(raw, 0.95))
        print(f"target: 2 replicas >= {SCALE_TARGET} x 1 replica: {scale:.2f} x  "
              f"{'PASS' if scale >= SCALE_TARGET else 'MISS'}")
        print(f"target: p95 added latency <= {ADDED_P95_MS:.0f} ms: {added:.1f} ms  "
              f"{'PASS' if added <= ADDED_P95_MS else 'MISS'}")
        print(f"(median of the backend alone: {statistics.median(raw):.1f} ms)")
    finally:
        backend.terminate()
        redis.stop()
        pg.stop()


if __name__ == "__main__":
    main()
