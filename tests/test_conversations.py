"""Shared conversations: saved in the usage database, reopened by id, links that read well."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_service
from sqlalchemy import create_engine, inspect, text

from blossom_dash import InvalidRequest
from blossom_dash.features.conversations import ConversationStore, share_link

CHAT = [{"role": "user", "content": "What is   a moving\nwindow?"},
        {"role": "assistant", "content": "A window that slides.", "caption": "`demo-swift` · 12 ms",
         "code": "print('hi')"}]


class TestSaveAndLoad:
    def test_round_trip_survives_a_restart(self, tmp_path: Path) -> None:
        """A saved chat reopens by id, turns, captions and code intact, after the service restarts."""
        with make_service(tmp_path) as svc:
            saved = svc.session("ana", "s1").save_conversation(CHAT)
        with make_service(tmp_path) as svc:
            conv = svc.load_conversation(saved.id)
        assert conv.user == "ana" and conv.title == "What is a moving window?"
        assert [(t.role, t.content, t.caption, t.code) for t in conv.turns] == [
            ("user", CHAT[0]["content"], "", ""), ("assistant", "A window that slides.", "`demo-swift` · 12 ms",
                                                   "print('hi')")]

    def test_each_share_is_a_new_snapshot(self, tmp_path: Path) -> None:
        """Sharing twice gives two ids; the first link keeps what it showed."""
        with make_service(tmp_path) as svc:
            first = svc.save_conversation(CHAT)
            second = svc.save_conversation([*CHAT, {"role": "user", "content": "More"}])
            assert first.id != second.id
            assert len(svc.load_conversation(first.id).turns) == 2

    @pytest.mark.parametrize(("messages", "words"), [
        ([], "nothing to share"),
        ([{"role": "user", "content": "   "}], "nothing to share"),
        ([{"role": "system", "content": "x"}], "only user and assistant"),
    ])
    def test_bad_chats_are_refused_in_words(self, tmp_path: Path, messages: list, words: str) -> None:
        """An empty chat or a foreign role is an InvalidRequest that says why."""
        with make_service(tmp_path) as svc, pytest.raises(InvalidRequest) as info:
            svc.save_conversation(messages)
        assert words in info.value.message and info.value.hint

    @pytest.mark.parametrize("bad_id", ["nosuchconversation", "x", "../../etc", "a" * 40])
    def test_unknown_or_malformed_ids_are_words(self, tmp_path: Path, bad_id: str) -> None:
        """A wrong link says it opens nothing, whether well-formed or not."""
        with make_service(tmp_path) as svc, pytest.raises(InvalidRequest) as info:
            svc.load_conversation(bad_id)
        assert "does not open anything" in info.value.message

    def test_table_joins_an_existing_database(self, database_url: str) -> None:
        """A database (SQLite, PostgreSQL) made before this feature gets the table without a
        migration, its data kept."""
        engine = create_engine(database_url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE events (id INTEGER PRIMARY KEY, note TEXT)"))
            conn.execute(text("INSERT INTO events (id, note) VALUES (1, 'kept')"))
        store = ConversationStore(engine)
        ConversationStore(engine)  # idempotent
        assert {"events", "conversations"} <= set(inspect(engine).get_table_names())
        assert store.load(store.save(CHAT, user="bo").id).user == "bo"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT note FROM events")).scalar() == "kept"
        engine.dispose()


class TestShareLink:
    @pytest.mark.parametrize(("url", "link"), [
        ("http://localhost:8501", "http://localhost:8501/?conversation=abc123XYZ"),
        ("https://dash.example/app/playground?conversation=old#top",
         "https://dash.example/app/playground?conversation=abc123XYZ"),
        (None, "?conversation=abc123XYZ"),
    ])
    def test_links(self, url: str | None, link: str) -> None:
        """The page's URL with only the conversation parameter (an old one replaced)."""
        assert share_link(url, "abc123XYZ") == link
