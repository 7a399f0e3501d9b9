"""Batch jobs: CSV parsing and validation, the runner, rate limits, cancel, restart."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from helpers import demo_stats, make_service
from sqlalchemy import func, select

from blossom_dash import BlossomService, InvalidRequest
from blossom_dash.features.batch import (
    MAX_ROWS,
    POLL_S,
    BatchRow,
    BatchStatus,
    batch_jobs,
    batch_rows,
    neutralise_formulas,
    parse_csv,
    results_csv,
    results_jsonl,
    template_csv,
)
from blossom_dash.features.batch_files import MAX_COLUMNS

ROOT = Path(__file__).resolve().parent.parent


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``timeout_s`` (a guard, not a timing claim)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def paused(svc: BlossomService, job_id: str) -> bool:
    """Whether the job waits for a rate-limit window with no row in flight."""
    status = svc.batch_status(job_id)
    return status.waiting_s > 0 and status.running == 0


def finished(svc: BlossomService, job_id: str, timeout_s: float = 60.0) -> BatchStatus:
    """The job's status once it is no longer running."""
    wait_for(lambda: not svc.batch_status(job_id).active, f"job {job_id} to stop", timeout_s)
    return svc.batch_status(job_id)


def fault(svc: BlossomService, name: str, count: int = 1, **knobs: object) -> None:
    """Make the service's demo backend fail its next ``count`` chat requests with ``name``."""
    body = {"fault": name, "count": count, "routes": ["chat"], **knobs}
    httpx.post(f"{svc.backend.base_url}/_demo/faults", json=body, timeout=5).raise_for_status()


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[BlossomService]:
    """A demo service with limits out of the way."""
    service = make_service(tmp_path)
    yield service
    service.close()


def rows(n: int, prefix: str = "question") -> list[dict[str, object]]:
    return [{"prompt": f"{prefix} {i}"} for i in range(n)]


class TestParseCsv:
    def test_columns_and_types(self) -> None:
        """Optional columns become typed values; blank cells mean the default."""
        data = (b"prompt,model,system,temperature,max_tokens,seed\n"
                b"Hello,demo-swift,Be brief,0.7,100,42\n"
                b"Second,,,,,\n")
        parsed = parse_csv(data)
        assert [r.prompt for r in parsed.rows] == ["Hello", "Second"]
        first, second = parsed.rows
        assert (first.model, first.system, first.temperature, first.max_tokens, first.seed) == \
               ("demo-swift", "Be brief", 0.7, 100, 42)
        assert (second.model, second.system, second.temperature, second.max_tokens, second.seed) == \
               (None, None, None, None, None)
        assert [r.row for r in parsed.rows] == [2, 3]
        assert not parsed.invalid

    def test_text_stays_text(self) -> None:
        """"NA" and "null" are prompts, "007" is seed 7 (dtype=str, keep_default_na=False)."""
        parsed = parse_csv(b"prompt,seed\nNA,007\nnull,\n")
        assert [r.prompt for r in parsed.rows] == ["NA", "null"]
        assert parsed.rows[0].seed == 7

    def test_utf8_bom(self) -> None:
        """Excel's "CSV UTF-8" (with a byte-order mark) reads; the BOM is not part of the header."""
        parsed = parse_csv("prompt\nCafé crème\n".encode("utf-8-sig"))
        assert parsed.columns == ("prompt",)
        assert parsed.rows[0].prompt == "Café crème"

    def test_latin1_is_refused_with_how_to_resave(self) -> None:
        """Windows-1252/Latin-1 bytes: says it is not UTF-8, where, and how to re-save."""
        with pytest.raises(InvalidRequest) as err:
            parse_csv("prompt\nok\nCafé\n".encode("latin-1"))
        assert "not UTF-8" in err.value.message and "line 3" in err.value.message
        assert "0xE9" in err.value.message
        assert "CSV UTF-8" in err.value.hint

    def test_utf16_and_xlsx_are_named(self) -> None:
        """A UTF-16 file and an Excel workbook each get their own message."""
        with pytest.raises(InvalidRequest, match="UTF-16"):
            parse_csv("prompt\nhi\n".encode("utf-16"))
        with pytest.raises(InvalidRequest, match="Excel workbook"):
            parse_csv(b"PK\x03\x04\x14\x00\x06\x00rest-of-a-zip")

    @pytest.mark.parametrize("data", [b"", b"   \n\n"])
    def test_empty_file(self, data: bytes) -> None:
        """An empty (or blank) file says so and explains the format."""
        with pytest.raises(InvalidRequest, match="empty") as err:
            parse_csv(data)
        assert "prompt" in err.value.hint

    def test_header_only(self) -> None:
        """A header without rows says there are no prompts."""
        with pytest.raises(InvalidRequest, match="no prompts"):
            parse_csv(b"prompt,model\n")

    def test_missing_prompt_column_names_the_columns_found(self) -> None:
        """Without a prompt column the message lists the columns the file has."""
        with pytest.raises(InvalidRequest) as err:
            parse_csv(b"question,model\nhi,demo-swift\n")
        assert "no “prompt” column" in err.value.message and "question" in err.value.message
        assert "max_tokens" in err.value.hint

    def test_header_names_are_forgiving(self) -> None:
        """Case, spaces and hyphens in the header do not matter; unknown columns are noted."""
        parsed = parse_csv(b" Prompt ,Max Tokens,Max-Tokens2,notes\nhi,5,x,y\n")
        assert parsed.rows[0].max_tokens == 5
        assert any("Ignored columns" in n and "notes" in n for n in parsed.notes)

    def test_duplicate_column(self) -> None:
        """Two prompt columns are refused rather than one silently winning."""
        with pytest.raises(InvalidRequest, match="more than once"):
            parse_csv(b"prompt,PROMPT\na,b\n")

    def test_duplicate_column_written_twice_the_same_way(self) -> None:
        """pandas renames a second "prompt" to "prompt.1"; the check still sees the name as written."""
        with pytest.raises(InvalidRequest) as err:
            parse_csv(b"prompt,model,prompt\na,demo-swift,b\n")
        assert err.value.message == "The column “prompt” appears more than once."

    def test_duplicates_among_a_thousand_columns(self) -> None:
        """At the column cap, repeated ignored columns pass and a repeated used one is named."""
        cells = ",".join(["q"] * MAX_COLUMNS)
        fine = parse_csv(("prompt," + ",".join(["notes"] * (MAX_COLUMNS - 1)) + "\n" + cells + "\n").encode())
        assert [r.prompt for r in fine.rows] == ["q"] and any("Ignored columns: notes" in n for n in fine.notes)
        twice = "prompt," + ",".join(["notes"] * (MAX_COLUMNS - 3)) + ",seed,Seed\n" + cells + "\n"
        with pytest.raises(InvalidRequest) as err:
            parse_csv(twice.encode())
        assert err.value.message == "The column “seed” appears more than once."

    def test_too_many_columns_is_refused_before_reading(self) -> None:
        """A 400 KiB header of 200,000 columns is refused by its width, in words."""
        data = b"prompt," + b"x," * 200_000 + b"x\nhello\n"
        with pytest.raises(InvalidRequest) as err:
            parse_csv(data)
        assert err.value.message == f"The file has 200,002 columns; a batch file has at most {MAX_COLUMNS:,}."

    def test_first_row_with_a_cell_too_many(self) -> None:
        """An unquoted comma in the first prompt is named (pandas would make it an index and crash the parse)."""
        with pytest.raises(InvalidRequest) as err:
            parse_csv(b"prompt,model\nHello, world,demo-swift\nsecond,demo-swift\n")
        assert err.value.message == "Row 2 has 3 cells but the header has 2." and "double quotes" in err.value.hint

    def test_semicolons_and_decimal_commas(self) -> None:
        """A European Excel file (semicolons, 0,7) reads, with a note."""
        parsed = parse_csv("prompt;temperature\nBonjour, ça va ?;0,7\n".encode())
        assert parsed.rows[0].prompt == "Bonjour, ça va ?"
        assert parsed.rows[0].temperature == 0.7
        assert any("semicolons" in n for n in parsed.notes)

    def test_quoted_commas_and_multiline_prompts(self) -> None:
        """RFC 4180 quoting: commas, quotes and newlines inside a prompt; row numbers are records."""
        parsed = parse_csv(b'prompt,seed\n"a, b and ""c""",1\n"line one\nline two",2\nlast,3\n')
        assert [r.prompt for r in parsed.rows] == ['a, b and "c"', "line one\nline two", "last"]
        assert [r.row for r in parsed.rows] == [2, 3, 4]

    def test_ragged_row_names_its_line(self) -> None:
        """A row with more cells than the header says which and why (unquoted comma)."""
        with pytest.raises(InvalidRequest) as err:
            parse_csv(b"prompt,seed\nfine,1\nnot, quoted,2\n")
        assert "Row 3 has 3 cells but the header has 2" in err.value.message
        assert "double quotes" in err.value.hint

    def test_blank_rows_are_skipped_and_numbers_stay_true(self) -> None:
        """Blank lines and all-empty rows are dropped; the other rows keep their file numbers."""
        parsed = parse_csv(b"prompt,model\nfirst,\n\n,\nfourth,\n")
        assert [(r.row, r.prompt) for r in parsed.rows] == [(2, "first"), (5, "fourth")]
        assert any("Skipped 2 blank" in n for n in parsed.notes)

    def test_row_limit(self) -> None:
        """10,000 rows are accepted; 10,001 are refused with the count and the limit."""
        body = "".join(f"p{i}\n" for i in range(MAX_ROWS))
        assert len(parse_csv(("prompt\n" + body).encode()).rows) == MAX_ROWS
        with pytest.raises(InvalidRequest) as err:
            parse_csv(("prompt\n" + body + "one more\n").encode())
        assert "10,001 rows" in err.value.message and "10,000" in err.value.message

    def test_size_limit(self) -> None:
        """A file over 5 MB is refused before it is read."""
        data = b"prompt\n" + b"x" * (5 * 1024 * 1024)
        with pytest.raises(InvalidRequest, match=r"5\.0 MB; the limit is 5 MB"):
            parse_csv(data)

    def test_a_nul_character_is_refused_in_the_preview_and_by_the_service(self, tmp_path: Path) -> None:
        """A NUL (binary data read as text) is the row's problem, named, not a database failure at submit."""
        parsed = parse_csv(b"prompt,system\nbin\x00ary,\nfine,be\x00brief\nok,\n")
        problems = {r.prompt[:3]: "; ".join(r.errors) for r in parsed.rows}
        assert problems["bin"] == "The prompt contains a NUL character (\\x00)"
        assert problems["fin"] == "The system prompt contains a NUL character (\\x00)"
        assert problems["ok"] == ""
        with make_service(tmp_path) as svc, pytest.raises(InvalidRequest) as err:
            svc.generate_text("a\x00b")
        assert "NUL character" in err.value.message and "binary data" in err.value.hint

    def test_row_problems(self) -> None:
        """Each invalid row says why; valid rows beside them are kept."""
        data = ("prompt,model,temperature,max_tokens,seed\n"
                "fine,demo-swift,1,10,1\n"
                ",demo-swift,,,\n"
                f"{'x' * 5001},,,,\n"
                "hot,,3,,\n"
                "warm,,warm,,\n"
                "tokens,,,12.5,\n"
                "zero,,,0,\n"
                "seed,,,,-1\n"
                "who,gpt-9,,,\n").encode()
        parsed = parse_csv(data, known_models=["demo-swift", "demo-deep"])
        problems = {r.prompt[:6]: "; ".join(r.errors) for r in parsed.rows}
        assert problems["fine"] == ""
        # The gateway's own rules and words (TextRequest.problems), so the preview and
        # the pipeline cannot disagree.
        assert problems[""] == "The prompt is empty"
        assert "The prompt has 5,001 characters; the limit is 5,000" in problems["x" * 6]
        assert problems["hot"] == "temperature must be between 0.0 and 2.0, not 3.0"
        assert problems["warm"] == "temperature “warm” is not a number"
        assert problems["tokens"] == "max_tokens 12.5 is not a whole number"
        assert problems["zero"] == "max_tokens must be a whole number from 1 to 8192, not 0"
        assert "seed must be a whole number from 0 to 2147483647, not -1" in problems["seed"]
        assert problems["who"] == "Unknown model “gpt-9”"
        assert len(parsed.valid) == 1 and len(parsed.invalid) == 8

    def test_unknown_model_passes_when_the_list_is_unknown(self) -> None:
        """Without a model list any name is accepted (the backend decides)."""
        assert parse_csv(b"prompt,model\nhi,my-local-llama\n").rows[0].valid

    def test_preview_frame(self) -> None:
        """The preview has one row per file row, with the problem in words."""
        frame = parse_csv(b"prompt,temperature\nok,1\nbad,9\n").frame()
        assert list(frame["row"]) == [2, 3]
        assert list(frame["problem"]) == ["", "temperature must be between 0.0 and 2.0, not 9.0"]

    def test_template_is_a_valid_batch(self) -> None:
        """The downloadable template parses with no problems."""
        parsed = parse_csv(template_csv())
        assert len(parsed.rows) == 2 and not parsed.invalid


class TestExport:
    def test_formulas_are_neutralised(self) -> None:
        """Text cells starting with = + - @ tab CR get a leading quote; numbers do not (OWASP)."""
        df = pd.DataFrame({"text": ["=1+1", "+cmd", "-x", "@SUM(A1)", "\tx", "\rx", "plain", None],
                           "n": [-1, 2, 3, 4, 5, 6, 7, 8]})
        out = neutralise_formulas(df)
        assert list(out["text"])[:7] == ["'=1+1", "'+cmd", "'-x", "'@SUM(A1)", "'\tx", "'\rx", "plain"]
        assert pd.isna(out["text"].iloc[7])
        assert list(out["n"]) == list(df["n"])
        assert df["text"].iloc[0] == "=1+1", "the input is not changed"

    def test_csv_and_jsonl(self) -> None:
        """CSV is neutralised (and Excel-readable UTF-8); JSONL keeps values as they are."""
        df = pd.DataFrame({"prompt": ["=HYPERLINK(\"x\")", "Café"], "latency_ms": [1.5, None]})
        text = results_csv(df).decode("utf-8-sig")
        assert "'=HYPERLINK" in text and "Café" in text
        lines = [json.loads(line) for line in results_jsonl(df).decode().splitlines()]
        assert lines == [{"prompt": "=HYPERLINK(\"x\")", "latency_ms": 1.5}, {"prompt": "Café", "latency_ms": None}]

    def test_csv_keeps_a_bare_cr_inside_its_cell(self) -> None:
        """A model answer with a lone CR (and one with CRLF) reads back whole with Python's csv module."""
        answers = ["first line\rsecond line", "a\r\nb", "plain"]
        df = pd.DataFrame({"answer": answers, "row": [2, 3, 4]})
        text = results_csv(df).decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert rows == [["answer", "row"], *[[a, str(n)] for a, n in zip(answers, [2, 3, 4], strict=True)]]


class TestSubmit:
    def test_rows_are_checked_again(self, svc: BlossomService) -> None:
        """submit_batch refuses invalid rows with the first problem and the count."""
        bad = [{"prompt": "ok"}, {"prompt": ""}, {"prompt": "t", "temperature": 5.0}]
        with pytest.raises(InvalidRequest) as err:
            svc.submit_batch(bad, user="a")
        assert "2 of 3 rows cannot run (row 3: The prompt is empty, and 1 more)" in err.value.message
        with pytest.raises(InvalidRequest, match="no rows"):
            svc.submit_batch([], user="a")
        with pytest.raises(InvalidRequest, match="10,001 rows"):
            svc.submit_batch([{"prompt": "x"}] * (MAX_ROWS + 1), user="a")
        assert svc.list_batches("a") == []

    def test_parsed_rows_submit_as_they_are(self, svc: BlossomService) -> None:
        """BatchRow objects from parse_csv keep their file row numbers in the results."""
        parsed = parse_csv(b"prompt\n\nfirst\nsecond\n")
        job = svc.submit_batch(parsed.valid, user="a", name="two.csv")
        assert finished(svc, job).done == 2
        assert list(svc.batch_results(job)["row"]) == [3, 4]
        assert svc.list_batches("a")[0].name == "two.csv"


class TestJobs:
    def test_hundred_rows_finish(self, svc: BlossomService) -> None:
        """A 100-row job on the demo backend answers every row, in file order, as text events."""
        job = svc.submit_batch(rows(100), user="ana", session="s1")
        status = finished(svc, job)
        assert (status.status, status.done, status.failed, status.remaining) == ("finished", 100, 0, 0)
        df = svc.batch_results(job)
        assert list(df["prompt"]) == [f"question {i}" for i in range(100)]
        assert (df["status"] == "ok").all() and df["answer"].str.contains("Demo backend").all()
        assert df["latency_ms"].notna().all() and (df["completion_tokens"] > 0).all()
        events = svc.metrics.frame()
        mine = events[events["user"] == "ana"]
        assert len(mine) == 100 and set(mine["kind"]) == {"text"} and set(mine["outcome"]) == {"ok"}
        assert set(mine["request_id"]) == set(df["request_id"])

    def test_rows_use_the_cache(self, svc: BlossomService) -> None:
        """The same prompts again are cache hits: no backend call, no rate-limit slot."""
        finished(svc, svc.submit_batch(rows(5), user="ana"))
        calls = demo_stats(svc).get("chat", 0)
        job = svc.submit_batch(rows(5), user="ana")
        finished(svc, job)
        assert svc.batch_results(job)["cached"].all()
        assert demo_stats(svc).get("chat", 0) == calls

    def test_row_parameters_reach_the_backend(self, svc: BlossomService) -> None:
        """A row's model and max_tokens are the ones used for it."""
        job = svc.submit_batch([{"prompt": "one", "model": "demo-coder", "max_tokens": 20},
                                {"prompt": "two", "model": "demo-deep"}], user="ana")
        finished(svc, job)
        df = svc.batch_results(job)
        assert list(df["answered_by"]) == ["demo-coder", "demo-deep"]
        assert df["completion_tokens"].iloc[0] <= 20

    def test_a_failing_row_does_not_stop_the_job(self, svc: BlossomService) -> None:
        """A backend error fails its row with words; the others are answered; retry fixes it."""
        fault(svc, "500", count=1)
        job = svc.submit_batch(rows(6), user="ana")
        status = finished(svc, job)
        assert (status.status, status.done, status.failed) == ("finished", 5, 1)
        df = svc.batch_results(job)
        failed = df[df["status"] == "error"]
        assert "HTTP 500" in failed["error"].iloc[0]
        again = svc.resume_batch(job, retry_failed=True, user="ana")
        assert again.active or again.status == "finished"
        status = finished(svc, job)
        assert (status.done, status.failed) == (6, 0)

    def test_jobs_belong_to_their_user(self, svc: BlossomService) -> None:
        """Another user neither lists nor reads nor cancels my job; my handle does."""
        mine = svc.session("ana", "s1")
        job = mine.submit_batch(rows(3), name="ana.csv")
        finished(svc, job)
        theirs = svc.session("bob", "s2")
        assert [j.job_id for j in mine.list_batches()] == [job]
        assert theirs.list_batches() == []
        for call in (theirs.batch_status, theirs.batch_results, theirs.cancel_batch, theirs.delete_batch):
            with pytest.raises(InvalidRequest, match="among your jobs"):
                call(job)
        assert mine.batch_status(job).done == 3
        mine.delete_batch(job)
        assert mine.list_batches() == []

    def test_fair_between_jobs(self, tmp_path: Path) -> None:
        """A short job submitted after a long one is not queued behind all of it."""
        with make_service(tmp_path, demo_latency=True) as svc:
            long_job = svc.submit_batch([{"prompt": f"q{i}", "model": "demo-deep"} for i in range(40)], user="a")
            short = svc.submit_batch(rows(4), user="b")
            finished(svc, short)
            assert svc.batch_status(long_job).active
            assert svc.cancel_batch(long_job, user="a").status == "cancelled"


class TestRateLimits:
    def test_rows_wait_for_the_window_instead_of_failing(self, tmp_path: Path) -> None:
        """12 rows at 10 RPM: 10 run, then the job waits (no row fails) and resumes when there is room."""
        with make_service(tmp_path, per_user_rpm=10, batch_share=1.0) as svc:
            job = svc.submit_batch(rows(12), user="ana")
            wait_for(lambda: paused(svc, job), "the job to wait for the window")
            status = svc.batch_status(job)
            assert (status.status, status.done, status.failed, status.remaining) == ("running", 10, 0, 2)
            assert "requests-per-minute" in status.wait_reason
            assert status.eta_s is not None and status.eta_s >= 2 * 60 / 10
            # Raising the limit (as the Controls page does) lets the waiting job go on at once.
            svc.limiter.configure(per_user_rpm=1000)
            status = finished(svc, job)
            assert (status.done, status.failed) == (12, 0)

    def test_cancel_while_waiting(self, tmp_path: Path) -> None:
        """A job waiting for the window can be cancelled; the waiting rows are skipped, not failed."""
        with make_service(tmp_path, per_user_rpm=10, batch_share=1.0) as svc:
            job = svc.submit_batch(rows(12), user="ana")
            wait_for(lambda: paused(svc, job), "the job to wait for the window")
            status = svc.cancel_batch(job, user="ana")
            assert (status.status, status.done, status.failed, status.cancelled) == ("cancelled", 10, 0, 2)

    def test_upstream_429_waits_retry_after(self, svc: BlossomService) -> None:
        """The backend's own 429s (Retry-After 0) put rows back; every row is answered."""
        fault(svc, "429", count=3, retry_after=0)
        job = svc.submit_batch(rows(6), user="ana")
        status = finished(svc, job)
        assert (status.done, status.failed) == (6, 0)
        events = svc.metrics.frame()
        assert (events["error_type"] == "RateLimited").sum() == 3, "each refusal is one event, as Monitor shows"


class TestCancel:
    def test_cancel_stops_further_rows(self, svc: BlossomService) -> None:
        """Cancel: rows in flight finish and are kept, no other row is sent."""
        fault(svc, "timeout", count=4, delay_s=1.0)
        job = svc.submit_batch(rows(40), user="ana")
        wait_for(lambda: svc.batch_status(job).running == 4, "four rows in flight")
        status = svc.cancel_batch(job, user="ana")
        assert status.status == "cancelled" and status.cancelled == 36
        wait_for(lambda: svc.batch_status(job).done == 4, "the rows in flight to finish")
        status = svc.batch_status(job)
        assert (status.status, status.done, status.failed, status.cancelled) == ("cancelled", 4, 0, 36)
        assert demo_stats(svc).get("chat", 0) == 4
        assert svc.batch_results(job)["status"].value_counts().to_dict() == {"cancelled": 36, "ok": 4}

    def test_resume_a_cancelled_job(self, svc: BlossomService) -> None:
        """Resume runs what a cancel skipped and keeps what was done."""
        fault(svc, "timeout", count=4, delay_s=0.5)
        job = svc.submit_batch(rows(10), user="ana")
        wait_for(lambda: svc.batch_status(job).running == 4, "four rows in flight")
        svc.cancel_batch(job, user="ana")
        wait_for(lambda: svc.batch_status(job).done == 4, "the rows in flight to finish")
        before = svc.batch_results(job)
        svc.resume_batch(job, user="ana")
        status = finished(svc, job)
        assert (status.status, status.done) == ("finished", 10)
        after = svc.batch_results(job)
        kept = before["status"] == "ok"
        assert list(after.loc[kept, "request_id"]) == list(before.loc[kept, "request_id"])

    def test_resume_refuses_a_running_or_complete_job(self, svc: BlossomService) -> None:
        """Resume says why when there is nothing to do."""
        job = svc.submit_batch(rows(2), user="ana")
        finished(svc, job)
        with pytest.raises(InvalidRequest, match="no rows left"):
            svc.resume_batch(job, user="ana")


class TestRestart:
    """A restart no longer interrupts a job: the next service on the database carries it on.

    (Until the replicas change, a restart marked running jobs interrupted and waited for
    Resume; with several replicas that marking was what let a job run twice, so now the
    rows are leased and any live service, the restarted one included, takes them.)
    """

    def test_restart_carries_the_job_on(self, tmp_path: Path) -> None:
        """A restart keeps the finished rows and the next service runs only the rest, by itself."""
        with make_service(tmp_path, per_user_rpm=6, batch_share=1.0) as first:
            job = first.submit_batch(rows(12), user="ana")
            wait_for(lambda: paused(first, job), "the job to wait for the window")
            runner = first._batch_runner()
            done_before = first.batch_results(job).query("status == 'ok'")["request_id"].tolist()
        wait_for(lambda: runner.alive_threads == 0, "the runner's threads to stop")
        assert len(done_before) == 6
        with make_service(tmp_path) as second:
            status = finished(second, job)
            assert (status.status, status.done, status.failed) == ("finished", 12, 0)
            assert demo_stats(second).get("chat", 0) == 6, "only the unfinished rows were sent"
            assert second.batch_results(job)["request_id"].tolist()[:6] == done_before

    def test_rows_in_flight_at_close_run_again(self, tmp_path: Path) -> None:
        """Rows whose answer never came (the service stopped under them) are handed back, not failed."""
        with make_service(tmp_path) as first:
            fault(first, "timeout", count=4, delay_s=60)
            job = first.submit_batch(rows(8), user="ana")
            wait_for(lambda: first.batch_status(job).running == 4, "four rows in flight")
        with first.store.engine.connect() as conn:  # closed: the rows are back, the job still runs
            states = conn.execute(select(batch_rows.c.status, func.count()).where(batch_rows.c.job_id == job)
                                  .group_by(batch_rows.c.status)).all()
            assert dict(states).get("running", 0) == 0
        with make_service(tmp_path) as second:
            status = finished(second, job)
            assert (status.status, status.done, status.failed) == ("finished", 8, 0)

    def test_killed_process_job_is_carried_on(self, tmp_path: Path) -> None:
        """SIGKILL mid-job: the next start carries the job on and finishes it, keeping the done rows."""
        child = textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(ROOT / "tests")!r})
            from helpers import make_service
            from pathlib import Path
            svc = make_service(Path({str(tmp_path)!r}), per_user_rpm=5, batch_share=1.0)
            job = svc.submit_batch([{{"prompt": f"question {{i}}"}} for i in range(10)], user="ana")
            while not (svc.batch_status(job).waiting_s > 0 and svc.batch_status(job).running == 0):
                time.sleep(0.02)
            print(job, flush=True)
            time.sleep(600)
        """)
        proc = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert proc.stdout is not None
            job = proc.stdout.readline().strip()
            assert job, "the child did not start its job"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        with make_service(tmp_path) as svc:
            status = finished(svc, job)
            assert (status.status, status.done, status.failed) == ("finished", 10, 0)
            assert demo_stats(svc).get("chat", 0) == 5, "the five rows done before the kill are kept"

    def test_orphans_are_ended(self, svc: BlossomService) -> None:
        """A job run with a user's own key whose replica stopped stamping it is interrupted (no
        other replica has the key); a fresh one is left alone; a job with no rows left is finished."""
        now = time.time()
        svc.list_batches(None)  # creates the tables
        with svc.store.engine.begin() as conn:
            for job_id, beat, own_key in (("stale", now - 3600, True), ("fresh", now, True),
                                          ("settled", now - 3600, False)):
                conn.execute(batch_jobs.insert().values(
                    id=job_id, user="ana", session="", name="", status="running", total=int(own_key),
                    created_ts=now, run_started_ts=now, finished_ts=None, heartbeat_ts=beat,
                    runner_id="other-host/1/abcd", own_key=own_key))
                if own_key:  # a row that only the replica holding the key may send
                    conn.execute(batch_rows.insert().values(job_id=job_id, idx=0, row_no=2, prompt="p",
                                                            status="pending", fence=0))
        states = {j.job_id: j.status for j in svc.list_batches("ana")}
        assert states == {"stale": "interrupted", "fresh": "running", "settled": "finished"}
        time.sleep(2 * POLL_S)  # a few poller rounds: this service must not take the keyed job's row
        assert svc.batch_results("fresh")["status"].tolist() == ["pending"]
        assert demo_stats(svc).get("chat", 0) == 0


class TestRowsAsObjects:
    def test_batchrow_params(self) -> None:
        """A BatchRow hands generate_text exactly its parameters."""
        row = BatchRow(row=2, prompt="p", model="m", temperature=0.5, seed=3)
        assert row.params() == {"model": "m", "system": None, "temperature": 0.5, "max_tokens": None, "seed": 3}
