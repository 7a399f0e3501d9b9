"""Benchmark: what a spending budget adds to a request (``reserve`` then ``settle``).

Run ``python bench/budget.py [--n 20000] [--threads 1] [--redis-url redis://127.0.0.1:6379/15]``.
It reserves and settles ``n`` requests against budgets that never run out (a user's and
the team's, per day and month), on the in-process ``BudgetLedger`` and, with
``--redis-url``, on the Redis-shared one (its keys under a random prefix, deleted after),
and prints the median and p95 per request, timed in blocks of 100, and the mean. With
no budget set the in-process ledger takes nothing and the shared one skips Redis; that
case is printed too. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the project, not an installed copy
    sys.path.insert(0, str(ROOT))

from blossom_dash.policies.budget import BudgetLedger, Budgets  # noqa: E402

BLOCK = 100
PRICE = Decimal("0.0000347")
BIG = Budgets(user_day=Decimal(10**6), user_month=Decimal(10**6), team_day=Decimal(10**6),
              team_month=Decimal(10**6))


def timed(ledger: BudgetLedger, n: int, threads: int) -> list[float]:
    """Per-request µs of each block of ``BLOCK`` reserve+settle pairs, over ``threads`` threads."""
    per_block: list[float] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        for _ in range(n // threads // BLOCK):
            t0 = time.perf_counter()
            for _ in range(BLOCK):
                ledger.settle(ledger.reserve(f"user{k}", PRICE), PRICE)
            with lock:
                per_block.append((time.perf_counter() - t0) / BLOCK * 1e6)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return per_block


def report(label: str, blocks: list[float]) -> None:
    """One line of figures."""
    blocks = sorted(blocks)
    p95 = blocks[int(0.95 * (len(blocks) - 1))]
    print(f"{label:<34} median {statistics.median(blocks):8.1f} µs  p95 {p95:8.1f} µs  "
          f"mean {statistics.fmean(blocks):8.1f} µs  ({len(blocks) * BLOCK:,} requests)")


def main() -> None:
    """Parse the arguments, time the ledgers, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="requests per ledger")
    parser.add_argument("--threads", type=int, default=1, help="threads reserving at once")
    parser.add_argument("--redis-url", default=None, help="also time the Redis-shared ledger")
    args = parser.parse_args()
    report("in process, no budget set", timed(BudgetLedger(), args.n, args.threads))
    report("in process, four budgets", timed(BudgetLedger(BIG), args.n, args.threads))
    if args.redis_url:
        import redis

        from blossom_dash.policies.shared_budget import SharedBudgetLedger

        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        try:
            report("Redis, no budget set", timed(SharedBudgetLedger(args.redis_url, prefix=prefix + "a"),
                                                 args.n, args.threads))
            report("Redis, four budgets", timed(SharedBudgetLedger(args.redis_url, BIG, prefix=prefix + "b"),
                                                max(BLOCK * args.threads, args.n // 10), args.threads))
        finally:
            client = redis.Redis.from_url(args.redis_url)
            for key in client.scan_iter(f"{prefix}*"):
                client.delete(key)


if __name__ == "__main__":
    main()
