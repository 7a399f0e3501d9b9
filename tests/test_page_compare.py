"""Compare page: side-by-side streamed answers, per-column errors, votes, leaderboard, permalinks, images."""

from __future__ import annotations

import re
from typing import Any

from pages_helpers import app, texts
from streamlit.testing.v1 import AppTest

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
        at = _compare(["demo-swift", "fault-500"])
        assert at.button(key="compare_text_vote_1").disabled
        assert not at.button(key="compare_text_vote_0").disabled


class TestBlindVote:
    def test_names_stay_hidden_until_the_vote(self) -> None:
        """With "Blind vote" on, columns are Model A/B without names; voting reveals them."""
        at = app(PAGE).run()
        at.toggle(key="compare_blind").set_value(True).run()
        at.text_area(key="compare_prompt").set_value("Which is clearer?")
        at.multiselect(key="compare_models").set_value(["demo-swift", "demo-deep"])
        next(b for b in at.button if b.label == "Compare").click().run()
        assert not at.exception
        assert not _model_columns(at), "no column is headed by a model's name"
        headings = [str(col.markdown[0].value) for col in at.columns if col.markdown]
        assert "**Model A**" in headings and "**Model B**" in headings
        captions = " ".join(texts(at, "caption"))
        assert "`demo-swift`" not in captions and "`demo-deep`" not in captions and "TTFT" in captions
        at.button(key="compare_text_vote_1").click().run()
        assert "**Vote:** demo-deep was best" in [str(m.value) for m in at.markdown]
        assert list(_model_columns(at)) == ["demo-swift", "demo-deep"]


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
