"""Benchmark: what the service costs against what a user would write instead.

Run ``python bench/overhead.py [--n 300]`` (the figures go to stdout; stderr carries the
service's one JSON log line per request, as deployed: add ``2>/dev/null`` to hide it).
On the embedded demo backend with its latency off (in-process, on loopback), one run
times, in alternating blocks, the median and p95 of:

- raw: an ``httpx.AsyncClient`` POST of a chat completion, submitted from this thread
  to the service's event loop thread: the transport the SDK needs in Streamlit
  (BLOSSOM_SDK.md, "Event loops and threads"), without the SDK or the service;
- raw sync: the same POST with a plain ``httpx.Client`` from this thread (no thread
  hop, no asyncio), for reference;
- openai: ``openai.OpenAI(base_url=f"{base}/v1").chat.completions.create(...)`` from
  this thread, the client a user would write instead of the service;
- SDK alone: blossom-ai's ``client.text.chat`` on the service's loop (no cache, limits
  or events);
- miss: ``BlossomService.generate_text`` with a new prompt each call (validation,
  cache miss, rate limit, the SDK on the loop thread, one journaled event);
- hit: the same call repeated (served from the cache; still one journaled event);
- stream TTFT: ``BlossomService.stream_text``, from the call to its first delta, against
  raw SSE TTFT: an ``httpx.Client`` streaming POST (``"stream": true``) from this
  thread, to the first ``data:`` frame with a content delta; and, for reference, the
  same read on the service's loop with the first delta handed back to this thread
  through a queue (the service's own hops, minus the SDK and the service). Every
  stream is read to its end; only the time to its first delta is counted.

Then it prints each target with PASS or MISS, judged on the medians (the p95 figures
beside them for reference): miss <= 1.2 x openai; hit <= 0.02 x raw; stream TTFT <=
raw SSE TTFT + 1 ms (the sync read). Figures, not assertions: nothing here fails a build.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the project, not an installed copy
    sys.path.insert(0, str(ROOT))

from blossom_dash import BlossomService, Settings  # noqa: E402

MISS_VS_OPENAI = 1.2
"""Target: a cache miss costs at most this many times the openai client's call."""
HIT_VS_RAW = 0.02
"""Target: a cache hit costs at most this fraction of a raw HTTP call."""
TTFT_EXTRA_MS = 1.0
"""Target: the service's stream TTFT is at most this many ms over raw SSE TTFT."""
MAX_TOKENS = 64
"""Answer length asked of the demo backend in every call (it answers exactly this many)."""

Sample = Callable[[int], "float | None"]


@dataclass(frozen=True)
class Figure:
    """The distribution of one measurement.

    Attributes:
        median_ms: Median, milliseconds.
        p95_ms: 95th percentile (inclusive method), milliseconds.
        n: Number of samples.
    """

    median_ms: float
    p95_ms: float
    n: int


def _figure(values: list[float]) -> Figure:
    p95 = statistics.quantiles(values, n=100, method="inclusive")[94] if len(values) > 1 else values[0]
    return Figure(statistics.median(values), p95, len(values))


def _interleaved(fns: dict[str, Sample], n: int, block: int = 30) -> dict[str, Figure]:
    """Time each function ``n`` times, in alternating blocks of ``block`` calls.

    Blocks in turn spread drift and noise from the rest of the machine over all the
    measurements alike; whole blocks (rather than call by call) keep the background
    work a cache miss leaves behind (its log line, its metrics) from landing on the
    next function's tiny calls.

    Args:
        fns: Name to function of the call index. A function that returns a float
            reports its own sample in ms (a time to first token); otherwise the
            sample is the call's wall time.
        n: Samples per function (at least 1).
        block: Calls of one function in a row.

    Returns:
        Name to ``Figure``, in the order of ``fns``.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for start in range(0, n, block):
        for name, fn in fns.items():
            for i in range(start, min(start + block, n)):
                t0 = time.perf_counter()
                own = fn(i)
                wall_ms = (time.perf_counter() - t0) * 1000
                samples[name].append(wall_ms if own is None else own)
    return {name: _figure(values) for name, values in samples.items()}


def _first_content(line: str) -> bool:
    """Whether an SSE line is a ``data:`` frame carrying a non-empty content delta."""
    if not line.startswith("data:"):
        return False
    data = line[5:].strip()
    if data == "[DONE]":
        return False
    choices = json.loads(data).get("choices") or [{}]
    return bool(((choices[0] or {}).get("delta") or {}).get("content"))


def _verdict(ok: bool) -> Literal["PASS", "MISS"]:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and print its figures.

    Args:
        argv: Command-line arguments (``--n`` timed calls per measurement,
            ``--warmup`` untimed calls first, ``--log-level`` of the service's
            request log on stderr).

    Returns:
        ``{"<name>_ms", "<name>_p95_ms"}`` for each measurement name (``raw``,
        ``raw_sync``, ``openai``, ``sdk``, ``miss``, ``hit``, ``stream_ttft``,
        ``raw_sse_ttft``, ``raw_sse_loop_ttft``), plus ``miss_vs_openai``, ``hit_vs_raw`` (ratios of medians)
        and ``ttft_extra_ms`` (difference of medians).
    """
    parser = argparse.ArgumentParser(description="blossom-dash service overhead benchmark")
    parser.add_argument("--n", type=int, default=300, help="timed calls per measurement (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed calls first (default 30)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="the service's request log level (default INFO, as deployed)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(backend="demo", demo_latency=False, data_dir=data_dir, per_user_rpm=100_000,
                            global_rpm=1_000_000, cache_max_entries=100_000, retries=0,
                            log_level=args.log_level)
        with BlossomService(settings) as svc, httpx.Client(timeout=30) as sync_client:
            base = str(svc.backend_info()["base_url"]).rstrip("/")
            url = f"{base}/v1/chat/completions"
            model = svc.list_models("text")[0]
            # The async raw client runs on the service's own loop thread, beside the SDK's
            # client and the in-process demo server: the same hops, minus SDK and service.
            loop = svc._loop
            async_client: httpx.AsyncClient = loop.run(_make_async_client())
            oai = openai.OpenAI(base_url=f"{base}/v1", api_key="x")

            def messages(tag: str, i: int) -> list[dict[str, str]]:
                return [{"role": "user", "content": f"{tag} prompt {i}"}]

            def body(tag: str, i: int, **extra: Any) -> dict[str, Any]:
                return {"model": model, "messages": messages(tag, i), "max_tokens": MAX_TOKENS, **extra}

            async def _post(payload: dict[str, Any]) -> None:
                (await async_client.post(url, json=payload)).raise_for_status()

            def raw(i: int, tag: str = "raw") -> None:
                loop.run(_post(body(tag, i)), timeout=30)

            def raw_sync(i: int, tag: str = "sync") -> None:
                sync_client.post(url, json=body(tag, i)).raise_for_status()

            def openai_client(i: int, tag: str = "openai") -> None:
                oai.chat.completions.create(model=model, messages=messages(tag, i),  # type: ignore[arg-type]
                                            max_tokens=MAX_TOKENS)

            async def _sdk(i: int, tag: str) -> None:
                await svc.backend.chat(messages(tag, i), model=model, max_tokens=MAX_TOKENS, extra={})

            def sdk(i: int, tag: str = "sdk") -> None:
                loop.run(_sdk(i, tag), timeout=30)

            def miss(i: int, tag: str = "miss") -> None:
                svc.generate_text(f"{tag} prompt {i}", model=model, max_tokens=MAX_TOKENS)

            def hit(_i: int) -> None:
                svc.generate_text("hit prompt", model=model, max_tokens=MAX_TOKENS)

            def stream_ttft(i: int, tag: str = "stream") -> float:
                t0 = time.perf_counter()
                deltas = iter(svc.stream_text(f"{tag} prompt {i}", model=model, max_tokens=MAX_TOKENS))
                next(deltas)
                ttft_ms = (time.perf_counter() - t0) * 1000
                for _ in deltas:  # to the end, so the answer is complete (and cached) as in use
                    pass
                return ttft_ms

            def raw_sse_ttft(i: int, tag: str = "sse") -> float:
                t0 = time.perf_counter()
                ttft_ms: float | None = None
                with sync_client.stream("POST", url, json=body(tag, i, stream=True)) as resp:
                    resp.raise_for_status()
                    for line in resp.iter_lines():
                        if ttft_ms is None and _first_content(line):
                            ttft_ms = (time.perf_counter() - t0) * 1000
                if ttft_ms is None:
                    raise RuntimeError("the raw SSE stream carried no content delta")
                return ttft_ms

            async def _sse(payload: dict[str, Any], first: queue.SimpleQueue[bool]) -> None:
                sent = False
                async with async_client.stream("POST", url, json=payload) as resp:
                    resp.raise_for_status()
                    async for line in resp.aiter_lines():
                        if not sent and _first_content(line):
                            first.put(True)
                            sent = True
                if not sent:
                    first.put(False)

            def raw_sse_loop_ttft(i: int, tag: str = "sse-loop") -> float:
                # The service's own hops: read on the loop thread, first delta handed back
                # to this thread through a queue; only the SDK and the service are missing.
                first: queue.SimpleQueue[bool] = queue.SimpleQueue()
                t0 = time.perf_counter()
                fut = loop.submit(_sse(body(tag, i, stream=True), first))
                got = first.get(timeout=30)
                ttft_ms = (time.perf_counter() - t0) * 1000
                fut.result(30)
                if not got:
                    raise RuntimeError("the raw SSE stream carried no content delta")
                return ttft_ms

            fns: dict[str, Sample] = {"raw": raw, "raw_sync": raw_sync, "openai": openai_client, "sdk": sdk,
                                      "miss": miss, "hit": hit, "stream_ttft": stream_ttft,
                                      "raw_sse_ttft": raw_sse_ttft, "raw_sse_loop_ttft": raw_sse_loop_ttft}
            for i in range(args.warmup):
                for name, fn in fns.items():
                    if name != "hit":
                        fn(i, f"warm-{name}")  # type: ignore[call-arg]
            hit(0)
            figs = _interleaved(fns, args.n)
            _report(figs, args.n)
            stats = svc.cache.stats()
            svc.metrics.flush()
            events = svc.store.count()
            oai.close()
            loop.run(async_client.aclose())
    print(f"  calls: {args.n + args.warmup} of each but hit ({args.n + 1}); service cache hits {stats.hits}, "
          f"misses {stats.misses}; events stored {events}")
    out: dict[str, float] = {}
    for name, fig in figs.items():
        out[f"{name}_ms"], out[f"{name}_p95_ms"] = fig.median_ms, fig.p95_ms
    out["miss_vs_openai"] = figs["miss"].median_ms / figs["openai"].median_ms
    out["hit_vs_raw"] = figs["hit"].median_ms / figs["raw"].median_ms
    out["ttft_extra_ms"] = figs["stream_ttft"].median_ms - figs["raw_sse_ttft"].median_ms
    return out


def _report(figs: dict[str, Figure], n: int) -> None:
    """Print the medians, the p95s and the targets."""
    labels = {
        "raw": "raw httpx POST (async, service loop)",
        "raw_sync": "raw httpx POST (sync, this thread)",
        "openai": "openai client (sync, this thread)",
        "sdk": "blossom-ai alone (client.text.chat)",
        "miss": "service generate_text, cache miss",
        "hit": "service generate_text, cache hit",
        "stream_ttft": "service stream_text TTFT",
        "raw_sse_ttft": "raw SSE TTFT (httpx stream, sync)",
        "raw_sse_loop_ttft": "raw SSE TTFT (async, service loop)",
    }
    print(f"blossom-dash overhead · demo backend in-process on loopback, latency off · {n} timed calls each, "
          f"{MAX_TOKENS} tokens an answer")
    print(f"  {'':40} {'median ms':>10} {'p95 ms':>10}")
    for name, label in labels.items():
        print(f"  {label:40} {figs[name].median_ms:10.3f} {figs[name].p95_ms:10.3f}")
    miss, oai, hit, raw = figs["miss"], figs["openai"], figs["hit"], figs["raw"]
    ttft, sse = figs["stream_ttft"], figs["raw_sse_ttft"]
    miss_ratio, hit_ratio = miss.median_ms / oai.median_ms, hit.median_ms / raw.median_ms
    extra_ms = ttft.median_ms - sse.median_ms
    print("  targets (judged on medians; p95 beside)")
    print(f"    miss / openai        {miss_ratio:8.3f}  (p95 {miss.p95_ms / oai.p95_ms:.3f})   "
          f"target <= {MISS_VS_OPENAI}        {_verdict(miss_ratio <= MISS_VS_OPENAI)}")
    print(f"    hit / raw            {hit_ratio:8.3f}  (p95 {hit.p95_ms / raw.p95_ms:.3f})   "
          f"target <= {HIT_VS_RAW}       {_verdict(hit_ratio <= HIT_VS_RAW)}")
    print(f"    TTFT - raw SSE TTFT  {extra_ms:+8.3f} ms (p95 {ttft.p95_ms - sse.p95_ms:+.3f} ms) "
          f"target <= +{TTFT_EXTRA_MS} ms  {_verdict(extra_ms <= TTFT_EXTRA_MS)}")
    print(f"    (for reference: SDK alone / raw {figs['sdk'].median_ms / raw.median_ms:.2f}, "
          f"openai / raw sync {oai.median_ms / figs['raw_sync'].median_ms:.2f}, "
          f"miss / raw {miss.median_ms / raw.median_ms:.2f})")
    sys.stdout.flush()


async def _make_async_client() -> httpx.AsyncClient:
    # Made on the loop thread, so its connection pool belongs to that loop.
    return httpx.AsyncClient(timeout=30)


if __name__ == "__main__":
    main()
