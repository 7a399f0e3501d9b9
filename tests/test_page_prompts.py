"""Prompts page and ``template_picker``: create, version, label, diff, try it; pick and fill a template."""

from __future__ import annotations

from pages_helpers import app, texts
from streamlit.testing.v1 import AppTest


def _create(at: AppTest, name: str = "summary", prompt: str = "Summarise {text} in {words} words.") -> AppTest:
    at.text_input(key="prompts_new_name").set_value(name)
    at.text_area(key="prompts_new_prompt").set_value(prompt)
    return at.button(key="prompts_create").click().run()


class TestPromptsPage:
    def test_empty_library_says_what_to_do(self) -> None:
        """With no templates the page says how to make one."""
        at = app("app_pages/prompts.py").run()
        assert not at.exception
        assert any("No templates yet" in i for i in texts(at, "info"))

    def test_create_version_label_and_diff(self) -> None:
        """Create a template, save version 2, label it production, and see the diff from v1."""
        at = _create(app("app_pages/prompts.py").run())
        assert not at.exception and not at.error
        tid = at.session_state["prompts_selected"]
        assert any("`{text}`" in c and "`{words}`" in c for c in texts(at, "caption"))
        at.text_area(key=f"prompts_edit_{tid}_1_prompt").set_value("Summarise {text} in at most {words} words.")
        at.text_input(key=f"prompts_edit_{tid}_1_message").set_value("at most")
        at.button(key=f"prompts_save_{tid}").click().run()
        assert not at.exception and not at.error
        at.text_input(key=f"prompts_label_{tid}").set_value("production")
        at.selectbox(key=f"prompts_label_version_{tid}").set_value(2)
        at.button(key=f"prompts_set_label_{tid}").click().run()
        assert not at.exception and not at.error
        label = at.selectbox(key="prompts_selected")
        assert "production→v2" in label.format_func(label.value) and "v2" in label.format_func(label.value)
        diff = next(c.value for c in at.code if c.language == "diff")
        assert "-Summarise {text} in {words} words." in diff and "+Summarise {text} in at most {words} words." in diff
        assert any("production" in c and "new → v2" in c for c in texts(at, "caption")), "the move is recorded"

    def test_try_it_renders_the_filled_prompt(self) -> None:
        """Filling every variable shows the rendered prompt; values with braces stay literal."""
        at = _create(app("app_pages/prompts.py").run())
        tid = at.session_state["prompts_selected"]
        at.text_input(key=f"prompts_try_{tid}_text").set_value("the {report}").run()
        assert any("Fill in" in c and "{words}" in c for c in texts(at, "caption"))
        at.text_input(key=f"prompts_try_{tid}_words").set_value("20").run()
        assert any(c.value == "Summarise the {report} in 20 words." for c in at.code)

    def test_bad_template_is_refused_in_words(self) -> None:
        """A positional field is refused with what to write instead, no traceback."""
        at = _create(app("app_pages/prompts.py").run(), prompt="Summarise {}")
        assert not at.exception
        assert any("positional" in e for e in texts(at, "error") + texts(at, "warning"))

    def test_delete_needs_confirmation(self) -> None:
        """Delete is disabled until confirmed; then the template is gone."""
        at = _create(app("app_pages/prompts.py").run())
        tid = at.session_state["prompts_selected"]
        assert at.button(key=f"prompts_delete_{tid}").disabled
        at.checkbox(key=f"prompts_sure_{tid}").check().run()
        at.button(key=f"prompts_delete_{tid}").click().run()
        assert not at.exception and any("No templates yet" in i for i in texts(at, "info"))


class TestSomeoneElsesTemplate:
    def test_team_template_is_usable_not_editable(self) -> None:
        """Another user's team template is listed with its owner and can be tried; only
        its owner edits it (an admin may delete it)."""
        from blossom_dash import ui

        app("app_pages/prompts.py").run()
        bob = ui.get_service().session("bob", "s2")
        t = bob.create_prompt("bobs", "Hello {who}", visibility="team")
        at = app("app_pages/prompts.py").run()
        assert not at.exception
        box = at.selectbox(key="prompts_selected")
        assert "by bob" in box.format_func(box.value) and "team" in box.format_func(box.value)
        at.text_input(key=f"prompts_try_{t.id}_who").set_value("you").run()
        assert any(c.value == "Hello you" for c in at.code)
        keys = {b.key for b in at.button}
        assert f"prompts_save_{t.id}" not in keys and f"prompts_set_label_{t.id}" not in keys
        assert f"prompts_delete_{t.id}" in keys, "local is an admin"


def _picker_script() -> None:
    import streamlit as st

    from blossom_dash import ui
    from blossom_dash.ui.prompts import template_picker

    handle = ui.session_handle()
    if not handle.prompt_templates():
        handle.create_prompt("ask", "Explain {topic} to a {audience}.", system="Be brief.", model="demo-swift",
                             temperature=0.3)
    got = template_picker(handle, "test_picker")
    st.session_state["picked"] = got


class TestTemplatePicker:
    def test_returns_the_rendered_prompt_once_filled(self) -> None:
        """Nothing until a template is picked and every variable filled; then system, prompt and parameters."""
        at = AppTest.from_function(_picker_script, default_timeout=30).run()
        assert not at.exception and at.session_state["picked"] is None
        at.selectbox(key="test_picker_template").select_index(1).run()
        tid = at.selectbox(key="test_picker_template").value
        assert at.session_state["picked"] is None
        at.text_input(key=f"test_picker_{tid}_topic").set_value("moving windows")
        at.text_input(key=f"test_picker_{tid}_audience").set_value("child").run()
        got = at.session_state["picked"]
        assert (got.system, got.prompt, got.model, got.temperature, got.ref) == (
            "Be brief.", "Explain moving windows to a child.", "demo-swift", 0.3, "ask@1")

    def test_production_label_is_the_default(self) -> None:
        """When a template has a production label, the picker starts on it, not on the latest version."""
        at = AppTest.from_function(_picker_script, default_timeout=30).run()
        from blossom_dash import ui

        handle = ui.get_service().session("local", "", role="admin")
        t = handle.prompt_templates()[0]
        handle.add_prompt_version(t.id, "Newer {topic} for {audience}.")
        handle.set_prompt_label(t.id, "production", 1)
        at.selectbox(key="test_picker_template").select_index(1).run()
        assert at.selectbox(key=f"test_picker_version_{t.id}").value == "production"
        at.text_input(key=f"test_picker_{t.id}_topic").set_value("x")
        at.text_input(key=f"test_picker_{t.id}_audience").set_value("y").run()
        assert at.session_state["picked"].ref == "ask@1"
