"""A hostile backend on loopback: an aiohttp server that misbehaves on purpose.

It speaks just enough of gen.pollinations.ai's HTTP for the service (chat JSON, SSE,
images, speech, model lists) and picks its behaviour from the MODEL NAME of each
request: the chat body's ``"model"``, or the image URL's ``?model=``. The behaviour is
the part of the name before the first ``:``, so ``"flaky503:text"`` and
``"flaky503:image"`` behave alike but keep their own request counts and first-request
state (a test that needs a fresh ``flaky503`` picks a fresh suffix).

Behaviours (``BEHAVIOURS``):

- ``ok``: a valid answer of the right shape for the request.
- ``never``: accepts the request and never answers.
- ``trickle``: 200 headers at once, then the body at 1 byte per second.
- ``endless_sse``: ``text/event-stream``, one valid delta frame every 2 s, for any request.
- ``huge``: 200 and a 50 MB body (chunked, no Content-Length), as fast as possible.
- ``disconnect``: 200 headers and part of the body (two delta frames for a stream), then
  the connection is aborted.
- ``html_520``: HTTP 520 with a ~5 KB Cloudflare-like HTML page.
- ``flaky503``: 503 with ``Retry-After: 0`` to the first request, ``ok`` afterwards.
- ``reset_once``: the first request's connection is closed before any byte, ``ok`` afterwards.

Any path under the prefix ``/hang`` (e.g. a backend URL ``{base_url}/hang``) behaves
as ``never`` for every request, model lists included. Every hold or trickle ends after
``HOLD_S`` at the latest, so a client that never hangs up does not leak server tasks.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import struct
import threading
import wave
from collections import Counter
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from PIL import Image

#: Longest any request is held open, seconds.
HOLD_S = 60.0
#: Size of a ``huge`` body, bytes.
HUGE_BYTES = 50 * 1024 * 1024
#: Seconds between frames of ``endless_sse``.
ENDLESS_INTERVAL_S = 2.0
#: Every behaviour; the model endpoints list these names as models.
BEHAVIOURS: tuple[str, ...] = ("ok", "never", "trickle", "endless_sse", "huge", "disconnect", "html_520",
                               "flaky503", "reset_once")
#: The path prefix under which every request hangs.
HANG_PREFIX = "/hang"

_CHUNK = 1024 * 1024
_DONE = b"data: [DONE]\n\n"
_USAGE = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
_OK_DELTAS = ("Hostile ", "server ", "says ok.")


def _frame(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    """One OpenAI chat-completion chunk as an SSE frame."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "model": "hostile",
            "choices": [choice], **extra}
    return f"data: {json.dumps(body)}\n\n".encode()


def _chat_json(content: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-hostile", "object": "chat.completion", "created": 0, "model": "hostile",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": _USAGE,
    }).encode()


def _small_wav() -> bytes:
    """0.1 s of a 440 Hz tone: 8 kHz, 16-bit mono."""
    rate = 8000
    samples = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                       for i in range(rate // 10))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples)
    return buf.getvalue()


def _speech_json(audio_b64: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-hostile", "object": "chat.completion", "created": 0, "model": "hostile",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": None,
            "audio": {"id": "audio_hostile", "data": audio_b64, "transcript": "hello", "format": "wav"}}}],
        "usage": _USAGE,
    }).encode()


def _small_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 80, 120)).save(buf, format="PNG")
    return buf.getvalue()


OK_CHAT = _chat_json("".join(_OK_DELTAS))
OK_SSE = (_frame({"role": "assistant"}) + b"".join(_frame({"content": d}) for d in _OK_DELTAS)
          + _frame({}, "stop", usage=_USAGE) + _DONE)
OK_SPEECH = _speech_json(base64.b64encode(_small_wav()).decode("ascii"))
OK_PNG = _small_png()
#: A stream frame whose line never ends (what ``trickle`` sends to a stream).
_TRICKLE_SSE = b'data: {"choices": [{"index": 0, "delta": {"content": "' + b"x" * 4096

# A page in the shape Cloudflare serves for "520: Web server is returning an unknown error".
_HTML_520 = ("<!DOCTYPE html>\n<!--[if lt IE 7]> <html class=\"no-js ie6 oldie\" lang=\"en-US\"> <![endif]-->\n"
             "<html lang=\"en-US\"><head><title>hostile.example | 520: Web server is returning an unknown "
             "error</title><meta charset=\"UTF-8\" /><style>"
             + "".join(f".cf-{i}{{margin:{i}px;padding:{i}px;font-family:system-ui,sans-serif}}" for i in range(90))
             + "</style></head><body><div id=\"cf-wrapper\"><div id=\"cf-error-details\"><h1>"
             "<span class=\"cf-error-type\">Web server is returning an unknown error</span> "
             "<span class=\"code-label\">Error code 520</span></h1><p>Visit <a href=\"https://www.cloudflare.com/"
             "5xx-error-landing\">cloudflare.com</a> for more information.</p><p>Ray ID: 8c0ffee000000000</p>"
             "</div></div></body></html>\n").encode()
assert 4000 < len(_HTML_520) < 7000


def _huge_chat() -> Iterator[bytes]:
    """A valid chat JSON answer of ``HUGE_BYTES`` whose content is ``a`` repeated."""
    head, tail = _split(OK_CHAT, "".join(_OK_DELTAS))
    yield head
    yield from _filler(b"a", HUGE_BYTES - len(head) - len(tail))
    yield tail


def _huge_sse() -> Iterator[bytes]:
    """One enormous, valid SSE frame (a single line), then the end of the stream."""
    head = b'data: {"choices": [{"index": 0, "delta": {"content": "'
    tail = b'"}, "finish_reason": null}]}\n\n' + _frame({}, "stop", usage=_USAGE) + _DONE
    yield head
    yield from _filler(b"a", HUGE_BYTES - len(head) - len(tail))
    yield tail


def _huge_speech() -> Iterator[bytes]:
    """A valid speech answer whose base64 clip is a ~37 MB silent WAV (~50 MB of JSON)."""
    head, tail = _split(_speech_json("@"), "@")
    quads = (HUGE_BYTES - len(head) - len(tail) - 60) // 4
    quads -= 1 - quads % 2  # odd, so the data chunk (1 + 3 * quads bytes) holds whole 16-bit samples
    data_size = 1 + 3 * quads
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)  # PCM, mono, 8 kHz, 16-bit
    header = b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", data_size)
    yield head + base64.b64encode(header + b"\0")  # 45 bytes: 60 base64 characters, no padding
    yield from _filler(b"AAAA", quads * 4)  # every "AAAA" decodes to three zero bytes
    yield tail


def _huge_image() -> Iterator[bytes]:
    """A valid 4096 x 4096 24-bit BMP (48 MiB of black pixels), streamed."""
    side = 4096
    pixels = side * side * 3
    yield (b"BM" + struct.pack("<IHHI", 54 + pixels, 0, 0, 54)
           + struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, pixels, 2835, 2835, 0, 0))
    yield from _filler(b"\0", pixels)


def _split(body: bytes, marker: str) -> tuple[bytes, bytes]:
    """``body`` around the one occurrence of ``marker`` (a JSON string's content)."""
    head, tail = body.split(marker.encode())
    return head, tail


def _filler(unit: bytes, n: int) -> Iterator[bytes]:
    """``n`` bytes of ``unit`` repeated, in chunks of about 1 MiB (``n`` a multiple of ``len(unit)``)."""
    chunk = unit * (_CHUNK // len(unit))
    while n > 0:
        piece = chunk[:n]
        n -= len(piece)
        yield piece


class HostileServer:
    """The hostile backend, on its own event loop in a daemon thread.

    Use as a context manager, or ``start()`` / ``stop()``.

    Attributes:
        base_url: ``http://127.0.0.1:PORT`` once started.
    """

    def __init__(self) -> None:
        self.base_url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hostile-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._seen: set[str] = set()

    # ----- lifecycle -------------------------------------------------------------

    def start(self) -> HostileServer:
        """Bind a random loopback port and serve.

        Returns:
            The server itself.
        """
        self._thread.start()
        self.base_url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that hangs up cancels its handler at once, so a
        # held `never` request does not outlive it.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        """Close every connection and stop the loop thread."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- what the tests read --------------------------------------------------

    def url(self, prefix: str = "/prefix") -> str:
        """A backend URL on this server with a path prefix (the product must keep it)."""
        return self.base_url + prefix

    def count(self, model: str, kind: str | None = None) -> int:
        """Requests seen for ``model`` (the full name, suffix included).

        Args:
            model: The model name as sent.
            kind: ``text``, ``stream``, ``speech`` or ``image``; None counts them all.
        """
        with self._lock:
            return sum(n for (m, k), n in self._counts.items() if m == model and kind in (None, k))

    def open_connections(self) -> int:
        """Connections the server holds open right now."""

        async def count() -> int:
            return len(self._runner.server.connections) if self._runner and self._runner.server else 0

        return asyncio.run_coroutine_threadsafe(count(), self._loop).result(5)

    # ----- the handler ------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == HANG_PREFIX or path.startswith(HANG_PREFIX + "/"):
            await asyncio.sleep(HOLD_S)
            return web.Response(status=504)
        if path.endswith(("/v1/models", "/text/models")):
            return self._text_models(path)
        if path.endswith("/image/models"):
            return web.json_response([{"name": b, "aliases": [], "input_modalities": ["text"],
                                       "output_modalities": ["image"]} for b in BEHAVIOURS])
        if request.method == "POST" and path.endswith("/v1/chat/completions"):
            try:
                body = await request.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                return web.json_response({"error": {"message": "body must be a JSON object"}}, status=400)
            modalities = body.get("modalities")
            speech = "audio" in body or (isinstance(modalities, list) and "audio" in modalities)
            kind = "speech" if speech else "stream" if body.get("stream") is True else "text"
            return await self._answer(request, str(body.get("model") or "ok"), kind)
        if request.method == "GET" and "/image/" in path:
            return await self._answer(request, request.query.get("model") or "ok", "image")
        return web.json_response({"error": {"message": f"no route {request.method} {path}"}}, status=404)

    @staticmethod
    def _text_models(path: str) -> web.Response:
        if path.endswith("/v1/models"):
            return web.json_response({"object": "list", "data": [
                {"id": b, "object": "model", "input_modalities": ["text"], "output_modalities": ["text", "audio"],
                 "voices": ["alloy"]} for b in BEHAVIOURS]})
        return web.json_response([{"name": b, "input_modalities": ["text"], "output_modalities": ["text", "audio"]}
                                  for b in BEHAVIOURS])

    async def _answer(self, request: web.Request, model: str, kind: str) -> web.StreamResponse:
        behaviour = model.split(":", 1)[0]
        with self._lock:
            self._counts[(model, kind)] += 1
            first = model not in self._seen
            self._seen.add(model)
        if behaviour == "flaky503" and first:
            return web.json_response({"error": {"message": "hostile: overloaded, try again"}}, status=503,
                                     headers={"Retry-After": "0"})
        if behaviour == "reset_once" and first:
            if request.transport is not None:
                request.transport.close()  # no status line, no byte: a reset before the answer
            return web.Response()
        if behaviour == "never":
            await asyncio.sleep(HOLD_S)
            return web.Response(status=504)
        if behaviour == "html_520":
            return web.Response(status=520, reason="Unknown Error", body=_HTML_520,
                                content_type="text/html", charset="utf-8")
        if behaviour == "trickle":
            return await self._trickle(request, kind)
        if behaviour == "endless_sse":
            return await self._endless(request)
        if behaviour == "huge":
            return await self._huge(request, kind)
        if behaviour == "disconnect":
            return await self._disconnect(request, kind)
        return self._ok(kind)

    @staticmethod
    def _ok(kind: str) -> web.Response:
        if kind == "stream":
            return web.Response(body=OK_SSE, content_type="text/event-stream")
        if kind == "image":
            return web.Response(body=OK_PNG, content_type="image/png")
        return web.Response(body=OK_SPEECH if kind == "speech" else OK_CHAT, content_type="application/json")

    @staticmethod
    def _ok_body(kind: str) -> tuple[bytes, str]:
        return {"text": (OK_CHAT, "application/json"), "speech": (OK_SPEECH, "application/json"),
                "image": (OK_PNG, "image/png"), "stream": (OK_SSE, "text/event-stream")}[kind]

    async def _trickle(self, request: web.Request, kind: str) -> web.StreamResponse:
        body, ctype = self._ok_body(kind)
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        if kind == "stream":
            body = _TRICKLE_SSE  # a line that never ends: no frame is ever complete
        else:
            resp.content_length = len(body)  # the promise of a whole body that never all arrives
        await resp.prepare(request)
        try:
            for i in range(min(len(body) - 1, int(HOLD_S))):
                await resp.write(body[i:i + 1])
                await asyncio.sleep(1.0)
        except ConnectionError:
            return resp  # the client gave up, as it should
        _abort(request)
        return resp

    @staticmethod
    async def _endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        end = loop.time() + HOLD_S
        try:
            await resp.write(_frame({"role": "assistant"}))
            while loop.time() < end:
                await resp.write(_frame({"content": "more "}))
                await asyncio.sleep(ENDLESS_INTERVAL_S)
        except ConnectionError:
            return resp
        _abort(request)
        return resp

    @staticmethod
    async def _huge(request: web.Request, kind: str) -> web.StreamResponse:
        ctype = {"text": "application/json", "speech": "application/json", "image": "image/bmp",
                 "stream": "text/event-stream"}[kind]
        parts = {"text": _huge_chat, "speech": _huge_speech, "image": _huge_image, "stream": _huge_sse}[kind]()
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        resp.enable_chunked_encoding()  # no Content-Length: the size shows only while reading
        await resp.prepare(request)
        try:
            for part in parts:
                await resp.write(part)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client stopped reading, as it should
        return resp

    async def _disconnect(self, request: web.Request, kind: str) -> web.StreamResponse:
        body, ctype = self._ok_body(kind)
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        if kind == "stream":
            body = _frame({"content": "partial "}) + _frame({"content": "answer "})
        else:
            resp.content_length = len(body)
            body = body[: len(body) // 2]
        await resp.prepare(request)
        try:
            await resp.write(body)
            await asyncio.sleep(0.05)  # let the part reach the client before the connection goes
        except ConnectionError:
            return resp
        _abort(request)
        return resp


def _abort(request: web.Request) -> None:
    """Drop the connection without finishing the body."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp then finds the transport gone and quietly skips finishing the response.
