"""The session gallery's list logic (``blossom_dash.gallery``): order, de-duplication, bounds."""

from __future__ import annotations

import random

from blossom_dash import ImageResult
from blossom_dash.features.gallery import GalleryItem, add_image, markdown_text, new_seed, total_bytes


def image(seed: int, *, nbytes: int = 10, model: str = "demo-sketch", rid: str | None = None) -> ImageResult:
    """An ImageResult with ``nbytes`` of data (the list logic never looks inside)."""
    return ImageResult(b"x" * nbytes, "image/png", 64, 64, model, "demo", seed, 12.0, False, rid or f"r{seed}")


class TestAddImage:
    def test_newest_first_and_input_untouched(self) -> None:
        """The new image comes first; the list passed in is not modified."""
        one = add_image([], image(1), "fox", now=1.0)
        two = add_image(one, image(2), "fox", now=2.0)
        assert [i.image.seed for i in two] == [2, 1]
        assert [i.image.seed for i in one] == [1]

    def test_same_picture_moves_to_the_front(self) -> None:
        """Same model, prompt, seed and size (e.g. a cache hit) is not added twice."""
        items = add_image(add_image([], image(1, rid="a"), "fox"), image(2), "fox")
        again = add_image(items, image(1, rid="b"), " fox ")
        assert [(i.image.seed, i.id) for i in again] == [(1, "b"), (2, "r2")]
        assert len(add_image(again, image(1, model="demo-mosaic"), "fox")) == 3

    def test_bounded_by_count(self) -> None:
        """At most ``max_images`` remain: the oldest drop off."""
        items: list[GalleryItem] = []
        for seed in range(55):
            items = add_image(items, image(seed), "fox", max_images=50)
        assert len(items) == 50
        assert items[0].image.seed == 54 and items[-1].image.seed == 5

    def test_bounded_by_bytes(self) -> None:
        """The bytes bound drops the oldest, but the newest image always stays."""
        items: list[GalleryItem] = []
        for seed in range(5):
            items = add_image(items, image(seed, nbytes=40), "fox", max_bytes=100)
        assert [i.image.seed for i in items] == [4, 3] and total_bytes(items) == 80
        assert [i.image.seed for i in add_image(items, image(9, nbytes=500), "fox", max_bytes=100)] == [9]


class TestHelpers:
    def test_new_seed_differs(self) -> None:
        """A regenerate seed is never the item's own, even when the generator offers it."""
        item = GalleryItem(image(3), "fox", 0.0)

        class Stubborn(random.Random):
            calls = 0

            def randint(self, a: int, b: int) -> int:
                self.calls += 1
                return 3 if self.calls < 3 else 4

        assert new_seed(item, Stubborn()) == 4

    def test_item_labels(self) -> None:
        """Size and file name come from the image."""
        item = GalleryItem(image(42), "fox", 0.0)
        assert item.size == "64×64" and item.file_name == "blossom-demo-sketch-42.png"

    def test_markdown_text_is_escaped_and_clipped(self) -> None:
        """A prompt shows as typed (no heading, link or emphasis) and long ones are clipped."""
        assert markdown_text("# *a* [b](c)") == r"\# \*a\* \[b\]\(c\)"
        assert markdown_text("word " * 100, limit=20).endswith("…")
        assert len(markdown_text("word " * 100, limit=20)) == 20
