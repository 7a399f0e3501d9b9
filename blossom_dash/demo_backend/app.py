"""The demo backend's aiohttp app and a small server wrapper for background threads."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .audio import ANSWER_FORMAT, parse_speech, synthesise_wav
from .catalog import (
    AUDIO_MODELS_BODY,
    IMAGE_MODELS_BODY,
    TEXT_MODELS_BODY,
    V1_MODELS_BODY,
    account_balance,
    account_key,
)
from .content import (
    DEFAULT_MAX_TOKENS,
    IMAGE_MODELS,
    MAX_TOKENS_CAP,
    TEXT_MODELS,
    Answer,
    _message_text,
    count_tokens,
    make_answer,
)
from .faults import Fault, FaultQueue, error_response, resolve_fault
from .images import DEFAULT_SIDE_PX, clamp_side, render_png
from .vision import carries_images, describe_all, image_parts

STAT_KINDS: tuple[str, ...] = ("chat", "chat_stream", "image", "models", "faults")
DEFAULT_TEXT_MODEL = next(iter(TEXT_MODELS))
DEFAULT_IMAGE_MODEL = next(iter(IMAGE_MODELS))
DISCONNECT_AFTER_DELTAS = 3
_DONE = b"data: [DONE]\n\n"
_MALFORMED_JSON = b'{"choices": ['
# What a gateway error page looks like when it claims to be an image.
_NOT_IMAGE = b'{"error": "Bad Gateway", "message": "demo backend: injected not-image fault"}'
@dataclass
class DemoState:
    """Per-app mutable state, touched only from the server's event loop.

    Attributes:
        latency: Whether to simulate model latency (``False`` for benchmarks).
        faults_enabled: Whether fault injection exists at all (``create_app(faults=...)``).
        faults: Queued fault plans.
        stats: Requests seen per kind (``STAT_KINDS``) since start or last reset.
        last_chat: The last chat request's body as received (kept only with faults
            enabled, the test mode: ``GET /_demo/last-chat`` shows it).
    """

    latency: bool
    faults_enabled: bool = False
    faults: FaultQueue = field(default_factory=FaultQueue)
    stats: Counter[str] = field(default_factory=Counter)
    last_chat: dict[str, Any] | None = None


STATE = web.AppKey("demo_state", DemoState)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _invalid_image(message: str) -> web.Response:
    """A 400 in OpenAI's error shape for an image the request carried."""
    return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                        "param": "messages", "code": "invalid_image"}}, status=400)


def _drop_connection(request: web.Request) -> web.Response:
    # The client sees a dropped connection; aiohttp then quietly skips the response.
    if request.transport is not None:
        request.transport.close()
    return web.Response()


def _gate(
    request: web.Request, model: str, route: str, known: dict[str, Any]
) -> tuple[Fault | None, web.Response | None]:
    """Resolve the request's fault; return an early response for errors and status faults.

    With faults off, ``X-Demo-Fault`` is ignored and ``fault-*`` is just an unknown model.
    """
    state = request.app[STATE]
    try:
        fault = resolve_fault(request.headers, model, route, state.faults) if state.faults_enabled else None
    except ValueError as exc:
        return None, _error(400, "BAD_REQUEST", str(exc))
    if fault is not None:
        state.stats["faults"] += 1
        return fault, error_response(fault)
    if model not in known:
        message = (f"Model '{model}' is not available on the demo backend. "
                   f"Available: {', '.join(known)}")
        return None, _error(404, "MODEL_NOT_FOUND", message)
    return None, None


def _parse_chat(body: dict[str, Any]) -> tuple[list[dict[str, Any]], int, int | None]:
    """Return ``(messages, max_tokens, seed)``; raise ValueError for the client."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    if not all(isinstance(m, dict) for m in messages):
        raise ValueError("every message must be an object with 'role' and 'content'")
    max_tokens = body.get("max_tokens")
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError("'max_tokens' must be a positive integer")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError("'seed' must be an integer")
    return messages, min(max_tokens, MAX_TOKENS_CAP), seed


def _usage(answer: Answer) -> dict[str, int]:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        state.stats["chat"] += 1
        return _error(400, "BAD_REQUEST", "Request body must be a JSON object")
    if state.faults_enabled:
        state.last_chat = body
    stream = body.get("stream") is True
    modalities = body.get("modalities")
    speech = "audio" in body or (isinstance(modalities, list) and "audio" in modalities)
    # Speech counts as "chat": it is a chat completion on the chat route, as upstream.
    state.stats["chat_stream" if stream and not speech else "chat"] += 1
    model = str(body.get("model") or DEFAULT_TEXT_MODEL)
    fault, early = _gate(request, model, "chat", TEXT_MODELS)
    if early is not None:
        return early
    if speech:
        return await _speech(request, body, model, fault)
    # fault-* pseudo-models borrow the default model's text and latency profile.
    profile = TEXT_MODELS.get(model) or TEXT_MODELS[DEFAULT_TEXT_MODEL]
    try:
        messages, max_tokens, seed = _parse_chat(body)
    except ValueError as exc:
        return _error(400, "BAD_REQUEST", str(exc))
    if carries_images(messages) and "image" not in profile.input_modalities:
        seeing = ", ".join(m.name for m in TEXT_MODELS.values() if "image" in m.input_modalities)
        return _invalid_image(f"Model '{model}' does not accept image input. Vision models: {seeing}")
    try:
        images, earlier = image_parts(messages)
        # Off the loop thread: decoding a 5 MB photo must not stall other requests' pacing.
        preface = await asyncio.get_running_loop().run_in_executor(None, describe_all, images, earlier) \
            if images else ""
    except ValueError as exc:
        return _invalid_image(str(exc))
    try:
        answer = make_answer(profile.name, messages, seed, max_tokens, preface)
    except ValueError as exc:
        return _error(400, "BAD_REQUEST", str(exc))
    name = fault.name if fault else None
    if fault is not None and name == "timeout":
        # The runner cancels this sleep (quietly) when the client hangs up.
        await asyncio.sleep(fault.delay_s)
    if name == "empty":
        answer = Answer("", "stop", answer.prompt_tokens, 0, ())
    if stream:
        return await _stream(request, model, answer, name)
    if name in ("malformed", "not-image"):
        return web.Response(body=_MALFORMED_JSON, content_type="application/json")
    if name == "disconnect":
        return _drop_connection(request)
    if state.latency:
        generation_s = answer.completion_tokens / profile.tokens_per_s
        await asyncio.sleep(profile.ttft_ms / 1000 + generation_s)
    choice = {"index": 0, "message": {"role": "assistant", "content": answer.text},
              "finish_reason": answer.finish_reason}
    return web.json_response({
        "id": f"chatcmpl-demo-{secrets.token_hex(12)}", "object": "chat.completion",
        "created": int(time.time()), "model": model, "choices": [choice],
        "usage": _usage(answer),
    })


async def _speech(request: web.Request, body: dict[str, Any], model: str,
                  fault: Fault | None) -> web.Response:
    """Answer a chat request with ``modalities: ["text", "audio"]`` the way OpenAI does.

    The clip is base64 in ``choices[0].message.audio.data`` with its ``transcript``;
    ``content`` is null. The demo always answers WAV and names the format it sent.
    """
    profile = TEXT_MODELS.get(model)
    if profile is not None and "audio" not in profile.output_modalities:
        speakers = ", ".join(m.name for m in TEXT_MODELS.values() if "audio" in m.output_modalities)
        return _error(400, "BAD_REQUEST", f"Model '{model}' cannot produce audio output. Audio models: {speakers}")
    if body.get("stream") is True:
        return _error(400, "BAD_REQUEST", "The demo voice model answers audio only with 'stream': false")
    try:
        messages, _max_tokens, _seed = _parse_chat(body)
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        text, voice, requested = parse_speech(body, _message_text(last_user.get("content")))
        prompt_tokens = sum(count_tokens(_message_text(m.get("content"))) for m in messages)
    except ValueError as exc:
        return _error(400, "BAD_REQUEST", str(exc))
    name = fault.name if fault else None
    if fault is not None and name == "timeout":
        await asyncio.sleep(fault.delay_s)
    if name == "disconnect":
        return _drop_connection(request)
    if name == "malformed":
        return web.Response(body=_MALFORMED_JSON, content_type="application/json")
    wav = await asyncio.get_running_loop().run_in_executor(None, synthesise_wav, text, voice)
    data = b"" if name == "empty" else _NOT_IMAGE if name == "not-image" else wav
    if request.app[STATE].latency:
        ttft_ms = (profile or TEXT_MODELS[DEFAULT_TEXT_MODEL]).ttft_ms
        await asyncio.sleep(ttft_ms / 1000 + 0.02 * len(text.split()))  # plus 20 ms a word
    spoken_tokens = count_tokens(text)
    audio = {"id": f"audio_demo_{secrets.token_hex(8)}", "data": base64.b64encode(data).decode("ascii"),
             "expires_at": int(time.time()) + 3600, "transcript": text, "format": ANSWER_FORMAT,
             "requested_format": requested}
    choice = {"index": 0, "message": {"role": "assistant", "content": None, "audio": audio},
              "finish_reason": "stop"}
    return web.json_response({
        "id": f"chatcmpl-demo-{secrets.token_hex(12)}", "object": "chat.completion",
        "created": int(time.time()), "model": model, "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": spoken_tokens,
                  "total_tokens": prompt_tokens + spoken_tokens,
                  "completion_tokens_details": {"audio_tokens": spoken_tokens}},
    })


async def _stream(
    request: web.Request, model: str, answer: Answer, fault: str | None
) -> web.StreamResponse:
    """Send ``answer`` as OpenAI SSE chunks, paced by the model's latency profile."""
    latency = request.app[STATE].latency
    profile = TEXT_MODELS.get(model) or TEXT_MODELS[DEFAULT_TEXT_MODEL]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    head = {"id": f"chatcmpl-demo-{secrets.token_hex(12)}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}

    def frame(delta: dict[str, str], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return f"data: {json.dumps({**head, 'choices': [choice], **extra})}\n\n".encode()

    loop = asyncio.get_running_loop()
    first_token_s = loop.time() + profile.ttft_ms / 1000
    try:
        if fault in ("malformed", "not-image"):
            await resp.write(b"data: " + _MALFORMED_JSON + b"\n\n" + _DONE)
            return resp
        if latency:
            await asyncio.sleep(profile.ttft_ms / 1000)
        await resp.write(frame({"role": "assistant"}))
        sent_tokens = 0
        for i, delta in enumerate(answer.deltas):
            if fault == "disconnect" and i == DISCONNECT_AFTER_DELTAS:
                return _drop_connection(request)
            if latency:
                # An absolute schedule, so sleep overheads do not add up over a long answer.
                due_s = first_token_s + sent_tokens / profile.tokens_per_s
                await asyncio.sleep(max(0.0, due_s - loop.time()))
                sent_tokens += count_tokens(delta)
            await resp.write(frame({"content": delta}))
        if fault == "disconnect":
            return _drop_connection(request)
        await resp.write(frame({}, answer.finish_reason, usage=_usage(answer)) + _DONE)
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away mid-stream; there is nobody left to tell
    return resp


async def _image(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.stats["image"] += 1
    query = request.query
    model = query.get("model") or DEFAULT_IMAGE_MODEL
    fault, early = _gate(request, model, "image", IMAGE_MODELS)
    if early is not None:
        return early
    try:
        width = clamp_side(int(query.get("width", DEFAULT_SIDE_PX)))
        height = clamp_side(int(query.get("height", DEFAULT_SIDE_PX)))
        seed = int(query.get("seed", 42))
    except ValueError as exc:
        return _error(400, "BAD_REQUEST", f"Invalid image parameter: {exc}")
    name = fault.name if fault else None
    if fault is not None and name == "timeout":
        await asyncio.sleep(fault.delay_s)
    if name == "disconnect":
        return _drop_connection(request)
    if name in ("empty", "not-image"):
        return web.Response(body=_NOT_IMAGE if name == "not-image" else b"",
                            content_type="image/png")
    if state.latency and model in IMAGE_MODELS:
        await asyncio.sleep(IMAGE_MODELS[model].latency_ms / 1000)
    # Off the loop thread, so a render does not stall other requests' pacing.
    png = await asyncio.get_running_loop().run_in_executor(
        None, render_png, request.match_info["prompt"], model, seed, width, height
    )
    if name == "malformed":
        png = png[: len(png) // 2]
    return web.Response(body=png, content_type="image/png")


def _static_json(text: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        request.app[STATE].stats["models"] += 1
        return web.Response(text=text, content_type="application/json")

    return handler


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "backend": "demo"})


async def _faults(request: web.Request) -> web.Response:
    queue = request.app[STATE].faults
    if request.method == "DELETE":
        return web.json_response({"cleared": queue.clear(), "queue": []})
    if request.method == "POST":
        try:
            queue.add(await request.json())
        except (TypeError, ValueError) as exc:  # ValueError includes bad JSON
            return _error(400, "BAD_REQUEST", str(exc))
    return web.json_response({"queue": queue.snapshot()})


async def _last_chat(request: web.Request) -> web.Response:
    """``GET /_demo/last-chat``: the last chat request's body as received (test mode only)."""
    return web.json_response({"body": request.app[STATE].last_chat})


async def _stats(request: web.Request) -> web.Response:
    stats = request.app[STATE].stats
    if request.method == "POST":
        stats.clear()
    return web.json_response({kind: stats[kind] for kind in STAT_KINDS})


def create_app(*, latency: bool = True, faults: bool = False) -> web.Application:
    """Build the demo backend app, speaking gen.pollinations.ai's HTTP.

    Args:
        latency: Simulate each model's time to first token and tokens per second
            (and image render time). ``False`` answers as fast as possible.
        faults: Enable fault injection: the ``/_demo/faults`` queue, the
            ``X-Demo-Fault`` header and the ``fault-*`` models (``FAULTS``), and the
            test hook ``GET /_demo/last-chat`` (the last chat body received). Off by
            default, so that a demo reachable by others cannot be made to fail.

    Returns:
        A fresh ``aiohttp.web.Application`` with its own stats and fault queue.
    """
    # 32 MB: a message's four 5 MB images in base64 (gateway.vision) and their JSON.
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[STATE] = DemoState(latency=latency, faults_enabled=faults)
    add = app.router.add_route
    add("POST", "/v1/chat/completions", _chat)
    # The model lists never change while the server runs (catalog.py: made-up prices).
    add("GET", "/v1/models", _static_json(V1_MODELS_BODY))
    add("GET", "/text/models", _static_json(TEXT_MODELS_BODY))
    add("GET", "/audio/models", _static_json(AUDIO_MODELS_BODY))
    # Before the catch-all image route, so "models" is not taken for a prompt.
    add("GET", "/image/models", _static_json(IMAGE_MODELS_BODY))
    add("GET", "/account/key", account_key)
    add("GET", "/account/balance", account_balance)
    add("GET", "/image/{prompt:.+}", _image)
    add("GET", "/health", _health)
    if faults:
        for method in ("GET", "POST", "DELETE"):
            add(method, "/_demo/faults", _faults)
        add("GET", "/_demo/last-chat", _last_chat)
    add("GET", "/_demo/stats", _stats)
    add("POST", "/_demo/stats/reset", _stats)
    return app


class DemoServer:
    """Run the demo backend on the caller's event loop (e.g. one in a daemon thread).

    Uses ``AppRunner`` + ``TCPSite`` and installs no signal handlers, so ``start`` may
    be submitted with ``asyncio.run_coroutine_threadsafe`` from another thread.
    """

    def __init__(self, latency: bool = True, faults: bool = False) -> None:
        """Create a stopped server.

        Args:
            latency: Passed to ``create_app``.
            faults: Passed to ``create_app`` (fault injection; off by default).
        """
        self._latency = latency
        self._faults = faults
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """The ``http://host:port`` the server listens on.

        Raises:
            RuntimeError: If the server is not running.
        """
        if self._base_url is None:
            raise RuntimeError("DemoServer is not running; await start() first")
        return self._base_url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind and start serving.

        Args:
            host: Interface to bind.
            port: TCP port; ``0`` picks a free one.

        Returns:
            The base URL, e.g. ``http://127.0.0.1:54321``.

        Raises:
            RuntimeError: If already started.
            OSError: If the address cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("DemoServer is already running")
        # handler_cancellation: a client that hangs up (e.g. after its read timeout)
        # cancels its handler instead of leaving a `timeout` fault asleep for minutes.
        runner = web.AppRunner(create_app(latency=self._latency, faults=self._faults), access_log=None,
                               handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._runner, self._base_url = runner, f"http://{shown}:{bound_port}"
        return self._base_url

    async def stop(self) -> None:
        """Stop serving and close open connections; a no-op if not running."""
        runner, self._runner, self._base_url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()
