"""Model facts benchmark: the pickers' 24 h success rate and p50 per model over a busy month.

Run ``python bench/model_facts.py`` from the repository root (``--events`` to change the
size). It seeds a temporary SQLite store with ``--events`` events over 30 days as
``bench/scale.py`` does (raw ``executemany``, then the rollups), and prints the median
time of ``telemetry.model_facts.model_facts`` for text and image models (the service
computes it once per kind every 30 s for all viewers). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale

from blossom_dash.telemetry.model_facts import model_facts
from blossom_dash.telemetry.store import UsageStore


def main(argv: list[str] | None = None) -> None:
    """Seed, then time each kind's facts (median of ``--repeat`` runs after one warm-up)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events over the 30 days")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per kind")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = UsageStore(f"sqlite:///{(Path(tmp) / 'usage.db').as_posix()}")
        now = time.time()
        insert_s, rollup_s = scale.seed_bulk(store, args.events, now)
        print(f"seeded {args.events:,} events in {insert_s:.1f} s (+ {rollup_s:.1f} s of rollups)")
        for kind in ("text", "image"):
            model_facts(store, kind, backend="demo", now=now)
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                facts = model_facts(store, kind, backend="demo", now=now)
                times.append(time.perf_counter() - t0)
            behind = sum(f.attempts for f in facts.values())
            print(f"{kind:>5}: {statistics.median(times) * 1000:,.0f} ms for {len(facts)} models "
                  f"({behind:,} requests in the 24 h window)")
        store.close()


if __name__ == "__main__":
    main()
