"""The features' own tables (comparisons, conversations, the audit log) on SQLite and on
PostgreSQL: what one database stores, the other does too, including texts that do not
fit a column as they are."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from blossom_dash.features.compare_panels import Panel
from blossom_dash.features.compare_store import ComparisonStore
from blossom_dash.features.conversations import ConversationStore
from blossom_dash.telemetry.audit import AuditLog
from blossom_dash.telemetry.store import UsageStore

LONG_USER = "someone." + "x" * 300 + "@example.org"


@pytest.fixture
def store(database_url: str) -> Iterator[UsageStore]:
    """An empty usage store on each database."""
    s = UsageStore(database_url)
    yield s
    s.close()


def test_a_comparison_with_long_names_and_nul_is_stored_cut(store: UsageStore) -> None:
    """A user name over its column and a NUL in the prompt and an answer (PostgreSQL
    refuses both as they are) are stored cut; the rest reads back unchanged."""
    comps = ComparisonStore(store.engine)
    panels = [Panel(0, "m-a", text="fine\x00answer", latency_ms=12.5, prompt_tokens=3),
              Panel(1, "m-b", error_type="UpstreamError", error_message="502", error_hint="Try again."),
              Panel(2, "m-c", text="another answer", latency_ms=9.0)]  # a vote needs two answers
    saved = comps.save(kind="text", prompt="a\x00prompt", params={"max_tokens": 32, "note": "nul\x00"},
                       panels=panels, user=LONG_USER, session="s" * 100, backend="demo")
    comps.vote(saved.id, "m-a", user=LONG_USER, session="s1")
    back = comps.load(saved.id)
    assert (back.prompt, back.user, back.params) == ("aprompt", LONG_USER[:128], {"max_tokens": 32, "note": "nul\x00"})
    assert back.panels[0].text == "fineanswer" and back.panels[0].prompt_tokens == 3
    assert back.panels[1].error_message == "502" and back.vote is not None and back.vote.model == "m-a"
    board = comps.leaderboard("text")
    assert board.set_index("model").loc["m-a", ["votes", "wins"]].tolist() == [1, 1]


def test_a_conversation_with_nul_is_shared(store: UsageStore) -> None:
    """A chat whose first message holds a NUL gets a title without it; its turns come
    back exactly (they are stored as JSON, where NUL is escaped)."""
    convs = ConversationStore(store.engine)
    chat = [{"role": "user", "content": "why\x00 so?"}, {"role": "assistant", "content": "because"}]
    saved = convs.save(chat, user=LONG_USER)
    back = convs.load(saved.id)
    assert back.title == "why so?" and back.user == LONG_USER[:128]
    assert [t.content for t in back.turns] == ["why\x00 so?", "because"]


def test_the_audit_log_reads_back_newest_first(store: UsageStore) -> None:
    """Entries come back newest first, long users and actions cut to their columns."""
    audit = AuditLog(store.engine)
    audit.record("admin@example.org", "set_limits", {"rpm": 10}, {"rpm": 20})
    audit.record(LONG_USER, "a" * 100, None, ["x\x00y"])
    df = audit.frame()
    assert df["action"].tolist() == ["a" * 64, "set_limits"]
    assert df["user"].tolist() == [LONG_USER[:320], "admin@example.org"]
    assert df["new"].tolist()[1] == '{"rpm":20}'
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar() == 2
