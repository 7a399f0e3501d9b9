"""Text-to-speech: ``BlossomService.generate_speech`` over real HTTP to the demo backend."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
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
from blossom_dash.demo_backend.audio import VOICES as DEMO_VOICES
from blossom_dash.sdk.speech import FORMATS, VOICES, AudioResult, verify_audio

TEXT = "The p95 latency fell after the cache warmed up."


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlossomService]:
    """One service for the module: latency off, no retries, a short timeout."""
    with make_service(tmp_path_factory.mktemp("audio"), request_timeout_s=1.5) as s:
        yield s


def queue_fault(svc: BlossomService, fault: str, **extra: object) -> None:
    """Make the demo backend fail its next chat-route request (speech uses that route)."""
    body = {"fault": fault, "count": 1, "routes": ["chat"], **extra}
    httpx.post(f"{svc.backend.base_url}/_demo/faults", json=body, timeout=5).raise_for_status()


def wav_info(data: bytes) -> tuple[int, int, int, int]:
    """``(channels, sample rate, sample width, frames)`` read with the ``wave`` module."""
    with wave.open(io.BytesIO(data)) as w:
        return w.getnchannels(), w.getframerate(), w.getsampwidth(), w.getnframes()


def mp3_frames(n: int) -> bytes:
    """``n`` silent MPEG-1 Layer III frames (128 kbit/s, 44.1 kHz): a valid, tiny MP3."""
    return (bytes.fromhex("FFFB9064") + bytes(413)) * n


class TestGenerateSpeech:
    def test_answer_is_a_playable_wav(self, svc: BlossomService) -> None:
        """The bytes are a WAV the wave module reads: mono, 16 kHz, 16-bit, 1-3 s of frames."""
        r = svc.generate_speech(TEXT, voice="onyx")
        channels, rate, width, frames = wav_info(r.data)
        assert (channels, rate, width) == (1, 16_000, 2)
        assert frames > 0
        assert 1.0 <= frames / rate <= 3.0
        assert r.duration_s == pytest.approx(frames / rate)
        assert (r.format, r.requested_format, r.content_type) == ("wav", "wav", "audio/wav")
        assert (r.voice, r.model, r.backend, r.cached) == ("onyx", "demo-voice", "demo", False)
        assert r.transcript == TEXT and r.note == ""
        assert r.summary.startswith("voice **onyx** · WAV · ") and "not words" in r.summary
        assert r.file_name.endswith(".wav") and "onyx" in r.file_name

    def test_deterministic_in_text_and_voice(self, svc: BlossomService, tmp_path: Path) -> None:
        """Another service (no shared cache) gets the same bytes; another voice or text, other bytes."""
        first = svc.generate_speech("Determinism check", voice="sage").data
        with make_service(tmp_path) as other:
            assert other.generate_speech("Determinism check", voice="sage").data == first
            assert other.generate_speech("Determinism check", voice="echo").data != first
            assert other.generate_speech("Determinism check, again", voice="sage").data != first

    def test_longer_text_gives_a_longer_clip(self, svc: BlossomService) -> None:
        """Clip length follows the word count (within 1-3 s)."""
        short = svc.generate_speech("Hi", voice="ash")
        long = svc.generate_speech(" ".join(["word"] * 12), voice="ash")
        assert short.duration_s is not None and long.duration_s is not None
        assert 1.0 <= short.duration_s < long.duration_s <= 3.0

    def test_repeat_is_a_cache_hit(self, svc: BlossomService) -> None:
        """Same text, voice and format: served from the cache, no backend request, new request id."""
        first = svc.generate_speech("Cache this clip", voice="coral")
        before = demo_stats(svc)["chat"]
        again = svc.generate_speech("Cache this clip", voice="coral")
        assert demo_stats(svc)["chat"] == before
        assert again.cached and again.data == first.data and again.request_id != first.request_id
        events = svc.metrics.frame()
        outcomes = events.set_index("request_id").loc[[first.request_id, again.request_id], ["kind", "outcome"]]
        assert outcomes.values.tolist() == [["audio", "ok"], ["audio", "cache_hit"]]

    def test_voice_and_format_are_part_of_the_cache_key(self, svc: BlossomService) -> None:
        """Another voice or another format goes to the backend again."""
        svc.generate_speech("Key parts", voice="verse")
        before = demo_stats(svc)["chat"]
        assert not svc.generate_speech("Key parts", voice="ballad").cached
        assert not svc.generate_speech("Key parts", voice="verse", audio_format="mp3").cached
        assert demo_stats(svc)["chat"] == before + 2

    def test_mp3_on_demo_falls_back_to_wav_and_says_so(self, svc: BlossomService) -> None:
        """The demo synthesises WAV only: an MP3 request gets a WAV with a note saying so."""
        r = svc.generate_speech("Please in MP3", audio_format="mp3")
        assert (r.format, r.requested_format, r.content_type) == ("wav", "mp3", "audio/wav")
        assert wav_info(r.data)[3] > 0
        assert "WAV only" in r.note and "MP3" in r.note
        assert r.file_name.endswith(".wav")

    def test_session_handle_records_the_user(self, svc: BlossomService) -> None:
        """The handle forwards with its user and session; the event carries them."""
        r = svc.session("ana", "s-1").generate_speech("From a session", voice="fable")
        row = svc.metrics.frame().set_index("request_id").loc[r.request_id]
        assert (row["user"], row["session"], row["kind"], row["model"]) == ("ana", "s-1", "audio", "demo-voice")
        assert row["bytes"] == len(r.data)

    def test_transient_failure_is_retried(self, tmp_path: Path) -> None:
        """One 503 then success: with one retry the caller gets the clip."""
        with make_service(tmp_path, retries=1, retry_max_wait_s=0.05) as s:
            queue_fault(s, "503")
            r = s.generate_speech("Retry me")
            assert r.format == "wav" and not r.cached

    def test_audio_models_are_listed(self, svc: BlossomService) -> None:
        """``list_models("audio")`` keeps the models whose output includes audio."""
        assert svc.list_models("audio") == ["demo-voice"]
        assert "demo-voice" in svc.list_models("text")  # like openai-audio, it also answers text


class TestValidation:
    def test_unknown_voice(self, svc: BlossomService) -> None:
        """An unknown voice is refused before sending, naming the allowed voices."""
        before = demo_stats(svc)
        with pytest.raises(InvalidRequest) as exc:
            svc.generate_speech(TEXT, voice="nova")
        assert "'nova' is not a voice" in exc.value.message
        assert all(v in exc.value.hint for v in VOICES)
        assert demo_stats(svc) == before

    def test_unknown_format(self, svc: BlossomService) -> None:
        """An unknown format is refused, naming wav and mp3."""
        with pytest.raises(InvalidRequest) as exc:
            svc.generate_speech(TEXT, audio_format="ogg")
        assert "ogg" in exc.value.message and "wav, mp3" in exc.value.hint

    @pytest.mark.parametrize(("text", "words"), [("", "empty"), ("   ", "empty"), (None, "empty"),
                                                 ("x" * 4097, "4,097 characters")])
    def test_bad_text(self, svc: BlossomService, text: object, words: str) -> None:
        """Empty, non-text or over-long text says what was wrong."""
        with pytest.raises(InvalidRequest, match=words):
            svc.generate_speech(text)  # type: ignore[arg-type]

    def test_refusal_is_recorded(self, svc: BlossomService) -> None:
        """A refused request is one audio error event with its error type."""
        with pytest.raises(InvalidRequest):
            svc.generate_speech(TEXT, voice="robot", user="refused-user")
        events = svc.metrics.frame()
        mine = events[events["user"] == "refused-user"]
        assert mine[["kind", "outcome", "error_type"]].values.tolist() == [["audio", "rejected", "InvalidRequest"]]

    def test_voice_and_format_ignore_case(self, svc: BlossomService) -> None:
        """``Onyx`` and ``WAV`` are accepted as onyx and wav."""
        r = svc.generate_speech("Case", voice="Onyx", audio_format="WAV")
        assert (r.voice, r.format) == ("onyx", "wav")

    def test_text_model_cannot_speak(self, svc: BlossomService) -> None:
        """A model without audio output is an InvalidRequest naming the model."""
        with pytest.raises(InvalidRequest) as exc:
            svc.generate_speech(TEXT, model="demo-swift")
        assert "demo-swift" in exc.value.message and "cannot produce audio" in exc.value.message

    def test_voice_lists_agree(self) -> None:
        """The service offers exactly the voices the demo backend accepts."""
        assert VOICES == DEMO_VOICES
        assert list(FORMATS) == ["wav", "mp3"]


FAULTS: list[tuple[str, type[DashError], str]] = [
    ("429", RateLimited, "HTTP 429"),
    ("401", AuthenticationFailed, "rejected the API key"),
    ("402", UpstreamError, "costs about 0.0136 pollen per request and the key's balance is 0.0000 pollen"),
    ("500", UpstreamError, "HTTP 500"),
    ("503", UpstreamError, "HTTP 503"),
    ("malformed", UpstreamError, "could not be read"),
    ("empty", UpstreamError, "returned no audio"),
    ("not-image", UpstreamError, "not audio"),
    ("disconnect", BackendUnavailable, "connection failed or was dropped"),
    ("timeout", BackendUnavailable, "did not answer within"),
]


class TestFaults:
    @pytest.mark.parametrize(("fault", "error", "words"), FAULTS, ids=[f[0] for f in FAULTS])
    def test_fault_maps_to_words(self, svc: BlossomService, fault: str, error: type[DashError],
                                 words: str) -> None:
        """Each injected fault is the right DashError with a message and a hint, and one error event."""
        queue_fault(svc, fault, delay_s=30)
        with pytest.raises(error) as exc:
            svc.generate_speech(f"Fault {fault}", voice="alloy", user=f"fault-{fault}")
        assert words in exc.value.message and exc.value.hint
        events = svc.metrics.frame()
        mine = events[events["user"] == f"fault-{fault}"]
        assert mine[["kind", "outcome", "error_type"]].values.tolist() == [["audio", "error", error.__name__]]

    def test_rate_limit_carries_retry_after(self, svc: BlossomService) -> None:
        """The backend's Retry-After reaches the caller."""
        queue_fault(svc, "429", retry_after=11)
        with pytest.raises(RateLimited) as exc:
            svc.generate_speech("Slow down")
        assert exc.value.retry_after_s == 11

    def test_failure_is_not_cached(self, svc: BlossomService) -> None:
        """After a failure the same request goes to the backend again and succeeds."""
        queue_fault(svc, "500")
        with pytest.raises(UpstreamError):
            svc.generate_speech("Not cached after failing")
        assert not svc.generate_speech("Not cached after failing").cached


class TestVerifyAudio:
    def test_mp3_frames(self) -> None:
        """Frame-synced MP3 is accepted with its length from the frame headers."""
        clip = verify_audio(mp3_frames(40), where="x")
        assert (clip.format, clip.content_type) == ("mp3", "audio/mpeg")
        assert clip.duration_s == pytest.approx(40 * 1152 / 44_100, rel=0.01)

    def test_mp3_with_id3_tag(self) -> None:
        """An MP3 that starts with an ID3 tag is accepted."""
        tag = b"ID3\x04\x00\x00\x00\x00\x00\x00"  # an empty ID3v2.4 header
        assert verify_audio(tag + mp3_frames(10), where="x").format == "mp3"

    def test_wav_with_unknown_data_size(self) -> None:
        """A streamed WAV whose header says 0 data bytes still gets its length from the bytes."""
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(b"\x00\x01" * 8000)
        data = bytearray(buf.getvalue())
        data[40:44] = bytes(4)  # the data chunk's size, as a streaming encoder leaves it
        assert verify_audio(bytes(data), where="x").duration_s == pytest.approx(1.0)

    @pytest.mark.parametrize("data", [b"", b'{"error": "Bad Gateway"}', b"<html>busy</html>", b"RIFF"])
    def test_not_audio(self, data: bytes) -> None:
        """Empty bodies and error pages are UpstreamError, never audio."""
        with pytest.raises(UpstreamError):
            verify_audio(data, where="demo")

    def test_result_note_for_another_backend(self) -> None:
        """A real backend that sends another format than asked gets a neutral note."""
        r = AudioResult(b"", "audio/wav", "alloy", "wav", 1.0, 1.0, False, "r1", "openai-audio", "pollinations",
                        "mp3")
        assert r.note == "You asked for MP3; the backend sent WAV, so this clip is WAV."
