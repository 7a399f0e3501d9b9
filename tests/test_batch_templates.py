"""Batch files with a ``template`` column: rows filled in from the prompt library, every
problem named per row in the preview, and a job that runs the filled-in prompts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import make_service
from pages_helpers import app, texts

from blossom_dash.features.batch_files import parse_csv
from blossom_dash.service import BlossomService
from blossom_dash.session import SessionHandle


@pytest.fixture
def ana(tmp_path: Path) -> Iterator[SessionHandle]:
    """ana's session on a service whose library holds her ``summary`` (v1, v2 labelled
    production) and bob's private ``secret``."""
    with make_service(tmp_path) as svc:
        handle = svc.session("ana", "s1")
        t = handle.create_prompt("summary", "Summarise {text}.", system="Be {tone}.", model="demo-swift",
                                 max_tokens=100)
        handle.add_prompt_version(t.id, "Summarise {text} in {words} words.", system="Be {tone}.",
                                  temperature=0.2)
        handle.set_prompt_label(t.id, "production", 2)
        svc.session("bob", "s2").create_prompt("secret", "Bob's {x}")
        yield handle


def _parse(handle: SessionHandle, text: str) -> object:
    service: BlossomService = handle.service
    return parse_csv(text.encode(), templates=handle.prompt_resolver(),
                     max_prompt_chars=service.settings.max_prompt_chars)


class TestExpansion:
    def test_rows_are_filled_from_their_template(self, ana: SessionHandle) -> None:
        """name@label and name@version fill the prompt and, where the row is blank, the
        system prompt, model and parameters; a row's own cells win."""
        parsed = _parse(ana, "template,text,words,tone,model,temperature\n"
                             "summary@production,the report,20,kind,,\n"
                             "summary@1,the memo,,dry,demo-deep,0.9\n"
                             ",,,,,\n")
        first, second = parsed.rows
        assert first.valid and second.valid, [first.errors, second.errors]
        assert (first.prompt, first.system, first.temperature, first.model) == (
            "Summarise the report in 20 words.", "Be kind.", 0.2, None)
        assert (second.prompt, second.system, second.model, second.max_tokens, second.temperature) == (
            "Summarise the memo.", "Be dry.", "demo-deep", 100, 0.9)
        assert "prompt" in parsed.columns
        assert any("summary@production" in n and "summary@2" in n for n in parsed.notes)
        assert not any("Ignored columns" in n for n in parsed.notes), "variable columns are not ignored"

    def test_values_are_literal(self, ana: SessionHandle) -> None:
        """A cell holding {braces} is put in as written."""
        parsed = _parse(ana, "template,text,tone\nsummary@1,{words} and {{x}},calm\n")
        assert parsed.rows[0].prompt == "Summarise {words} and {{x}}."

    def test_problems_are_named_per_row(self, ana: SessionHandle) -> None:
        """Missing variables (no column, blank cell), a variable of another template, an unknown
        template, someone else's private one, an unknown label, prompt and template both set:
        each row says which, and the valid rows still run."""
        parsed = _parse(ana, "template,prompt,text,tone,words\n"
                             "summary@production,,a,kind,\n"
                             "summary@1,,a,kind,7\n"
                             "nope,,a,kind,\n"
                             "secret,,a,,\n"
                             "summary@staging,,a,kind,\n"
                             "summary@1,also a prompt,a,kind,\n"
                             "summary@1,,a,kind,\n"
                             ",plain prompt,,,\n")
        errors = [" ".join(r.errors) for r in parsed.rows]
        assert "summary@2 needs {words} (blank in this row)" in errors[0]
        assert "“words” is not a variable of summary@1" in errors[1]
        assert "template “nope”" in errors[2] and "is yours or shared" in errors[2]
        assert "template “secret”" in errors[3], "bob's private template is not visible to ana"
        assert "no label “staging”" in errors[4]
        assert "both a prompt and a template" in errors[5]
        assert [r.valid for r in parsed.rows] == [False] * 6 + [True, True]
        assert not any("prompt is empty" in e.lower() for e in errors)

    def test_missing_column_is_named(self, ana: SessionHandle) -> None:
        """A variable with no column at all is named as such."""
        parsed = _parse(ana, "template,text\nsummary@1,a\n")
        assert "needs {tone} (no column “tone”)" in parsed.rows[0].errors[0]

    def test_without_the_library_template_rows_say_so(self) -> None:
        """parse_csv without a resolver (a script) marks template rows invalid, in words."""
        parsed = parse_csv(b"template,text\nsummary,a\n")
        assert "prompt library" in parsed.rows[0].errors[0]

    def test_a_team_template_is_usable_by_another_member(self, ana: SessionHandle) -> None:
        """Shared with the team, ana's template fills carl's rows too."""
        tid = next(t.id for t in ana.prompt_templates() if t.name == "summary")
        ana.share_prompt(tid, True)
        carl = ana.service.session("carl", "s3")
        parsed = _parse(carl, "template,text,tone\nsummary@1,x,warm\n")
        assert parsed.rows[0].valid and parsed.rows[0].prompt == "Summarise x."

    def test_a_job_runs_the_filled_in_prompts(self, ana: SessionHandle) -> None:
        """Submitted, the rows run with the rendered prompts."""
        parsed = _parse(ana, "template,text,tone\nsummary@1,alpha,kind\nsummary@1,beta,kind\n")
        job = ana.submit_batch(parsed.valid, name="t.csv")
        status = ana.batch_status(job)
        assert status.total == 2
        results = ana.batch_results(job)
        assert sorted(results["prompt"]) == ["Summarise alpha.", "Summarise beta."]


class TestBatchFileFor:
    def test_the_file_reads_back_with_its_variables(self, ana: SessionHandle) -> None:
        """The Prompts page's Batch file names the template and one column per variable; filled
        in, it parses to valid rows."""
        from blossom_dash.features.batch_templates import batch_file_for

        data = batch_file_for("summary@production", ana.resolve_prompt("summary@production"), rows=1)
        assert data.decode().splitlines() == ["template,tone,text,words", "summary@production,,,"]
        parsed = _parse(ana, data.decode().replace("summary@production,,,", "summary@production,calm,x,5"))
        assert parsed.rows[0].valid and parsed.rows[0].prompt == "Summarise x in 5 words."


class TestPreviewPage:
    def test_preview_lists_template_problems(self) -> None:
        """On the Batch page a template file shows the filled prompts and the rows that cannot run."""
        at = app("app.py").run()
        at.switch_page("app_pages/prompts.py").run()
        at.text_input(key="prompts_new_name").set_value("ask")
        at.text_area(key="prompts_new_prompt").set_value("Explain {topic}.")
        at.button(key="prompts_create").click().run()
        at.switch_page("app_pages/batch.py").run()
        at.file_uploader(key="batch_file").set_value(
            ("t.csv", b"template,topic\nask,rate limits\nask,\nmissing,x\n", "text/csv")).run()
        assert not at.exception
        assert any("2 row(s) cannot run" in w for w in texts(at, "warning"))
        preview = at.dataframe[0].value
        assert preview["prompt"].tolist()[0] == "Explain rate limits."
        assert "ask@1 needs {topic}" in preview["problem"].tolist()[1]
        assert "template “missing”" in preview["problem"].tolist()[2]
