"""Compare page: side-by-side streamed answers, per-column errors, votes, leaderboard, permalinks, images."""

from __future__ import annotations

import random
import re
from typing import Any

import httpx
from pages_helpers import app, demo_url, texts
from streamlit.testing.v1 import AppTest

from blossom_dash.features import compare as cmp
from blossom_dash.features.gallery import GALLERY_KEY

PAGE = "app_pages/compare.py"


def _compare(models: list[str], prompt: str = "What is p95 latency?") -> AppTest:
    at = app(PAGE).run()
    at.text_area(key="compare_prompt").set_value(prompt)
    at.multiselect(key="compare_models").set_value(models)
    next(b for b in at.button if b.label == "Compare").click().run()
    return at


def _model_columns(at: AppTest) -> dict[str, Any]:
    """The columns that hold one model's panel, by model name (its bold heading)."""
    out = {}
    for col in at.columns:
        first = str(col.markdown[0].value) if col.markdown else ""
        if match := re.fullmatch(r"\*\*([\w.-]+)\*\*", first):  # "**Model A**" does not match
            out[match.group(1)] = col
    return out


def _board(at: AppTest) -> dict[str, dict[str, Any]]:
    (frame,) = at.dataframe  # the leaderboard is the one table on the page
    df = frame.value
    return df.set_index("Model").to_dict("index")


class TestTextComparison:
    def test_answers_appear_in_each_column_with_captions(self) -> None:
        """Three models answer side by side, each with latency, TTFT and tokens under it."""
        at = _compare(["demo-swift", "demo-balanced", "demo-coder"])
        assert not at.exception and not at.error, texts(at, "error")
        columns = _model_columns(at)
        assert list(columns) == ["demo-swift", "demo-balanced", "demo-coder"]
        for model, col in columns.items():
            body = " ".join(str(m.value) for m in col.markdown)
            assert f"`{model}`" in body, "each column holds its own model's answer"
            caption = " ".join(str(c.value) for c in col.caption)
            assert f"`{model}`" in caption and "TTFT" in caption and "tokens" in caption
        assert at.session_state["compare_text_last"]

    def test_a_failing_model_shows_its_error_in_its_column_only(self) -> None:
        """fault-500 fails in its own column as words; the other column has its answer."""
        at = _compare(["demo-swift", "fault-500"])
        assert not at.exception
        columns = _model_columns(at)
        assert not columns["demo-swift"].error
        assert "Demo backend" in " ".join(str(m.value) for m in columns["demo-swift"].markdown)
        errors = [str(e.value) for e in columns["fault-500"].error]
        assert len(errors) == 1 and "HTTP 500" in errors[0] and "try again" in errors[0].lower()
        assert len(at.error) == 1, "no error outside the failing column"

    def test_one_model_is_a_message(self) -> None:
        """Comparing a single model says a comparison needs 2 to 4."""
        at = _compare(["demo-swift"])
        assert not at.exception
        assert any("2 to 4 models; 1 picked" in e for e in texts(at, "error"))
        assert "compare_text_last" not in at.session_state

    def test_empty_prompt_is_one_message(self) -> None:
        """An empty prompt is said once, not once per model."""
        at = _compare(["demo-swift", "demo-deep"], prompt="  ")
        assert not at.exception
        assert [e for e in texts(at, "error") if "prompt is empty" in e] == [texts(at, "error")[0]]
        assert len(at.error) == 1


class TestVoteAndLeaderboard:
    def test_voting_updates_the_leaderboard_and_replaces_the_vote(self) -> None:
        """A vote shows on the leaderboard with its count; a second vote replaces the first."""
        at = _compare(["demo-swift", "demo-deep"])
        assert any("no votes yet" in str(i.value).lower() for i in at.info)
        at.button(key="compare_text_vote_1").click().run()
        assert not at.exception
        assert "**Vote:** demo-deep was best" in [str(m.value) for m in at.markdown]
        board = _board(at)
        assert board["demo-deep"]["Wins"] == 1 and board["demo-deep"]["Win rate"] == "100 % (1 of 1)"
        assert board["demo-deep"]["95 % interval"] == "21–100 %"
        assert board["demo-swift"]["Losses"] == 1
        at.button(key="compare_text_vote_tie").click().run()
        board = _board(at)
        assert board["demo-deep"]["Wins"] == 0 and board["demo-deep"]["Votes"] == 1
        assert board["demo-swift"]["Ties"] == 1
        assert "**Vote:** a tie" in [str(m.value) for m in at.markdown]

    def test_a_failed_model_cannot_be_voted_for(self) -> None:
        """The vote button under a failed answer is disabled."""
        at = _compare(["demo-swift", "fault-500", "demo-deep"])
        assert at.button(key="compare_text_vote_1").disabled
        assert not at.button(key="compare_text_vote_0").disabled

    def test_one_answer_gets_no_vote_buttons_and_says_why(self) -> None:
        """One model answered, one failed: no vote buttons, a sentence why, nothing votable stored."""
        at = _compare(["demo-swift", "fault-500"])
        assert not at.exception
        assert not [b for b in at.button if (b.key or "").startswith("compare_text_vote")]
        assert any("a vote needs at least two answers" in str(i.value) for i in at.info)


def _page_text(at: AppTest) -> str:
    """Every text the page shows: markdown, captions, alerts, code, buttons, widget labels and values."""
    out = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "code", "title", "toast"):
        out += texts(at, kind)
    out += [b.label for b in at.button] + [str(t.label) for t in at.tabs]
    for kind in ("multiselect", "selectbox", "text_area", "text_input", "number_input", "toggle"):
        for w in getattr(at, kind):
            out += [str(w.label), str(w.value)]
    return "\n".join(out)


def _blind(models: list[str], seed: int, monkeypatch: Any, *, images: bool = False) -> AppTest:
    monkeypatch.setattr(cmp, "BLIND_RNG", random.Random(seed))
    at = app(PAGE).run()
    at.toggle(key="compare_blind").set_value(True).run()
    if images:
        at.text_area(key="compare_image_prompt").set_value("a lighthouse at dawn")
        at.multiselect(key="compare_image_models").set_value(models)
        next(b for b in at.button if b.label == "Compare images").click().run()
    else:
        at.text_area(key="compare_prompt").set_value(f"Which is clearer? ({seed})")
        at.multiselect(key="compare_models").set_value(models)
        next(b for b in at.button if b.label == "Compare").click().run()
    assert not at.exception, at.exception
    return at


class TestBlindVote:
    PICKED = ["demo-swift", "demo-balanced", "demo-coder"]

    def test_no_model_name_before_the_vote_and_the_reveal_maps_right(self, monkeypatch: Any) -> None:
        """Blind: shuffled columns labelled Model A/B/C, no model name anywhere on the page (picker,
        facts, answers, captions, leaderboard, permalink); the vote reveals names and letters."""
        at = _blind(self.PICKED, 3, monkeypatch)
        page = _page_text(at)
        for model in self.PICKED:
            assert model not in page, f"{model} is on the page before the vote"
        assert not _model_columns(at) and not at.multiselect and not at.dataframe
        headings = [str(col.markdown[0].value) for col in at.columns if col.markdown]
        assert {"**Model A**", "**Model B**", "**Model C**"} <= set(headings)
        assert "TTFT" in " ".join(texts(at, "caption"))
        answers = [str(col.markdown[1].value) for col in at.columns if col.markdown and "Model" in str(
            col.markdown[0].value)]
        at.button(key="compare_text_vote_1").click().run()
        assert not at.exception
        shown = list(_model_columns(at))
        assert sorted(shown) == sorted(self.PICKED), "every model revealed, in the order shown"
        assert f"**Vote:** {shown[1]} was best" in [str(m.value) for m in at.markdown], "the vote went to column B"
        assert f"`{shown[1]}`" in str(_model_columns(at)[shown[1]].markdown[1].value)
        assert "`Model B`" in answers[1], "column B held the same answer, its model's name masked"
        captions = texts(at, "caption")
        for i in range(len(shown)):
            assert f"was {cmp.panel_label(i)} in the blind vote" in captions
        assert any("Revealed" in str(m.value) for m in at.success), "the reveal is shown at the top, in view"
        assert not at.multiselect, "the forms stay away until Next comparison"
        at.button(key="compare_blind_next").click().run()
        assert at.multiselect(key="compare_models"), "the picker is back"
        assert list(_model_columns(at)) == shown, "the revealed comparison stays below the forms"

    def test_the_order_differs_from_the_picker_across_seeds(self, monkeypatch: Any) -> None:
        """Over a few seeded runs the columns are not always in the picker's order."""
        orders = set()
        for seed in range(3):
            at = _blind(self.PICKED, seed, monkeypatch)
            at.button(key="compare_text_vote_tie").click().run()
            orders.add(tuple(_model_columns(at)))
            at.button(key="compare_blind_next").click().run()
        assert len(orders) > 1 and any(order != tuple(self.PICKED) for order in orders)

    def test_skip_leaves_the_vote_without_revealing(self, monkeypatch: Any) -> None:
        """"Skip this vote" brings the forms back; the skipped comparison is not shown."""
        at = _blind(self.PICKED, 1, monkeypatch)
        at.button(key="compare_blind_skip").click().run()
        assert not at.exception and at.multiselect(key="compare_models")
        assert not [b for b in at.button if (b.key or "").startswith("compare_text_vote")]

    def test_blind_images_reach_the_gallery_after_the_vote(self, monkeypatch: Any) -> None:
        """A blind image comparison keeps its images out of the Gallery (it names models) until the vote."""
        at = _blind(["demo-sketch", "demo-mosaic"], 2, monkeypatch, images=True)
        assert "demo-sketch" not in _page_text(at)
        assert not at.session_state[GALLERY_KEY] if GALLERY_KEY in at.session_state else True
        at.button(key="compare_image_vote_0").click().run()
        assert {i.image.model for i in at.session_state[GALLERY_KEY]} == {"demo-sketch", "demo-mosaic"}


class TestPermalink:
    def test_the_query_param_reopens_the_comparison_read_only(self) -> None:
        """?comparison=<id> shows the prompt, answers, figures and vote, with no vote buttons."""
        at = _compare(["demo-swift", "fault-500", "demo-deep"], prompt="Explain a moving window")
        at.button(key="compare_text_vote_0").click().run()
        cid = at.session_state["compare_text_last"]
        links = [str(m.value) for m in at.markdown if "Permalink" in str(m.value)]
        assert links and f"?comparison={cid}" in links[0]

        view = app(PAGE)
        view.query_params["comparison"] = cid
        view.run()
        assert not view.exception
        assert [c.value for c in view.code] == ["Explain a moving window"]
        columns = _model_columns(view)
        assert list(columns) == ["demo-swift", "fault-500", "demo-deep"]
        assert "TTFT" in " ".join(str(c.value) for c in columns["demo-swift"].caption)
        assert "HTTP 500" in str(columns["fault-500"].error[0].value)
        assert "**Vote:** demo-swift was best" in [str(m.value) for m in view.markdown]
        assert not [b for b in view.button if (b.key or "").startswith("compare_text_vote")]
        assert not view.tabs, "read-only: no forms to run a new comparison"

    def test_an_unknown_id_is_a_message_with_a_way_out(self) -> None:
        """A link to a comparison that does not exist says so; the button starts a new one."""
        view = app(PAGE)
        view.query_params["comparison"] = "0123456789ab"
        view.run()
        assert not view.exception
        assert any("no comparison with the id" in e.lower() for e in texts(view, "error"))
        view.button(key="compare_new").click().run()
        assert not view.exception and "comparison" not in view.query_params
        assert view.text_area(key="compare_prompt")


class TestImageComparison:
    def _run(self, models: list[str]) -> AppTest:
        at = app(PAGE).run()
        at.text_area(key="compare_image_prompt").set_value("a lighthouse at dawn")
        at.multiselect(key="compare_image_models").set_value(models)
        at.number_input(key="compare_image_seed").set_value(42)
        next(b for b in at.button if b.label == "Compare images").click().run()
        return at

    def test_grid_of_images_with_the_same_seed_and_latency(self) -> None:
        """Three image models draw side by side, each captioned with latency and seed 42."""
        at = self._run(["demo-sketch", "demo-mosaic", "demo-gradient"])
        assert not at.exception and not at.error, texts(at, "error")
        columns = _model_columns(at)
        assert list(columns) == ["demo-sketch", "demo-mosaic", "demo-gradient"]
        for col in columns.values():
            assert len(col.get("image")) == 1
            caption = " ".join(str(c.value) for c in col.caption)
            assert " ms" in caption and "seed 42" in caption

    def test_a_failing_model_shows_its_error_in_its_cell(self) -> None:
        """A model answering with a non-image body shows words in its cell; the other cell has its image."""
        at = self._run(["demo-sketch", "fault-not-image"])
        assert not at.exception
        columns = _model_columns(at)
        assert len(columns["demo-sketch"].get("image")) == 1 and not columns["demo-sketch"].error
        assert "not an image" in str(columns["fault-not-image"].error[0].value)
        assert not columns["fault-not-image"].get("image")


class TestQuotaFirst:
    def test_a_comparison_the_window_cannot_cover_sends_nothing(self, monkeypatch: Any) -> None:
        """3 requests a minute: after a 2-model comparison, the next one is refused whole, unsent,
        with the numbers and a countdown; no vote buttons for it."""
        monkeypatch.setenv("BLOSSOM_DASH_PER_USER_RPM", "3")
        at = _compare(["demo-swift", "demo-deep"])
        assert not at.exception and at.button(key="compare_text_vote_0")
        first = at.session_state["compare_text_last"]
        before = httpx.get(f"{demo_url(at)}/_demo/stats").json()
        next(b for b in at.button if b.label == "Compare").click().run()
        assert not at.exception
        warnings = texts(at, "warning")
        assert any("needs 2 requests" in w and "1 of 3 per minute left" in w and "Nothing was sent" in w
                   for w in warnings), warnings
        assert any("can be tried again in" in c for c in texts(at, "caption")), "a live countdown"
        assert httpx.get(f"{demo_url(at)}/_demo/stats").json() == before, "no request reached the backend"
        assert at.session_state["compare_text_last"] == first, "nothing new stored"
        assert not [b for b in at.button if (b.key or "").startswith("compare_text_vote")]


class TestImagesInTheGallery:
    def test_compare_images_join_the_gallery_and_new_seed_shows_a_new_image(self) -> None:
        """Both images join the Gallery; "New seed" draws again: the caption's seed is the new one."""
        at = TestImageComparison()._run(["demo-sketch", "demo-mosaic"])
        assert not at.exception
        gallery = at.session_state[GALLERY_KEY]
        assert [(i.image.model, i.image.seed, i.prompt) for i in gallery] == [
            ("demo-sketch", 42, "a lighthouse at dawn"), ("demo-mosaic", 42, "a lighthouse at dawn")]
        first, old = at.session_state["compare_image_last"], _model_columns(at)["demo-sketch"].get("image")[0]
        at.button(key="compare_image_new_seed").click().run()
        assert not at.exception
        seed = at.session_state["compare_image_seed"]
        assert seed != 42 and at.session_state["compare_image_last"] != first
        for col in _model_columns(at).values():
            assert f"seed {seed}" in " ".join(str(c.value) for c in col.caption), "the caption matches the image"
        assert _model_columns(at)["demo-sketch"].get("image")[0].proto != old.proto, "a new image is shown"
        assert len(at.session_state[GALLERY_KEY]) == 4


class TestReplayOnly:
    def test_says_which_models_were_recorded_for_the_prompt(self) -> None:
        """Replay-only: with two models recorded for a prompt, the page names them and compares them;
        with fewer, it says so and how to record."""
        from blossom_dash import ui

        at = app(PAGE).run()
        service = ui.get_service()
        service.cache.configure(persistent=True)
        at = _compare(["demo-swift", "demo-deep"], prompt="Recorded prompt")
        assert not at.exception and not at.error
        service.cache.configure(replay_only=True)
        at = _compare(["demo-swift", "demo-deep", "demo-coder"], prompt="Recorded prompt")
        assert not at.exception
        assert any("Replay-only" in c and "`demo-deep`" in c and "`demo-swift`" in c for c in texts(at, "caption"))
        assert any("left out" in c and "`demo-coder`" in c for c in texts(at, "caption"))
        assert list(_model_columns(at)) == ["demo-swift", "demo-deep"] and not at.error
        at = _compare(["demo-swift", "demo-deep"], prompt="Never recorded")
        warnings = " ".join(texts(at, "warning"))
        assert "0 model(s) recorded for this prompt" in warnings and "Controls" in warnings
        assert not at.error, "nothing was sent, so no model failed"


class TestTemplateAndForms:
    def test_a_template_fills_the_prompt_and_system(self) -> None:
        """📚 Use a template: the filled-in template becomes the prompt, its system prompt is sent too."""
        from blossom_dash import ui

        at = app(PAGE).run()
        ui.get_service().session("local").create_prompt("ask", "Explain {topic} briefly.", system="Be brief.")
        at.run()
        at.selectbox(key="compare_template_template").select_index(1).run()
        tid = at.selectbox(key="compare_template_template").value
        at.text_input(key=f"compare_template_{tid}_topic").set_value("moving windows").run()
        assert at.text_area(key="compare_prompt").value == "Explain moving windows briefly."
        assert any("Be brief." in c for c in texts(at, "caption"))
        at.multiselect(key="compare_models").set_value(["demo-swift", "demo-deep"])
        next(b for b in at.button if b.label == "Compare").click().run()
        assert not at.exception and not at.error
        assert list(_model_columns(at)) == ["demo-swift", "demo-deep"]

    def test_the_forms_keep_their_values_through_a_blind_vote(self, monkeypatch: Any) -> None:
        """The blind stage does not draw the forms; after the vote they hold what was typed and picked."""
        at = _blind(TestBlindVote.PICKED, 5, monkeypatch)
        at.button(key="compare_text_vote_tie").click().run()
        at.button(key="compare_blind_next").click().run()
        assert not at.exception and not at.warning
        assert at.text_area(key="compare_prompt").value == "Which is clearer? (5)"
        assert at.multiselect(key="compare_models").value == TestBlindVote.PICKED
        assert at.number_input(key="compare_max_tokens").value == 256
