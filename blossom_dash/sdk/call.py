"""One backend call: the deadline, the retries and the error mapping, once.

``call`` runs on the service's loop thread. Every attempt gets a fresh
``Observation`` (the transport records status, Retry-After, usage and bytes into it)
and the whole call, retries and their waits included, ends by one absolute deadline.
``retry_stream`` gives a stream the same retries, but only until its first delta.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from ..errors import BackendUnavailable, DashError, UpstreamError
from .backend import TRANSIENT_STATUS
from .mapping import to_dash_error
from .transport import Observation, current_observation

T = TypeVar("T")


@dataclass(frozen=True)
class CallPolicy:
    """How one call may spend its time.

    Attributes:
        retries: Extra attempts after a transient failure (``is_transient``).
        max_wait_s: Longest wait between attempts, seconds; a longer Retry-After is
            cut to it.
        max_bytes: Largest response body accepted (``ResponseTooLarge`` beyond it).
    """

    retries: int = 1
    max_wait_s: float = 5.0
    max_bytes: int | None = None


def is_transient(err: BaseException) -> bool:
    """Worth another attempt: 502/503/504/522, or a connection reset before any byte."""
    if isinstance(err, UpstreamError):
        return err.status_code in TRANSIENT_STATUS
    return isinstance(err, BackendUnavailable) and err.retryable


def _backoff_s(err: BaseException | None, attempt: int, max_wait_s: float) -> float:
    hinted = getattr(err, "retry_after_s", None)  # the backend's Retry-After wins
    return min(hinted if hinted is not None else 0.25 * 2 ** (attempt - 1), max_wait_s)


def timeout_error(where: str, timeout_s: float) -> BackendUnavailable:
    """The error of a call that ran out of its deadline of ``timeout_s`` seconds."""
    return BackendUnavailable(f"{where} did not answer within {timeout_s:g} s.",
                              "The model may be overloaded: try again, pick a faster model, or raise the timeout.")


async def call(fn: Callable[[], Awaitable[T]], *, where: str, model: str, api_key: str | None, deadline: float,
               timeout_s: float, policy: CallPolicy, quote: bool = True) -> tuple[T, Observation]:
    """Await ``fn()`` (one SDK request) with retries, all before ``deadline``.

    Args:
        fn: Makes a fresh coroutine per attempt.
        where: The backend's label, for messages.
        model: The model asked for, for messages.
        api_key: A per-session key that replaces the backend's own, or None.
        deadline: ``time.monotonic()`` by which the call ends, whatever the backend does.
        timeout_s: The deadline's length as the user set it, for messages.
        policy: Retries, their waits and the body size cap.
        quote: Whether error bodies may be quoted (an allow-listed backend).

    Returns:
        ``(what fn returned, the last attempt's Observation)``.

    Raises:
        DashError: every failure, mapped by ``sdk.mapping.to_dash_error``; a timeout
            is ``BackendUnavailable``.
    """
    loop = asyncio.get_running_loop()
    at = loop.time() + (deadline - time.monotonic())  # the loop's clock is monotonic, but say so

    async def attempt() -> tuple[T, Observation]:
        remaining = at - loop.time()
        if remaining <= 0:
            raise timeout_error(where, timeout_s)
        obs = Observation(api_key=api_key, timeout_s=remaining, max_bytes=policy.max_bytes, where=where, quote=quote)
        token = current_observation.set(obs)
        try:
            async with asyncio.timeout_at(at):
                return await fn(), obs
        except TimeoutError as exc:
            raise timeout_error(where, timeout_s) from exc
        except DashError:
            raise
        except Exception as exc:
            raise to_dash_error(exc, obs, where=where, model=model, timeout_s=timeout_s) from exc
        finally:
            current_observation.reset(token)

    try:
        # The first attempt runs without tenacity: its per-call set-up costs more than
        # the rest of the service's overhead, and most calls need no retry.
        return await attempt()
    except DashError as err:
        if not policy.retries or not is_transient(err):
            raise
        first = err

    def wait(state: RetryCallState) -> float:
        err = state.outcome.exception() if state.outcome else first
        return _backoff_s(err, state.attempt_number + 1, policy.max_wait_s)

    def stop(state: RetryCallState) -> bool:
        # tenacity makes the retries only (the first attempt ran above); and no attempt
        # starts that could not end before the deadline's last 50 ms.
        return state.attempt_number >= policy.retries or loop.time() + state.upcoming_sleep >= at - 0.05

    first_wait = _backoff_s(first, 1, policy.max_wait_s)
    if loop.time() + first_wait >= at - 0.05:
        raise first
    await asyncio.sleep(first_wait)
    retrying = AsyncRetrying(stop=stop, wait=wait, retry=retry_if_exception(is_transient), reraise=True)
    async for att in retrying:
        with att:
            value = await attempt()
    return value


async def retry_stream(open_stream: Callable[[Observation], Awaitable[None]], *, where: str, model: str,
                       api_key: str | None, first_deadline: float, deadline: float, timeout_s: float,
                       stream_timeout_s: float, policy: CallPolicy, started: Callable[[], bool],
                       observation: Observation, quote: bool = True) -> None:
    """Run one stream, retried like ``call`` until its first delta and never after.

    Args:
        open_stream: Reads the whole stream once, emitting deltas as they come; it
            is given the attempt's observation.
        first_deadline: ``time.monotonic()`` by which the first delta must arrive.
        deadline: ``time.monotonic()`` by which the whole stream ends.
        timeout_s / stream_timeout_s: Their lengths, for messages.
        started: Whether a delta has been emitted (then no retry is made).
        observation: Filled with what the last attempt saw (status, usage).
        quote: Whether error bodies may be quoted (an allow-listed backend).

    Raises:
        DashError: the mapped failure of the last attempt; ``BackendUnavailable``
            when a deadline passed.
    """
    loop = asyncio.get_running_loop()
    offset = loop.time() - time.monotonic()
    attempt_no = 0
    while True:
        attempt_no += 1
        # The HTTP read timeout is the whole stream's: between deltas a slow model may
        # pause, and the first delta's deadline is the reader's (TextStream) to keep.
        obs = Observation(api_key=api_key, timeout_s=max(0.001, deadline - time.monotonic()),
                          max_bytes=policy.max_bytes, where=where, quote=quote)
        token = current_observation.set(obs)
        try:
            async with asyncio.timeout_at(deadline + offset):
                await open_stream(obs)
            return
        except TimeoutError as exc:
            raise BackendUnavailable(
                f"{where} was still streaming after {stream_timeout_s:g} s, the longest a stream may run.",
                "Ask for a shorter answer (fewer max tokens), or raise BLOSSOM_DASH_STREAM_TIMEOUT_S.",
            ) from exc
        except Exception as exc:
            err = exc if isinstance(exc, DashError) else to_dash_error(exc, obs, where=where, model=model,
                                                                        timeout_s=timeout_s)
            wait = _backoff_s(err, attempt_no, policy.max_wait_s)
            if (started() or attempt_no > policy.retries or not is_transient(err)
                    or time.monotonic() + wait >= first_deadline - 0.05):
                raise err from exc
        finally:
            current_observation.reset(token)
            observation.status_code, observation.usage = obs.status_code, obs.usage
        await asyncio.sleep(wait)
