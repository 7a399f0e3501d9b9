"""Tests for ``blossom_dash.observability``: the Prometheus exporter over real loopback
HTTP, and the one-JSON-line-per-request log on stderr.

The registry and the exporter are process-wide (other modules' services count into
them too), so counters are checked as deltas between two scrapes.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import make_service
from prometheus_client.parser import text_string_to_metric_families

from blossom_dash import BlossomService, InvalidRequest, RateLimited, UpstreamError
from blossom_dash.telemetry import sinks as observability
from blossom_dash.telemetry.collector import Event

USER = "alice-observer-7f3"
SESSION = "session-9c1d"
API_KEY = "sk_test_secret_1234567890"
SESSION_KEY = "sk_session_secret_0987654321"
PROMPTS = ("Describe a quiet harbour at dawn", "List three uses of copper wire",
           "Summarise the water cycle briefly")
IMAGE_PROMPT = "A lighthouse drawn in ink"
STREAM_PROMPT = "Stream a haiku about tulips"
LIMITED_PROMPT = "One request too many for this minute"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> tuple[str, Samples]:
    """GET ``url`` and parse it: ``(body, {(sample name, sorted labels): value})``."""
    body = httpx.get(url, timeout=5).text
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if not s.name.endswith("_created"):  # creation timestamps, not counts
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return body, samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much one sample grew between two scrapes (absent counts as 0)."""
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def scrape_counter(name: str) -> float:
    """One unlabelled sample of the registry, read in process (no exporter needed)."""
    return observability.REGISTRY.get_sample_value(name) or 0.0


def read_stderr(capfd: pytest.CaptureFixture[str]) -> str:
    """Captured stderr, once the log's writer thread has written every queued line."""
    assert observability.flush_logs(5.0)
    return capfd.readouterr().err


def request_lines(err: str) -> list[dict[str, Any]]:
    """The JSON request log lines in captured stderr."""
    lines = []
    for line in err.splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            if "request_id" in obj:
                lines.append(obj)
    return lines


@pytest.fixture
def metrics_url(tmp_path: Path) -> str:
    """The URL of this process' exporter, started through the service on a free port if needed."""
    if observability.metrics_url() is None:
        with make_service(tmp_path / "exporter", metrics_port=free_port()):
            pass
    url = observability.metrics_url()
    assert url is not None
    return url


@pytest.fixture
def svc(tmp_path: Path, metrics_url: str) -> Iterator[BlossomService]:
    """A demo service with a configured key and a per-user limit of 6 requests a minute.

    It attaches after the exporter exists, so the cache gauge reads this service.
    """
    with make_service(tmp_path, api_key=API_KEY, per_user_rpm=6) as service:
        yield service


class TestPrometheusExport:
    def test_scripted_requests_counted_exactly(self, svc: BlossomService, metrics_url: str) -> None:
        """Each counter, histogram and the cache gauge grow exactly as the scripted requests say."""
        ids = {"user": USER, "session": SESSION, "api_key": SESSION_KEY}
        _, before = scrape(metrics_url)
        texts = [svc.generate_text(p, **ids) for p in PROMPTS]  # 3 slots
        hit = svc.generate_text(PROMPTS[0], **ids)  # cache hit: no slot
        with pytest.raises(UpstreamError):
            svc.generate_text("Any prompt at all", model="fault-500", **ids)  # slot 4
        image = svc.generate_image(IMAGE_PROMPT, width=64, height=64, seed=3, **ids)  # slot 5
        stream = svc.stream_text(STREAM_PROMPT, **ids)  # slot 6
        assert "".join(stream) and stream.result is not None
        with pytest.raises(RateLimited):
            svc.generate_text(LIMITED_PROMPT, **ids)  # over the per-user limit
        body, after = scrape(metrics_url)

        assert hit.cached and not any(t.cached for t in texts)
        model, imodel, smodel = texts[0].model, image.model, stream.result.model
        assert model == smodel
        d = lambda name, **labels: delta(before, after, name, **labels)  # noqa: E731
        assert d("blossom_requests_total", model=model, kind="text", outcome="ok") == 3
        assert d("blossom_requests_total", model=model, kind="text", outcome="cache_hit") == 1
        assert d("blossom_requests_total", model="fault-500", kind="text", outcome="error") == 1
        assert d("blossom_requests_total", model=imodel, kind="image", outcome="ok") == 1
        assert d("blossom_requests_total", model=smodel, kind="stream", outcome="ok") == 1
        assert d("blossom_requests_total", model=model, kind="text", outcome="rate_limited") == 1
        total = sum(v - before.get(k, 0.0) for k, v in after.items() if k[0] == "blossom_requests_total")
        assert total == 8
        assert d("blossom_cache_hits_total") == 1
        assert d("blossom_cache_misses_total") == 6  # 3 texts, the fault, the image, the stream
        assert d("blossom_rate_limited_total") == 1
        assert d("blossom_errors_total", model="fault-500", kind="text", error_type="UpstreamError") == 1
        served = [*texts, stream.result]
        assert d("blossom_tokens_total", model=model, direction="prompt") == sum(
            r.usage.prompt_tokens for r in served)
        assert d("blossom_tokens_total", model=model, direction="completion") == sum(
            r.usage.completion_tokens for r in served)
        assert not any(k[0] == "blossom_tokens_total" and ("model", imodel) in k[1] and v for k, v in after.items())
        spent = sum((r.cost for r in served), Decimal(0))
        assert d("blossom_cost_pollen_total", model=model) == pytest.approx(float(spent), rel=1e-9)
        assert d("blossom_cost_pollen_total", model=imodel) == pytest.approx(float(image.cost), rel=1e-9)
        assert d("blossom_cost_saved_pollen_total", model=model) == pytest.approx(float(hit.cost), rel=1e-9)

        # TTFT is a stream's figure: whole answers have a duration and no TTFT.
        assert d("blossom_ttft_seconds_count", model=smodel, kind="stream") == 1
        assert d("blossom_ttft_seconds_count", model=model, kind="text") == 0
        assert d("blossom_ttft_seconds_count", model=imodel, kind="image") == 0
        for hist in ("blossom_request_duration_seconds",):
            assert d(f"{hist}_count", model=model, kind="text") == 3  # served only: not the hit
            assert d(f"{hist}_count", model=imodel, kind="image") == 1
            assert d(f"{hist}_count", model=smodel, kind="stream") == 1
            assert d(f"{hist}_bucket", model=model, kind="text", le="+Inf") == 3
            bounds = {float(dict(k[1])["le"]) for k in after if k[0] == f"{hist}_bucket"}
            assert max(b for b in bounds if b != float("inf")) >= 120
            assert min(bounds) <= 0.005
            assert not any(k[0] == f"{hist}_count" and ("model", "fault-500") in k[1] for k in after)
        # Milliseconds in, seconds out: three loopback answers take well under 30 s in all.
        assert 0 < d("blossom_request_duration_seconds_sum", model=model, kind="text") < 30

        assert after[("blossom_cache_entries", ())] == svc.cache.stats().entries == 5
        for secret in (USER, SESSION, API_KEY, SESSION_KEY, *PROMPTS, IMAGE_PROMPT, STREAM_PROMPT, LIMITED_PROMPT):
            assert secret not in body
            assert not any(secret in value for k in after for _, value in k[1])

    def test_free_text_model_never_becomes_a_label(self, svc: BlossomService, metrics_url: str) -> None:
        """A prompt pasted into the model field is counted under model="invalid"."""
        _, before = scrape(metrics_url)
        with pytest.raises(InvalidRequest):
            svc.generate_text("Hello", model="my secret plan for alice")
        body, after = scrape(metrics_url)
        assert "secret plan" not in body
        assert delta(before, after, "blossom_requests_total", model="invalid", kind="text", outcome="error") == 1

    def test_second_attach_keeps_one_exporter_and_one_sink(self, svc: BlossomService, metrics_url: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
        """Attaching again (same or another port) starts no server and does not double-count."""
        server = observability._server
        port = int(server.server_port)
        observability.attach(svc, port)
        other = free_port()
        with caplog.at_level(logging.WARNING, logger="blossom_dash.observability"):
            observability.attach(svc, other)
        assert observability._server is server
        assert observability.metrics_url() == metrics_url
        assert any("already served" in r.getMessage() and str(other) in r.getMessage() for r in caplog.records)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{other}/metrics", timeout=2)
        _, before = scrape(metrics_url)
        r = svc.generate_text("Counted once, however often attached", user=USER)
        _, after = scrape(metrics_url)
        assert delta(before, after, "blossom_requests_total", model=r.model, kind="text", outcome="ok") == 1

    def test_taken_port_is_a_warning(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
        """A port in use logs a warning in words; the service starts and answers without /metrics."""
        monkeypatch.setattr(observability, "_server", None)  # as if no exporter had started yet
        monkeypatch.setattr(observability, "_server_port", None)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with caplog.at_level(logging.WARNING, logger="blossom_dash.observability"), \
                    make_service(tmp_path, metrics_port=port) as service:
                assert service.generate_text("Still works").text
            assert observability.metrics_url() is None
        warnings = [r for r in caplog.records
                    if r.levelno == logging.WARNING and r.name == "blossom_dash.observability"]
        assert len(warnings) == 1
        assert f"127.0.0.1:{port}" in warnings[0].getMessage() and "in use" in warnings[0].getMessage()


class TestModelLabel:
    def test_long_names_are_cut(self) -> None:
        """Names longer than 64 characters are cut to 64."""
        assert observability.model_label("m" * 100) == "m" * 64

    def test_not_a_model_name(self) -> None:
        """Spaces, key-shaped strings and empty names never become labels."""
        assert observability.model_label("tell me a secret") == "invalid"
        assert observability.model_label(API_KEY) == "invalid"
        assert observability.model_label("") == "unknown"
        assert observability.model_label("llama3.1:8b") == "llama3.1:8b"

    def test_distinct_values_are_capped(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Past 200 distinct models, new names share "other"; known ones keep theirs."""
        full = {f"model-{i}": f"model-{i}" for i in range(observability.MAX_MODEL_LABELS)}
        monkeypatch.setattr(observability, "_model_labels", full)
        assert observability.model_label("model-7") == "model-7"
        assert observability.model_label("brand-new-model") == "other"
        assert len(full) == observability.MAX_MODEL_LABELS


class TestReachedBackend:
    def test_rule(self) -> None:
        """ok, and errors with a status or a backend error type, are misses; local refusals are not."""
        base = Event(0.0, "r", "u", "s", "text", "m", "demo", "ok")
        assert observability.reached_backend(base)
        assert observability.reached_backend(base._replace(outcome="error", error_type="InvalidRequest",
                                                           status_code=404))
        assert observability.reached_backend(base._replace(outcome="error", error_type="BackendUnavailable"))
        assert not observability.reached_backend(base._replace(outcome="error", error_type="InvalidRequest"))
        assert not observability.reached_backend(base._replace(outcome="rate_limited", error_type="RateLimited",
                                                               status_code=429))
        assert not observability.reached_backend(base._replace(outcome="cache_hit"))


class TestJsonLogs:
    FIELDS = {"ts", "level", "request_id", "user", "kind", "model", "backend", "outcome", "latency_ms",
              "ttft_ms", "status_code", "error_type", "prompt_tokens", "completion_tokens", "cost"}

    def test_one_line_per_request(self, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
        """ok, cache hit, error and refusal: one JSON line each, right level and fields, no prompt or key."""
        with make_service(tmp_path, api_key=API_KEY, per_user_rpm=2) as service:
            read_stderr(capfd)
            ok = service.generate_text(PROMPTS[0], user=USER, api_key=SESSION_KEY)
            hit = service.generate_text(PROMPTS[0], user=USER)
            with pytest.raises(UpstreamError):
                service.generate_text(PROMPTS[1], model="fault-500", user=USER)
            with pytest.raises(RateLimited):
                service.generate_text(PROMPTS[2], user=USER)
            recorded = [e.request_id for e in reversed(service.metrics.recent(4))]
            err = read_stderr(capfd)
        lines = request_lines(err)
        assert [ln["request_id"] for ln in lines] == recorded
        assert recorded[:2] == [ok.request_id, hit.request_id]
        assert [(ln["outcome"], ln["level"]) for ln in lines] == [
            ("ok", "INFO"), ("cache_hit", "INFO"), ("error", "ERROR"), ("rate_limited", "WARNING")]
        for ln in lines:
            assert set(ln) == self.FIELDS
            assert ln["user"] == USER and ln["backend"] == "demo"
            assert ln["ts"].endswith("Z") and "T" in ln["ts"]
        first, _, fault, limited = lines
        assert first["model"] == ok.model and first["kind"] == "text"
        assert first["status_code"] == 200 and first["error_type"] is None
        assert first["prompt_tokens"] == ok.usage.prompt_tokens
        assert first["completion_tokens"] == ok.usage.completion_tokens
        assert first["latency_ms"] == pytest.approx(ok.latency_ms, abs=0.1)
        assert ok.cost is not None and Decimal(first["cost"]) == ok.cost  # exact, as a decimal string
        assert Decimal(lines[1]["cost"]) == ok.cost  # the cache hit: what it saved
        assert fault["cost"] is None and limited["cost"] is None
        assert fault["status_code"] == 500 and fault["error_type"] == "UpstreamError"
        assert limited["error_type"] == "RateLimited"
        for secret in (API_KEY, SESSION_KEY, *PROMPTS):
            assert secret not in err

    def test_prompt_logged_when_asked(self, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
        """With log_prompts=True each line carries the (store-truncated) prompt."""
        long_prompt = "Explain tides " + "in detail " * 40
        with make_service(tmp_path, log_prompts=True) as service:
            read_stderr(capfd)
            r = service.generate_text(long_prompt)
            err = read_stderr(capfd)
        (line,) = request_lines(err)
        assert line["request_id"] == r.request_id
        assert line["prompt"] == long_prompt[:service.settings.prompt_chars]

    def test_level_filters_lines(self, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
        """At log_level WARNING, served requests are not logged and errors are."""
        try:
            with make_service(tmp_path, log_level="WARNING") as service:
                read_stderr(capfd)
                service.generate_text("Quiet at WARNING")
                with pytest.raises(UpstreamError):
                    service.generate_text("Loud at WARNING", model="fault-500")
                err = read_stderr(capfd)
        finally:
            observability.request_logger("INFO")  # the level is process-wide: restore it
        assert [ln["outcome"] for ln in request_lines(err)] == ["error"]

    def test_blocked_stderr_never_stalls_a_request(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With stderr blocked, emitting returns at once; lines past the queue are dropped and counted."""
        release = threading.Event()

        class BlockedStderr:
            def write(self, text: str) -> int:
                release.wait(10)  # a pipe nobody reads
                return len(text)

            def flush(self) -> None:
                pass

        before = scrape_counter("blossom_log_lines_dropped_total")
        handler = observability._StderrHandler(max_lines=2)
        handler.setFormatter(observability.JsonFormatter())
        monkeypatch.setattr(sys, "stderr", BlockedStderr())
        record = logging.LogRecord("blossom_dash.requests", logging.INFO, __file__, 1, "line", None, None)
        t0 = time.monotonic()
        for _ in range(6):
            handler.handle(record)
        assert time.monotonic() - t0 < 0.5
        assert not handler.drain(0.05)
        # Two lines queued, and up to two already taken by the blocked writer: the rest are dropped.
        assert 2 <= handler.dropped <= 4
        assert scrape_counter("blossom_log_lines_dropped_total") - before == handler.dropped
        release.set()
        assert handler.drain(5.0)

    def test_logger_configured_once(self) -> None:
        """Configuring again keeps one handler and no propagation to the root logger."""
        logger = observability.request_logger("INFO")
        observability.request_logger("INFO")
        assert logger is logging.getLogger("blossom_dash.requests")
        assert len(logger.handlers) == 1 and not logger.propagate
