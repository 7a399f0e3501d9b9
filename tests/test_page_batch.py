"""Batch page: upload and preview a CSV, run it as a job, watch it, cancel, resume, reload."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import streamlit as st
from pages_helpers import app, demo_url, texts
from streamlit.testing.v1 import AppTest

from blossom_dash import ui


@pytest.fixture(autouse=True)
def _roomy_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rate limits out of the way (the waiting test sets its own)."""
    monkeypatch.setenv("BLOSSOM_DASH_PER_USER_RPM", "100000")
    monkeypatch.setenv("BLOSSOM_DASH_GLOBAL_RPM", "100000")


def csv(n: int, prefix: str = "question") -> bytes:
    return ("prompt\n" + "".join(f"{prefix} {i}\n" for i in range(n))).encode()


def upload(at: AppTest, data: bytes, name: str = "prompts.csv") -> AppTest:
    return at.file_uploader(key="batch_file").set_value((name, data, "text/csv")).run()


def until(at: AppTest, check: Callable[[AppTest], bool], what: str, timeout_s: float = 60.0) -> AppTest:
    """Rerun the page (as its polling fragment does) until ``check`` holds; a guard, not a timing claim."""
    deadline = time.monotonic() + timeout_s
    while not check(at.run()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}: {texts(at, 'success')} {texts(at, 'warning')}")
        time.sleep(0.05)
    return at


def finished_rows(at: AppTest) -> bool:
    return any(s.startswith("Finished") for s in texts(at, "success"))


def delay_chat(at: AppTest, count: int, delay_s: float) -> None:
    """Make the demo backend stall its next ``count`` chat requests for ``delay_s`` seconds."""
    httpx.post(f"{demo_url(at)}/_demo/faults",
               json={"fault": "timeout", "count": count, "routes": ["chat"], "delay_s": delay_s}).raise_for_status()


class TestUploadAndPreview:
    def test_empty_page_explains_itself(self) -> None:
        """With no jobs the page offers the uploader, a template, and says what a job does."""
        at = app("app_pages/batch.py").run()
        assert not at.exception and not at.error
        assert [t.value for t in at.title] == ["Batch"]
        assert any("keeps going when you switch pages or reload" in i for i in texts(at, "info"))
        assert "Template" in [d.label for d in at.get("download_button")]

    def test_preview_shows_valid_and_invalid_rows(self) -> None:
        """Each invalid row says why; the run button offers only the valid rows."""
        data = b"prompt,temperature,max_tokens\nfine,0.5,\n,1,\nhot,9,\nlots,,many\nalso fine,,\n"
        at = upload(app("app_pages/batch.py").run(), data)
        assert not at.exception and not at.error
        assert any("5 rows · ✅ 2 valid · ❌ 3 invalid" in m for m in texts(at, "markdown"))
        warning = " ".join(texts(at, "warning"))
        assert "3 row(s) cannot run" in warning and "row 3: The prompt is empty" in warning
        preview = at.dataframe[0].value
        assert list(preview["problem"]) == ["", "The prompt is empty",
                                            "temperature must be between 0.0 and 2.0, not 9.0",
                                            "max_tokens “many” is not a whole number", ""]
        assert at.button(key="batch_run").label == "Run 2 valid rows"
        at.toggle(key="batch_only_invalid").set_value(True).run()
        assert list(at.dataframe[0].value["row"]) == [3, 4, 5]

    def test_preview_estimates_the_cost(self) -> None:
        """Before it runs, the preview estimates the job's cost (or says it is unpriced) and how."""
        at = upload(app("app_pages/batch.py").run(), csv(3))
        assert not at.exception and not at.error
        assert any(m.startswith("**Estimated cost: up to 0.") and "for 3 priced rows" in m
                   for m in texts(at, "markdown"))
        assert any("An estimate, not a bill" in c and "max_tokens" in c and "demo backend's made-up prices" in c
                   for c in texts(at, "caption"))

    def test_preview_typical_cost_from_history(self, tmp_path: Path) -> None:
        """After answers on this dashboard, the preview adds a typical figure at the models' mean length."""
        from test_page_monitor import _row, _seed

        _seed(tmp_path, [_row(f"h{i}", 60 * i, model="demo-swift", completion_tokens=40) for i in range(1, 4)])
        at = upload(app("app_pages/batch.py").run(), csv(3))
        assert not at.exception
        assert any(m.startswith("Typically about **0.") and "3 of 3 priced rows" in m for m in texts(at, "markdown"))

    def test_unknown_model_is_flagged(self) -> None:
        """A model the backend does not list makes its row invalid."""
        at = upload(app("app_pages/batch.py").run(), b"prompt,model\nhi,demo-swift\nhey,gpt-9\n")
        assert list(at.dataframe[0].value["problem"]) == ["", "Unknown model “gpt-9”"]

    @pytest.mark.parametrize(("data", "message", "hint"), [
        ("prompt\nCafé\n".encode("latin-1"), "not UTF-8", "CSV UTF-8"),
        (b"question\nhi\n", "no “prompt” column", "first row names the columns"),
        (b"", "empty", "prompt"),
        (b"prompt\n", "no prompts", "prompt"),
        (csv(10_001), "10,001 rows", "Split it"),
    ])
    def test_bad_files_are_messages(self, data: bytes, message: str, hint: str) -> None:
        """A file that cannot be used says what is wrong and what to do; nothing runs."""
        at = upload(app("app_pages/batch.py").run(), data)
        assert not at.exception
        errors = " ".join(texts(at, "error"))
        assert message in errors and hint in errors, errors
        assert not [b for b in at.button if b.key == "batch_run"]

    def test_bom_file_runs(self) -> None:
        """A UTF-8 file with a byte-order mark (Excel's CSV UTF-8) is read as usual."""
        at = upload(app("app_pages/batch.py").run(), "prompt\nCafé crème\n".encode("utf-8-sig"))
        assert not at.error
        assert at.button(key="batch_run").label == "Run 1 valid rows"


class TestJobs:
    def test_run_shows_progress_results_and_downloads(self) -> None:
        """Running a file starts a job that finishes with an answer per row, downloadable."""
        at = upload(app("app_pages/batch.py").run(), csv(8), name="eight.csv")
        at.button(key="batch_run").click().run()
        assert not at.exception and not at.error
        assert at.button(key="batch_run").disabled, "the same upload cannot be started twice by accident"
        until(at, finished_rows, "the job to finish")
        assert "Finished: 8 answered, 0 failed." in texts(at, "success")
        assert [m.value for m in at.metric][:3] == ["8", "0", "0"]
        results = at.dataframe[-1].value
        assert len(results) == 8 and (results["status"] == "ok").all()
        assert results["answer"].str.contains("Demo backend").all()
        assert {"CSV", "JSONL"} <= {d.label for d in at.get("download_button")}
        assert "eight.csv" in at.selectbox(key="batch_job_select").format_func(
            at.selectbox(key="batch_job_select").value)

    def test_blank_cells_are_blank(self) -> None:
        """Cells without a value (no model, no seed, no error) show empty, never "None" or "nan"."""
        at = upload(app("app_pages/batch.py").run(), csv(2))
        preview = at.dataframe[0]
        assert preview.proto.HasField("placeholder") and preview.proto.placeholder == ""
        at.button(key="batch_run").click().run()
        until(at, finished_rows, "the job to finish")
        results = at.dataframe[-1]
        assert results.value["error"].isna().all() and results.value["seed"].isna().all()
        assert results.proto.HasField("placeholder") and results.proto.placeholder == ""

    def test_job_survives_page_switch_and_reload(self) -> None:
        """Submit, switch page, reload: a fresh session finds the job finished with all rows."""
        first = app("app.py").run()
        first.switch_page("app_pages/batch.py").run()
        upload(first, csv(100), name="hundred.csv")
        first.button(key="batch_run").click().run()
        assert not first.exception
        first.switch_page("app_pages/monitor.py").run()
        assert not first.exception and [t.value for t in first.title] == ["Monitor"]

        reloaded = app("app.py").run()  # a new browser session: nothing carried over but the server
        reloaded.switch_page("app_pages/batch.py").run()
        until(reloaded, finished_rows, "the job to finish")
        assert "Finished: 100 answered, 0 failed." in texts(reloaded, "success")
        results = reloaded.dataframe[-1].value
        assert len(results) == 100 and (results["status"] == "ok").all()
        assert list(results["prompt"]) == [f"question {i}" for i in range(100)]

    def test_cancel_from_the_page(self) -> None:
        """Cancel stops the job: the rows in flight finish, the rest are not run."""
        at = app("app_pages/batch.py").run()
        delay_chat(at, count=4, delay_s=1.0)
        upload(at, csv(20))
        at.button(key="batch_run").click().run()
        assert at.button(key="batch_cancel")
        at.button(key="batch_cancel").click().run()
        assert not at.exception
        until(at, lambda a: any("Cancelled: 16 rows were not run." in w for w in texts(a, "warning")),
              "the job to show as cancelled")
        until(at, lambda a: [m.value for m in a.metric][0] == "4", "the rows in flight to be kept")

    def test_restart_carries_the_job_on(self) -> None:
        """A server restart does not stop the job: the next server takes its rows and finishes it."""
        at = app("app_pages/batch.py").run()
        delay_chat(at, count=4, delay_s=60)
        upload(at, csv(6))
        at.button(key="batch_run").click().run()
        st.cache_resource.clear()  # the server stops: the cached service is closed

        after = app("app_pages/batch.py").run()
        assert not after.exception
        until(after, finished_rows, "the job to finish on the new server")
        assert "Finished: 6 answered, 0 failed." in texts(after, "success")

    def test_waiting_for_the_rate_limit_is_shown(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Over the user's RPM the job says it waits (and for what) instead of failing rows."""
        monkeypatch.setenv("BLOSSOM_DASH_PER_USER_RPM", "3")
        monkeypatch.setenv("BLOSSOM_DASH_BATCH_SHARE", "1.0")  # the user's own window, not the batch's share
        at = upload(app("app_pages/batch.py").run(), csv(5))
        at.button(key="batch_run").click().run()
        until(at, lambda a: any("Waiting for your requests-per-minute limit" in i for i in texts(a, "info")),
              "the job to wait for the window")
        assert [m.value for m in at.metric][:3] == ["3", "0", "2"]
        at.button(key="batch_cancel").click().run()
        assert not at.exception

    def test_the_batch_share_of_the_quota_is_shown(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """At 10 RPM and share 0.5 the job waits for its share after 5 rows and says how much of the quota it holds."""
        monkeypatch.setenv("BLOSSOM_DASH_PER_USER_RPM", "10")
        monkeypatch.setenv("BLOSSOM_DASH_BATCH_SHARE", "0.5")
        at = upload(app("app_pages/batch.py").run(), csv(8))
        at.button(key="batch_run").click().run()
        # the share can be used up while rows are still in flight: wait for the 5 to be answered too
        until(at, lambda a: any("this batch's share of your requests-per-minute limit" in i for i in texts(a, "info"))
              and [m.value for m in a.metric][:1] == ["5"], "the job to wait for its share with 5 rows done")
        assert [m.value for m in at.metric][:3] == ["5", "0", "3"]
        assert ("Your batch is using 5 of your 10 requests/min (its share is 50%: at most 5; the rest is kept for "
                "your chats).") in texts(at, "caption")
        eta = at.metric[3]
        assert eta.label == "ETA" and eta.value.startswith("about "), "paced by the window: an estimate, said so"
        assert "Paced by the rate limit: at most 5 rows a minute for this batch" in eta.proto.help
        assert any("for the 3 rows left" in i for i in texts(at, "info"))
        at.button(key="batch_cancel").click().run()
        assert not at.exception

    def test_the_sidebar_says_what_a_batch_holds(self) -> None:
        """The shared sidebar's quota line adds how much of the window the user's batch holds."""
        at = app("app.py").run()
        ui.get_service().submit_batch([{"prompt": "sidebar"}], user="local", name="one.csv")
        until(at, lambda a: any(c.value.startswith("Your batch is using 1 of your") for c in a.sidebar.caption),
              "the sidebar to count the batch row")
        assert not at.exception

    def test_retry_failed_rows_then_delete(self) -> None:
        """A failed row says why; Retry failed rows answers it; Delete removes the job."""
        at = app("app_pages/batch.py").run()
        httpx.post(f"{demo_url(at)}/_demo/faults", json={"fault": "500", "count": 1, "routes": ["chat"]})
        upload(at, csv(3))
        at.button(key="batch_run").click().run()
        until(at, finished_rows, "the job to finish")
        assert "Finished: 2 answered, 1 failed." in texts(at, "success")
        failed = at.dataframe[-1].value.query("status == 'error'")
        assert "HTTP 500" in failed["error"].iloc[0]
        at.button(key="batch_retry").click().run()
        until(at, lambda a: "Finished: 3 answered, 0 failed." in texts(a, "success"), "the retry to finish")
        at.button(key="batch_delete").click().run()
        assert not at.exception
        assert any("No batch jobs yet" in i for i in texts(at, "info"))

    def test_only_your_jobs_are_listed(self) -> None:
        """Another user's job is not in the list."""
        at = app("app_pages/batch.py").run()
        ui.get_service().submit_batch([{"prompt": "theirs"}], user="someone-else", name="theirs.csv")
        at.run()
        assert not [s for s in at.selectbox if s.key == "batch_job_select"]
        assert any("No batch jobs yet" in i for i in texts(at, "info"))


class TestLinkedJob:
    def test_a_job_link_opens_that_job(self) -> None:
        """/batch?job=<id> (Monitor's link from a batch row's request) selects that job, not the newest."""
        at = upload(app("app_pages/batch.py").run(), csv(2, prefix="first"), name="first.csv")
        at.button(key="batch_run").click().run()
        until(at, finished_rows, "the first job to finish")
        first = at.selectbox(key="batch_job_select").value
        upload(at, csv(2, prefix="second"), name="second.csv")
        at.button(key="batch_run").click().run()
        until(at, finished_rows, "the second job to finish")
        assert at.selectbox(key="batch_job_select").value != first
        linked = app("app_pages/batch.py")
        linked.query_params["job"] = first
        linked.run()
        assert not linked.exception
        assert linked.selectbox(key="batch_job_select").value == first and "job" not in linked.query_params
