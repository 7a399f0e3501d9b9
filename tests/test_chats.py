"""Saved chats (``features.chats``) and answer feedback (``features.chat_feedback``): stored
in the usage database (SQLite and PostgreSQL), owned by their user, reached through the
service with a ``Caller``."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from helpers import make_service, run_in_threads
from sqlalchemy import create_engine, inspect, text

from blossom_dash import BlossomService, InvalidRequest
from blossom_dash.errors import PermissionDenied
from blossom_dash.features.chat_feedback import FEEDBACK_COLUMNS, FeedbackStore
from blossom_dash.features.chats import MAX_IMAGE_BYTES, ChatStore, chat_title, normalize_messages
from blossom_dash.features.conversations import MAX_TURNS, ConversationStore
from blossom_dash.gateway import Caller

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
CHAT = [
    {"role": "user", "content": "What is a  moving\nwindow?", "images": [{"name": "plot.png", "mime": "image/png",
                                                                         "data": PNG}], "draft": "dropped"},
    {"role": "assistant", "content": "A window that slides.", "caption": "`demo-swift` · 12 ms", "code": "print()",
     "status": "stopped", "model": "demo-swift", "request_id": "abc123def4560001",
     "feedback": {"score": 1, "comment": "clear"}, "ui_only": object()},
    {"role": "user", "content": "And a token bucket?"},
    {"role": "assistant", "content": "", "status": "refused", "error": "Wait 55 s", "retry_at": 1_800_000_000.5},
]
ANA = Caller("ana@team.test", "s1", role="member")
BO = Caller("bo@team.test", "s2", role="member")
ADMIN = Caller("admin@team.test", "s3", role="admin")
VIEWER = Caller("vi@team.test", "s4", role="viewer")


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 1
        return self.now


@pytest.fixture
def svc(tmp_path: Path) -> BlossomService:
    with make_service(tmp_path) as service:
        yield service


class TestStore:
    def test_round_trip_keeps_every_contract_key(self, database_url: str) -> None:
        """Every key of the message contract comes back as saved (image bytes as bytes), unknown keys do not."""
        engine = create_engine(database_url)
        store = ChatStore(engine)
        saved = store.save(None, CHAT, user="ana")
        chat = store.load(saved.id, user="ana")
        assert chat.summary.title == "What is a moving window?" and chat.summary.turns == 4
        first, answer, _, refused = chat.messages
        assert first["images"] == [{"name": "plot.png", "mime": "image/png", "data": PNG}]
        assert "draft" not in first and "ui_only" not in answer
        assert answer == {"role": "assistant", "content": "A window that slides.", "caption": "`demo-swift` · 12 ms",
                          "code": "print()", "status": "stopped", "model": "demo-swift",
                          "request_id": "abc123def4560001", "feedback": {"score": 1, "comment": "clear"}}
        assert refused == {"role": "assistant", "content": "", "status": "refused", "error": "Wait 55 s",
                           "retry_at": 1_800_000_000.5}
        with engine.connect() as conn:  # JSON in the database holds the image as base64
            body = conn.execute(text("SELECT messages FROM chats")).scalar()
        assert base64.b64encode(PNG).decode() in body
        engine.dispose()

    def test_joins_an_existing_database_beside_shared_conversations(self, database_url: str) -> None:
        """A database made before saved chats gets the tables; shared permalinks still open."""
        engine = create_engine(database_url)
        shared = ConversationStore(engine)
        link = shared.save(CHAT[:2], user="ana")
        ChatStore(engine), ChatStore(engine), FeedbackStore(engine)  # idempotent
        assert {"chats", "answer_feedback", "conversations"} <= set(inspect(engine).get_table_names())
        assert shared.load(link.id).title == "What is a moving window?"
        engine.dispose()

    def test_upsert_keeps_the_id_and_follows_the_first_prompt_until_renamed(self, database_url: str) -> None:
        """Saving again replaces the messages under the same id; a rename sticks through later saves."""
        engine = create_engine(database_url)
        store = ChatStore(engine, clock=FakeClock())
        first = store.save(None, CHAT[:1], user="ana")
        again = store.save(first.id, CHAT, user="ana")
        assert again.id == first.id and again.turns == 4 and again.updated > first.updated
        store.rename(first.id, "  Windows   and buckets ", user="ana")
        after = store.save(first.id, [{"role": "user", "content": "Something else"}], user="ana")
        assert after.title == "Windows and buckets"
        assert [c.id for c in store.list("ana")] == [first.id]
        engine.dispose()

    def test_list_is_newest_first_and_searches_title_and_text(self, database_url: str) -> None:
        """Search is case-insensitive over titles and every message's text, % and _ taken literally."""
        engine = create_engine(database_url)
        store = ChatStore(engine, clock=FakeClock())
        a = store.save(None, [{"role": "user", "content": "Rate limits"},
                              {"role": "assistant", "content": "A Moving Window counts"}], user="ana")
        b = store.save(None, [{"role": "user", "content": "Cache TTL at 100%"}], user="ana")
        store.save(None, [{"role": "user", "content": "moving house"}], user="bo")
        assert [c.id for c in store.list("ana")] == [b.id, a.id]
        assert [c.id for c in store.list("ana", search="moving WINDOW")] == [a.id]
        assert [c.id for c in store.list("ana", search="100%")] == [b.id]
        assert [c.id for c in store.list("ana", search="%")] == [b.id]
        assert store.list("ana", search="_") == []
        assert store.list("ana", search="house") == []  # bo's chat is not ana's
        store.rename(a.id, "Limits explained", user="ana")
        assert [c.id for c in store.list("ana", search="explained")] == [a.id]
        assert len(store.list("ana", limit=1)) == 1
        engine.dispose()


class TestLimits:
    def test_turns_cap(self) -> None:
        """More than MAX_TURNS messages is refused in words."""
        with pytest.raises(InvalidRequest) as info:
            normalize_messages([{"role": "user", "content": "x"}] * (MAX_TURNS + 1))
        assert "a saved chat holds 200" in info.value.message and "new chat" in info.value.hint

    def test_image_bytes_cap(self) -> None:
        """Images over MAX_IMAGE_BYTES in one chat are refused, saying the cap."""
        big = {"name": "a.png", "mime": "image/png", "data": b"\0" * (MAX_IMAGE_BYTES // 2 + 1)}
        with pytest.raises(InvalidRequest) as info:
            normalize_messages([{"role": "user", "content": "x", "images": [big]},
                                {"role": "user", "content": "y", "images": [big]}])
        assert "holds 8 MiB of images" in info.value.message

    @pytest.mark.parametrize(("messages", "words"), [
        ([], "the chat is empty"),
        ([{"role": "system", "content": "x"}], "only user and assistant"),
        ([{"role": "assistant", "content": "x", "status": "weird"}], "status 'weird'"),
        ([{"role": "user", "content": "x", "images": [{"mime": "text/plain", "data": b"x"}]}], "only images"),
    ])
    def test_bad_chats_are_words(self, messages: list, words: str) -> None:
        """An empty chat, a foreign role or status, a non-image attachment: InvalidRequest in words."""
        with pytest.raises(InvalidRequest) as info:
            normalize_messages(messages)
        assert words in info.value.message and info.value.hint

    def test_title_is_one_short_line(self) -> None:
        """The title is the first user prompt, whitespace folded, cut with an ellipsis."""
        assert chat_title([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "a\n b " * 40}]) \
            .endswith("…")
        assert chat_title([]) == "New chat"


class TestOwnership:
    def test_only_the_owner_opens_renames_and_lists(self, svc: BlossomService) -> None:
        """Another member (and an admin) get PermissionDenied in words; lists are one's own."""
        chat = svc.save_chat(None, CHAT, caller=ANA)
        for caller in (BO, ADMIN):
            with pytest.raises(PermissionDenied) as info:
                svc.load_chat(chat.id, caller=caller)
            assert "belongs to another user" in info.value.message
            with pytest.raises(PermissionDenied):
                svc.rename_chat(chat.id, "mine now", caller=caller)
            with pytest.raises(PermissionDenied):
                svc.save_chat(chat.id, CHAT, caller=caller)
            assert svc.list_chats(caller=caller) == []
        assert svc.load_chat(chat.id, caller=ANA).messages[0]["content"] == CHAT[0]["content"]

    def test_delete_by_owner_or_admin_only(self, svc: BlossomService) -> None:
        """A member cannot delete another's chat; the owner can; an admin can, audited."""
        a, b = svc.save_chat(None, CHAT, caller=ANA), svc.save_chat(None, CHAT, caller=ANA)
        with pytest.raises(PermissionDenied):
            svc.delete_chat(a.id, caller=BO)
        assert svc.delete_chat(a.id, caller=ANA) is True
        assert svc.delete_chat(a.id, caller=ANA) is False  # already gone
        assert svc.delete_chat(b.id, caller=ADMIN) is True
        assert "delete_chat" in set(svc.audit_entries(caller=ADMIN)["action"])
        with pytest.raises(InvalidRequest) as info:
            svc.load_chat(a.id, caller=ANA)
        assert "no longer exists" in info.value.message

    def test_saving_a_deleted_chat_starts_a_new_one(self, svc: BlossomService) -> None:
        """A chat deleted in another tab is saved under a new id rather than lost."""
        chat = svc.save_chat(None, CHAT, caller=ANA)
        svc.delete_chat(chat.id, caller=ANA)
        again = svc.save_chat(chat.id, CHAT, caller=ANA)
        assert again.id != chat.id and svc.load_chat(again.id, caller=ANA).summary.turns == 4

    def test_a_viewer_cannot_save_or_vote(self, svc: BlossomService) -> None:
        """Viewers read aggregates only: saving a chat or voting is PermissionDenied in words."""
        with pytest.raises(PermissionDenied) as info:
            svc.save_chat(None, CHAT, caller=VIEWER)
        assert "viewer cannot save chats" in info.value.message
        with pytest.raises(PermissionDenied):
            svc.rate_answer("abc123def4560001", 1, model="m", caller=VIEWER)

    def test_the_handle_saves_as_its_user(self, svc: BlossomService) -> None:
        """The session handle's methods act as the session's user."""
        handle = svc.session("ana@team.test", "s1")
        chat = handle.save_chat(None, CHAT)
        assert [c.id for c in handle.list_chats("window")] == [chat.id]
        assert handle.rename_chat(chat.id, "Windows").title == "Windows"
        assert handle.load_chat(chat.id).summary.title == "Windows"
        assert svc.session("bo@team.test", "s2").list_chats() == []
        assert handle.delete_chat(chat.id)


class TestFeedback:
    def test_one_vote_per_user_replace_and_clear(self, database_url: str) -> None:
        """Voting again replaces the vote; None removes it; each user has their own."""
        engine = create_engine(database_url)
        store = FeedbackStore(engine, clock=FakeClock())
        store.vote("req1", 1, user="ana", model="demo-swift", comment="good")
        store.vote("req1", -1, user="ana", model="demo-swift", comment="on second thought, wrong")
        store.vote("req1", 1, user="bo", model="demo-swift")
        store.vote("req2", -1, user="bo", model="demo-deep")
        table = store.by_model(all_comments=True)
        assert list(table.columns) == list(FEEDBACK_COLUMNS)
        rows = {r.model: r for r in table.itertuples()}
        assert (rows["demo-swift"].up, rows["demo-swift"].down, rows["demo-swift"].votes) == (1, 1, 2)
        assert rows["demo-swift"].share_up == 0.5 and rows["demo-swift"].comments == ["on second thought, wrong"]
        assert store.vote("req1", None, user="ana", model="") is None
        rows = {r.model: r for r in store.by_model().itertuples()}
        assert (rows["demo-swift"].up, rows["demo-swift"].down) == (1, 0) and rows["demo-swift"].comments == []
        assert list(store.by_model(since_ts=10**10).model) == []
        engine.dispose()

    def test_votes_at_once_leave_one(self, database_url: str) -> None:
        """The same user voting on one answer from several tabs at once: no error, one vote stays."""
        engine = create_engine(database_url, pool_size=8)
        store = FeedbackStore(engine)
        errors = run_in_threads(lambda k: store.vote("req9", 1 if k % 2 else -1, user="ana", model="m"), 8)
        assert errors == []
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM answer_feedback")).scalar() == 1
        engine.dispose()

    @pytest.mark.parametrize(("kwargs", "words"), [
        ({"request_id": "", "score": 1}, "no request id"),
        ({"request_id": "r1", "score": 2}, "not 2"),
        ({"request_id": "r1", "score": 1, "comment": "x" * 1001}, "1,001 characters"),
    ])
    def test_bad_votes_are_words(self, svc: BlossomService, kwargs: dict, words: str) -> None:
        """A missing request id, a score other than ±1, a comment over 1,000 characters."""
        with pytest.raises(InvalidRequest) as info:
            svc.rate_answer(**kwargs, model="demo-swift", caller=ANA)
        assert words in info.value.message

    def test_model_is_read_from_the_answers_event(self, svc: BlossomService) -> None:
        """Without a model the vote takes the one on the answer's event."""
        result = svc.session("ana@team.test", "s1").generate_text("hello", model="demo-swift")
        vote = svc.rate_answer(result.request_id, 1, caller=ANA)
        assert vote is not None and vote.model == result.model

    def test_who_reads_which_comments(self, svc: BlossomService) -> None:
        """Counts for everyone; comments: an admin all, a member their own, a viewer none."""
        svc.rate_answer("r1", 1, model="demo-swift", comment="ana's words", caller=ANA)
        svc.rate_answer("r1", -1, model="demo-swift", comment="bo's words", caller=BO)

        def comments(caller: Caller) -> list[str]:
            table = svc.feedback_by_model(caller=caller)
            assert (int(table.up[0]), int(table.down[0])) == (1, 1)
            return sorted(table.comments[0])

        assert comments(ADMIN) == ["ana's words", "bo's words"]
        assert comments(ANA) == ["ana's words"]
        assert comments(VIEWER) == []
        assert svc.feedback_by_model(60, caller=ANA, now=10**10).empty

    def test_answer_votes_are_the_teams_counts(self, svc: BlossomService) -> None:
        """The model facts' figures: every user's 👍 and 👎 per model, no comment."""
        svc.rate_answer("r1", 1, model="demo-swift", comment="words", caller=ANA)
        svc.rate_answer("r1", -1, model="demo-swift", caller=BO)
        svc.rate_answer("r2", 1, model="demo-deep", caller=BO)
        assert svc.answer_votes() == {"demo-swift": (1, 1), "demo-deep": (1, 0)}
