"""Saved chats in the Playground's sidebar and 👍/👎 under answers (``ui.history``), through a
tiny script (AppTest), in local mode and signed in as team members."""

from __future__ import annotations

import pytest
from pages_helpers import app, texts
from streamlit.testing.v1 import AppTest
from test_auth import AUTH

from blossom_dash import ui
from blossom_dash.gateway import Caller
from blossom_dash.ui.history import PAGE, relative_age

LOCAL = Caller("local", "t", role="admin")


def _script() -> None:
    import streamlit as st

    from blossom_dash import ui
    from blossom_dash.ui.history import answer_feedback, chat_history_sidebar, feedback_table

    handle = ui.session_handle()
    chat_history_sidebar(handle)
    for i, msg in enumerate(st.session_state.setdefault("playground_messages", [])):
        st.markdown(f"{msg['role']}: {msg['content']}")
        answer_feedback(handle, msg, key=f"fb{i}")
    st.caption(f"open chat: {st.session_state.get('playground_chat_id')}")
    feedback_table(handle)


def _turns_script() -> None:
    import streamlit as st

    from blossom_dash import ui
    from blossom_dash.ui.history import save_current_chat

    handle = ui.session_handle()
    prompt = st.chat_input("Ask", key="prompt")
    if prompt:
        st.session_state.setdefault("playground_messages", []).append({"role": "user", "content": prompt})
        st.session_state["playground_messages"].append({"role": "assistant", "content": f"About {prompt}"})
    st.caption(f"saved as: {save_current_chat(handle)}")


def _chat(prompt: str, rid: str = "", status: str = "ok") -> list[dict]:
    answer = {"role": "assistant", "content": f"About {prompt}", "model": "demo-swift", "status": status}
    if rid:
        answer["request_id"] = rid
    return [{"role": "user", "content": prompt}, answer]


def _started(user: dict | None = None) -> AppTest:
    at = AppTest.from_function(_script, default_timeout=30)
    if user is not None:
        at.secrets["auth"] = AUTH
        at.user = user
    return at.run()


def _titles(at: AppTest) -> list[str]:
    """The chats listed in the sidebar, as "title · age" (the open one's title is bold)."""
    out = []
    for b in at.sidebar.button:
        if b.key and b.key.startswith("history_open_"):
            title, age = b.label.split("  \n")
            assert age.startswith(":gray[:small[") and age.endswith("]]"), b.label
            out.append(f"{title} · {age.removeprefix(':gray[:small[').removesuffix(']]')}")
    return out


class TestSidebar:
    def test_lists_opens_and_starts_anew(self) -> None:
        """Saved chats are listed newest first with their age; opening one loads it; New chat empties."""
        at = _started()
        svc = ui.get_service()
        old = svc.save_chat(None, _chat("moving windows"), caller=LOCAL)
        new = svc.save_chat(None, _chat("token buckets"), caller=LOCAL)
        at.run()
        assert not at.exception
        assert _titles(at) == ["token buckets · just now", "moving windows · just now"]
        at.button(key=f"history_open_{old.id}").click().run()
        assert at.session_state["playground_chat_id"] == old.id
        assert "user: moving windows" in texts(at, "markdown")
        assert "**moving windows** · just now · open" in _titles(at)
        assert next(b for b in at.sidebar.button if b.key == f"history_open_{old.id}").proto.type == "secondary"
        at.button(key="history_new").click().run()
        assert at.session_state["playground_chat_id"] is None and at.session_state["playground_messages"] == []
        assert new.id in {b.key.removeprefix("history_open_") for b in at.sidebar.button if b.key}

    def test_search_rename_and_delete_after_confirming(self) -> None:
        """Search narrows the list; a rename shows at once; Delete stays disabled until confirmed."""
        at = _started()
        svc = ui.get_service()
        chat = svc.save_chat(None, _chat("moving windows"), caller=LOCAL)
        svc.save_chat(None, _chat("token buckets"), caller=LOCAL)
        at.run()
        at.text_input(key="history_search").set_value("WINDOW").run()
        assert _titles(at) == ["moving windows · just now"]
        at.text_input(key="history_search").set_value("nothing like it").run()
        assert "No chat holds “nothing like it”." in texts(at.sidebar, "caption")
        at.text_input(key="history_search").set_value("").run()
        at.text_input(key=f"history_title_{chat.id}").set_value("Windows, explained").run()
        at.button(key=f"history_rename_{chat.id}").click().run()
        assert "Windows, explained · just now" in _titles(at)
        svc.save_chat(None, _chat("![x](http://127.0.0.1:9/x.png) [see](http://127.0.0.1:9)"), caller=LOCAL)
        at.run()
        assert "\\[image: x\\] see (`http://127.0.0.1:9`) · just now" in _titles(at)  # a prompt loads nothing
        assert at.button(key=f"history_delete_{chat.id}").disabled
        at.checkbox(key=f"history_sure_{chat.id}").check().run()
        at.button(key=f"history_delete_{chat.id}").click().run()
        assert not at.exception and chat.id not in {b.key.removeprefix("history_open_") for b in at.sidebar.button
                                                    if b.key}
        assert "token buckets · just now" in _titles(at)

    def test_a_dozen_at_a_time(self) -> None:
        """More than a dozen chats: the newest twelve, then Show more."""
        at = _started()
        svc = ui.get_service()
        for n in range(PAGE + 2):
            svc.save_chat(None, _chat(f"question {n}"), caller=LOCAL)
        at.run()
        assert len(_titles(at)) == PAGE
        at.button(key="history_more").click().run()
        assert len(_titles(at)) == PAGE + 2 and not any(b.key == "history_more" for b in at.sidebar.button)

    def test_empty_state(self) -> None:
        """No chat yet: one line says chats are saved as you go."""
        at = _started()
        assert "No saved chats yet: each chat is saved as you go." in texts(at.sidebar, "caption")

    def test_team_members_see_only_their_own(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Signed in, a member lists their own chats only, and opening one works."""
        monkeypatch.setenv("BLOSSOM_DASH_ALLOWED_DOMAINS", "team.test")
        at = _started({"is_logged_in": True, "email": "mia@team.test"})
        assert not at.exception
        svc = ui.get_service()
        mine = svc.save_chat(None, _chat("mia's question"), caller=Caller("mia@team.test", role="member"))
        svc.save_chat(None, _chat("bo's question"), caller=Caller("bo@team.test", role="member"))
        at.run()
        assert _titles(at) == ["mia's question · just now"]
        at.button(key=f"history_open_{mine.id}").click().run()
        assert at.session_state["playground_chat_id"] == mine.id


class TestSaveAsYouGo:
    def test_each_turn_saves_under_one_id(self) -> None:
        """Nothing is saved before the first turn; the first gets an id, later turns keep it."""
        at = AppTest.from_function(_turns_script, default_timeout=30).run()
        assert "saved as: None" in texts(at, "caption")
        at.chat_input(key="prompt").set_value("first question").run()
        chat_id = at.session_state["playground_chat_id"]
        assert chat_id and f"saved as: {chat_id}" in texts(at, "caption")
        at.chat_input(key="prompt").set_value("second question").run()
        assert at.session_state["playground_chat_id"] == chat_id
        chat = ui.get_service().load_chat(chat_id, caller=LOCAL)
        assert chat.summary.title == "first question" and chat.summary.turns == 4

    def test_a_chat_over_a_cap_says_it_is_not_saved(self) -> None:
        """Past the 200-message cap the page warns, in words, and the chat goes on."""
        at = AppTest.from_function(_turns_script, default_timeout=30).run()
        at.session_state["playground_messages"] = [{"role": "user", "content": "x"}] * 200
        at.chat_input(key="prompt").set_value("one more").run()
        assert not at.exception
        assert any("This chat is not saved" in w and "holds 200" in w for w in texts(at, "warning"))
        side = AppTest.from_function(_script, default_timeout=30)
        side.session_state["history_unsaved"] = at.session_state["history_unsaved"]
        side.run()  # the next run (e.g. the page's rerun): the sidebar still says so
        assert any("This chat is not saved" in w for w in texts(side.sidebar, "warning"))


class TestAnswerFeedback:
    def test_vote_comment_and_clear_are_stored_and_saved_in_the_chat(self) -> None:
        """👍 stores the vote, keeps it in the message and the saved chat; a comment joins it;
        clearing removes both; the Monitor table counts it."""
        at = _started()
        svc = ui.get_service()
        chat = svc.save_chat(None, _chat("moving windows", rid="rid0000000000001"), caller=LOCAL)
        at.run()
        at.button(key=f"history_open_{chat.id}").click().run()
        at.feedback(key="fb1_thumbs_rid0000000000001").set_value(1).run()
        assert not at.exception
        assert at.session_state["playground_messages"][1]["feedback"] == {"score": 1, "comment": ""}
        assert svc.load_chat(chat.id, caller=LOCAL).messages[1]["feedback"] == {"score": 1, "comment": ""}
        at.text_area(key="fb1_comment_rid0000000000001").set_value("Clear and short").run()
        at.button(key="fb1_comment_save_rid0000000000001").click().run()
        assert svc.load_chat(chat.id, caller=LOCAL).messages[1]["feedback"]["comment"] == "Clear and short"
        assert "Saved with your vote." in texts(at, "caption")
        table = svc.feedback_by_model(caller=LOCAL)
        assert (int(table.up[0]), table.comments[0]) == (1, ["Clear and short"])
        assert any(df.value["model"].tolist() == ["demo-swift"] for df in at.dataframe)
        at.feedback(key="fb1_thumbs_rid0000000000001").set_value(None).run()
        assert "feedback" not in svc.load_chat(chat.id, caller=LOCAL).messages[1]
        assert svc.feedback_by_model(caller=LOCAL).empty

    def test_reopened_chat_shows_its_vote(self) -> None:
        """A saved 👎 is the widget's value when the chat is opened again."""
        at = _started()
        svc = ui.get_service()
        msgs = _chat("tokens", rid="rid0000000000002")
        msgs[1]["feedback"] = {"score": -1, "comment": "wrong"}
        chat = svc.save_chat(None, msgs, caller=LOCAL)
        at.run()
        at.button(key=f"history_open_{chat.id}").click().run()
        assert at.feedback(key="fb1_thumbs_rid0000000000002").value == 0  # thumbs down

    @pytest.mark.parametrize(("rid", "status"), [("", "ok"), ("rid0000000000003", "refused"),
                                                 ("rid0000000000004", "failed")])
    def test_no_thumbs_without_an_answer(self, rid: str, status: str) -> None:
        """No request id, or a refused or failed turn: nothing to vote on."""
        at = _started()
        chat = ui.get_service().save_chat(None, _chat("x", rid=rid, status=status), caller=LOCAL)
        at.run()
        at.button(key=f"history_open_{chat.id}").click().run()
        assert not at.feedback

    def test_a_member_reads_the_counts_and_only_their_own_comments(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Signed in as a member, the Monitor table counts everyone's votes but shows only their comments."""
        monkeypatch.setenv("BLOSSOM_DASH_ALLOWED_DOMAINS", "team.test")
        at = _started({"is_logged_in": True, "email": "mia@team.test"})
        svc = ui.get_service()
        svc.rate_answer("rid0000000000005", 1, model="demo-swift", comment="mia liked it",
                        caller=Caller("mia@team.test", role="member"))
        svc.rate_answer("rid0000000000005", -1, model="demo-swift", comment="bo did not",
                        caller=Caller("bo@team.test", role="member"))
        at.run()
        assert not at.exception
        table = next(df.value for df in at.dataframe if "share_up" in df.value.columns)
        assert table[["up", "down", "share_up", "comments"]].values.tolist() == [[1, 1, 50, "mia liked it"]]
        assert any("this table shows your own comments only" in c for c in texts(at, "caption"))

    def test_the_monitor_page_shows_the_table(self) -> None:
        """Monitor has the section, with a vote made in its range."""
        at = app("app_pages/monitor.py").run()
        ui.get_service().rate_answer("rid0000000000006", 1, model="demo-swift", caller=LOCAL)
        at.run()
        assert not at.exception
        assert "Answer feedback by model" in texts(at, "subheader")
        assert any("share_up" in df.value.columns and df.value.model.tolist() == ["demo-swift"]
                   for df in at.dataframe)

    def test_monitor_table_empty_state(self) -> None:
        """Without votes the Monitor section says so in words."""
        at = _started()
        assert any("No answer has a 👍 or 👎 yet" in i for i in texts(at, "info"))


def _facts_script() -> None:
    from blossom_dash import ui
    from blossom_dash.ui.model_facts import render_model_facts

    render_model_facts(ui.get_service(), "text", ["demo-swift", "demo-deep"])


class TestModelFacts:
    def test_picker_facts_show_the_share_of_thumbs_up(self) -> None:
        """Beside a text picker, a model with votes reads '👍 67 % of 3 votes on answers'; one without, nothing."""
        at = AppTest.from_function(_facts_script, default_timeout=30).run()
        svc = ui.get_service()
        for n, score in enumerate((1, 1, -1)):
            svc.rate_answer(f"rid00000000001{n}", score, model="demo-swift",
                            caller=Caller(f"u{n}@team.test", role="member"))
        svc._answer_votes = None  # the 30 s share would otherwise keep the first read (no votes)
        at.run()
        swift, deep = texts(at, "caption")[0].split("  \n")
        assert swift.endswith("· 👍 67 % of 3 votes on answers") and "👍" not in deep

    def test_line_with_votes(self) -> None:
        """One vote is singular; no votes add nothing."""
        from blossom_dash.ui.model_facts import facts_line

        assert facts_line("m", None, None, (1, 0)).endswith("· 👍 100 % of 1 vote on answers")
        assert facts_line("m", None, None, (0, 0)) == facts_line("m", None)


class TestRelativeAge:
    @pytest.mark.parametrize(("age_s", "words"), [(-5, "just now"), (59, "just now"), (61, "1 min ago"),
                                                  (7200, "2 h ago"), (3 * 86400, "3 d ago"),
                                                  (120 * 86400, "4 mo ago")])
    def test_words(self, age_s: float, words: str) -> None:
        """Ages read in a few characters."""
        assert relative_age(1_000_000 - age_s, now=1_000_000) == words
