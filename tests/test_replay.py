"""Replay: recordings that survive restarts, replay-only offline, export/import, no key stored."""

from __future__ import annotations

import io
import socket
import time
import tracemalloc
import zipfile
from pathlib import Path

import orjson
import pytest
from helpers import demo_stats, make_service

from blossom_dash import InvalidRequest, TextResult
from blossom_dash.errors import BackendUnavailable, NotRecorded
from blossom_dash.policies import replay, replay_zip
from blossom_dash.policies.cache import ResponseCache, request_key
from blossom_dash.policies.replay import RecordError, RecordingStore

SECRET = "sk_replay_secret_key_9876"


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def files_contain(folder: Path, needle: bytes) -> list[Path]:
    """Files under ``folder`` whose bytes contain ``needle``."""
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def record_demo_set(data_dir: Path) -> dict[str, object]:
    """Record one answer, one streamed answer and one image; return them."""
    with make_service(data_dir, persistent_cache=True) as svc:
        text = svc.generate_text("What is a moving window?", model="demo-swift", seed=1)
        stream = svc.stream_text("Explain TTFT", model="demo-balanced", max_tokens=200)
        streamed = "".join(stream)
        image = svc.generate_image("a lighthouse at dawn", model="demo-sketch", width=64, height=64, seed=5)
        assert svc.cache.stats().persistent_entries == 3
    return {"text": text, "streamed": streamed, "image": image}


class TestPersistence:
    def test_answers_survive_a_restart(self, tmp_path: Path) -> None:
        """A new service on the same data dir answers from the recording, without the backend."""
        recorded = record_demo_set(tmp_path)
        with make_service(tmp_path, persistent_cache=True) as svc:
            before = demo_stats(svc)
            again = svc.generate_text("What is a moving window?", model="demo-swift", seed=1)
            image = svc.generate_image("a lighthouse at dawn", model="demo-sketch", width=64, height=64, seed=5)
            stream = svc.stream_text("Explain TTFT", model="demo-balanced", max_tokens=200)
            assert "".join(stream) == recorded["streamed"] and stream.result and stream.result.cached
            assert demo_stats(svc) == before, "nothing reached the backend"
            assert again.cached and again.text == recorded["text"].text  # type: ignore[attr-defined]
            assert again.usage == recorded["text"].usage  # type: ignore[attr-defined]
            assert image.cached and image.data == recorded["image"].data  # type: ignore[attr-defined]
            stats = svc.cache.stats()
            assert stats.hits == 3 and stats.misses == 0 and stats.persistent_entries == 3
            assert stats.persistent_bytes > 0
            # Read back once, the answer is on the fast path (memory) again.
            assert stats.entries == 3

    def test_speech_survives_a_restart(self, tmp_path: Path) -> None:
        """Recorded speech replays after a restart, though the demo backend's port changed:
        speech is keyed by the backend's identity like text and images, not by its URL."""
        with make_service(tmp_path, persistent_cache=True) as svc:
            first = svc.generate_speech("Latency is down this quarter.", voice="onyx")
            first_url = svc.backend.base_url
        with make_service(tmp_path, persistent_cache=True) as svc:
            assert svc.backend.base_url != first_url
            before = demo_stats(svc)
            again = svc.generate_speech("Latency is down this quarter.", voice="onyx")
            assert again.cached and again.data == first.data and demo_stats(svc)["chat"] == before["chat"]
        with make_service(tmp_path, replay_only=True) as svc:
            assert svc.generate_speech("Latency is down this quarter.", voice="onyx").data == first.data

    def test_without_persistence_nothing_survives(self, tmp_path: Path) -> None:
        """The default (persistent cache off) records nothing and a restart asks the backend again."""
        with make_service(tmp_path) as svc:
            svc.generate_text("Not kept", model="demo-swift")
            assert not (tmp_path / "replay").exists()
        with make_service(tmp_path) as svc:
            assert not svc.generate_text("Not kept", model="demo-swift").cached
            assert svc.cache.stats().persistent_entries == 0

    def test_recording_older_than_the_ttl_is_not_served_live(self, tmp_path: Path) -> None:
        """Live, the TTL still bounds an answer's age; replay-only serves it whatever its age."""
        key = request_key(backend="demo", kind="text", model="m", prompt="old")
        value = TextResult("old answer", "m", "demo", 5.0, 5.0, None, False, "r1")  # type: ignore[arg-type]
        RecordingStore(tmp_path).put(key, value, request=key.parts, nbytes=10, latency_ms=5.0,
                                     created=time.time() - 7200)
        cache = ResponseCache(ttl_s=3600, persist_dir=tmp_path, persistent=True)
        assert cache.get(key) is None
        cache.configure(replay_only=True)
        entry = cache.get(key)
        assert entry is not None and entry.value.text == "old answer"

    def test_configure_keeps_the_public_api(self, tmp_path: Path) -> None:
        """configure(persistent=...) needs a folder; replay-only turns recording on; off turns both off."""
        with pytest.raises(ValueError, match="folder"):
            ResponseCache().configure(persistent=True)
        cache = ResponseCache(persist_dir=tmp_path)
        stats = cache.configure(replay_only=True)
        assert stats.persistent and stats.replay_only
        with pytest.raises(ValueError, match="replay-only"):
            cache.configure(persistent=False, replay_only=True)
        stats = cache.configure(persistent=False)
        assert not stats.persistent and not stats.replay_only

    def test_records_survive_a_field_added_or_dropped(self, tmp_path: Path) -> None:
        """A record from another version (an unknown field, a missing defaulted one) still reads."""
        store = RecordingStore(tmp_path)
        key = request_key(backend="demo", kind="text", model="m", prompt="compat")
        value = TextResult("compatible", "m", "demo", 1.0, 1.0, None, False, "r", "stop")  # type: ignore[arg-type]
        store.put(key, value, request=key.parts, nbytes=10, latency_ms=1.0)
        raw = store._entries.get(str(key))
        head_len = int.from_bytes(raw[6:10], "big")
        header = orjson.loads(raw[10:10 + head_len])
        fields = header["result"]["fields"]
        fields["added_in_a_later_version"] = 42
        del fields["stopped_early"], fields["finish_reason"]
        head = orjson.dumps(header)
        store._entries.set(str(key), raw[:6] + len(head).to_bytes(4, "big") + head + raw[10 + head_len:])
        rec = store.get(key)
        assert rec is not None and rec.value.text == "compatible" and rec.value.finish_reason is None


class TestReplayOnly:
    def test_recorded_prompts_answer_with_the_backend_stopped(self, tmp_path: Path) -> None:
        """Backend gone (a closed port): recorded requests are answered, others refused in words."""
        recorded = record_demo_set(tmp_path)
        with make_service(tmp_path, replay_only=True, per_user_rpm=1) as svc:
            svc.switch_backend(f"http://127.0.0.1:{closed_port()}")
            text = svc.generate_text("What is a moving window?", model="demo-swift", seed=1)
            assert text.cached and text.text == recorded["text"].text  # type: ignore[attr-defined]
            stream = svc.stream_text("Explain TTFT", model="demo-balanced", max_tokens=200)
            assert "".join(stream) == recorded["streamed"]
            # No seed asked for: any recorded seed of the same picture will do.
            image = svc.generate_image("a lighthouse at dawn", model="demo-sketch", width=64, height=64)
            assert image.cached and image.seed == 5 and image.data == recorded["image"].data  # type: ignore
            with pytest.raises(NotRecorded) as info:
                svc.generate_text("A prompt nobody recorded", model="demo-swift")
            assert "was not recorded for replay" in info.value.message
            assert "A prompt nobody recorded" in info.value.message
            assert "turn replay-only off" in info.value.hint.lower()
            with pytest.raises(NotRecorded):
                svc.stream_text("What is a moving window?", model="demo-swift", seed=2)  # other settings
            with pytest.raises(NotRecorded):
                svc.generate_image("a lighthouse at dawn", model="demo-sketch", width=64, height=64, seed=6)
            # Four answers and three refusals with a 1 RPM limit: replay spends no slot.
            assert svc.limiter.status("anonymous").user.remaining == 1
            events = svc.metrics.frame()
            refused = events[events.error_type == "NotRecorded"]
            assert len(refused) == 3 and set(refused.outcome) == {"rejected"}
            assert not (events.error_type == "BackendUnavailable").any(), "no backend was tried"

    def test_nothing_reaches_a_live_backend(self, tmp_path: Path) -> None:
        """With the backend up, replay-only still sends nothing: not the answers, not the refusals."""
        record_demo_set(tmp_path)
        with make_service(tmp_path, persistent_cache=True) as svc:
            svc.configure_replay(replay_only=True)
            before = demo_stats(svc)
            svc.generate_text("What is a moving window?", model="demo-swift", seed=1)
            with pytest.raises(NotRecorded):
                svc.generate_text("Unrecorded", model="demo-swift")
            with pytest.raises(NotRecorded):
                svc.generate_image("unrecorded picture", model="demo-sketch", width=64, height=64)
            after = demo_stats(svc)
            assert {k: after[k] - before[k] for k in ("chat", "chat_stream", "image")} == {
                "chat": 0, "chat_stream": 0, "image": 0}

    def test_model_list_offers_the_recorded_models(self, tmp_path: Path) -> None:
        """In replay-only mode the model pickers list what was recorded, without the backend."""
        record_demo_set(tmp_path)
        with make_service(tmp_path, replay_only=True) as svc:
            svc.switch_backend(f"http://127.0.0.1:{closed_port()}")
            assert sorted(svc.list_models("text")) == ["demo-balanced", "demo-swift"]
            assert svc.list_models("image") == ["demo-sketch"]
            # The default model is a recorded one, so a prompt with no model picked replays.
            assert svc.generate_text("Explain TTFT", max_tokens=200).model == "demo-balanced"

    def test_turning_replay_off_asks_the_backend_again(self, tmp_path: Path) -> None:
        """Replay-only off: an unrecorded prompt goes to the backend (a closed port: unavailable)."""
        with make_service(tmp_path, replay_only=True) as svc:
            svc.switch_backend(f"http://127.0.0.1:{closed_port()}")
            with pytest.raises(NotRecorded):
                svc.generate_text("hello", model="demo-swift")
            svc.configure_replay(replay_only=False)
            with pytest.raises(BackendUnavailable):
                svc.generate_text("hello", model="demo-swift")


class TestExportImport:
    def test_round_trip_into_a_fresh_data_dir(self, tmp_path: Path) -> None:
        """Recorded at the office, exported, imported elsewhere: replays the same answers offline."""
        recorded = record_demo_set(tmp_path / "office")
        with make_service(tmp_path / "office") as svc:
            data = svc.export_recordings()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            manifest = orjson.loads(zf.read("manifest.json"))
            lines = zf.read("entries.jsonl").splitlines()
            assert any(n.endswith(".png") for n in zf.namelist()), "images are plain files in the zip"
        assert manifest["format"] == "blossom-dash-replay" and manifest["version"] == 1
        assert manifest["count"] == 3 == len(lines) and manifest["backend"]["name"] == "demo"
        assert manifest["created"].endswith("+00:00")
        first = orjson.loads(lines[0])
        assert {"key", "request", "result", "created"} <= set(first) and first["request"]["kind"] in ("text", "image")

        with make_service(tmp_path / "stage") as svc:
            report = svc.import_recordings(data)
            assert (report.added, report.skipped, report.total, report.backend) == (3, 0, 3, "demo")
            assert svc.import_recordings(data).added == 0, "a second import merges nothing new"
            svc.configure_replay(replay_only=True)
            svc.switch_backend(f"http://127.0.0.1:{closed_port()}")
            text = svc.generate_text("What is a moving window?", model="demo-swift", seed=1)
            image = svc.generate_image("a lighthouse at dawn", model="demo-sketch", width=64, height=64, seed=5)
            assert text.text == recorded["text"].text and image.data == recorded["image"].data  # type: ignore

    @pytest.mark.parametrize(("mangle", "words"), [
        (lambda data: b"not a zip at all", "not a zip"),
        (lambda data: data[: len(data) // 2], "not a zip"),
        (lambda data: _rewrite(data, manifest={"version": 99}), "newer blossom-dash"),
        (lambda data: _rewrite(data, manifest={"format": "something-else"}), "not a blossom-dash replay"),
        (lambda data: _rewrite(data, manifest={"count": 7}), "says 7 entries"),
        (lambda data: _rewrite(data, tamper=True), "does not match its request"),
        (lambda data: _rewrite(data, result_type="Mystery"), "does not know"),
    ])
    def test_bad_files_are_rejected_in_words(self, tmp_path: Path, mangle: object, words: str) -> None:
        """Wrong format, newer version, damage or tampering: refused with why, and nothing is added."""
        record_demo_set(tmp_path / "office")
        with make_service(tmp_path / "office") as svc:
            data = svc.export_recordings()
        with make_service(tmp_path / "stage") as svc:
            with pytest.raises(InvalidRequest) as info:
                svc.import_recordings(mangle(data))  # type: ignore[operator]
            assert words in info.value.message and info.value.hint
            assert svc.cache.stats().persistent_entries == 0

    def test_a_zip_bomb_is_refused_fast_with_little_memory(self, tmp_path: Path) -> None:
        """A 200 MiB entries.jsonl squeezed into ~200 KiB is refused from the zip's directory, never inflated."""
        bomb = io.BytesIO()
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", orjson.dumps({"format": "blossom-dash-replay", "version": 1, "count": 1}))
            with zf.open("entries.jsonl", "w") as member:
                chunk = b" " * (1 << 20)
                for _ in range(200):
                    member.write(chunk)
        data = bomb.getvalue()
        assert len(data) < 1 << 20
        store = RecordingStore(tmp_path)
        tracemalloc.start()
        try:
            with pytest.raises(RecordError, match="zip bomb") as info:
                store.import_bytes(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert "entries.jsonl" in str(info.value)
        assert peak < 50 << 20, f"import peaked at {peak >> 20} MiB"
        assert store.count() == 0

    def test_more_than_256_mib_in_total_is_refused(self, tmp_path: Path) -> None:
        """Many members each under the ratio limit's 1 MiB threshold still add up to a refusal."""
        bomb = io.BytesIO()
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", orjson.dumps({"format": "blossom-dash-replay", "version": 1, "count": 0}))
            zf.writestr("entries.jsonl", b"")
            mib = b"\0" * (1 << 20)
            for i in range(260):
                zf.writestr(f"blobs/{i}.bin", mib)
        store = RecordingStore(tmp_path)
        tracemalloc.start()
        try:
            with pytest.raises(RecordError, match="more than 256 MiB"):
                store.import_bytes(bomb.getvalue())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 50 << 20 and store.count() == 0

    def test_too_many_members_or_recordings_are_refused(self, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        """The member and recording caps (lowered here to keep the files small) refuse the file whole."""
        record_demo_set(tmp_path / "office")
        with make_service(tmp_path / "office") as svc:
            data = svc.export_recordings()  # 3 recordings; members: manifest, entries, one image
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            assert len(zf.namelist()) == 3
        store = RecordingStore(tmp_path / "stage")
        monkeypatch.setattr(replay_zip, "MAX_IMPORT_MEMBERS", 2)
        with pytest.raises(RecordError, match="holds 3 files; an export has at most 2"):
            store.import_bytes(data)
        monkeypatch.setattr(replay_zip, "MAX_IMPORT_MEMBERS", 3)
        monkeypatch.setattr(replay, "MAX_IMPORT_ENTRIES", 2)
        with pytest.raises(RecordError, match="more than 2 recordings"):
            store.import_bytes(data)
        assert store.count() == 0
        monkeypatch.setattr(replay, "MAX_IMPORT_ENTRIES", 3)
        assert store.import_bytes(data).added == 3

    def test_imported_recordings_are_stamped_with_the_import_time(self, tmp_path: Path) -> None:
        """A file dated year 2100 does not make its answers live forever: the TTL counts from the import."""
        record_demo_set(tmp_path / "office")
        with make_service(tmp_path / "office") as svc:
            data = svc.export_recordings()
        year_2100 = 4102444800.0
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
            for name in src.namelist():
                body = src.read(name)
                if name == "entries.jsonl":
                    body = b"\n".join(orjson.dumps({**orjson.loads(line), "created": year_2100})
                                      for line in body.splitlines())
                dst.writestr(name, body)
        store = RecordingStore(tmp_path / "stage")
        before = time.time()
        assert store.import_bytes(out.getvalue()).added == 3
        after = time.time()
        keys = list(store._entries.iterkeys())
        assert len(keys) == 3
        for key in keys:
            rec = store.get(key)
            assert rec is not None and before <= rec.created <= after
            # Fresh now, so a one-hour TTL serves it; a 2100 stamp would also have survived any age check.
            assert store.get(key, max_age_s=3600) is not None
        store.close()
        cache = ResponseCache(ttl_s=3600, persist_dir=tmp_path / "stage", persistent=True)
        assert cache.stats().persistent_entries == 3



def _rewrite(data: bytes, *, manifest: dict[str, object] | None = None, tamper: bool = False,
             result_type: str | None = None) -> bytes:
    """A copy of an export with its manifest changed or its first entry tampered with."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            body = src.read(name)
            if name == "manifest.json" and manifest:
                body = orjson.dumps({**orjson.loads(body), **manifest})
            if name == "entries.jsonl" and (tamper or result_type):
                lines = body.splitlines()
                entry = orjson.loads(lines[0])
                if tamper:
                    entry["request"]["model"] = "someone-else"
                if result_type:
                    entry["result"]["$type"] = result_type
                lines[0] = orjson.dumps(entry)
                body = b"\n".join(lines)
            dst.writestr(name, body)
    return out.getvalue()


class TestNoKeyRecorded:
    def test_the_key_is_in_no_recording_and_no_export(self, tmp_path: Path) -> None:
        """With a configured key and a session key, neither reaches the disk or the export file."""
        with make_service(tmp_path, persistent_cache=True, api_key=SECRET) as svc:
            demo = svc.backend.base_url
            svc.switch_backend(demo)  # the demo server as a keyed "custom" backend: the key is sent
            assert svc.backend_info()["name"] == "custom"
            handle = svc.session("ana", "s1")
            handle.set_api_key(SECRET + "_session")
            svc.generate_text("keyed prompt", model="demo-swift")
            handle.generate_text("session keyed prompt", model="demo-swift")
            handle.generate_image("keyed image", model="demo-sketch", width=64, height=64, seed=1)
            stats = svc.cache.stats()
            assert stats.persistent_entries == 3
            data = svc.export_recordings()
        assert files_contain(tmp_path / "replay", b"keyed prompt"), "the check can see recorded text"
        assert not files_contain(tmp_path / "replay", SECRET.encode())
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            unpacked = b"".join(zf.read(n) for n in zf.namelist())
        assert b"session keyed prompt" in unpacked and SECRET.encode() not in unpacked


class TestStorage:
    def test_nothing_is_pickled(self, tmp_path: Path) -> None:
        """Every key and value in the recording folders is stored raw (diskcache mode 4 = pickle)."""
        import sqlite3

        record_demo_set(tmp_path)
        dbs = list((tmp_path / "replay").rglob("cache.db"))
        assert len(dbs) == 2
        for db in dbs:
            with sqlite3.connect(db) as conn:
                assert conn.execute("SELECT COUNT(*) FROM Cache").fetchone()[0] > 0
                assert conn.execute("SELECT COUNT(*) FROM Cache WHERE mode = 4 OR raw = 0").fetchone()[0] == 0
