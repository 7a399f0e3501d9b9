"""Comparisons: side-by-side runs, storage, votes and the leaderboard (real SQLite + demo backend)."""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import demo_stats, make_service
from PIL import Image
from sqlalchemy import create_engine, inspect

from blossom_dash import BlossomService, InvalidRequest, RateLimited
from blossom_dash.errors import BudgetExceeded
from blossom_dash.features import compare
from blossom_dash.features.compare import (
    ALL_BAD,
    LEADERBOARD_COLUMNS,
    TIE,
    ComparisonStore,
    Panel,
    StorageFailed,
    check_request,
    leaderboard_table,
    merge_streams,
    permalink,
    wilson_interval,
)
from blossom_dash.features.compare_quota import quota_refusal
from blossom_dash.policies.ratelimit import LimitStatus, WindowStatus
from blossom_dash.telemetry.store import UsageStore, events, metadata


@pytest.fixture()
def svc(tmp_path: Path) -> Iterator[BlossomService]:
    with make_service(tmp_path) as service:
        yield service


def run_text(svc: BlossomService, prompt: str, models: list[str], **kwargs: object) -> object:
    run = svc.session("alice", "s1").compare_text(prompt, models, **kwargs)
    updates = list(run.updates())
    return run, updates, run.finish()


class TestCheckRequest:
    def test_returns_stripped_names_in_order(self) -> None:
        """Names are stripped and keep the caller's column order."""
        assert check_request("hi", [" b ", "a"], max_prompt_chars=100) == ["b", "a"]

    @pytest.mark.parametrize(("prompt", "models", "words"), [
        ("  ", ["a", "b"], "prompt is empty"),
        ("x" * 101, ["a", "b"], "limit is 100"),
        ("hi", ["a"], "2 to 4 models; 1 picked"),
        ("hi", ["a", "b", "c", "d", "e"], "2 to 4 models; 5 picked"),
        ("hi", ["a", "a"], "a is picked twice"),
        ("hi", ["a", " "], "blank"),
        ("hi", "ab", "list of names"),
    ])
    def test_bad_requests_say_what_is_wrong(self, prompt: str, models: object, words: str) -> None:
        """Each bad request is an InvalidRequest naming the problem, with a hint."""
        with pytest.raises(InvalidRequest) as info:
            check_request(prompt, models, max_prompt_chars=100)
        assert words in info.value.message and info.value.hint


class TestPermalink:
    @pytest.mark.parametrize(("url", "expected"), [
        ("http://host:8501/compare", "http://host:8501/compare?comparison=abc"),
        ("http://host:8501/", "http://host:8501/compare?comparison=abc"),
        ("http://host/app/compare/", "http://host/app/compare?comparison=abc"),
        (None, "?comparison=abc"),
    ])
    def test_points_at_the_compare_page(self, url: str | None, expected: str) -> None:
        """The link names the Compare page once, whatever the browser's URL ends in."""
        assert permalink(url, "abc") == expected


class TestWilsonInterval:
    @pytest.mark.parametrize(("wins", "n", "low", "high"), [
        (1, 1, 0.2065, 1.0), (60, 100, 0.5020, 0.6906), (0, 3, 0.0, 0.5615), (5, 10, 0.2366, 0.7634),
    ])
    def test_matches_the_reference_values(self, wins: int, n: int, low: float, high: float) -> None:
        """Bounds equal scipy's binomtest(...).proportion_ci(method='wilson') to 4 places."""
        lo, hi = wilson_interval(wins, n)
        assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)

    def test_no_votes_means_nothing_is_known(self) -> None:
        """With no trials the interval is all of [0, 1]."""
        assert wilson_interval(0, 0) == (0.0, 1.0)


class TestCompareText:
    def test_every_model_answers_with_its_figures(self, svc: BlossomService) -> None:
        """Each model streams its own answer; panels carry latency, TTFT, tokens, request id."""
        run, updates, comp = run_text(svc, "What is TTFT?", ["demo-swift", "demo-deep", "demo-coder"],
                                      max_tokens=48)
        assert comp.models == ["demo-swift", "demo-deep", "demo-coder"]
        for panel in comp.panels:
            assert panel.ok and f"`{panel.model}`" in panel.text
            assert panel.latency_ms > 0 and panel.ttft_ms is not None and panel.request_id
            assert panel.usage.completion_tokens > 0 and not panel.cached
        finals = {u.index: u for u in updates if u.done}
        assert sorted(finals) == [0, 1, 2]
        assert [finals[i].text for i in range(3)] == [p.text for p in comp.panels]
        assert demo_stats(svc)["chat_stream"] == 3

    def test_a_failing_model_fails_only_its_panel(self, svc: BlossomService) -> None:
        """fault-500 gets an error in words; the other model still answers."""
        _, updates, comp = run_text(svc, "hello", ["demo-swift", "fault-500"])
        ok, bad = comp.panels
        assert ok.ok and ok.text
        assert not bad.ok and bad.error_type == "UpstreamError" and "HTTP 500" in bad.error_message
        assert bad.error_hint and bad.latency_ms is not None
        assert [u.error for u in updates if u.index == 1 and u.done][0] is not None

    def test_repeat_is_served_from_the_cache(self, svc: BlossomService) -> None:
        """The same comparison again replays every answer from the cache."""
        run_text(svc, "cache me", ["demo-swift", "demo-balanced"], seed=3)
        _, _, again = run_text(svc, "cache me", ["demo-swift", "demo-balanced"], seed=3)
        assert all(p.cached for p in again.panels)
        assert demo_stats(svc)["chat_stream"] == 2

    def test_a_comparison_the_window_cannot_cover_is_refused_unsent(self, tmp_path: Path) -> None:
        """3 requests per minute, 2 used: a comparison of 2 models is refused whole, nothing sent or stored."""
        with make_service(tmp_path, per_user_rpm=3) as svc:
            alice = svc.session("alice", "s1")
            alice.generate_text("one", model="demo-swift")
            alice.generate_text("two", model="demo-swift")
            sent = demo_stats(svc)["chat"] + demo_stats(svc)["chat_stream"]
            refusal = alice.comparison_refusal(2)
            assert isinstance(refusal, RateLimited) and refusal.severity == "warning"
            assert "needs 2 requests" in refusal.message and "1 of 3 per minute left" in refusal.message
            assert 0 < refusal.retry_after_s <= 60 and "next slot frees in" in refusal.hint
            with pytest.raises(RateLimited, match="Nothing was sent"):
                alice.compare_text("hello", ["demo-swift", "demo-deep"])
            with pytest.raises(RateLimited, match="Nothing was sent"):
                alice.compare_images("a cat", ["demo-sketch", "demo-mosaic"], width=64, height=64)
            assert demo_stats(svc)["chat"] + demo_stats(svc)["chat_stream"] == sent
            assert demo_stats(svc).get("image", 0) == 0
            assert alice.comparison_refusal(1) is None, "one request still fits"
            assert svc.leaderboard().empty
            assert alice.rate_status().user.used == 2, "the check took no slot"

    def test_more_models_than_the_limit_says_it_can_never_fit(self, tmp_path: Path) -> None:
        """With a limit of 1 per minute, a 2-model comparison says so and what to do."""
        with make_service(tmp_path, per_user_rpm=1) as svc:
            with pytest.raises(RateLimited, match="can never be sent at once") as info:
                svc.session("alice").compare_text("hello", ["demo-swift", "demo-deep"])
            assert "Controls" in info.value.hint
            assert demo_stats(svc)["chat_stream"] == 0

    def test_a_spent_request_budget_refuses_the_comparison(self, tmp_path: Path) -> None:
        """A daily budget of 3 requests with 2 made: a 2-model comparison is refused with the budget's words."""
        with make_service(tmp_path) as svc:
            svc.configure_budgets(user_day_requests=3)
            alice = svc.session("alice")
            alice.generate_text("one", model="demo-swift")
            alice.generate_text("two", model="demo-swift")
            with pytest.raises(BudgetExceeded, match="1 of 3 left"):
                alice.compare_text("hello", ["demo-swift", "demo-deep"])

    def test_replay_only_is_never_refused_by_the_window(self, tmp_path: Path) -> None:
        """Replay-only answers take no slot, so the check lets them through."""
        with make_service(tmp_path, per_user_rpm=1) as svc:
            svc.cache.configure(replay_only=True)
            assert svc.session("alice").comparison_refusal(4) is None

    def test_bad_parameter_is_one_error_before_any_request(self, svc: BlossomService) -> None:
        """An out-of-range max_tokens raises once and calls no model."""
        with pytest.raises(InvalidRequest, match="max_tokens"):
            svc.session("alice").compare_text("hi", ["demo-swift", "demo-deep"], max_tokens=0)
        assert demo_stats(svc)["chat_stream"] == 0

    def test_closing_early_leaves_unfinished_panels_as_errors(self, tmp_path: Path) -> None:
        """Abandoning the updates mid-way: the finished panel keeps its answer, the other says it was cut."""
        with make_service(tmp_path, request_timeout_s=3) as svc:
            run = svc.session("alice").compare_text("hello", ["demo-swift", "fault-timeout"])
            updates = run.updates()
            for update in updates:
                if update.index == 0 and update.done:
                    break
            updates.close()
            done, cut = run.panels()
        assert done.ok and done.text
        assert not cut.ok and "not read to its end" in cut.error_message

    def test_a_bug_in_one_stream_is_words_in_its_panel(self) -> None:
        """A stream that raises something other than a DashError ends its panel with a message."""

        class Broken:
            result = error = None

            def __iter__(self) -> Broken:
                return self

            def __next__(self) -> str:
                raise KeyError("boom")

            def close(self) -> None:
                pass

        (update,) = list(merge_streams([Broken()]))
        assert update.done and "failed unexpectedly (KeyError)" in update.error.message

    def test_a_start_error_is_reported_at_once(self) -> None:
        """A stream that could not start yields a finished panel with its error."""
        err = InvalidRequest("no", "hint")
        assert [(u.index, u.done, u.error) for u in merge_streams([err])] == [(0, True, err)]


class TestCompareImages:
    def test_same_seed_on_every_model_in_a_grid(self, svc: BlossomService) -> None:
        """Every model draws the prompt with one seed; each cell is a PNG with its latency."""
        comp = svc.session("alice").compare_images("a lighthouse", ["demo-sketch", "demo-mosaic", "demo-gradient"],
                                                   width=256, height=256, seed=11)
        assert comp.kind == "image" and comp.params["seed"] == 11
        for panel in comp.panels:
            assert panel.ok and panel.seed == 11 and panel.latency_ms > 0
            assert panel.image[:8] == b"\x89PNG\r\n\x1a\n" and (panel.width, panel.height) == (256, 256)
        assert len({p.image for p in comp.panels}) == 3, "each model draws differently"

    def test_a_failing_model_fails_only_its_cell(self, svc: BlossomService) -> None:
        """A non-image body is an error in words in its cell; the other cell has its image."""
        comp = svc.session("alice").compare_images("a cat", ["demo-sketch", "fault-not-image"], width=128,
                                                   height=128, seed=1)
        good, bad = comp.panels
        assert good.ok and good.image
        assert not bad.ok and "not an image" in bad.error_message and bad.image is None
        assert bad.latency_ms is not None

    def test_invalid_size_is_one_error(self, svc: BlossomService) -> None:
        """A size every model refuses raises one InvalidRequest instead of storing a grid of errors."""
        with pytest.raises(InvalidRequest, match="width"):
            svc.session("alice").compare_images("a cat", ["demo-sketch", "demo-mosaic"], width=10, height=128)
        assert demo_stats(svc)["image"] == 0


class TestLoadComparison:
    def test_reopens_prompt_answers_figures_and_vote(self, tmp_path: Path) -> None:
        """A comparison stored by one service is read back whole by a restarted one."""
        with make_service(tmp_path) as svc:
            _, _, comp = run_text(svc, "What is a moving window?", ["demo-swift", "fault-500", "demo-deep"],
                                  max_tokens=32)
            svc.vote(comp.id, "demo-swift", user="alice")
            image = svc.compare_images("a cat", ["demo-sketch", "demo-mosaic"], width=128, height=128, seed=5)
        with make_service(tmp_path) as svc:
            back = svc.load_comparison(comp.id)
            back_image = svc.load_comparison(image.id)
        assert (back.prompt, back.kind, back.models) == ("What is a moving window?", "text", comp.models)
        assert back.params["max_tokens"] == 32
        assert back.panels[0].text == comp.panels[0].text
        assert back.panels[0].usage == comp.panels[0].usage
        assert back.panels[0].ttft_ms == pytest.approx(comp.panels[0].ttft_ms)
        assert back.panels[1].error_message == comp.panels[1].error_message
        assert back.vote is not None and back.vote.describe() == "demo-swift was best"
        assert [p.image for p in back_image.panels] == [p.image for p in image.panels]
        assert back.summary().startswith("Text comparison of 3 models · ")
        assert "demo backend · max tokens 32" in back.summary()
        assert "seed 5" in back_image.summary() and "width 128" in back_image.summary()

    @pytest.mark.parametrize(("cid", "words"), [("nope", "not a comparison id"),
                                                 ("0123456789ab", "no comparison with the id")])
    def test_bad_ids_are_messages(self, svc: BlossomService, cid: str, words: str) -> None:
        """A malformed or unknown id says so and what to do."""
        with pytest.raises(InvalidRequest) as info:
            svc.load_comparison(cid)
        assert words in info.value.message.lower() and info.value.hint

    def test_tables_are_added_to_an_existing_database(self, database_url: str) -> None:
        """A usage database (SQLite, PostgreSQL) made before comparisons existed gains the
        tables, idempotently."""
        engine = create_engine(database_url)
        metadata.create_all(engine, tables=[events])  # the schema before comparisons
        assert not inspect(engine).has_table("comparisons")
        ComparisonStore(engine)
        ComparisonStore(engine)
        names = set(inspect(engine).get_table_names())
        assert names == {"comparisons", "comparison_answers", "comparison_votes", "events"}
        engine.dispose()

    def test_a_large_image_is_stored_downscaled(self, tmp_path: Path) -> None:
        """An image over 1.5 MB is kept as a JPEG of at most 1024 px for the permalink."""
        buf = io.BytesIO()
        Image.frombytes("RGB", (1400, 1400), os.urandom(1400 * 1400 * 3)).save(buf, format="PNG")
        big = buf.getvalue()
        assert len(big) > 1_500_000
        store = UsageStore(f"sqlite:///{tmp_path / 'u.db'}")
        comps = ComparisonStore(store.engine)
        panels = [Panel(0, "a", image=big, content_type="image/png", width=1400, height=1400),
                  Panel(1, "b", image=b"small", content_type="image/png")]
        saved = comps.save(kind="image", prompt="p", params={}, panels=panels, user="u", session="", backend="demo")
        back = comps.load(saved.id)
        assert back.panels[0].content_type == "image/jpeg"
        with Image.open(io.BytesIO(back.panels[0].image)) as img:
            assert max(img.size) == 1024
        assert back.panels[1].image == b"small"
        store.close()


class TestStorageFailure:
    def test_a_failed_write_is_a_storage_error_and_stores_nothing(self, tmp_path: Path) -> None:
        """When the database refuses the write, save raises StorageFailed and no half comparison remains."""
        store = UsageStore(f"sqlite:///{tmp_path / 'u.db'}")
        comps = ComparisonStore(store.engine)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE comparison_answers")
        with pytest.raises(StorageFailed) as info:
            comps.save(kind="text", prompt="p", params={}, panels=[Panel(0, "a", text="x"), Panel(1, "b", text="y")],
                       user="u", session="", backend="demo")
        assert "could not be saved" in info.value.message and "still on screen" in info.value.hint
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM comparisons").scalar() == 0
        store.close()


class TestVote:
    def test_voting_again_replaces_the_vote(self, svc: BlossomService) -> None:
        """Two votes on one comparison count once, as the later one."""
        _, _, comp = run_text(svc, "hi", ["demo-swift", "demo-deep"])
        svc.vote(comp.id, "demo-swift", user="alice")
        svc.vote(comp.id, "demo-deep", user="alice")
        board = svc.leaderboard("text").set_index("model")
        assert board.loc["demo-deep", "wins"] == 1 and board.loc["demo-swift", "wins"] == 0
        assert board["votes"].tolist() == [1, 1]
        assert svc.load_comparison(comp.id).vote.model == "demo-deep"

    @pytest.mark.parametrize("choice", ["demo-swift", TIE, ALL_BAD])
    def test_a_comparison_with_one_answer_takes_no_vote(self, svc: BlossomService, choice: str) -> None:
        """One model answered, one failed: nothing to compare, so no vote of any kind is stored."""
        _, _, comp = run_text(svc, "hi", ["demo-swift", "fault-500"])
        assert not comp.votable
        with pytest.raises(InvalidRequest, match="a vote needs at least two"):
            svc.vote(comp.id, choice, user="alice")
        assert svc.load_comparison(comp.id).vote is None and svc.leaderboard().empty

    @pytest.mark.parametrize("choice", [TIE, ALL_BAD])
    def test_tie_and_all_bad_are_votes(self, svc: BlossomService, choice: str) -> None:
        """A tie or all-bad vote counts for every model that answered, as no win."""
        _, _, comp = run_text(svc, "hi", ["demo-swift", "demo-deep"])
        vote = svc.vote(comp.id, choice, user="bob")
        assert vote.choice == choice and vote.model is None
        board = svc.leaderboard()
        column = "ties" if choice == TIE else "all_bad"
        assert board[column].tolist() == [1, 1] and board["wins"].tolist() == [0, 0]

    @pytest.mark.parametrize("choice", ["fault-500", "demo-coder", ""])
    def test_a_choice_not_offered_is_refused(self, svc: BlossomService, choice: str) -> None:
        """A failed model, a model not in the comparison, or nothing cannot win."""
        _, _, comp = run_text(svc, "hi", ["demo-swift", "demo-deep", "fault-500"])
        with pytest.raises(InvalidRequest, match="not a choice"):
            svc.vote(comp.id, choice, user="bob")
        assert svc.load_comparison(comp.id).vote is None

    def test_unknown_comparison_is_refused(self, svc: BlossomService) -> None:
        """Voting on an id that does not exist is an InvalidRequest."""
        with pytest.raises(InvalidRequest, match="no comparison"):
            svc.vote("0123456789ab", TIE, user="bob")


class TestLeaderboard:
    def test_counts_and_rates_per_model(self, svc: BlossomService) -> None:
        """Wins, losses and the win rate follow the votes; the interval shows the sample size."""
        for i, winner in enumerate(("demo-swift", "demo-swift", "demo-deep")):
            _, _, comp = run_text(svc, f"question {i}", ["demo-swift", "demo-deep"])
            svc.vote(comp.id, winner, user="alice")
        board = svc.leaderboard().set_index("model")
        assert list(board.reset_index().columns) == list(LEADERBOARD_COLUMNS)
        assert board.loc["demo-swift", ["votes", "wins", "losses"]].tolist() == [3, 2, 1]
        assert board.loc["demo-deep", ["votes", "wins", "losses"]].tolist() == [3, 1, 2]
        assert board.loc["demo-swift", "win_rate"] == pytest.approx(2 / 3)
        lo, hi = wilson_interval(2, 3)
        assert (board.loc["demo-swift", "ci_low"], board.loc["demo-swift", "ci_high"]) == pytest.approx((lo, hi))

    def test_one_lucky_vote_does_not_top_the_board(self, database_url: str) -> None:
        """8 wins of 10 rank above 1 win of 1 (sorted by the interval's low end), on SQLite
        and PostgreSQL."""
        store = UsageStore(database_url)
        comps = ComparisonStore(store.engine)

        def duel(a: str, b: str, winner: str) -> None:
            c = comps.save(kind="text", prompt="p", params={}, panels=[Panel(0, a, text="x"), Panel(1, b, text="y")],
                           user="u", session="", backend="demo")
            comps.vote(c.id, winner, user="u", session="")

        duel("lucky", "other", "lucky")
        for i in range(10):
            duel("steady", "other", "steady" if i < 8 else "other")
        board = comps.leaderboard("text")
        assert board["model"].tolist()[:2] == ["steady", "lucky"]
        table = leaderboard_table(board).set_index("Model")
        assert table.loc["lucky", "Win rate"] == "100 % (1 of 1)"
        assert table.loc["lucky", "95 % interval"] == "21–100 %"
        assert table.loc["steady", "Win rate"] == "80 % (8 of 10)"
        store.close()

    def test_failed_panels_and_other_kinds_do_not_count(self, svc: BlossomService) -> None:
        """A model that failed is not scored; image votes stay off the text board."""
        _, _, comp = run_text(svc, "hi", ["demo-swift", "demo-deep", "fault-500"])
        svc.vote(comp.id, "demo-swift", user="alice")
        image = svc.compare_images("a cat", ["demo-sketch", "demo-mosaic"], width=128, height=128, seed=2)
        svc.vote(image.id, "demo-mosaic", user="alice")
        assert svc.leaderboard("text")["model"].tolist() == ["demo-swift", "demo-deep"]
        assert svc.leaderboard("image").set_index("model").loc["demo-mosaic", "wins"] == 1

    def test_empty_and_bad_kind(self, svc: BlossomService) -> None:
        """No votes is an empty frame with the columns; an unknown kind is an InvalidRequest."""
        assert svc.leaderboard("image").empty
        assert list(svc.leaderboard("text").columns) == list(LEADERBOARD_COLUMNS)
        with pytest.raises(InvalidRequest):
            svc.leaderboard("audio")


class TestBlindOrder:
    def test_a_blind_comparison_is_shuffled_and_stored_in_its_shown_order(self, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """Across seeds the columns leave the picker's order; each panel keeps its own model's answer."""
        picked = ["demo-swift", "demo-balanced", "demo-coder"]
        orders = set()
        with make_service(tmp_path) as svc:
            for seed in range(6):
                monkeypatch.setattr(compare, "BLIND_RNG", random.Random(seed))
                run, _, comp = run_text(svc, f"hi {seed}", picked, blind=True)
                assert run.models == comp.models and sorted(comp.models) == sorted(picked)
                assert comp.blind and comp.params["blind"] is True and "blind vote" in comp.summary()
                for panel in comp.panels:
                    assert f"`{panel.model}`" in panel.text, "a panel holds the answer of the model it names"
                orders.add(tuple(comp.models))
                back = svc.load_comparison(comp.id)
                assert back.models == comp.models and back.blind
            voted = svc.vote(comp.id, comp.models[0], user="alice")
            assert voted.model == comp.models[0]
        assert len(orders) > 1 and any(order != tuple(picked) for order in orders)

    def test_blind_images_are_shuffled_too(self, svc: BlossomService, monkeypatch: pytest.MonkeyPatch) -> None:
        """An image comparison run blind is stored shuffled, with blind in its parameters."""
        monkeypatch.setattr(compare, "BLIND_RNG", random.Random(1))
        picked = ["demo-sketch", "demo-mosaic", "demo-gradient"]
        comp = svc.compare_images("a cat", picked, width=64, height=64, seed=3, blind=True)
        assert comp.blind and sorted(comp.models) == sorted(picked) and comp.models != picked

    def test_mask_names_hides_every_model_name(self) -> None:
        """Answers and errors that name a model show its panel label instead (longest name first)."""
        names = ["demo-swift", "demo-swift-2"]
        said = "I am demo-swift-2, not demo-swift."
        assert compare.mask_names(said, names) == "I am Model B, not Model A."
        assert compare.mask_names("from Model A and demo-sw", names, partial=True) == "from Model A and "
        assert compare.mask_names("from demo-swift-2", names, partial=True) == "from Model B"


class TestRecordedModels:
    def test_models_recorded_for_a_prompt(self, tmp_path: Path) -> None:
        """Replay-only lists the models whose answer to this very prompt is recorded, per kind."""
        with make_service(tmp_path, persistent_cache=True) as svc:
            svc.generate_text("What is p95?", model="demo-swift")
            svc.generate_text("What is p95?", model="demo-deep", system="Be brief.")
            svc.generate_text("Something else", model="demo-coder")
            svc.generate_image("a cat", model="demo-sketch", width=64, height=64, seed=1)
            assert svc.models_recorded_for("text", " What is p95? ") == ["demo-deep", "demo-swift"]
            assert svc.models_recorded_for("text", "a cat") == []
            assert svc.models_recorded_for("image", "a cat") == ["demo-sketch"]
            svc.generate_text("What is p95?", model="demo-coder")
            assert svc.session("bob").models_recorded_for("text", "What is p95?") == [
                "demo-coder", "demo-deep", "demo-swift"], "a new recording is seen at once"


class TestRequestLinks:
    def test_each_request_names_its_comparison(self, svc: BlossomService) -> None:
        """Every request of a comparison records context comparison:<id>, the id it is stored under."""
        _, _, comp = run_text(svc, "hi", ["demo-swift", "demo-deep"])
        image = svc.compare_images("a cat", ["demo-sketch", "demo-mosaic"], width=64, height=64, seed=1)
        svc.flush_events()
        with svc.store.engine.connect() as conn:
            rows = conn.execute(events.select().with_only_columns(events.c.model, events.c.context)).all()
        contexts = {model: context for model, context in rows}
        assert contexts["demo-swift"] == contexts["demo-deep"] == f"comparison:{comp.id}"
        assert contexts["demo-sketch"] == contexts["demo-mosaic"] == f"comparison:{image.id}"


class TestQuotaRefusal:
    """``compare_quota.quota_refusal`` on windows made by hand."""

    @staticmethod
    def _status(user_used: int, user_limit: int = 30, global_used: int = 0, global_limit: int = 120,
                unavailable: str = "") -> LimitStatus:
        def window(used: int, limit: int) -> WindowStatus:
            return WindowStatus(limit, max(0, limit - used), 12.0 if used else 0.0, used)

        return LimitStatus(window(user_used, user_limit), window(global_used, global_limit), unavailable)

    def test_fits_or_names_the_window(self) -> None:
        """Enough room: None; the global window short: said as everyone's; the user's: as yours."""
        assert quota_refusal(3, self._status(27)) is None
        short = quota_refusal(3, self._status(0, global_used=118))
        assert isinstance(short, RateLimited) and short.scope == "global"
        assert "all users together have 2 of 120" in short.message and short.retry_after_s == 12.0
        mine = quota_refusal(4, self._status(27))
        assert mine is not None and "you have 3 of 30 per minute left" in mine.message

    def test_a_kiosk_visitor_counts_against_their_own_lower_limit(self) -> None:
        """A kiosk visitor with 8 of their 10 used has 2 left, though the member limit is 30."""
        refusal = quota_refusal(3, self._status(8), kiosk_rpm=10)
        assert refusal is not None and "you have 2 of 10 per minute left" in refusal.message
        assert quota_refusal(2, self._status(8), kiosk_rpm=10) is None

    def test_unreadable_windows_refuse(self) -> None:
        """Shared Redis down: nothing is admitted, so the comparison is refused with the reason."""
        refusal = quota_refusal(2, self._status(0, unavailable="Redis did not answer."))
        assert refusal is not None and "Redis did not answer." in refusal.message
