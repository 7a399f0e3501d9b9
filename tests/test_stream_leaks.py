"""Abandoned streams give their connections back: 1,000 streams from 20 threads, left in every way a page can leave one.

DESIGN.md: "Every stream, however it ends (read to the end, stopped, abandoned, never
read), gives its connection back."
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import make_service, run_in_threads

from blossom_dash import BlossomService, TextStream

STREAMS = 1000
THREADS = 20
#: The client's keep-alive pool: blossom-ai's ``HttpxClient`` (the base of
#: ``sdk/transport.py``'s ``ObservingHttpClient``) sets ``max_keepalive_connections=
#: min(20, SessionConfig.async_limit_per_host)``, and that default is 30.
KEEPALIVE_POOL = 20
#: Longest the 1,000 streams may take altogether, seconds (they take a few on the demo backend).
WATCHDOG_S = 60.0
#: Seconds the service may take to close what the streams left behind.
CLEANUP_S = 2.0
#: Each stream's answer has several deltas, so "read two, then stop" stops mid-answer.
MAX_TOKENS = 48
#: A stream stuck behind leaked connections fails its worker after this, not after the
#: 60 s default (each stream here takes milliseconds on the demo backend).
STUCK_S = 5.0


def open_stream(svc: BlossomService, n: int) -> TextStream:
    """Stream number ``n``, with a prompt of its own."""
    return svc.stream_text(f"Leak test stream number {n}, please tell a short story", max_tokens=MAX_TOKENS)


def close_before_first_delta(svc: BlossomService, n: int) -> None:
    open_stream(svc, n).close()


def close_after_two(svc: BlossomService, n: int) -> None:
    stream = open_stream(svc, n)
    next(stream)
    next(stream)
    stream.close()


def drop_after_two(svc: BlossomService, n: int) -> None:
    stream = open_stream(svc, n)
    next(stream)
    next(stream)
    del stream  # no close(): the page simply stopped looking at it


def read_to_end(svc: BlossomService, n: int) -> None:
    stream = open_stream(svc, n)
    assert "".join(stream)
    assert stream.result is not None and stream.error is None


def never_read(svc: BlossomService, n: int) -> None:
    stream = open_stream(svc, n)
    del stream


def closed_from_another_thread(svc: BlossomService, n: int) -> None:
    stream = open_stream(svc, n)
    next(stream)
    failed: list[BaseException] = []

    def closer() -> None:
        try:
            stream.close()
        except BaseException as exc:  # noqa: BLE001 - handed back to the owner
            failed.append(exc)

    other = threading.Thread(target=closer)
    other.start()
    other.join(30)  # the owner waits while another thread (a new script run, say) closes it
    assert not other.is_alive(), "close() from another thread did not return"
    if failed:
        raise failed[0]
    assert list(stream) == [], "a closed stream yields nothing more"


WAYS: tuple[Callable[[BlossomService, int], None], ...] = (
    close_before_first_delta, close_after_two, drop_after_two, read_to_end, never_read, closed_from_another_thread,
)


def sockets_to(port: int) -> tuple[list[str], list[str]]:
    """This process's TCP sockets on ``port``: the client side's live ones (not TIME_WAIT),
    and every one, either side, in CLOSE_WAIT (each as ``"laddr -> raddr STATUS"``)."""
    live, close_wait = [], []
    for c in psutil.Process().net_connections(kind="tcp"):
        if not c.raddr:
            continue
        shown = f"{c.laddr.port} -> {c.raddr.port} {c.status}"
        if c.status == psutil.CONN_CLOSE_WAIT and port in (c.laddr.port, c.raddr.port):
            close_wait.append(shown)
        if c.raddr.port == port and c.status != psutil.CONN_TIME_WAIT:
            live.append(shown)
    return live, close_wait


def run_watched(worker: Callable[[int], None]) -> list[BaseException]:
    """``run_in_threads(worker, THREADS)`` under a watchdog of ``WATCHDOG_S``.

    ``run_in_threads`` joins its threads one after another, so workers that deadlock
    would hold the test for ``THREADS`` times its timeout: here they fail it once, with
    the stacks of the threads still running.

    Raises:
        pytest.fail.Exception: the workers were still running after ``WATCHDOG_S``.
    """
    found: list[list[BaseException]] = []
    runner = threading.Thread(target=lambda: found.append(run_in_threads(worker, THREADS, timeout_s=WATCHDOG_S)),
                              daemon=True)
    runner.start()
    runner.join(WATCHDOG_S + 5)
    if not runner.is_alive() and found:
        return found[0]
    frames = sys._current_frames()
    stuck = [t for t in threading.enumerate() if t.ident in frames and t is not threading.current_thread()
             and t is not runner and t.name.startswith("Thread-")]
    stacks = "\n".join(f"--- {t.name}\n{''.join(traceback.format_stack(frames[t.ident])[-8:])}" for t in stuck[:4])
    pytest.fail(f"the streams did not finish within {WATCHDOG_S:.0f} s; {len(stuck)} threads still running:\n{stacks}")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[BlossomService]:
    """A demo-backend service with no cache, so every stream reaches the backend."""
    svc = make_service(tmp_path, cache_enabled=False, request_timeout_s=STUCK_S)
    yield svc
    svc.close()


def test_abandoned_streams_give_their_connections_back(service: BlossomService) -> None:
    """After 1,000 streams left in six ways from 20 threads, the process holds no more
    connections to the backend than the keep-alive pool, none in CLOSE_WAIT, every stream
    recorded one event, and the next call answers at once."""
    port = httpx.URL(service.backend.base_url).port
    per_thread = STREAMS // THREADS

    def worker(k: int) -> None:
        for i in range(per_thread):
            n = k * per_thread + i
            WAYS[n % len(WAYS)](service, n)

    errors = run_watched(worker)
    if errors:
        live, _ = sockets_to(port)
        pytest.fail(f"{len(errors)} workers failed, with {len(live)} connections open to the backend; "
                    f"the first: {errors[0]!r}")

    end = time.monotonic() + CLEANUP_S
    while True:
        gc.collect()  # the dropped streams: unreachable now, finalised when collected
        live, close_wait = sockets_to(port)
        if (len(live) <= KEEPALIVE_POOL and not close_wait) or time.monotonic() > end:
            break
        time.sleep(0.1)
    assert len(live) <= KEEPALIVE_POOL, f"{len(live)} connections to the backend left open: {live[:40]}"
    assert not close_wait, f"sockets in CLOSE_WAIT: {close_wait[:40]}"

    df = service.metrics.frame()
    assert (df["kind"] == "stream").sum() == STREAMS, "one event per stream, however it ended"

    t0 = time.perf_counter()
    assert service.generate_text("hi").text
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"the next call took {elapsed:.2f} s"
