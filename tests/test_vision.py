"""Images in a chat message (``gateway.vision``), through real HTTP on loopback to the
demo backend: what reaches the backend, what it answers, what is refused before
sending and in which words, the cache key, and what the usage store keeps."""

from __future__ import annotations

import base64
import io
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import demo_stats, make_service
from PIL import Image

from blossom_dash import BlossomService
from blossom_dash.errors import InvalidRequest
from blossom_dash.gateway import TextRequest
from blossom_dash.gateway.vision import MAX_IMAGE_BYTES, ImageInput, check_image
from blossom_dash.ui.attachments import (
    ACCEPT_TYPES,
    CHAT_INPUT_ARGS,
    MAX_IMAGE_MB,
    limits_text,
    read_input,
    to_images,
    vision_warning,
)

BLUE = (0x33, 0x66, 0xCC)


def picture(fmt: str = "PNG", size: tuple[int, int] = (640, 480), colour: tuple[int, int, int] = BLUE) -> bytes:
    """An image of one colour with a white band (a fifth of its height), in ``fmt``."""
    img = Image.new("RGB", size, colour)
    img.paste((255, 255, 255), (0, 0, size[0], max(1, size[1] // 5)))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def attached(data: bytes, name: str = "photo.png", mime: str = "image/png") -> dict[str, Any]:
    """A message-contract image dict."""
    return {"name": name, "mime": mime, "data": data}


def last_chat(svc: BlossomService) -> dict[str, Any]:
    """The last chat body the demo backend received (its test hook)."""
    return httpx.get(f"{svc.backend.base_url}/_demo/last-chat", timeout=5).json()["body"]


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlossomService]:
    service = make_service(tmp_path_factory.mktemp("vision"))
    yield service
    service.close()


class TestImagesReachTheBackend:
    def test_an_image_travels_as_an_image_url_part_and_is_described(self, svc: BlossomService) -> None:
        """The backend gets a text part and an image_url data URL of the bytes; it describes them."""
        png = picture()
        result = svc.generate_text("What is in this picture?", model="demo-vision", images=[attached(png)])
        content = last_chat(svc)["messages"][-1]["content"]
        assert content[0] == {"type": "text", "text": "What is in this picture?"}
        assert content[1] == {"type": "image_url",
                              "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}
        assert "Demo backend (synthetic): I received 1 image: PNG 640×480" in result.text
        assert "mostly blue #" in result.text and "white #ffffff" in result.text

    def test_a_stream_carries_the_image_and_the_type_found_in_the_bytes(self, svc: BlossomService) -> None:
        """A JPEG declared as PNG goes out as image/jpeg; the streamed answer describes it."""
        jpeg = picture("JPEG", (320, 200), (200, 30, 30))
        stream = svc.stream_text("And this one?", model="demo-vision", images=[attached(jpeg, "x.png", "image/png")])
        text = "".join(stream)
        body = last_chat(svc)
        assert body["stream"] is True
        assert body["messages"][-1]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
        assert "JPEG 320×200" in text and "red #" in text
        assert stream.result is not None and stream.result.text == text

    def test_earlier_turns_images_are_sent_again(self, svc: BlossomService) -> None:
        """A history turn's ``images`` go out as its image_url parts; the answer counts them."""
        history = [{"role": "user", "content": "Look", "images": [attached(picture(size=(100, 100)))]},
                   {"role": "assistant", "content": "I see it."}]
        result = svc.generate_text("Now this", model="demo-vision", messages=history,
                                   images=[attached(picture("WEBP", (90, 60)))])
        sent = last_chat(svc)["messages"]
        assert [p["type"] for p in sent[0]["content"]] == ["text", "image_url"]
        assert sent[1] == {"role": "assistant", "content": "I see it."}
        assert "WEBP 90×60" in result.text and "Earlier messages carried 1 more" in result.text

    def test_image_bytes_do_not_count_against_the_character_cap(self, svc: BlossomService) -> None:
        """A 4,900-character prompt with a ~1 MB image is sent whole (the SDK's cap counts text only)."""
        noisy = Image.frombytes("RGB", (600, 600), random.Random(1).randbytes(600 * 600 * 3))  # incompressible
        buf = io.BytesIO()
        noisy.save(buf, "PNG")
        assert len(buf.getvalue()) > 500_000
        result = svc.generate_text("x " * 2450, model="demo-vision", images=[attached(buf.getvalue())])
        assert "I received 1 image: PNG 600×600" in result.text
        assert result.usage.prompt_tokens < 3000  # the base64 is no tokens


class TestRefusedBeforeSending:
    def test_a_model_that_cannot_see_is_refused_unsent(self, svc: BlossomService) -> None:
        """No request reaches the backend and no rate-limit slot is taken; the words name a vision model."""
        before, used = demo_stats(svc)["chat"], svc.limit_status("blind-user").user.used
        with pytest.raises(InvalidRequest) as err:
            svc.generate_text("What is it?", model="demo-swift", images=[attached(picture())], user="blind-user")
        assert err.value.message == "demo-swift cannot see images; pick one of: demo-vision."
        assert demo_stats(svc)["chat"] == before
        assert svc.limit_status("blind-user").user.used == used

    def test_history_images_count_too(self, svc: BlossomService) -> None:
        """A chat whose earlier turn holds an image cannot go on with a model that cannot see."""
        history = [{"role": "user", "content": "Look", "images": [attached(picture())]}]
        with pytest.raises(InvalidRequest, match="cannot see images"):
            svc.stream_text("More?", model="demo-coder", messages=history)

    @pytest.mark.parametrize(("images", "words"), [
        ([attached(picture("BMP"), "scan.bmp")], "“scan.bmp” is a BMP image; only PNG, JPEG, WebP or GIF"),
        ([attached(b"%PDF-1.7 not a picture", "doc.png")], "“doc.png” is not an image"),
        ([attached(b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_IMAGE_BYTES, "huge.png")], "is 5.0 MB; the limit is 5 MB"),
        ([attached(picture(size=(64, 64)))] * 5, "5 images are attached; a message may carry at most 4"),
        ([attached(picture(size=(9000, 2)), "wide.png")], "9,000×2 pixels; the limit is 8,192 a side"),
        ([attached(picture()[:200], "cut.png")], "“cut.png” is damaged"),
        ([attached(b"")], "is empty (0 bytes)"),
    ])
    def test_bad_attachments_are_refused_in_words(self, svc: BlossomService, images: list[dict[str, Any]],
                                                  words: str) -> None:
        """Wrong type, not an image, too big, too many, too wide, damaged, empty: each says which rule."""
        before = demo_stats(svc)["chat"]
        with pytest.raises(InvalidRequest) as err:
            svc.generate_text("What is it?", model="demo-vision", images=images)
        assert words in err.value.message and err.value.hint
        assert demo_stats(svc)["chat"] == before

    def test_the_demo_backend_answers_400_for_a_data_url_that_is_no_image(self, svc: BlossomService) -> None:
        """OpenAI's error shape, straight from the backend."""
        url = "data:image/png;base64," + base64.b64encode(b"hello, not an image").decode()
        body = {"model": "demo-vision", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": url}}]}]}
        resp = httpx.post(f"{svc.backend.base_url}/v1/chat/completions", json=body, timeout=5)
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error" and "is not an image" in error["message"]


class TestKeysAndEvents:
    def test_different_images_never_share_an_answer(self, svc: BlossomService) -> None:
        """Same prompt, another image: a miss; the same image again: a hit."""
        a, b = picture(colour=(10, 200, 10)), picture(colour=(200, 200, 10))
        first = svc.generate_text("Colour?", model="demo-vision", images=[attached(a)])
        other = svc.generate_text("Colour?", model="demo-vision", images=[attached(b)])
        again = svc.generate_text("Colour?", model="demo-vision", images=[attached(a)])
        assert (first.cached, other.cached, again.cached) == (False, False, True)
        assert first.text != other.text and again.text == first.text

    def test_the_key_holds_the_hash_not_the_bytes(self) -> None:
        """``key_parts`` names the image by its sha256 and holds no base64."""
        png = picture()
        prepared = TextRequest("Colour?", images=(attached(png),)).prepare("demo-vision", 5000)
        parts = repr(prepared.key_parts)
        assert ImageInput(png).sha256 in parts and base64.b64encode(png).decode()[:40] not in parts

    def test_no_image_bytes_in_the_usage_store(self, tmp_path: Path) -> None:
        """The event keeps the prompt's text; no file the service writes holds the image."""
        service = make_service(tmp_path, store_prompts=True)
        png = picture(colour=(1, 2, 3))
        try:
            service.generate_text("Describe the secret picture", model="demo-vision", images=[attached(png)])
            service.flush_events()
            db = next(tmp_path.rglob("*.db"), None) or next(tmp_path.rglob("*.sqlite*"))
            with sqlite3.connect(db) as conn:
                prompts = [r[0] for r in conn.execute("SELECT prompt FROM events")]
        finally:
            service.close()
        assert prompts == ["Describe the secret picture"]
        b64 = base64.b64encode(png).decode()
        for f in tmp_path.rglob("*"):
            if f.is_file():
                blob = f.read_bytes()
                assert png[16:64] not in blob and b64[40:120].encode() not in blob, f


class TestFacadeAndUi:
    def test_the_service_names_the_models_that_see(self, svc: BlossomService) -> None:
        """``vision_models`` from the backend's input modalities; a handle asks the same."""
        assert svc.vision_models() == ["demo-vision"]
        assert svc.model_sees_images("demo-vision") and not svc.model_sees_images("demo-swift")
        assert svc.session("ana").vision_models() == ["demo-vision"]

    def test_uploaded_files_become_message_images(self) -> None:
        """``to_images`` reads each file's name, type and bytes; the rules are stated."""
        f = io.BytesIO(picture())
        f.name, f.type = "cat.png", "image/png"  # type: ignore[attr-defined]
        images = to_images([f])
        assert images == [{"name": "cat.png", "mime": "image/png", "data": f.getvalue()}]
        assert to_images(None) == []
        assert set(ACCEPT_TYPES) == {"png", "jpg", "jpeg", "webp", "gif"} and MAX_IMAGE_MB == 5
        assert limits_text(["demo-vision"]) == ("Attach up to 4 images (PNG, JPEG, WebP or GIF, 5 MB each) "
                                                "for a model that sees images: demo-vision.")
        assert check_image(ImageInput(images[0]["data"])).mime == "image/png"

    def test_the_model_facts_say_which_model_sees(self, svc: BlossomService) -> None:
        """The line beside a picker says "sees images" for demo-vision only."""
        from blossom_dash.ui.model_facts import facts_line

        assert "👁️ sees images" in facts_line("demo-vision", None, svc.model_info("text", "demo-vision"))
        assert "sees images" not in facts_line("demo-swift", None, svc.model_info("text", "demo-swift"))

    def test_a_page_can_warn_before_sending(self, svc: BlossomService) -> None:
        """``vision_warning``: words for a model that cannot see, None otherwise."""
        handle = svc.session("ana")
        images = [attached(picture())]
        assert vision_warning(handle, "demo-swift", images) == "demo-swift cannot see images; pick one of: demo-vision."
        assert vision_warning(handle, "demo-vision", images) is None
        assert vision_warning(handle, "demo-swift", []) is None

    def test_the_chat_input_value_splits_into_text_and_images(self) -> None:
        """``read_input`` takes None, a str, or a ChatInputValue-like mapping."""
        f = io.BytesIO(b"bytes")
        f.name, f.type = "a.gif", "image/gif"  # type: ignore[attr-defined]
        assert read_input(None) == (None, [])
        assert read_input("hi") == ("hi", [])
        assert read_input({"text": "", "files": [f]}) == ("", [{"name": "a.gif", "mime": "image/gif",
                                                                "data": b"bytes"}])
        assert CHAT_INPUT_ARGS == {"accept_file": "multiple", "file_type": ACCEPT_TYPES, "max_upload_size": 5}
