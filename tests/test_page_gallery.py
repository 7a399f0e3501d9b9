"""Gallery page: this session's images, newest first; download and regenerate each."""

from __future__ import annotations

from typing import Any

from pages_helpers import app, queue_fault, texts
from streamlit.testing.v1 import AppTest


def _generate(seeds: tuple[int, ...], prompt: str = "a lighthouse at dawn") -> list[Any]:
    """Generate images on the Playground and return its session's gallery list."""
    at = app("app_pages/image.py").run()
    at.text_area(key="playground_image_prompt").set_value(prompt)
    at.selectbox(key="playground_image_size").set_value("Square 512×512")
    for seed in seeds:
        at.number_input(key="playground_image_seed").set_value(seed)
        next(b for b in at.button if "Generate image" in str(b.label)).click().run()
    assert not at.exception
    return list(at.session_state["gallery_images"])


def _gallery(items: list[Any]) -> AppTest:
    """The Gallery page in a session that already holds ``items``."""
    at = app("app_pages/gallery.py")
    at.session_state["gallery_images"] = items
    return at.run()


class TestGallery:
    def test_empty_gallery_says_how_to_fill_it(self) -> None:
        """With no images the page says where to make one, and shows no grid."""
        at = app("app_pages/gallery.py").run()
        assert not at.exception
        info = " ".join(texts(at, "info"))
        assert "empty" in info and "**Image** page" in info and "**Compare**" in info
        assert not at.get("image") and not at.get("download_button")

    def test_images_show_newest_first_with_their_figures(self) -> None:
        """Playground images appear newest first with prompt, model, seed, size and latency, each downloadable."""
        items = _generate((7, 8))
        at = _gallery(items)
        assert not at.exception
        captions = [c for c in texts(at, "caption") if "seed" in c]
        assert len(captions) == 2
        assert "seed 8" in captions[0] and "seed 7" in captions[1]
        assert all("512×512" in c and " ms" in c and "demo-" in c for c in captions)
        assert any("lighthouse at dawn" in m for m in texts(at, "markdown"))
        assert len(at.get("image")) == 2
        keys = [b.key for b in at.get("download_button")]
        assert keys == [f"gallery_download_{i.id}" for i in items]
        assert any(f"last {50} images" in c for c in texts(at, "caption")), "the bound is stated"

    def test_regenerate_adds_a_new_image_with_a_new_seed(self) -> None:
        """Regenerate adds the same prompt, model and size with another seed, first; the original stays."""
        items = _generate((7,))
        at = _gallery(items)
        at.button(key=f"gallery_regenerate_{items[0].id}").click().run()
        assert not at.exception and not at.error
        after = at.session_state["gallery_images"]
        assert len(after) == 2 and after[1].id == items[0].id
        new, old = after[0].image, after[1].image
        assert (new.model, new.width, new.height, after[0].prompt) == (old.model, old.width, old.height,
                                                                      after[1].prompt)
        assert new.seed != old.seed and new.data != old.data
        assert len(at.get("download_button")) == 2

    def test_regenerate_failure_is_a_message(self) -> None:
        """A backend failure while regenerating shows words, and the gallery keeps what it had."""
        items = _generate((7,))
        at = _gallery(items)
        queue_fault(at, "503", count=5)
        at.button(key=f"gallery_regenerate_{items[0].id}").click().run()
        assert not at.exception
        assert any("HTTP 503" in e for e in texts(at, "error"))
        assert [i.id for i in at.session_state["gallery_images"]] == [items[0].id]

    def test_clear_empties_the_gallery(self) -> None:
        """Clear gallery removes every image and shows how to fill it again."""
        at = _gallery(_generate((7,)))
        at.button(key="gallery_clear").click().run()
        assert at.session_state["gallery_images"] == []
        assert any("empty" in i for i in texts(at, "info"))

    def test_prompt_is_shown_as_typed(self) -> None:
        """A prompt with markdown characters is shown literally, not as a heading or link."""
        at = _gallery(_generate((7,), prompt="# [not a link](x)"))
        assert any(m == r"\# \[not a link\]\(x\)" for m in texts(at, "markdown"))
