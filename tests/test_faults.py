"""The fault matrix: every way a backend can misbehave, for every kind of call, against a hostile server.

Each cell checks what the caller sees (the right ``DashError``, in short words with no
HTML), that the call ends within its deadline whatever the server does, that exactly one
error event is recorded, and that the same service answers the next normal call at once.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hostile import HANG_PREFIX, OK_PNG, HostileServer

from blossom_dash import (
    BackendUnavailable,
    BlossomService,
    DashError,
    ImageResult,
    Settings,
    TextResult,
    UpstreamError,
)

KINDS: tuple[str, ...] = ("text", "stream", "image", "speech")
#: The event ``kind`` each call records.
EVENT_KIND = {"text": "text", "stream": "stream", "image": "image", "speech": "audio"}
#: fault -> the error type(s) the caller must see.
FAULTS: dict[str, type[DashError] | tuple[type[DashError], ...]] = {
    "never": BackendUnavailable,
    "refused": BackendUnavailable,
    "trickle": BackendUnavailable,
    "endless_sse": BackendUnavailable,
    "huge": UpstreamError,
    "disconnect": (BackendUnavailable, UpstreamError),
    "html_520": UpstreamError,
}
#: A dropped connection is noticed at once, not at a deadline: seconds it may take.
PROMPT_S = 1.0
#: How long past its limit a call may run before the test stops waiting for it, seconds
#: (so a call that ignores its deadline fails the cell, with the time it had taken).
WATCHDOG_GRACE_S = 10.0
#: The next normal call on the same service must answer within this, seconds.
RECOVERY_S = 1.0
SETTINGS: dict[str, Any] = {
    "request_timeout_s": 2.0, "image_timeout_s": 2.0, "stream_timeout_s": 4.0, "retries": 1,
    "retry_max_wait_s": 0.2, "breaker_failures": 1000, "per_user_rpm": 100_000, "global_rpm": 100_000,
    "cache_enabled": False, "demo_latency": False,
}
EVENT_COLUMNS = ("ts", "request_id", "kind", "model", "outcome", "error_type", "status_code", "prompt")


@dataclass
class Outcome:
    """What a call did: its value or its exception, and its wall time in seconds."""

    value: Any = None
    error: BaseException | None = None
    elapsed_s: float = 0.0


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    """One hostile server for the module; tests keep apart by model-name suffixes."""
    with HostileServer() as server:
        yield server


def make_service(data_dir: Path, backend: str, **overrides: Any) -> BlossomService:
    """A service on ``backend`` with the matrix's deadlines, its own SQLite file, no cache."""
    return BlossomService(Settings(backend=backend, data_dir=data_dir, **{**SETTINGS, **overrides}))


def closed_port_url() -> str:
    """A loopback backend URL (with a path prefix) on a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/prefix"


def call(svc: BlossomService, kind: str, prompt: str, model: str | None) -> Any:
    """One call of ``kind``; a stream is read to its end and returns its joined text."""
    if kind == "text":
        return svc.generate_text(prompt, model=model)
    if kind == "stream":
        stream = svc.stream_text(prompt, model=model)
        return "".join(d for d in stream)
    if kind == "image":
        return svc.generate_image(prompt, model=model, width=64, height=64, seed=1)
    return svc.generate_speech(prompt, model=model)


def timed(fn: Callable[[], Any], limit_s: float) -> Outcome:
    """Run ``fn`` on a daemon thread and time it, waiting at most ``limit_s + WATCHDOG_GRACE_S``.

    Raises:
        pytest.fail.Exception: ``fn`` was still running then.
    """
    out = Outcome()

    def run() -> None:
        t0 = time.perf_counter()
        try:
            out.value = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out.error = exc
        out.elapsed_s = time.perf_counter() - t0

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit_s + WATCHDOG_GRACE_S)
    if worker.is_alive():
        pytest.fail(f"the call was still running after {limit_s + WATCHDOG_GRACE_S:.1f} s (limit {limit_s:.2f} s)")
    return out


def deadline_s(fault: str, kind: str) -> float:
    """The deadline (from ``SETTINGS``) that bounds ``fault`` on a call of ``kind``, seconds."""
    if fault == "disconnect":
        return PROMPT_S
    if kind == "image":
        return SETTINGS["image_timeout_s"]
    if kind == "stream" and fault == "endless_sse":
        return SETTINGS["stream_timeout_s"]  # deltas keep coming: only the whole-stream deadline ends it
    return SETTINGS["request_timeout_s"]  # text, speech, and a stream before its first delta


def limit_s(deadline: float) -> float:
    """The wall time a call with ``deadline`` may take: 10 % and 0.2 s of slack."""
    return deadline * 1.1 + 0.2


def events(svc: BlossomService) -> pd.DataFrame:
    """Every event the service has stored, oldest first, with its prompt."""
    svc.metrics.flush()
    return svc.store.frame(columns=EVENT_COLUMNS)


def check_words(err: DashError) -> None:
    """The error speaks in a short sentence and a hint, with nothing of an HTML page in either."""
    assert err.message.strip() and err.hint.strip()
    for text in (err.message, err.hint):
        assert "<" not in text, f"markup in {text!r}"
        assert "html" not in text.lower() and "doctype" not in text.lower(), f"an HTML page in {text!r}"
    assert len(err.message) <= 300, f"a {len(err.message)}-character message: {err.message!r}"


def check_one_error_event(svc: BlossomService, prompt: str, kind: str, err: BaseException) -> None:
    """Exactly one event was recorded, for this prompt: an error of the raised type."""
    df = events(svc)
    mine = df[df["prompt"] == prompt]
    assert len(df) == 1 and len(mine) == 1, f"expected one event for the call, got:\n{df}"
    ev = mine.iloc[0]
    assert (ev["kind"], ev["outcome"], ev["error_type"]) == (EVENT_KIND[kind], "error", type(err).__name__)


def check_ok(kind: str, value: Any) -> None:
    """``value`` is the hostile server's ``ok`` answer for a call of ``kind``."""
    if kind == "text":
        assert isinstance(value, TextResult) and value.text == "Hostile server says ok."
    elif kind == "stream":
        assert value == "Hostile server says ok."
    elif kind == "image":
        assert isinstance(value, ImageResult) and value.data == OK_PNG and (value.width, value.height) == (8, 8)
    else:
        assert type(value).__name__ == "AudioResult" and value.format == "wav" and value.duration_s


class TestFaultMatrix:
    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("fault", list(FAULTS))
    def test_fault(self, hostile: HostileServer, tmp_path: Path, fault: str, kind: str) -> None:
        """The fault ends the call in time as the right DashError in words, one error event, and the
        service answers the next normal call at once."""
        backend = closed_port_url() if fault == "refused" else hostile.url()
        model = f"{fault}:{kind}"
        prompt = f"Fault {fault} on a {kind} call"
        with make_service(tmp_path, backend) as svc:
            limit = limit_s(deadline_s(fault, kind))
            out = timed(lambda: call(svc, kind, prompt, model), limit)
            err = out.error
            assert isinstance(err, DashError), f"expected a DashError, got {err!r} (value {str(out.value)[:80]!r})"
            assert isinstance(err, FAULTS[fault]), f"{type(err).__name__}: {err}"
            assert out.elapsed_s <= limit, f"took {out.elapsed_s:.2f} s, limit {limit:.2f} s"
            check_words(err)
            if fault == "huge":
                said = err.message.lower()
                assert any(w in said for w in ("too large", "too big", "larger than", "exceeds")), err.message
            if fault == "html_520":
                assert err.status_code == 520
                assert hostile.count(model, kind) == 1, "a 520 is not transient: no retry"
            check_one_error_event(svc, prompt, kind, err)

            if fault == "refused":
                svc.switch_backend(hostile.url())
            again = timed(lambda: call(svc, kind, f"{prompt}, then a normal one", "ok"), RECOVERY_S)
            assert again.error is None, f"the next normal call failed: {again.error!r}"
            assert again.elapsed_s < RECOVERY_S, f"the next normal call took {again.elapsed_s:.2f} s"
            check_ok(kind, again.value)


class TestRetries:
    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("behaviour", ["flaky503", "reset_once"])
    def test_transient_failure_is_retried(self, hostile: HostileServer, tmp_path: Path, behaviour: str,
                                          kind: str) -> None:
        """With retries=1, one 503 (Retry-After: 0) or one reset before any byte is retried: the
        call succeeds, the server saw two requests, one ok event is recorded."""
        model = f"{behaviour}:{kind}:retried"
        with make_service(tmp_path, hostile.url(), retries=1) as svc:
            out = timed(lambda: call(svc, kind, f"Retry {behaviour}", model), limit_s(deadline_s(behaviour, kind)))
            assert out.error is None, f"not retried: {out.error!r}"
            check_ok(kind, out.value)
            assert hostile.count(model, kind) == 2
            df = events(svc)
            assert list(df["outcome"]) == ["ok"]

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("behaviour", ["flaky503", "reset_once"])
    def test_without_retries_it_fails(self, hostile: HostileServer, tmp_path: Path, behaviour: str,
                                      kind: str) -> None:
        """With retries=0 the first failure reaches the caller after one request: a 503 as
        UpstreamError 503, a reset as BackendUnavailable or UpstreamError."""
        model = f"{behaviour}:{kind}:once"
        prompt = f"Do not retry {behaviour}"
        with make_service(tmp_path, hostile.url(), retries=0) as svc:
            out = timed(lambda: call(svc, kind, prompt, model), limit_s(deadline_s(behaviour, kind)))
            err = out.error
            if behaviour == "flaky503":
                assert isinstance(err, UpstreamError) and err.status_code == 503, repr(err)
            else:
                assert isinstance(err, (BackendUnavailable, UpstreamError)), repr(err)
            check_words(err)
            assert hostile.count(model, kind) == 1
            check_one_error_event(svc, prompt, kind, err)


class TestDefaultModelLookup:
    @pytest.mark.parametrize("kind", KINDS)
    def test_lookup_counts_inside_the_deadline(self, hostile: HostileServer, tmp_path: Path, kind: str) -> None:
        """With the model omitted and every path of the backend hanging (model lists included),
        the call still ends within its deadline as BackendUnavailable."""
        prompt = f"Default model, {kind}"
        with make_service(tmp_path, hostile.base_url + HANG_PREFIX) as svc:
            limit = limit_s(deadline_s("never", kind))
            out = timed(lambda: call(svc, kind, prompt, None), limit)
            assert isinstance(out.error, BackendUnavailable), repr(out.error)
            assert out.elapsed_s <= limit, f"took {out.elapsed_s:.2f} s, limit {limit:.2f} s"
            check_words(out.error)
            check_one_error_event(svc, prompt, kind, out.error)
