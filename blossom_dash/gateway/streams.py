"""``TextStream``: the iterator a page reads a streamed answer from.

The reader runs on the service's loop and puts frames into a queue; the page's
thread takes them out. However the stream ends (read to the end, stopped with
``close()``, dropped unread, closed from another thread, a deadline passed) it ends
once: the reader is told to stop, so its connection is closed or handed back to the
pool, and the pipeline's ``finish`` callback records the one event. The stream holds
no reference to itself through its reader or callback, so dropping the last
reference finalises it at once rather than at the next garbage collection.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import BackendUnavailable, DashError
from ..results import TextResult
from ..sdk.backend import StreamChunk

log = logging.getLogger("blossom_dash")
#: Queue items besides ``StreamChunk`` and ``DashError``.
DONE = object()
_CLOSED = object()


@dataclass(frozen=True)
class StreamEnd:
    """How a stream ended, as its ``finish`` callback receives it.

    Attributes:
        text: The deltas joined.
        ttft_ms: Time to the first delta, ms; None when none came.
        latency_ms: Time from the request to the end, ms.
        usage: The backend's ``usage`` object, when it sent one.
        finish_reason: The last ``finish_reason`` seen.
        done: The backend said ``[DONE]``.
        error: Why the stream failed, or None.
    """

    text: str
    ttft_ms: float | None
    latency_ms: float
    usage: dict[str, Any] | None
    finish_reason: str | None
    done: bool
    error: DashError | None


class TextStream:
    """An iterator of ``str`` deltas (what ``st.write_stream`` consumes).

    After iteration ends, ``result`` holds the ``TextResult``; if the stream failed,
    iteration raised a ``DashError`` and ``error`` holds it. ``close()`` (or dropping
    the stream) cancels the backend call and records the event with TTFT and the
    usage so far (``TextResult.stopped_early``).

    Args:
        items: The queue the reader fills (``StreamChunk``, ``DashError``, ``DONE``).
        finish: Called once with the ``StreamEnd``; returns the result (None on error).
        cancel: Stops the reader on the loop when the stream ends early (thread-safe);
            None for a stream replayed from the cache.
        t0_ms: ``monotonic_ms()`` when the request was made.
        first_timeout_s: Longest wait for the first delta, seconds.
        timeout_s: Longest the whole stream may take, seconds.
        where: The backend's label, for timeout messages.
    """

    def __init__(self, items: queue.SimpleQueue[Any], finish: Callable[[StreamEnd], TextResult | None], *,
                 cancel: Callable[[], None] | None, t0_ms: float, first_timeout_s: float, timeout_s: float,
                 where: str) -> None:
        self.result: TextResult | None = None
        self.error: DashError | None = None
        self._items = items
        self._finish: Callable[[StreamEnd], TextResult | None] | None = finish
        self._cancel = cancel
        self._t0 = t0_ms
        self._first_by = t0_ms / 1000 + first_timeout_s
        self._last_by = t0_ms / 1000 + timeout_s
        self._first_timeout_s, self._timeout_s = first_timeout_s, timeout_s
        self._where = where
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._ttft: float | None = None
        self._usage: dict[str, Any] | None = None
        self._finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            if self._finish is None:
                raise StopIteration
            limit = self._first_by if self._ttft is None else self._last_by
            try:
                item = self._items.get(timeout=max(0.0, limit - time.perf_counter()))
            except queue.Empty:
                raise self._fail(self._timeout()) from None
            if item is _CLOSED:
                raise StopIteration
            if item is DONE:
                if not self._parts:
                    from ..errors import UpstreamError

                    raise self._fail(UpstreamError(f"{self._where} returned an empty answer.",
                                                   "Try again, raise max tokens, or pick another model.",
                                                   status_code=200))
                self._end(done=True)
                raise StopIteration
            if isinstance(item, DashError):
                raise self._fail(item)
            chunk: StreamChunk = item
            with self._lock:
                if self._finish is None:
                    raise StopIteration
                self._usage = chunk.usage or self._usage
                self._finish_reason = chunk.finish_reason or self._finish_reason
                if chunk.delta:
                    if self._ttft is None:
                        self._ttft = time.perf_counter() * 1000 - self._t0
                    self._parts.append(chunk.delta)
                    return chunk.delta

    def _timeout(self) -> BackendUnavailable:
        if self._ttft is None:
            return BackendUnavailable(f"{self._where} sent nothing for {self._first_timeout_s:g} s.",
                                      "The model may be overloaded: try again or pick a faster model.")
        return BackendUnavailable(
            f"{self._where} was still streaming after {self._timeout_s:g} s, the longest a stream may run.",
            "Ask for a shorter answer (fewer max tokens), or raise BLOSSOM_DASH_STREAM_TIMEOUT_S.")

    def _fail(self, err: DashError) -> DashError:
        self._end(error=err)
        return err

    def _end(self, *, done: bool = False, error: DashError | None = None) -> None:
        with self._lock:
            finish, self._finish = self._finish, None
            if finish is None:
                return
            if self._cancel is not None:
                self._cancel()
            end = StreamEnd("".join(self._parts), self._ttft, time.perf_counter() * 1000 - self._t0, self._usage,
                            self._finish_reason, done, error)
        self.error = error
        self.result = finish(end)

    def close(self) -> None:
        """Stop reading; the backend call is cancelled and the event recorded.

        Safe from any thread, and more than once; a reader blocked in ``next()`` on
        another thread wakes and ends the iteration.
        """
        if self._finish is not None:
            self._end()
            self._items.put(_CLOSED)

    def __del__(self) -> None:
        # A finaliser may run in any thread, even one holding a lock that recording the
        # event takes (the journal's, a sink's queue): hand the ending to the finaliser
        # thread through a SimpleQueue, whose put is safe from __del__ (its docs).
        if self._finish is not None:
            _FINALISE.put(self.close)  # resurrects self until the finaliser thread ran it


def _finaliser() -> None:
    while True:
        close = _FINALISE.get()
        try:
            close()
        except Exception:
            log.exception("could not end a dropped stream")
        del close


_FINALISE: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
threading.Thread(target=_finaliser, name="blossom-dash-stream-finaliser", daemon=True).start()


__all__ = ["DONE", "StreamEnd", "TextStream"]
