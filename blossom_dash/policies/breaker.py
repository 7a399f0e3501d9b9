"""A circuit breaker per backend: closed, open, half-open with exactly one probe.

Why not a library: pybreaker (1.4) holds one process-wide lock for the whole of each
call it guards, which would serialise every request of every user, and in half-open
it lets through every caller that arrives; aiobreaker is its asyncio port with the same
half-open rule; purgatory is asyncio-only, while admission here happens on the
caller's thread before anything reaches the event loop; circuitbreaker (the decorator)
counts per decorated function and has no single-probe half-open. The states and their
rules are those of Nygard's *Release It!* ("Circuit Breaker") as Martin Fowler's
CircuitBreaker article describes them.

- **closed**: calls pass; ``failures`` consecutive backend failures open the circuit.
- **open**: calls fail fast with ``CircuitOpen`` for ``reset_s`` seconds.
- **half-open**: after ``reset_s``, exactly one caller is admitted as the probe; the
  others keep failing fast until its result closes the circuit (success) or reopens
  it for another ``reset_s`` (failure).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import CircuitOpen

log = logging.getLogger("blossom_dash")
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
#: How far back ``recent_failures`` counts, seconds.
RECENT_S = 300.0


@dataclass(frozen=True)
class BreakerState:
    """A snapshot of one breaker.

    Attributes:
        circuit: ``"closed"``, ``"open"`` or ``"half-open"``.
        consecutive_failures: Failures since the last success.
        recent_failures: Failures in the last ``RECENT_S`` seconds.
        next_probe_in_s: Seconds until a probe may go through (0 when one may now;
            None while closed).
        last_success_age_s / last_failure_age_s: Seconds since the last success or
            failure, None when there was none.
        calls: Outcomes recorded since the breaker was made.
    """

    circuit: str
    consecutive_failures: int
    recent_failures: int
    next_probe_in_s: float | None
    last_success_age_s: float | None
    last_failure_age_s: float | None
    calls: int


class CircuitBreaker:
    """Thread-safe circuit breaker for one backend.

    Args:
        where: The backend's label, for the fail-fast message.
        failures: Consecutive failures that open the circuit (>= 1).
        reset_s: Seconds the circuit stays open before one probe (> 0).
        clock: Monotonic clock in seconds (inject a fake one in tests).
        listener: ``listener(where, old, new)`` on every change of circuit (``closed``,
            ``open``, ``half-open``), called after the breaker's lock is released, on the
            thread that caused it (keep it quick: the alerts only queue); its errors are
            logged, never raised to the request.
    """

    def __init__(self, where: str, *, failures: int = 5, reset_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 listener: Callable[[str, str, str], None] | None = None) -> None:
        self.where = where
        self.listener = listener
        self.failures = max(1, int(failures))
        self.reset_s = float(reset_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._circuit = CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self._recent: deque[float] = deque(maxlen=10_000)
        self._last_success: float | None = None
        self._last_failure: float | None = None
        self._calls = 0
        self._changes: list[tuple[str, str]] = []  # (old, new) not yet told to the listener
        self._notify_lock = threading.Lock()

    def admit(self) -> bool:
        """Let a call through, or refuse it at once.

        Returns:
            True when this call is the half-open probe (its outcome decides the
            circuit; report it with ``success``, ``failure`` or ``release``).

        Raises:
            CircuitOpen: the circuit is open, or half-open with its probe in flight.
        """
        with self._lock:
            if self._circuit == CLOSED:
                return False
            now = self._clock()
            wait = self._opened_at + self.reset_s - now
            if self._circuit == OPEN and wait <= 0:
                self._notify_later(OPEN, HALF_OPEN)
                self._circuit = HALF_OPEN
            if self._circuit == HALF_OPEN and not self._probing:
                self._probing = True
                probe = True
            else:
                probe = False
                failed = self._consecutive
        self._notify()
        if probe:
            return True
        raise self._refusal(max(wait, 0.0), failed)

    def refusal(self) -> CircuitOpen:
        """The fail-fast error for the current state, without taking a probe's place."""
        with self._lock:
            wait, failed = self._opened_at + self.reset_s - self._clock(), self._consecutive
        return self._refusal(max(wait, 0.0), failed)

    def _refusal(self, wait_s: float, failed: int) -> CircuitOpen:
        if wait_s > 0:
            when = f"in {wait_s:.0f} s" if wait_s >= 1 else "in under a second"
        else:
            when = "as soon as the test request in flight ends"
        err = CircuitOpen(
            f"{self.where} is failing: its last {failed} calls failed, so requests are paused "
            f"(circuit breaker open). It will be tried again {when}.",
            "Wait and try again, or switch backend on the Controls page.",
        )
        err.retry_after_s = max(wait_s, 0.001)
        return err

    def success(self, probe: bool = False) -> None:
        """The backend answered (any status under 500): the circuit closes."""
        with self._lock:
            self._calls += 1
            self._last_success = self._clock()
            self._consecutive = 0
            if probe or self._circuit != OPEN:
                self._notify_later(self._circuit, CLOSED)
                self._circuit, self._probing = CLOSED, False
        self._notify()

    def failure(self, probe: bool = False) -> None:
        """The backend failed (timeout, connection error, 5xx): count it, maybe open."""
        with self._lock:
            now = self._clock()
            self._calls += 1
            self._last_failure = now
            self._recent.append(now)
            self._consecutive += 1
            if probe or self._circuit == HALF_OPEN or (self._circuit == CLOSED
                                                        and self._consecutive >= self.failures):
                self._notify_later(self._circuit, OPEN)
                self._circuit, self._opened_at, self._probing = OPEN, now, False
        self._notify()

    def _notify_later(self, old: str, new: str) -> None:
        """Under the lock: queue a change of circuit for ``_notify``."""
        if self.listener is not None and old != new:
            self._changes.append((old, new))

    def _notify(self) -> None:
        """Outside the breaker's lock: tell the listener the queued changes, in order."""
        if not self._changes:  # the usual case: nothing changed, no lock taken
            return
        with self._notify_lock:  # one teller at a time, so changes arrive in their order
            with self._lock:
                changes, self._changes = self._changes, []
            for old, new in changes:
                try:
                    self.listener(self.where, old, new)  # type: ignore[misc]
                except Exception:
                    log.exception("the circuit breaker listener of %s failed", self.where)

    def release(self, probe: bool) -> None:
        """A call ended without a verdict (stopped before the backend answered)."""
        if probe:
            with self._lock:
                self._probing = False

    def state(self) -> BreakerState:
        """A consistent snapshot (see ``BreakerState``)."""
        with self._lock:
            now = self._clock()
            while self._recent and self._recent[0] < now - RECENT_S:
                self._recent.popleft()
            circuit = self._circuit
            if circuit == OPEN and now >= self._opened_at + self.reset_s:
                circuit = HALF_OPEN  # a probe may go now; admit() makes it so
            next_probe = None if circuit == CLOSED else max(0.0, self._opened_at + self.reset_s - now)
            return BreakerState(
                circuit=circuit,
                consecutive_failures=self._consecutive,
                recent_failures=len(self._recent),
                next_probe_in_s=next_probe,
                last_success_age_s=None if self._last_success is None else now - self._last_success,
                last_failure_age_s=None if self._last_failure is None else now - self._last_failure,
                calls=self._calls,
            )


__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "BreakerState", "CircuitBreaker"]
