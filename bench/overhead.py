"""Benchmark: what the service costs over raw HTTP, on the demo backend.

Run ``python bench/overhead.py [--n 300]``. With the demo backend's latency off
(in-process, on loopback), it times the median of:

- raw: an ``httpx.AsyncClient`` POST of a chat completion, submitted from this thread
  to the service's event loop thread: the transport the SDK needs in Streamlit
  (BLOSSOM_SDK.md, "Event loops and threads"), without the SDK or the service;
- raw (sync): the same POST with a plain ``httpx.Client`` from this thread, for
  reference (no thread hop, no asyncio);
- SDK alone: ``client.text.chat`` on the same loop (no cache, limits or events);
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

from blossom_dash import BlossomService, Settings


def _interleaved_medians(fns: dict[str, Callable[[int], object]], n: int, block: int = 30) -> dict[str, float]:
    """Median ms of each function, timed in alternating blocks of ``block`` calls.

    Blocks in turn spread drift and noise from the rest of the machine over all the
    measurements alike; whole blocks (rather than call by call) keep the background
    work a cache miss leaves behind (its log line, its metrics) from landing on the
    next function's tiny calls.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for start in range(0, n, block):
        for name, fn in fns.items():
            for i in range(start, min(start + block, n)):
                t0 = time.perf_counter()
                fn(i)
                samples[name].append((time.perf_counter() - t0) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and print its figures.

    Args:
        argv: Command-line arguments (``--n`` timed calls per measurement,
            ``--warmup`` untimed calls first).

    Returns:
        ``{"raw_ms", "raw_sync_ms", "sdk_ms", "miss_ms", "hit_ms", "miss_ratio", "hit_ratio"}``.
    """
    parser = argparse.ArgumentParser(description="blossom-dash service overhead benchmark")
    parser.add_argument("--n", type=int, default=300, help="timed calls per measurement (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed calls first (default 30)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(backend="demo", demo_latency=False, data_dir=data_dir, per_user_rpm=100_000,
                            global_rpm=1_000_000, cache_max_entries=100_000, retries=0)
        with BlossomService(settings) as svc, httpx.Client(timeout=30) as sync_client:
            # The raw client runs on the service's own loop thread, beside the SDK's
            # client and the in-process demo server: the same hops, minus SDK and service.
            loop = svc._loop
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

            async def _sdk(i: int, tag: str) -> None:
                await svc.backend.chat([{"role": "user", "content": f"{tag} prompt {i}"}], model=model,
                                       max_tokens=64, extra={})

            def sdk(i: int, tag: str = "sdk") -> None:
                loop.run(_sdk(i, tag), timeout=30)

            def miss(i: int, tag: str = "miss") -> None:
                svc.generate_text(f"{tag} prompt {i}", model=model, max_tokens=64)

            def hit(_i: int) -> None:
                svc.generate_text("hit prompt", model=model, max_tokens=64)

            for i in range(args.warmup):
                raw(i, "warm-raw")
                raw_sync(i, "warm-sync")
                sdk(i, "warm-sdk")
                miss(i, "warm-miss")
            hit(0)
            medians = _interleaved_medians({"raw": raw, "raw_sync": raw_sync, "sdk": sdk, "miss": miss, "hit": hit},
                                           args.n)
            raw_ms, raw_sync_ms, sdk_ms = medians["raw"], medians["raw_sync"], medians["sdk"]
            miss_ms, hit_ms = medians["miss"], medians["hit"]
            stats = svc.cache.stats()
            svc.metrics.flush()
            events = svc.store.count()
            loop.run(async_client.aclose())
    figures = {"raw_ms": raw_ms, "raw_sync_ms": raw_sync_ms, "sdk_ms": sdk_ms, "miss_ms": miss_ms, "hit_ms": hit_ms,
               "miss_ratio": miss_ms / raw_ms, "hit_ratio": hit_ms / raw_ms}
    print(f"blossom-dash benchmark · demo backend in-process on loopback, latency off · {args.n} timed calls each")
    print(f"  raw httpx POST median (async, loop thread) {raw_ms:8.3f} ms")
    print(f"  raw httpx POST median (sync, this thread)  {raw_sync_ms:8.3f} ms")
    print(f"  SDK alone (client.text.chat) median        {sdk_ms:8.3f} ms   sdk/raw  = {sdk_ms / raw_ms:.2f}")
    print(f"  service cache-miss median                  {miss_ms:8.3f} ms   miss/raw = "
          f"{miss_ms / raw_ms:.2f} (target <= 1.4) · vs sync {miss_ms / raw_sync_ms:.2f}")
    print(f"  service cache-hit median                   {hit_ms:8.3f} ms   hit/raw  = "
          f"{hit_ms / raw_ms:.3f} (target <= 0.02) · vs sync {hit_ms / raw_sync_ms:.3f}")
    print(f"  calls: {args.n + args.warmup} each of raw, raw sync, SDK and miss; hit {args.n + 1}; "
          f"cache hits {stats.hits}, misses {stats.misses}; events stored {events}")
    return figures


async def _make_async_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=30)


if __name__ == "__main__":
    main()
