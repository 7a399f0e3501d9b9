"""Deterministic speech stand-in for the demo voice model: a few tones in a real WAV.

No words are spoken: the clip is a short melody whose notes follow the text's hash and
whose register and timbre follow the voice, so that players, downloads, caching and
latency can be demonstrated offline. Written with the standard library (``wave``,
``array``, ``math``) because a speech engine would be a heavy dependency for a demo.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import sys
import wave
from array import array
from functools import lru_cache
from typing import Any

#: The voices Pollinations' ``openai-audio`` accepts (BLOSSOM_SDK.md, "Pollinations facts").
VOICES: tuple[str, ...] = ("alloy", "echo", "fable", "onyx", "shimmer", "coral", "verse", "ballad", "ash", "sage")
#: Formats accepted in a request. Whatever is asked, the demo answers WAV and says so in
#: ``message.audio.format``: it has no MP3 encoder (the standard library has none).
ACCEPTED_FORMATS: tuple[str, ...] = ("wav", "mp3", "flac", "opus", "aac", "pcm16")
ANSWER_FORMAT = "wav"
SAMPLE_RATE_HZ = 16_000
MIN_DURATION_S, MAX_DURATION_S = 1.0, 3.0
_PEAK = 0.45 * 32767  # headroom, so the harmonics never clip
#: Per voice: fundamental of the lowest note (Hz) and the weights of harmonics 1-3.
_TIMBRE: dict[str, tuple[float, tuple[float, float, float]]] = {
    "alloy": (220.0, (1.0, 0.30, 0.10)),
    "echo": (196.0, (1.0, 0.10, 0.30)),
    "fable": (247.0, (1.0, 0.45, 0.05)),
    "onyx": (131.0, (1.0, 0.50, 0.25)),
    "shimmer": (330.0, (1.0, 0.15, 0.35)),
    "coral": (262.0, (1.0, 0.25, 0.20)),
    "verse": (294.0, (1.0, 0.05, 0.15)),
    "ballad": (175.0, (1.0, 0.35, 0.35)),
    "ash": (147.0, (1.0, 0.20, 0.05)),
    "sage": (233.0, (1.0, 0.40, 0.15)),
}
_PENTATONIC = (0, 2, 4, 7, 9, 12)  # semitones: no note clashes with the next


def duration_for(text: str) -> float:
    """Clip length in seconds: 0.9 s plus 0.12 s a word, clamped to 1-3 s."""
    return min(MAX_DURATION_S, max(MIN_DURATION_S, 0.9 + 0.12 * len(text.split())))


@lru_cache(maxsize=64)
def synthesise_wav(text: str, voice: str) -> bytes:
    """Render the demo clip for ``text`` in ``voice``.

    Args:
        text: What would be spoken; its hash picks the notes, its word count the length.
        voice: A member of ``VOICES`` (unknown names get alloy's timbre).

    Returns:
        A 16 kHz mono 16-bit PCM WAV of 1-3 s, identical for identical arguments.
    """
    base_hz, weights = _TIMBRE.get(voice, _TIMBRE["alloy"])
    rng = random.Random(hashlib.sha256(f"{voice}\x00{text}".encode()).digest())
    total = int(duration_for(text) * SAMPLE_RATE_HZ)
    notes = min(12, max(3, len(text.split())))
    per_note = total // notes
    fade = int(0.012 * SAMPLE_RATE_HZ)  # 12 ms ramps: no clicks between notes
    norm = _PEAK / sum(weights)
    samples = array("h")
    for _ in range(notes):
        hz = base_hz * 2 ** (rng.choice(_PENTATONIC) / 12)
        sounding = int(per_note * rng.uniform(0.7, 0.9))  # the rest is a short pause
        step = 2 * math.pi * hz / SAMPLE_RATE_HZ
        for i in range(sounding):
            env = min(1.0, i / fade, (sounding - i) / fade)
            x = step * i
            value = weights[0] * math.sin(x) + weights[1] * math.sin(2 * x) + weights[2] * math.sin(3 * x)
            samples.append(int(norm * env * value))
        samples.extend([0] * (per_note - sounding))
    if sys.byteorder == "big":
        samples.byteswap()  # WAV samples are little-endian
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE_HZ)
        out.writeframes(samples.tobytes())
    return buf.getvalue()


def parse_speech(body: dict[str, Any], text: str) -> tuple[str, str, str]:
    """Validate the audio part of a chat request.

    Args:
        body: The request JSON (``modalities``, ``audio: {voice, format}``).
        text: The last user message, the text to speak.

    Returns:
        ``(text, voice, requested_format)``.

    Raises:
        ValueError: With a message for the client (OpenAI's 400 wording style).
    """
    audio = body.get("audio")
    if not isinstance(audio, dict):
        raise ValueError("'audio' must be an object like {\"voice\": \"alloy\", \"format\": \"wav\"}")
    voice, fmt = audio.get("voice"), audio.get("format", ANSWER_FORMAT)
    if voice not in VOICES:
        raise ValueError(f"Unknown voice {voice!r}. Voices: {', '.join(VOICES)}")
    if fmt not in ACCEPTED_FORMATS:
        raise ValueError(f"Unknown audio format {fmt!r}. Formats: {', '.join(ACCEPTED_FORMATS)}")
    if not text.strip():
        raise ValueError("There is no text to speak: the last user message is empty")
    return text, voice, fmt
