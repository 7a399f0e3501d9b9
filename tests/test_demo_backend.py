"""Tests for the offline demo backend, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import make_service
from PIL import Image

from blossom_dash import Settings
from blossom_dash.demo_backend import (
    FAULTS,
    IMAGE_MODELS,
    TEXT_MODELS,
    DemoServer,
    count_tokens,
)

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Explain caching in one line"}]


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a daemon thread, as the dashboard's service runs it."""
    ev = asyncio.new_event_loop()
    thread = threading.Thread(target=ev.run_forever, daemon=True)
    thread.start()
    yield ev
    ev.call_soon_threadsafe(ev.stop)
    thread.join(timeout=5)


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on the background loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)


def _serve(loop: asyncio.AbstractEventLoop, latency: bool) -> Iterator[str]:
    server = DemoServer(latency=latency, faults=True)
    base_url = run(loop, server.start())
    assert base_url == server.base_url
    yield base_url
    run(loop, server.stop())


@pytest.fixture(scope="module")
def base_url(loop: asyncio.AbstractEventLoop) -> Iterator[str]:
    """Base URL of a demo backend without simulated latency."""
    yield from _serve(loop, latency=False)


@pytest.fixture(scope="module")
def slow_url(loop: asyncio.AbstractEventLoop) -> Iterator[str]:
    """Base URL of a demo backend with simulated latency."""
    yield from _serve(loop, latency=True)


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    """One client for the fast server (building a client costs ~50 ms of TLS setup)."""
    with httpx.Client(base_url=base_url, timeout=5) as c:
        yield c


@pytest.fixture
def client(http: httpx.Client) -> Iterator[httpx.Client]:
    """The shared client; leaves no queued fault plans behind."""
    yield http
    http.delete("/_demo/faults")


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    """POST a chat completion with defaults for model and messages."""
    body.setdefault("model", "demo-swift")
    body.setdefault("messages", USER)
    headers = body.pop("headers", None)
    return client.post(CHAT, json=body, headers=headers)


def content(response: httpx.Response) -> str:
    """The assistant text of a non-stream chat response."""
    return response.json()["choices"][0]["message"]["content"]


def sse_chunks(raw: str) -> list[Any]:
    """Parse SSE text into JSON chunks, checking the frame format; [DONE] stays a str."""
    assert raw.endswith("\n\n")
    frames = raw[:-2].split("\n\n")
    assert all(f.startswith("data: ") for f in frames)
    return [f[6:] if f[6:] == "[DONE]" else json.loads(f[6:]) for f in frames]


def stream_chat(client: httpx.Client, **body: Any) -> list[Any]:
    """Stream a chat completion and return the parsed frames."""
    response = chat(client, stream=True, **body)
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_chunks(response.text)


def png(data: bytes) -> Image.Image:
    """Open and fully decode PNG bytes."""
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG"
    return img


class TestChat:
    def test_json_shape(self, client: httpx.Client) -> None:
        """A non-stream answer has OpenAI's chat.completion shape."""
        data = chat(client).json()
        assert data["id"].startswith("chatcmpl-demo-")
        assert data["object"] == "chat.completion"
        assert isinstance(data["created"], int)
        assert data["model"] == "demo-swift"
        (choice,) = data["choices"]
        assert choice["index"] == 0
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] == "stop"
        assert "Demo backend" in choice["message"]["content"]
        assert "demo-swift" in choice["message"]["content"]

    def test_usage_follows_the_token_rule(self, client: httpx.Client) -> None:
        """usage counts only text parts and the returned text, with one rule."""
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (0, 0, 255)).save(buf, "PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        messages = [
            {"role": "system", "content": "Be brief, please."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": url}},
            ]},
        ]
        data = chat(client, messages=messages, model="demo-vision").json()
        usage = data["usage"]
        assert usage["prompt_tokens"] == count_tokens("Be brief, please.") + count_tokens(
            "What is in this picture?"
        )
        assert usage["completion_tokens"] == count_tokens(data["choices"][0]["message"]["content"])
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert count_tokens("Hi, there!") == 4

    def test_images_are_for_vision_models_and_must_be_images(self, client: httpx.Client) -> None:
        """A model without image input, a URL it cannot fetch offline: 400s in OpenAI's shape."""
        parts = [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]
        blind = chat(client, messages=[{"role": "user", "content": parts}])
        assert blind.status_code == 400 and "does not accept image input" in blind.json()["error"]["message"]
        offline = chat(client, messages=[{"role": "user", "content": parts}], model="demo-vision")
        assert offline.status_code == 400 and offline.json()["error"]["type"] == "invalid_request_error"

    def test_deterministic(self, client: httpx.Client) -> None:
        """Same request, same text; another seed or model, other text."""
        first = content(chat(client, seed=1))
        assert content(chat(client, seed=1)) == first
        assert content(chat(client, seed=2)) != first
        assert content(chat(client, seed=1, model="demo-balanced")) != first

    def test_echoes_prompt_and_system(self, client: httpx.Client) -> None:
        """The answer echoes the last user prompt and mentions the system prompt."""
        plain = content(chat(client))
        assert "Explain caching in one line" in plain
        system = {"role": "system", "content": "Talk like a pirate"}
        steered = content(chat(client, messages=[system, *USER]))
        assert "Talk like a pirate" in steered
        assert "Talk like a pirate" not in plain

    def test_max_tokens_cuts(self, client: httpx.Client) -> None:
        """A longer natural answer is cut to max_tokens with finish_reason length."""
        full = chat(client, max_tokens=4096).json()
        cut = chat(client, max_tokens=10).json()
        assert full["choices"][0]["finish_reason"] == "stop"
        assert cut["choices"][0]["finish_reason"] == "length"
        assert cut["usage"]["completion_tokens"] == 10
        assert full["choices"][0]["message"]["content"].startswith(
            cut["choices"][0]["message"]["content"]
        )

    def test_default_max_tokens(self, client: httpx.Client) -> None:
        """Without max_tokens the budget is 256 tokens."""
        data = chat(client, model="demo-deep").json()
        assert data["usage"]["completion_tokens"] == 256
        assert data["choices"][0]["finish_reason"] == "length"

    def test_unknown_model(self, client: httpx.Client) -> None:
        """An unknown model is a 404 that lists the demo models."""
        response = chat(client, model="gpt-x")
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["code"] == "MODEL_NOT_FOUND"
        assert error["message"].startswith("Model 'gpt-x' is not available on the demo backend.")
        assert "demo-swift, demo-balanced" in error["message"]

    @pytest.mark.parametrize(
        "body", [b"{not json", b"[]", b'{"model": "demo-swift", "messages": []}']
    )
    def test_bad_request(self, client: httpx.Client, body: bytes) -> None:
        """Bad JSON or empty messages are a 400 BAD_REQUEST."""
        response = client.post(CHAT, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "BAD_REQUEST"


class TestStream:
    def test_frames(self, client: httpx.Client) -> None:
        """Role chunk, content deltas, final chunk with usage, then [DONE]."""
        frames = stream_chat(client, max_tokens=30)
        assert frames[-1] == "[DONE]"
        first, *middle, final = frames[:-1]
        assert first["choices"][0]["delta"] == {"role": "assistant"}
        assert len(middle) >= 5
        for chunk in middle:
            assert chunk["object"] == "chat.completion.chunk"
            assert chunk["choices"][0]["finish_reason"] is None
            assert set(chunk["choices"][0]["delta"]) == {"content"}
        assert final["choices"][0]["delta"] == {}
        assert final["choices"][0]["finish_reason"] == "length"
        assert final["usage"]["completion_tokens"] == 30

    def test_joined_deltas_equal_json_text(self, client: httpx.Client) -> None:
        """The stream carries exactly the non-stream text and usage."""
        body = {"model": "demo-coder", "seed": 7, "max_tokens": 2000}
        frames = stream_chat(client, **body)
        joined = "".join(f["choices"][0]["delta"].get("content", "") for f in frames[:-1])
        whole = chat(client, **body)
        assert joined == content(whole)
        assert frames[-2]["usage"] == whole.json()["usage"]

    def test_incremental_with_latency(self, slow_url: str) -> None:
        """With latency on, the first delta arrives well before the stream ends."""
        arrivals: list[float] = []
        body = {"model": "demo-swift", "messages": USER, "max_tokens": 48, "stream": True}
        with httpx.Client(base_url=slow_url, timeout=10) as c:
            start = time.perf_counter()
            with c.stream("POST", CHAT, json=body) as response:
                for line in response.iter_lines():
                    if '"content"' in line:
                        arrivals.append(time.perf_counter())
            end = time.perf_counter()
        assert len(arrivals) > 5
        # 48 tokens at 120 tokens/s span about 0.4 s after the first token.
        assert arrivals[0] - start >= TEXT_MODELS["demo-swift"].ttft_ms / 1000
        assert end - arrivals[0] > 0.2
        assert arrivals == sorted(arrivals)

    def test_latency_non_stream(self, slow_url: str) -> None:
        """With latency on, an answer takes at least the model's time to first token."""
        with httpx.Client(base_url=slow_url, timeout=10) as c:
            start = time.perf_counter()
            response = c.post(CHAT, json={"model": "demo-swift", "messages": USER, "max_tokens": 5})
        assert response.status_code == 200
        assert time.perf_counter() - start >= TEXT_MODELS["demo-swift"].ttft_ms / 1000


class TestModelsAndHealth:
    def test_text_models(self, client: httpx.Client) -> None:
        """/v1/models is bare, as Pollinations' may be: id, object, created only."""
        data = client.get("/v1/models").json()
        assert data["object"] == "list"
        assert [m["id"] for m in data["data"]] == list(TEXT_MODELS)
        assert len(data["data"]) >= 4
        for m in data["data"]:
            assert m["id"].startswith("demo-")
            assert set(m) == {"id", "object", "created"} and m["object"] == "model"

    @pytest.mark.parametrize(("path", "names"), [
        ("/text/models", list(TEXT_MODELS)), ("/image/models", list(IMAGE_MODELS)),
        ("/audio/models", [n for n, m in TEXT_MODELS.items() if "audio" in m.output_modalities])])
    def test_catalogs_in_pollinations_shape(self, client: httpx.Client, path: str, names: list[str]) -> None:
        """/text, /image and /audio/models: bare lists of entries with labelled, made-up prices."""
        data = client.get(path).json()
        assert [m["name"] for m in data] == names and names
        for m in data:
            assert {"name", "aliases", "description", "input_modalities", "output_modalities", "paid_only",
                    "health", "pricing"} <= set(m)
            assert "Demo prices" in m["description"] and "demo" in m["description"]
            assert m["pricing"]["currency"] == "pollen"
            prices = {k: v for k, v in m["pricing"].items() if k != "currency"}
            assert prices and all(isinstance(v, str) and Decimal(v) > 0 for v in prices.values())
        if path == "/image/models":
            assert all(m["output_modalities"] == ["image"] for m in data)
        if path == "/audio/models":
            assert all("audio" in m["output_modalities"] and m["voices"] for m in data)

    def test_account(self, client: httpx.Client) -> None:
        """/account/key and /account/balance answer for the request's key; no key is 401."""
        assert client.get("/account/key").status_code == 401
        assert client.get("/account/balance").status_code == 401
        sk = client.get("/account/key", headers={"Authorization": "Bearer sk_demo"}).json()
        assert sk == {"valid": True, "type": "secret", "name": "demo key", "pollenBudget": None,
                      "rateLimitEnabled": False}
        pk = client.get("/account/key", headers={"Authorization": "Bearer pk_demo"}).json()
        assert pk["type"] == "publishable" and pk["pollenBudget"] == 10.0
        assert client.get("/account/balance", headers={"Authorization": "Bearer sk_demo"}).json() == {
            "balance": 1000.0}

    def test_profiles_differ(self) -> None:
        """Text models have clearly different latency profiles."""
        assert len({m.ttft_ms for m in TEXT_MODELS.values()}) == len(TEXT_MODELS)
        assert len({m.tokens_per_s for m in TEXT_MODELS.values()}) == len(TEXT_MODELS)

    def test_health(self, client: httpx.Client) -> None:
        """/health says it is the demo backend."""
        assert client.get("/health").json() == {"status": "ok", "backend": "demo"}


class TestImage:
    def test_png(self, client: httpx.Client) -> None:
        """An image is a real PNG of the requested size."""
        response = client.get("/image/a red fox", params={"width": 320, "height": 200})
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert png(response.content).size == (320, 200)

    def test_clamped(self, client: httpx.Client) -> None:
        """Sides are clamped to [64, 1536]."""
        response = client.get("/image/fox", params={"width": 5000, "height": 3})
        assert png(response.content).size == (1536, 64)

    def test_deterministic(self, client: httpx.Client) -> None:
        """Same request, same bytes; another seed or model, other bytes."""
        params = {"model": "demo-mosaic", "width": 128, "height": 128, "seed": 3}
        first = client.get("/image/fox", params=params).content
        assert client.get("/image/fox", params=params).content == first
        assert client.get("/image/fox", params={**params, "seed": 4}).content != first
        assert client.get("/image/fox", params={**params, "model": "demo-sketch"}).content != first

    def test_prompt_with_slash(self, client: httpx.Client) -> None:
        """A percent-encoded '/' in the prompt (as the SDK sends it) works."""
        response = client.get("/image/cats%2Fdogs%20%3F", params={"width": 64, "height": 64})
        assert response.status_code == 200
        png(response.content)

    def test_unknown_model(self, client: httpx.Client) -> None:
        """An unknown image model is a 404 listing the demo image models."""
        response = client.get("/image/fox", params={"model": "flux"})
        assert response.status_code == 404
        assert "demo-sketch" in response.json()["error"]["message"]


def _by_header(client: httpx.Client, fault: str) -> tuple[dict[str, str], str | None]:
    return {"X-Demo-Fault": fault}, None


def _by_model(client: httpx.Client, fault: str) -> tuple[dict[str, str], str | None]:
    return {}, f"fault-{fault}"


def _by_plan(client: httpx.Client, fault: str) -> tuple[dict[str, str], str | None]:
    assert client.post("/_demo/faults", json={"fault": fault, "count": 1}).status_code == 200
    return {}, None


Trigger = Callable[[httpx.Client, str], tuple[dict[str, str], "str | None"]]
TRIGGERS = pytest.mark.parametrize("trigger", [_by_header, _by_model, _by_plan],
                                   ids=["header", "model", "plan"])


def faulty_chat(client: httpx.Client, trigger: Trigger, fault: str, **body: Any) -> httpx.Response:
    """Send a chat request that the trigger turns into ``fault``."""
    headers, model = trigger(client, fault)
    return chat(client, headers=headers, model=model or "demo-swift", **body)


def faulty_image(client: httpx.Client, trigger: Trigger, fault: str) -> httpx.Response:
    """Send an image request that the trigger turns into ``fault``."""
    headers, model = trigger(client, fault)
    params = {"model": model or "demo-sketch", "width": 64, "height": 64}
    return client.get("/image/fox", params=params, headers=headers)


@TRIGGERS
class TestFaults:
    def test_429(self, client: httpx.Client, trigger: Trigger) -> None:
        """429 has Retry-After and Pollinations' body."""
        for response in (faulty_chat(client, trigger, "429"), faulty_image(client, trigger, "429")):
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "7"
            assert response.json() == {
                "error": "Rate limit exceeded",
                "message": "Too many requests. Please wait 7 seconds.",
                "retryAfterSeconds": 7,
            }

    def test_402(self, client: httpx.Client, trigger: Trigger) -> None:
        """402 uses the gateway's status/success/error shape."""
        data = faulty_chat(client, trigger, "402").json()
        assert data["status"] == 402
        assert data["success"] is False
        assert data["error"]["code"] == "PAYMENT_REQUIRED"

    def test_503(self, client: httpx.Client, trigger: Trigger) -> None:
        """503 is an upstream error with Retry-After: 2."""
        response = faulty_chat(client, trigger, "503")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
        assert response.json()["error"]["code"] == "UPSTREAM_ERROR"

    def test_malformed(self, client: httpx.Client, trigger: Trigger) -> None:
        """Malformed chat JSON does not parse; a malformed PNG does not decode."""
        response = faulty_chat(client, trigger, "malformed")
        assert response.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            response.json()
        image = faulty_image(client, trigger, "malformed")
        assert image.status_code == 200
        with pytest.raises(OSError):
            png(image.content)

    def test_empty(self, client: httpx.Client, trigger: Trigger) -> None:
        """Empty content in JSON; no content deltas in a stream; no image bytes."""
        data = faulty_chat(client, trigger, "empty").json()
        assert data["choices"][0]["message"]["content"] == ""
        assert data["usage"]["completion_tokens"] == 0
        headers, model = trigger(client, "empty")
        response = chat(client, headers=headers, model=model or "demo-swift", stream=True)
        frames = sse_chunks(response.text)
        assert frames[-1] == "[DONE]"
        assert [f["choices"][0]["delta"] for f in frames[:-1]] == [{"role": "assistant"}, {}]
        image = faulty_image(client, trigger, "empty")
        assert image.status_code == 200
        assert image.content == b""

    def test_not_image(self, client: httpx.Client, trigger: Trigger) -> None:
        """A 200 image/png whose body Pillow cannot open."""
        response = faulty_image(client, trigger, "not-image")
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        with pytest.raises(OSError):
            png(response.content)

    def test_timeout(self, client: httpx.Client, trigger: Trigger) -> None:
        """The server stalls until the client's read timeout fires."""
        headers, model = trigger(client, "timeout")
        body = {"model": model or "demo-swift", "messages": USER}
        with pytest.raises(httpx.ReadTimeout):
            client.post(CHAT, json=body, headers=headers, timeout=httpx.Timeout(5, read=0.5))
        assert chat(client).status_code == 200

    def test_disconnect(self, client: httpx.Client, trigger: Trigger) -> None:
        """A stream drops after a few deltas; a plain request gets no response."""
        headers, model = trigger(client, "disconnect")
        body = {"model": model or "demo-swift", "messages": USER, "stream": True}
        seen: list[str] = []
        with (
            pytest.raises(httpx.RemoteProtocolError),
            client.stream("POST", CHAT, json=body, headers=headers) as response,
        ):
            seen.extend(response.iter_lines())
        assert any('"content"' in line for line in seen)
        assert "data: [DONE]" not in seen
        with pytest.raises(httpx.RemoteProtocolError):
            faulty_chat(client, trigger, "disconnect")


class TestFaultControls:
    def test_knob_overrides(self, client: httpx.Client) -> None:
        """Retry-After and the timeout delay can be set per request."""
        response = chat(client, headers={"X-Demo-Fault": "429", "X-Demo-Retry-After": "3"})
        assert response.headers["Retry-After"] == "3"
        assert response.json()["retryAfterSeconds"] == 3
        delayed = chat(client, headers={"X-Demo-Fault": "timeout", "X-Demo-Delay": "0.05"})
        assert "Demo backend" in content(delayed)

    def test_plan_queue(self, client: httpx.Client) -> None:
        """A plan fails exactly the next N requests on its routes, then clears."""
        plan = {"fault": "429", "count": 2, "routes": ["image"], "retry_after": 11}
        client.post("/_demo/faults", json=plan)
        queue = client.get("/_demo/faults").json()["queue"]
        assert queue[0]["fault"] == "429" and queue[0]["remaining"] == 2
        assert chat(client).status_code == 200  # chat is not on the plan's routes
        first = client.get("/image/fox", params={"width": 64, "height": 64})
        assert first.status_code == 429 and first.headers["Retry-After"] == "11"
        assert client.get("/image/fox", params={"width": 64}).status_code == 429
        assert client.get("/image/fox", params={"width": 64}).status_code == 200
        client.post("/_demo/faults", json={"fault": "500", "count": 5})
        assert client.delete("/_demo/faults").json()["cleared"] == 1
        assert chat(client).status_code == 200

    @pytest.mark.parametrize(
        "plan",
        [{"fault": "teapot"}, {"fault": "429", "count": 0}, {"fault": "429", "routes": ["x"]}],
    )
    def test_bad_plan(self, client: httpx.Client, plan: dict[str, Any]) -> None:
        """An unknown fault or bad field is a 400 with a clear message."""
        response = client.post("/_demo/faults", json=plan)
        assert response.status_code == 400
        assert response.json()["error"]["message"]
        assert client.get("/_demo/faults").json()["queue"] == []

    def test_unknown_fault_header(self, client: httpx.Client) -> None:
        """An unknown X-Demo-Fault is a 400 naming the known faults."""
        response = chat(client, headers={"X-Demo-Fault": "teapot"})
        assert response.status_code == 400
        assert "disconnect" in response.json()["error"]["message"]

    def test_all_faults_accepted(self, client: httpx.Client) -> None:
        """Every name in FAULTS can be queued."""
        for fault in FAULTS:
            assert client.post("/_demo/faults", json={"fault": fault}).status_code == 200
        assert len(client.get("/_demo/faults").json()["queue"]) == len(FAULTS)


def test_faults_off_by_default(loop: asyncio.AbstractEventLoop) -> None:
    """Without faults=True there is no fault injection at all: no queue route, the header is
    ignored and fault-500 is just a model the demo does not serve (404)."""
    server = DemoServer(latency=False)
    url = run(loop, server.start())
    try:
        with httpx.Client(base_url=url, timeout=5) as c:
            assert c.get("/_demo/faults").status_code == 404
            assert c.post("/_demo/faults", json={"fault": "500", "count": 1}).status_code == 404
            refused = c.post(CHAT, json={"model": "fault-500", "messages": USER})
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "MODEL_NOT_FOUND"
            plain = c.post(CHAT, json={"model": "demo-swift", "messages": USER}, headers={"X-Demo-Fault": "500"})
            assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"]
            image = c.get("/image/a%20cat", params={"model": "fault-500", "width": 64, "height": 64})
            assert image.status_code == 404
            assert c.get("/_demo/stats").json()["faults"] == 0
    finally:
        run(loop, server.stop())


def test_faults_on_when_asked(base_url: str) -> None:
    """The same requests on a server started with faults=True do fail (the check above can fail)."""
    with httpx.Client(base_url=base_url, timeout=5) as c:
        assert c.post(CHAT, json={"model": "fault-500", "messages": USER}).status_code == 500
        assert c.get("/_demo/faults").status_code == 200


def test_the_embedded_demo_has_no_faults_unless_set(tmp_path: Path) -> None:
    """Settings.demo_faults (BLOSSOM_DASH_DEMO_FAULTS) defaults to off and reaches the embedded demo."""
    assert Settings.model_fields["demo_faults"].default is False
    with make_service(tmp_path, demo_faults=False) as svc:
        url = svc.backend.base_url
        assert httpx.get(f"{url}/_demo/faults", timeout=5).status_code == 404
        assert httpx.post(f"{url}{CHAT}", json={"model": "fault-500", "messages": USER}, timeout=5).status_code == 404
    with make_service(tmp_path / "on") as svc:
        assert httpx.get(f"{svc.backend.base_url}/_demo/faults", timeout=5).status_code == 200

def test_stats(client: httpx.Client) -> None:
    """/_demo/stats counts requests per route kind until reset."""
    assert set(client.post("/_demo/stats/reset").json().values()) == {0}
    chat(client)
    chat(client, stream=True)
    chat(client, stream=True)
    client.get("/image/fox", params={"width": 64, "height": 64})
    client.get("/v1/models")
    client.get("/image/models")
    chat(client, headers={"X-Demo-Fault": "500"})
    stats = client.get("/_demo/stats").json()
    assert stats == {"chat": 2, "chat_stream": 2, "image": 1, "models": 2, "faults": 1}


def test_through_the_sdk(loop: asyncio.AbstractEventLoop, base_url: str) -> None:
    """The real blossom-ai SDK, pointed at the demo backend, gets the demo text."""
    from blossom_ai import BlossomClient
    from blossom_ai.core.config import SessionConfig
    from blossom_ai.utils.http_client import HttpxClient

    real = "https://gen.pollinations.ai"

    class Quiet:
        def debug(self, message: str, **kwargs: Any) -> None: ...
        def info(self, message: str, **kwargs: Any) -> None: ...
        def warning(self, message: str, **kwargs: Any) -> None: ...
        def error(self, message: str, **kwargs: Any) -> None: ...

    class Redirected(HttpxClient):
        async def get(self, url: str, **kwargs: Any) -> httpx.Response:
            return await super().get(url.replace(real, base_url), **kwargs)

        async def post(self, url: str, **kwargs: Any) -> httpx.Response:
            return await super().post(url.replace(real, base_url), **kwargs)

        async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
            return await super().request(method, url.replace(real, base_url), **kwargs)

        def stream(self, method: str, url: str, **kwargs: Any) -> Any:
            return super().stream(method, url.replace(real, base_url), **kwargs)

    async def go() -> tuple[str, bytes]:
        config = SessionConfig(cache_enabled=False, max_retries=1)
        client = BlossomClient(
            config=config, http_client=Redirected(config, logger=Quiet()), logger=Quiet()
        )
        try:
            text = await client.text.chat(
                [{"role": "user", "content": "hello"}], model="demo-swift"
            )
            image = await client.image.generate(
                "a/b fox", model="demo-gradient", width=64, height=64
            )
            return text, image
        finally:
            await client.close()

    text, image = run(loop, go())
    assert text.startswith("**Demo backend: synthetic answer from `demo-swift`**")
    assert png(image).size == (64, 64)


def speech(client: httpx.Client, **audio: Any) -> httpx.Response:
    """POST a chat completion that asks demo-voice for audio output."""
    body = {"model": audio.pop("model", "demo-voice"), "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "wav", **audio},
            "messages": [{"role": "user", "content": audio.pop("text", "Read this aloud")}]}
    body["audio"].pop("text", None)
    return client.post(CHAT, json=body)


class TestSpeech:
    def test_answer_shape_and_wav(self, client: httpx.Client) -> None:
        """Audio output follows OpenAI's shape: base64 WAV in message.audio, content null."""
        import base64
        import wave

        data = speech(client).json()
        message = data["choices"][0]["message"]
        assert message["content"] is None
        audio = message["audio"]
        assert audio["transcript"] == "Read this aloud" and audio["format"] == "wav"
        with wave.open(io.BytesIO(base64.b64decode(audio["data"]))) as w:
            assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (1, 16_000, 2)
            assert 1.0 <= w.getnframes() / w.getframerate() <= 3.0
        assert data["usage"]["completion_tokens"] == count_tokens("Read this aloud")

    def test_deterministic_in_text_and_voice(self, client: httpx.Client) -> None:
        """Same text and voice, same clip; another voice, another clip."""
        def clip(**kw: Any) -> str:
            return speech(client, **kw).json()["choices"][0]["message"]["audio"]["data"]

        assert clip(voice="onyx") == clip(voice="onyx")
        assert clip(voice="onyx") != clip(voice="shimmer")

    def test_mp3_request_gets_wav_and_says_so(self, client: httpx.Client) -> None:
        """The demo cannot encode MP3: it answers WAV and names both formats."""
        audio = speech(client, format="mp3").json()["choices"][0]["message"]["audio"]
        assert (audio["format"], audio["requested_format"]) == ("wav", "mp3")

    @pytest.mark.parametrize(("audio", "words"), [
        ({"voice": "nova"}, "Unknown voice"),
        ({"format": "ogg"}, "Unknown audio format"),
        ({"model": "demo-swift"}, "cannot produce audio"),
        ({"text": "   "}, "no text to speak"),
    ])
    def test_bad_requests(self, client: httpx.Client, audio: dict[str, Any], words: str) -> None:
        """Unknown voice or format, a text-only model, or no text: a 400 that says why."""
        response = speech(client, **audio)
        assert response.status_code == 400
        assert words in response.json()["error"]["message"]

    def test_stream_is_refused(self, client: httpx.Client) -> None:
        """Audio output is not streamed by the demo voice."""
        body = {"model": "demo-voice", "stream": True, "modalities": ["text", "audio"],
                "audio": {"voice": "alloy", "format": "wav"}, "messages": USER}
        assert client.post(CHAT, json=body).status_code == 400

    def test_voice_model_is_listed_with_its_modalities(self, client: httpx.Client) -> None:
        """/text/models marks demo-voice as speaking (output_modalities, voices); others are text only."""
        models = {m["name"]: m for m in client.get("/text/models").json()}
        voice = models["demo-voice"]
        assert "audio" in voice["output_modalities"] and "alloy" in voice["voices"]
        assert "synthetic" in voice["description"].lower()
        assert models["demo-swift"]["output_modalities"] == ["text"]

    def test_voice_model_still_answers_text(self, client: httpx.Client) -> None:
        """Without audio output demo-voice answers text, as openai-audio does."""
        assert "demo-voice" in content(chat(client, model="demo-voice"))

    def test_counted_as_chat(self, client: httpx.Client) -> None:
        """A speech request counts once under "chat" in /_demo/stats (it is a chat completion)."""
        before = client.get("/_demo/stats").json()
        speech(client, text="count me")
        after = client.get("/_demo/stats").json()
        assert {k: after[k] - before[k] for k in after} == {**dict.fromkeys(after, 0), "chat": 1}

    def test_faults_apply(self, client: httpx.Client) -> None:
        """A queued fault hits a speech request like any chat request."""
        client.post("/_demo/faults", json={"fault": "503", "routes": ["chat"]})
        assert speech(client).status_code == 503
        client.post("/_demo/faults", json={"fault": "not-image", "routes": ["chat"]})
        audio = speech(client).json()["choices"][0]["message"]["audio"]
        assert not audio["data"].startswith("UklGR")  # base64 of "RIFF": not a WAV
