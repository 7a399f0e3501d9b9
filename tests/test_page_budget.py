"""Budgets on the pages: Controls sets them (admin), the Playground refuses over budget in
words, the sidebar warns from 80 %; bad input is a message, not a traceback."""

from __future__ import annotations

from pages_helpers import app, texts


def _apply(at, **boxes: str):  # type: ignore[no-untyped-def]
    for key, value in boxes.items():
        at.text_input(key=f"controls_budget_{key}").set_value(value)
    return next(b for b in at.button if b.label == "Apply budgets").click().run()


class TestBudgetControls:
    def test_a_daily_request_budget_refuses_the_next_request(self) -> None:
        """A budget of 2 requests a day: two prompts answered, the sidebar warns, the third is refused in words."""
        at = _apply(app("app_pages/controls.py").run(), user_day_requests="2")
        assert not at.exception
        assert any("Your daily budget: 0 of 2 requests (0%)" in c for c in texts(at, "caption")), texts(at, "caption")
        chat = app("app_pages/playground.py").run()
        chat.chat_input(key="playground_prompt").set_value("one").run()
        chat.chat_input(key="playground_prompt").set_value("two").run()
        chat.chat_input(key="playground_prompt").set_value("three").run()
        assert not chat.exception
        warnings = texts(chat, "warning")
        assert any("You have made 2 of the 2 requests your daily budget allows" in w and "resets at 00:00 UTC" in w
                   for w in warnings), warnings
        at = app("app_pages/controls.py").run()
        assert any("Your daily budget: 2 of 2 requests (100%)" in e for e in texts(at, "error"))
        home = app("app.py").run()  # the shared sidebar
        assert any("Your daily budget: 2 of 2 requests (100%)" in e for e in texts(home, "error")), texts(home, "error")

    def test_warns_from_80_percent(self) -> None:
        """At 4 of 5 requests the sidebar warns, before anything is refused."""
        assert not _apply(app("app_pages/controls.py").run(), team_day_requests="5").exception
        chat = app("app_pages/playground.py").run()
        for k in range(4):
            chat.chat_input(key="playground_prompt").set_value(f"p{k}").run()
        home = app("app.py").run()
        warnings = texts(home, "warning")
        assert any("The team's daily budget: 4 of 5 requests (80%)" in w for w in warnings), warnings
        assert not texts(home, "error")

    def test_bad_input_is_a_message(self) -> None:
        """A budget that is not a number is refused with what to do; nothing changes."""
        at = _apply(app("app_pages/controls.py").run(), team_day="lots")
        assert not at.exception
        assert any("Budgets not applied: team day: 'lots' is not a number" in e for e in texts(at, "error"))
        at = _apply(at, team_day="-1")
        assert any("must be at least 0" in e for e in texts(at, "error"))


class TestBatchPreview:
    def test_estimate_beside_the_budget(self) -> None:
        """The Batch preview says when a job's estimate is over the budget left (it will pause), else the room left."""
        at = _apply(app("app_pages/controls.py").run(), user_day="0.0001")
        data = ("prompt\n" + "".join(f"question {i}\n" for i in range(50))).encode()
        batch = app("app_pages/batch.py").run()
        batch = batch.file_uploader(key="batch_file").set_value(("p.csv", data, "text/csv")).run()
        assert not batch.exception
        assert any("more than your daily budget has left (0.0001 pollen)" in w and "pauses" in w
                   for w in texts(batch, "warning")), texts(batch, "warning")
        _apply(at, user_day="1000")
        batch = app("app_pages/batch.py").run()
        batch = batch.file_uploader(key="batch_file").set_value(("p.csv", data, "text/csv")).run()
        assert any(c.startswith("Within your daily budget: 1000 pollen left") for c in texts(batch, "caption"))
