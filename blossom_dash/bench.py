"""Benchmark: what the service costs over raw HTTP, on the demo backend.

Run ``python -m blossom_dash.bench [--n 300]``. With the demo backend's latency off
(in-process, on loopback), it times the median of:

- raw: an ``httpx.AsyncClient`` POST of a chat completion, submitted from this thread
  to an event loop in a daemon thread: the transport the SDK needs in Streamlit
  (BLOSSOM_SDK.md, "Event loops and threads"), without the SDK or the service;
- raw (sync): the same POST with a plain ``httpx.Client`` from this thread, for
  reference (no thread hop, no asyncio);
- miss: ``BlossomService.generate_text`` with a new prompt each call (validation,
  cache miss, rate limit, the SDK on the loop thread, one journaled event);
- hit: the same call repeated (served from the cache; still one journaled event).

It prints the medians, miss/raw and hit/raw against the targets (miss/raw <= 1.4, the
SDK alone costing about 1.3x raw; hit/raw <= 0.02), the same ratios against the sync
client, and the call counts. Figures, not assertions: the tests never time anything.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import httpx

from . import BlossomService, Settings
from .transport import LoopThread


def _median_ms(fn: Callable[[int], object], n: int) -> float:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and print its figures.

    Args:
        argv: Command-line arguments (``--n`` timed calls per measurement,
            ``--warmup`` untimed calls first).

    Returns:
        ``{"raw_ms", "raw_sync_ms", "miss_ms", "hit_ms", "miss_ratio", "hit_ratio"}``.
    """
    parser = argparse.ArgumentParser(description="blossom-dash service overhead benchmark")
    parser.add_argument("--n", type=int, default=300, help="timed calls per measurement (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed calls first (default 30)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(backend="demo", demo_latency=False, data_dir=data_dir, per_user_rpm=100_000,
                            global_rpm=1_000_000, cache_max_entries=100_000, retries=0)
        loop = LoopThread("bench-raw-loop")
        with BlossomService(settings) as svc, httpx.Client(timeout=30) as sync_client:
            model = svc.list_models("text")[0]
            url = f"{svc.backend.base_url}/v1/chat/completions"
            async_client = loop.run(_make_async_client())

            def body(tag: str, i: int) -> dict[str, object]:
                return {"model": model, "messages": [{"role": "user", "content": f"{tag} prompt {i}"}],
                        "max_tokens": 64}

            async def _post(payload: dict[str, object]) -> None:
                (await async_client.post(url, json=payload)).raise_for_status()

            def raw(i: int, tag: str = "raw") -> None:
                loop.run(_post(body(tag, i)), timeout=30)

            def raw_sync(i: int, tag: str = "sync") -> None:
                sync_client.post(url, json=body(tag, i)).raise_for_status()

            def miss(i: int, tag: str = "miss") -> None:
                svc.generate_text(f"{tag} prompt {i}", model=model, max_tokens=64)

            def hit(_i: int) -> None:
                svc.generate_text("hit prompt", model=model, max_tokens=64)

            for i in range(args.warmup):
                raw(i, "warm-raw")
                raw_sync(i, "warm-sync")
                miss(i, "warm-miss")
            hit(0)
            raw_ms = _median_ms(raw, args.n)
            raw_sync_ms = _median_ms(raw_sync, args.n)
            miss_ms = _median_ms(miss, args.n)
            hit_ms = _median_ms(hit, args.n)
            stats = svc.cache.stats()
            svc.metrics.flush()
            events = svc.store.count()
            loop.run(async_client.aclose())
        loop.stop()
    figures = {"raw_ms": raw_ms, "raw_sync_ms": raw_sync_ms, "miss_ms": miss_ms, "hit_ms": hit_ms,
               "miss_ratio": miss_ms / raw_ms, "hit_ratio": hit_ms / raw_ms}
    print(f"blossom-dash benchmark · demo backend in-process on loopback, latency off · {args.n} timed calls each")
    print(f"  raw httpx POST median (async, loop thread) {raw_ms:8.3f} ms")
    print(f"  raw httpx POST median (sync, this thread)  {raw_sync_ms:8.3f} ms")
    print(f"  service cache-miss median                  {miss_ms:8.3f} ms   miss/raw = "
          f"{miss_ms / raw_ms:.2f} (target <= 1.4) · vs sync {miss_ms / raw_sync_ms:.2f}")
    print(f"  service cache-hit median                   {hit_ms:8.3f} ms   hit/raw  = "
          f"{hit_ms / raw_ms:.3f} (target <= 0.02) · vs sync {hit_ms / raw_sync_ms:.3f}")
    print(f"  calls: raw {args.n + args.warmup}, raw sync {args.n + args.warmup}, miss {args.n + args.warmup}, "
          f"hit {args.n + 1}; cache hits {stats.hits}, misses {stats.misses}; events stored {events}")
    return figures


async def _make_async_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=30)


if __name__ == "__main__":
    main()
