"""Text-to-speech through a chat model with audio output (Pollinations' ``openai-audio``).

blossom-ai 0.8.0 has no audio API, and its parser rejects the answer of a chat
completion with ``modalities: ["text", "audio"]`` (``EmptyResponseError``:
BLOSSOM_SDK.md, "No audio API in 0.8.0"). So the request goes through the SDK's own
injected HTTP client (``Backend.http``: the observing transport, on the service's loop)
and the clip is read from ``choices[0].message.audio.data`` (base64) here.

Nothing here imports streamlit; ``BlossomService.generate_speech`` validates, caches,
rate-limits and records the ``audio`` event, and calls ``speak`` on its loop.
"""

from __future__ import annotations

import base64
import binascii
import io
import wave
from dataclasses import dataclass
from typing import Any

import httpx
from blossom_ai.core.config import ENDPOINTS
from mutagen import MutagenError
from mutagen.mp3 import MP3

from ..errors import InvalidRequest, UpstreamError
from ..results import AudioResult
from .catalog import entry_name, model_entries

#: Voices of Pollinations' ``openai-audio`` (BLOSSOM_SDK.md, "Pollinations facts").
VOICES: tuple[str, ...] = ("alloy", "echo", "fable", "onyx", "shimmer", "coral", "verse", "ballad", "ash", "sage")
#: Formats offered, with their MIME types (what ``st.audio`` and a download need).
FORMATS: dict[str, str] = {"wav": "audio/wav", "mp3": "audio/mpeg"}
#: Longest text to speak: OpenAI's speech endpoint caps ``input`` at 4,096 characters.
MAX_SPEECH_CHARS = 4096
#: Used when the backend lists no model with audio output.
FALLBACK_AUDIO_MODELS: tuple[str, ...] = ("openai-audio",)
#: A chat model with audio output answers its prompt; this makes it read the text instead.
READ_ALOUD = ("You are a text-to-speech voice. Read the user's message aloud exactly as written, word for "
              "word. Do not answer it, comment on it, translate it or add anything.")


@dataclass(frozen=True)
class AudioClip:
    """What ``verify_audio`` found: the container, its MIME type, its length."""

    format: str
    content_type: str
    duration_s: float | None


def validate_speech(text: Any, voice: Any, audio_format: Any, *, max_chars: int = MAX_SPEECH_CHARS
                    ) -> tuple[str, str, str]:
    """Check a speech request before anything is sent.

    Args:
        text: What to say: 1 to ``max_chars`` characters once stripped.
        voice: A member of ``VOICES`` (case-insensitive).
        audio_format: A key of ``FORMATS`` (case-insensitive).
        max_chars: Longest text accepted.

    Returns:
        ``(text, voice, format)``, stripped and lower-cased.

    Raises:
        InvalidRequest: Naming what was wrong and, for voice and format, the allowed values.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("The text to speak is empty.", "Type the sentence you want to hear first.")
    text = text.strip()
    if len(text) > max_chars:
        raise InvalidRequest(f"The text has {len(text):,} characters; speech takes at most {max_chars:,}.",
                             "Shorten it, or split it into several clips.")
    v = voice.strip().lower() if isinstance(voice, str) else voice
    if v not in VOICES:
        raise InvalidRequest(f"{voice!r} is not a voice.", f"Pick one of: {', '.join(VOICES)}.")
    f = audio_format.strip().lower() if isinstance(audio_format, str) else audio_format
    if f not in FORMATS:
        raise InvalidRequest(f"{audio_format!r} is not an audio format.", f"Pick one of: {', '.join(FORMATS)}.")
    return text, v, f


def speech_body(text: str, *, model: str, voice: str, audio_format: str) -> dict[str, Any]:
    """The chat-completion JSON that asks ``model`` to read ``text`` aloud.

    Shape from OpenAI's audio output (``modalities`` + ``audio: {voice, format}``),
    which Pollinations' ``openai-audio`` follows.
    """
    return {"model": model, "modalities": ["text", "audio"], "audio": {"voice": voice, "format": audio_format},
            "messages": [{"role": "system", "content": READ_ALOUD}, {"role": "user", "content": text}]}


async def speak(http: Any, body: dict[str, Any], *, where: str) -> tuple[bytes, str]:
    """POST ``body`` through the SDK's injected client and decode the clip.

    Must run on the service's loop, inside an observation (``BlossomService._call``),
    so that status, Retry-After and usage are recorded and errors map to words.

    Args:
        http: ``Backend.http`` (``ObservingHttpClient``).
        body: From ``speech_body``.
        where: The backend's label, for messages.

    Returns:
        ``(audio bytes, transcript)``; the bytes are not yet verified.

    Raises:
        httpx.HTTPError: Transport failures and error statuses (mapped by the caller).
        UpstreamError: The answer is not JSON, carries no audio, or is not base64.
    """
    resp: httpx.Response = await http.post(ENDPOINTS.TEXT_CHAT, json=body,
                                           headers={"Content-Type": "application/json"})
    try:
        payload = resp.json()
        message = payload["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise UpstreamError(f"{where} sent a response that could not be read (not the JSON an answer should be).",
                            "Try again; if it persists, pick another model or backend.",
                            status_code=resp.status_code) from exc
    audio = message.get("audio") if isinstance(message, dict) else None
    encoded = audio.get("data") if isinstance(audio, dict) else None
    if not encoded or not isinstance(encoded, str):
        said = message.get("content") if isinstance(message, dict) else None
        extra = f" It answered with text instead: “{str(said)[:80]}”" if said else ""
        raise UpstreamError(f"Model {body['model']!r} on {where} returned no audio.{extra}",
                            "Pick a model that can speak (such as openai-audio) and try again.",
                            status_code=resp.status_code)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UpstreamError(f"{where} sent audio that is not valid base64.", "Try again, or pick another model.",
                            status_code=resp.status_code) from exc
    return data, str(audio.get("transcript") or "")


def verify_audio(data: bytes, *, where: str) -> AudioClip:
    """Check that ``data`` is a WAV (RIFF/WAVE header) or an MP3 (ID3 tag or frame sync).

    The WAV's length comes from the ``wave`` module; the MP3's from ``mutagen``, which
    walks the MPEG frame headers.

    Args:
        data: The decoded clip.
        where: The backend's label, for messages.

    Returns:
        ``AudioClip``.

    Raises:
        UpstreamError: Empty, or neither WAV nor MP3 (e.g. a JSON error in disguise).
    """
    if not data:
        raise UpstreamError(f"{where} answered the speech request with an empty clip.",
                            "Try again, or pick another voice or model.", status_code=200)
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return AudioClip("wav", FORMATS["wav"], _wav_seconds(data, where))
    if data[:3] == b"ID3" or (data[0] == 0xFF and data[1:2] and data[1] & 0xE0 == 0xE0):
        try:
            seconds: float | None = float(MP3(io.BytesIO(data)).info.length)
        except MutagenError:
            seconds = None  # a header, but no frame mutagen can read: still, an MP3 start
        return AudioClip("mp3", FORMATS["mp3"], seconds)
    preview = bytes(data[:60]).decode("utf-8", errors="replace").strip()
    raise UpstreamError(f"{where} answered the speech request with {len(data):,} bytes that are not audio "
                        f"(it begins “{preview[:40]}”).",
                        "The backend may be overloaded or misconfigured: try again, or pick another model.",
                        status_code=200)


def _wav_seconds(data: bytes, where: str) -> float | None:
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            frames = len(w.readframes(w.getnframes())) // max(1, width * channels)
    except wave.Error:
        return None  # a WAVE header over a codec the wave module does not read (e.g. float)
    except EOFError as exc:
        raise UpstreamError(f"{where} sent a WAV that is cut short.", "Try again.", status_code=200) from exc
    if frames == 0 and len(data) > 44:
        # A streamed WAV may leave its data size at 0: count the bytes after the header.
        frames = (len(data) - 44) // max(1, width * channels)
    if frames == 0 or not rate:
        raise UpstreamError(f"{where} sent a WAV with no sound in it.", "Try again with some text.", status_code=200)
    return frames / rate


async def audio_models(http: Any) -> list[str]:
    """Models whose ``output_modalities`` include audio: ``/audio/models``, else the
    speaking entries of ``/text/models`` (``catalog.model_entries``). Never ``/v1/models``,
    which may carry only ``id``, ``object`` and ``created``.

    Raises:
        httpx.HTTPError, ValueError: the endpoint failed, or lists no such model.
    """
    names = [entry_name(e) for e in await model_entries(http, "audio")]
    if not names:
        raise ValueError("no model with audio output")
    return names


__all__ = ["FALLBACK_AUDIO_MODELS", "FORMATS", "MAX_SPEECH_CHARS", "VOICES", "AudioClip", "AudioResult",
           "audio_models", "speak", "speech_body", "validate_speech", "verify_audio"]
