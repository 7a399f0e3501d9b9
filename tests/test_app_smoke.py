"""Smoke test: the entry point and every page run without an exception."""

from __future__ import annotations

import pytest
from pages_helpers import ROOT, app, texts

PAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "app_pages").glob("*.py"))


class TestSmoke:
    def test_app_opens_on_the_playground(self) -> None:
        """app.py routes to the Playground by default and names the live backend."""
        at = app("app.py").run()
        assert not at.exception
        assert [t.value for t in at.title] == ["Playground"]
        assert any("DEMO BACKEND" in c for c in texts(at, "caption"))

    @pytest.mark.parametrize("page", PAGES)
    def test_every_page_runs(self, page: str) -> None:
        """Each page runs on its own, shows no error, and says which backend is live."""
        at = app(page).run()
        assert not at.exception, at.exception
        assert not at.error, texts(at, "error")
        assert any("DEMO BACKEND" in c for c in texts(at, "caption"))

    @pytest.mark.parametrize("page", PAGES)
    def test_every_page_has_a_docstring(self, page: str) -> None:
        """Every page starts with a docstring saying what it is for."""
        source = (ROOT / page).read_text(encoding="utf-8")
        assert source.startswith('"""') and len(source.split('"""')[1]) > 20

    def test_navigation_reaches_every_page(self) -> None:
        """Switching pages from app.py renders each page's title."""
        at = app("app.py").run()
        for page, title in (("app_pages/monitor.py", "Monitor"), ("app_pages/controls.py", "Controls")):
            at.switch_page(page).run()
            assert not at.exception
            assert [t.value for t in at.title] == [title]

    def test_bad_setting_is_a_message_not_a_traceback(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An invalid BLOSSOM_DASH_ variable shows which setting is wrong."""
        monkeypatch.setenv("BLOSSOM_DASH_BACKEND", "ftp://nowhere")
        at = app("app.py").run()
        assert not at.exception
        assert any("BLOSSOM_DASH_BACKEND" in e for e in texts(at, "error"))
