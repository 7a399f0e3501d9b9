"""One asyncio event loop in a daemon thread: the only loop the SDK's client lives on.

blossom-ai's sync API runs ``asyncio.run()`` per call and breaks its pooled
connections (BLOSSOM_SDK.md, "Event loops and threads"), so every SDK coroutine is
submitted here with ``run_coroutine_threadsafe`` instead.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """One asyncio event loop running forever in a daemon thread.

    Args:
        name: Thread name (shows in py-spy and thread dumps).
    """

    def __init__(self, name: str = "blossom-dash-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Schedule ``coro`` on the loop; returns a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[return-value]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result.

        Raises:
            concurrent.futures.TimeoutError: ``timeout`` seconds passed (the coroutine
                is cancelled).
            Exception: whatever the coroutine raised.
        """
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except BaseException:
            fut.cancel()
            raise

    @property
    def alive(self) -> bool:
        """Whether the loop thread is running."""
        return self._thread.is_alive() and not self.loop.is_closed()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and join its thread (pending tasks are cancelled)."""
        if self.loop.is_closed():
            return

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(_cancel_all(), timeout=timeout)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


def monotonic_ms() -> float:
    """A monotonic clock reading in milliseconds."""
    return time.perf_counter() * 1000.0
