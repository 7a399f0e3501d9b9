"""Tests for errors: every demo fault and every bad input reaches the caller as a ``DashError`` in words."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from helpers import demo_stats, make_service

from blossom_dash import (
    AuthenticationFailed,
    BackendUnavailable,
    BlossomService,
    DashError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
)
from blossom_dash.demo_backend.faults import DEFAULT_RETRY_AFTER_S
from blossom_dash.sdk.backend import Backend
from blossom_dash.sdk.mapping import to_dash_error

#: fault name -> (error type, status recorded). ``disconnect`` may surface either way.
FAULTS: dict[str, tuple[type[DashError] | tuple[type[DashError], ...], int | None]] = {
    "429": (RateLimited, 429),
    "401": (AuthenticationFailed, 401),
    "403": (AuthenticationFailed, 403),
    "402": (UpstreamError, 402),
    "400": (InvalidRequest, 400),
    "500": (UpstreamError, 500),
    "502": (UpstreamError, 502),
    "503": (UpstreamError, 503),
    "504": (UpstreamError, 504),
    "malformed": (UpstreamError, 200),
    "empty": (UpstreamError, 200),
    "disconnect": ((BackendUnavailable, UpstreamError), None),
}
IMAGE_FAULTS = {**FAULTS, "not-image": (UpstreamError, 200)}



def demo_url(svc: BlossomService, path: str) -> str:
    """A URL on the service's demo backend."""
    return f"{svc.backend.base_url}{path}"



def queue_fault(svc: BlossomService, **plan: Any) -> None:
    """Queue a fault plan on the service's demo backend."""
    httpx.post(demo_url(svc, "/_demo/faults"), json=plan, timeout=5).raise_for_status()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def last_event(svc: BlossomService, before: int) -> pd.Series:
    """The one event recorded since the store held ``before`` rows."""
    df = svc.metrics.frame()
    assert len(df) == before + 1, "exactly one event per request"
    return df.iloc[-1]


def status_of(ev: pd.Series) -> int | None:
    """The event's status code as an int, None when absent."""
    return None if pd.isna(ev["status_code"]) else int(ev["status_code"])


def check_error(err: DashError, expected: type[DashError] | tuple[type[DashError], ...],
                status: int | None) -> None:
    """The error is the expected kind, with words and the expected status."""
    assert isinstance(err, expected)
    assert err.message.strip() and err.hint.strip()
    assert str(err) == f"{err.message} {err.hint}"
    if status is not None:
        assert err.status_code == status


def check_event(ev: pd.Series, err: DashError, kind: str, status: int | None) -> None:
    """The recorded event is an error of the right type and status."""
    assert (ev["kind"], ev["outcome"], ev["error_type"]) == (kind, "error", type(err).__name__)
    assert status_of(ev) == (status if status is not None else err.status_code)


@pytest.fixture(scope="module")
def timeout_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlossomService]:
    """A service whose requests time out after 1 s."""
    svc = make_service(tmp_path_factory.mktemp("timeouts"), request_timeout_s=1, image_timeout_s=1)
    yield svc
    svc.close()


@pytest.fixture(autouse=True)
def _no_leftover_plans(request: pytest.FixtureRequest) -> Iterator[None]:
    """Queued fault plans never outlive the test that queued them."""
    yield
    if "demo_service" in request.fixturenames:
        svc = request.getfixturevalue("demo_service")
        httpx.delete(demo_url(svc, "/_demo/faults"), timeout=5)


class TestDashError:
    def test_message_hint_and_str(self) -> None:
        """An error carries message, hint and status; str() joins the words."""
        err = UpstreamError("It broke.", "Try again.", status_code=502)
        assert (err.message, err.hint, err.status_code) == ("It broke.", "Try again.", 502)
        assert str(err) == "It broke. Try again."
        assert err.retry_after_s is None and err.severity == "error"

    def test_rate_limited_wait_is_positive(self) -> None:
        """RateLimited never asks to wait 0 s or less, and is a warning."""
        err = RateLimited("Slow down.", "Wait.", retry_after_s=0)
        assert err.retry_after_s > 0
        assert (err.scope, err.status_code, err.severity) == ("upstream", 429, "warning")

    @pytest.mark.parametrize("cls", [InvalidRequest, RateLimited, BackendUnavailable, UpstreamError,
                                     AuthenticationFailed])
    def test_all_are_dash_errors(self, cls: type[DashError]) -> None:
        """Every error type the service raises is a DashError."""
        assert issubclass(cls, DashError)


class TestToDashError:
    @pytest.fixture(scope="class")
    def backend(self) -> Backend:
        """A backend object to name in messages (no request is made)."""
        return Backend(name="custom", base_url="http://127.0.0.1:9", api_key=None, timeout_s=5)

    @pytest.mark.parametrize("exc, expected", [
        (httpx.ConnectError("refused"), BackendUnavailable),
        (httpx.ReadTimeout("slow"), BackendUnavailable),
        (TimeoutError(), BackendUnavailable),
        (RuntimeError("Event loop is closed"), UpstreamError),
        (TypeError("RateLimitError.__init__() got an unexpected keyword"), UpstreamError),
    ])
    def test_maps_exceptions_to_words(self, backend: Backend, exc: BaseException,
                                      expected: type[DashError]) -> None:
        """Raw transport and SDK exceptions become DashErrors naming the backend."""
        err = to_dash_error(exc, None, where=backend.label, model="m", timeout_s=5)
        assert type(err) is expected
        assert backend.label in err.message and err.hint

    def test_passes_dash_errors_through(self, backend: Backend) -> None:
        """A DashError is returned as it is."""
        err = InvalidRequest("x", "y")
        assert to_dash_error(err, None, where=backend.label, model="m", timeout_s=5) is err


class TestTextFaults:
    @pytest.mark.parametrize("fault", list(FAULTS))
    def test_generate_text(self, demo_service: BlossomService, fault: str) -> None:
        """Each fault raises its DashError with words, recorded as an error event."""
        expected, status = FAULTS[fault]
        before = len(demo_service.metrics.frame())
        with pytest.raises(DashError) as info:
            demo_service.generate_text(f"Fault {fault}", model=f"fault-{fault}")
        check_error(info.value, expected, status)
        check_event(last_event(demo_service, before), info.value, "text", status)

    def test_429_carries_retry_after(self, demo_service: BlossomService) -> None:
        """An upstream 429 is RateLimited(scope upstream) with the Retry-After the backend sent."""
        with pytest.raises(RateLimited) as info:
            demo_service.generate_text("Upstream limit", model="fault-429")
        assert info.value.retry_after_s == DEFAULT_RETRY_AFTER_S
        assert info.value.scope == "upstream"
        queue_fault(demo_service, fault="429", count=1, routes=["chat"], retry_after=3)
        with pytest.raises(RateLimited) as info:
            demo_service.generate_text("Queued upstream limit")
        assert info.value.retry_after_s == 3

    def test_unknown_model(self, demo_service: BlossomService) -> None:
        """A model the backend does not have is InvalidRequest with status 404."""
        before = len(demo_service.metrics.frame())
        with pytest.raises(InvalidRequest) as info:
            demo_service.generate_text("Who are you?", model="no-such-model")
        check_error(info.value, InvalidRequest, 404)
        assert "no-such-model" in info.value.message
        check_event(last_event(demo_service, before), info.value, "text", 404)

    def test_header_trigger_reaches_the_caller(self, demo_service: BlossomService) -> None:
        """A queued 502 plan on a normal model is an UpstreamError 502."""
        queue_fault(demo_service, fault="502", count=1, routes=["chat"])
        with pytest.raises(UpstreamError) as info:
            demo_service.generate_text("Queued 502", model="demo-swift")
        assert info.value.status_code == 502
        assert demo_service.generate_text("Queued 502", model="demo-swift").cached is False


class TestStreamFaults:
    @pytest.mark.parametrize("fault", list(FAULTS))
    def test_stream_text(self, demo_service: BlossomService, fault: str) -> None:
        """Each fault raises while iterating, sets stream.error and records an error event."""
        expected, status = FAULTS[fault]
        before = len(demo_service.metrics.frame())
        stream = demo_service.stream_text(f"Stream fault {fault}", model=f"fault-{fault}")
        with pytest.raises(DashError) as info:
            for _ in stream:
                pass
        assert stream.error is info.value
        assert stream.result is None
        check_error(info.value, expected, status)
        check_event(last_event(demo_service, before), info.value, "stream", status)

    def test_429_carries_retry_after(self, demo_service: BlossomService) -> None:
        """A 429 mid-stream carries the Retry-After the backend sent."""
        queue_fault(demo_service, fault="429", count=1, routes=["chat"], retry_after=4)
        stream = demo_service.stream_text("Queued stream limit")
        with pytest.raises(RateLimited) as info:
            list(stream)
        assert info.value.retry_after_s == 4

    def test_unknown_model(self, demo_service: BlossomService) -> None:
        """An unknown model in a stream is InvalidRequest 404."""
        stream = demo_service.stream_text("Stream who?", model="no-such-model")
        with pytest.raises(InvalidRequest) as info:
            list(stream)
        assert info.value.status_code == 404 and stream.error is info.value

    def test_disconnect_after_some_deltas(self, demo_service: BlossomService) -> None:
        """A connection dropped mid-answer raises after the deltas already sent."""
        stream = demo_service.stream_text("Drop me midway", model="fault-disconnect", max_tokens=200)
        got: list[str] = []
        with pytest.raises((BackendUnavailable, UpstreamError)):
            for delta in stream:
                got.append(delta)
        assert got, "deltas sent before the drop are delivered"


class TestImageFaults:
    @pytest.mark.parametrize("fault", list(IMAGE_FAULTS))
    def test_generate_image(self, demo_service: BlossomService, fault: str) -> None:
        """Each fault on the image route raises its DashError, recorded as an image error event."""
        expected, status = IMAGE_FAULTS[fault]
        before = len(demo_service.metrics.frame())
        with pytest.raises(DashError) as info:
            demo_service.generate_image(f"Image fault {fault}", model=f"fault-{fault}", width=64, height=64,
                                        seed=1)
        check_error(info.value, expected, status)
        check_event(last_event(demo_service, before), info.value, "image", status)

    def test_not_image_body_on_a_real_model(self, demo_service: BlossomService) -> None:
        """A 200 whose body is not an image, on a normal model, is UpstreamError and is not cached."""
        queue_fault(demo_service, fault="not-image", count=1, routes=["image"])
        with pytest.raises(UpstreamError) as info:
            demo_service.generate_image("Gateway page", width=64, height=64, seed=9)
        assert "not an image" in info.value.message
        assert demo_service.generate_image("Gateway page", width=64, height=64, seed=9).cached is False

    def test_unknown_model(self, demo_service: BlossomService) -> None:
        """An unknown image model is InvalidRequest 404."""
        with pytest.raises(InvalidRequest) as info:
            demo_service.generate_image("Draw", model="no-such-model", width=64, height=64, seed=1)
        assert info.value.status_code == 404


class TestTimeouts:
    def test_text(self, timeout_service: BlossomService) -> None:
        """A backend that stalls past request_timeout_s is BackendUnavailable, recorded."""
        before = len(timeout_service.metrics.frame())
        with pytest.raises(BackendUnavailable) as info:
            timeout_service.generate_text("Stall", model="fault-timeout")
        check_error(info.value, BackendUnavailable, None)
        ev = last_event(timeout_service, before)
        check_event(ev, info.value, "text", None)
        assert status_of(ev) is None

    def test_stream(self, timeout_service: BlossomService) -> None:
        """A stalled stream raises BackendUnavailable while iterating."""
        before = len(timeout_service.metrics.frame())
        stream = timeout_service.stream_text("Stall stream", model="fault-timeout")
        with pytest.raises(BackendUnavailable) as info:
            list(stream)
        assert stream.error is info.value
        check_event(last_event(timeout_service, before), info.value, "stream", None)

    def test_image(self, timeout_service: BlossomService) -> None:
        """A stalled image is BackendUnavailable."""
        before = len(timeout_service.metrics.frame())
        with pytest.raises(BackendUnavailable) as info:
            timeout_service.generate_image("Stall image", model="fault-timeout", width=64, height=64, seed=1)
        check_error(info.value, BackendUnavailable, None)
        check_event(last_event(timeout_service, before), info.value, "image", None)

    def test_service_still_answers_afterwards(self, timeout_service: BlossomService) -> None:
        """After timeouts, the next normal request succeeds."""
        assert timeout_service.generate_text("Still alive?", model="demo-swift").text


class TestConnectionRefused:
    def test_refused_is_backend_unavailable(self, tmp_path: Path) -> None:
        """A backend URL nobody listens on: BackendUnavailable, recorded with no status."""
        with make_service(tmp_path, backend=f"http://127.0.0.1:{closed_port()}") as svc:
            with pytest.raises(BackendUnavailable) as info:
                svc.generate_text("Hello?", model="demo-swift")
            check_error(info.value, BackendUnavailable, None)
            ev = last_event(svc, 0)
            check_event(ev, info.value, "text", None)
            assert ev["backend"] == "custom"


class TestRetries:
    def test_one_transient_503_is_retried(self, tmp_path: Path) -> None:
        """With retries=1, a single 503 is retried and the call succeeds: two chat requests."""
        with make_service(tmp_path, retries=1, retry_max_wait_s=0) as svc:
            queue_fault(svc, fault="503", count=1, routes=["chat"])
            r = svc.generate_text("Retry me", model="demo-swift")
            assert r.text and r.cached is False
            assert demo_stats(svc)["chat"] == 2
            ev = last_event(svc, 0)
            assert (ev["outcome"], status_of(ev)) == ("ok", 200)

    def test_500_is_not_retried(self, tmp_path: Path) -> None:
        """A 500 is not transient: one request, one error."""
        with make_service(tmp_path, retries=1, retry_max_wait_s=0) as svc:
            queue_fault(svc, fault="500", count=1, routes=["chat"])
            with pytest.raises(UpstreamError):
                svc.generate_text("Do not retry me", model="demo-swift")
            assert demo_stats(svc)["chat"] == 1

    def test_retries_exhausted(self, tmp_path: Path) -> None:
        """Two 503s with retries=1: the second one reaches the caller."""
        with make_service(tmp_path, retries=1, retry_max_wait_s=0) as svc:
            queue_fault(svc, fault="503", count=2, routes=["chat"])
            with pytest.raises(UpstreamError) as info:
                svc.generate_text("Give up", model="demo-swift")
            assert info.value.status_code == 503
            assert demo_stats(svc)["chat"] == 2
            assert len(svc.metrics.frame()) == 1


BAD_TEXT: list[tuple[str, dict[str, Any]]] = [
    ("", {}),
    ("   \n\t ", {}),
    ("x" * 5001, {}),
    ("ok", {"max_tokens": 0}),
    ("ok", {"max_tokens": 10**6}),
    ("ok", {"max_tokens": "5"}),
    ("ok", {"max_tokens": True}),
    ("ok", {"temperature": -1}),
    ("ok", {"temperature": 3}),
    ("ok", {"temperature": "hot"}),
    ("ok", {"seed": -1}),
    ("ok", {"seed": 2**31}),
    ("ok", {"system": 42}),
    ("ok", {"model": "m" * 129}),
    ("ok", {"system": "s" * 4000, "prompt_extra": "p" * 1500}),
]


class TestBadInput:
    @pytest.mark.parametrize("prompt, kwargs", BAD_TEXT,
                             ids=[f"{i}-{sorted(k) or 'prompt'}" for i, (_, k) in enumerate(BAD_TEXT)])
    def test_text_is_refused_without_a_backend_call(self, demo_service: BlossomService, prompt: str,
                                                    kwargs: dict[str, Any]) -> None:
        """Bad text input raises InvalidRequest with words, and nothing reaches the backend."""
        kwargs = dict(kwargs)
        prompt += kwargs.pop("prompt_extra", "")
        demo_service.list_models("text")
        before = demo_stats(demo_service)
        for call in (demo_service.generate_text, demo_service.stream_text):
            with pytest.raises(InvalidRequest) as info:
                call(prompt, **kwargs)
            check_error(info.value, InvalidRequest, None)
        assert demo_stats(demo_service) == before

    @pytest.mark.parametrize("kwargs", [{"width": 10}, {"width": 5000}, {"height": 63}, {"height": 2049},
                                        {"width": 512.0}, {"seed": -1}, {"prompt": ""}, {"prompt": "x" * 5001}])
    def test_image_is_refused_without_a_backend_call(self, demo_service: BlossomService,
                                                     kwargs: dict[str, Any]) -> None:
        """Bad image input raises InvalidRequest with words, and nothing reaches the backend."""
        args: dict[str, Any] = {"prompt": "A fine picture", "width": 64, "height": 64, "seed": 1, **kwargs}
        demo_service.list_models("image")
        before = demo_stats(demo_service)
        with pytest.raises(InvalidRequest) as info:
            demo_service.generate_image(args.pop("prompt"), **args)
        check_error(info.value, InvalidRequest, None)
        assert demo_stats(demo_service) == before

    def test_refusal_is_recorded(self, demo_service: BlossomService) -> None:
        """A refused request is still one error event of type InvalidRequest."""
        before = len(demo_service.metrics.frame())
        with pytest.raises(InvalidRequest):
            demo_service.generate_text("ok", temperature=3)
        ev = last_event(demo_service, before)
        assert (ev["outcome"], ev["error_type"]) == ("rejected", "InvalidRequest")

    def test_prompt_at_the_limit_is_accepted(self, demo_service: BlossomService) -> None:
        """A prompt of exactly max_prompt_chars characters is answered."""
        assert demo_service.generate_text("y" * 5000, max_tokens=5).text

    def test_custom_prompt_limit(self, tmp_path: Path) -> None:
        """max_prompt_chars from Settings is the limit that applies."""
        with make_service(tmp_path, max_prompt_chars=20) as svc:
            with pytest.raises(InvalidRequest) as info:
                svc.generate_text("z" * 21)
            assert "20" in info.value.message
            assert svc.generate_text("z" * 20).text
