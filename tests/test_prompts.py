"""The prompt library: the template syntax, rendering, diffs, the store on SQLite and
PostgreSQL, and who may read, use, edit and delete a template."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import make_service
from sqlalchemy import create_engine, inspect

from blossom_dash.errors import InvalidRequest, PermissionDenied
from blossom_dash.features.prompts import (
    MAX_VERSIONS,
    PromptError,
    PromptNotFound,
    PromptStore,
    diff,
    parse_ref,
    render,
    variables,
)
from blossom_dash.service import BlossomService
from blossom_dash.telemetry.store import UsageStore


@pytest.fixture
def store(database_url: str) -> Iterator[PromptStore]:
    """A prompt store on an empty usage database (SQLite, then PostgreSQL)."""
    usage = UsageStore(database_url)
    yield PromptStore(usage.engine)
    usage.close()


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[BlossomService]:
    """A service on the demo backend and its own SQLite file."""
    with make_service(tmp_path) as s:
        yield s


class TestVariables:
    def test_order_of_first_use_each_once(self) -> None:
        """Variables come in the order they first appear, repeated ones once; {{ }} are literal."""
        assert variables("Dear {name}, {{not_a_var}} about {topic} — {name}") == ["name", "topic"]

    @pytest.mark.parametrize(("text", "words"), [
        ("Hi {}", "positional"),
        ("Hi {0}", "positional"),
        ("Hi {a.__class__}", "attribute or an index"),
        ("Hi {a[0]}", "attribute or an index"),
        ("Hi {a!r}", "conversion or a format spec"),
        ("Hi {a:>99999}", "conversion or a format spec"),
        ("Hi {a:{b}}", "conversion or a format spec"),
        ("Hi {Name}", "lowercase letters"),
        ("Hi {model}", "Batch's own columns"),
        ("Hi {a", "braces do not match"),
        ("Hi a}", "braces do not match"),
    ])
    def test_unsafe_or_wrong_fields_are_refused_in_words(self, text: str, words: str) -> None:
        """Positional fields, attribute/index access, conversions, format specs, bad names,
        Batch's column names and unbalanced braces are refused, saying which."""
        with pytest.raises(PromptError) as info:
            variables(text)
        assert words in str(info.value)


class TestRenderAndDiff:
    def _version(self, store: PromptStore) -> object:
        t = store.create("greet", "Hello {name}, tell me about {topic}.", owner="ana", system="You are {tone}.")
        return store.version(t)

    def test_values_are_inserted_literally(self, store: PromptStore) -> None:
        """A value holding {x} or braces is put in as it is, never expanded again."""
        out = render(self._version(store), {"name": "{topic}", "topic": "a}b{", "tone": "kind"})
        assert (out.system, out.prompt, out.ref) == ("You are kind.", "Hello {topic}, tell me about a}b{.",
                                                      "greet@1")

    def test_missing_and_unknown_variables_are_named(self, store: PromptStore) -> None:
        """Rendering names the missing variables and those the template does not have."""
        with pytest.raises(PromptError) as info:
            render(self._version(store), {"name": "x", "colour": "red"})
        assert "missing {tone}, {topic}" in str(info.value) and "not in the template: {colour}" in str(info.value)

    def test_diff_shows_changed_lines(self, store: PromptStore) -> None:
        """The diff between two versions is a unified diff over system, prompt and parameters."""
        t = store.create("d", "line one\nline two", owner="ana")
        v2 = store.add_version(t.id, "line one\nline 2", author="ana", temperature=0.5)
        text = diff(store.version(store.get(t.id), 1), v2)
        assert text.startswith("--- d v1\n+++ d v2") and "-line two" in text and "+line 2" in text
        assert "+# temperature: 0.5" in text
        assert diff(v2, v2) == ""

    @pytest.mark.parametrize(("ref", "parsed"), [
        ("summary", (None, "summary", "latest")),
        ("summary@production", (None, "summary", "production")),
        ("summary@3", (None, "summary", "3")),
        ("ana@example.org/summary@staging", ("ana@example.org", "summary", "staging")),
    ])
    def test_references(self, ref: str, parsed: tuple) -> None:
        """A reference is name, name@label, name@version, or owner/name@..."""
        assert parse_ref(ref) == parsed

    def test_bad_reference_in_words(self) -> None:
        """A reference that is not a name says what a name looks like."""
        with pytest.raises(PromptError, match="not a template name"):
            parse_ref("Summary Report")


class TestStore:
    def test_versions_are_immutable_and_numbered(self, store: PromptStore) -> None:
        """Each new version gets the next number; earlier ones read back unchanged."""
        t = store.create("summary", "Summarise {text}", owner="ana", model="demo-swift", max_tokens=200,
                         message="first")
        v2 = store.add_version(t.id, "Summarise {text} in {n} words", author="ana", message="  word\n count ")
        t = store.get(t.id)
        assert (t.latest, v2.version, v2.variables, v2.message) == (2, 2, ["text", "n"], "word count")
        v1 = store.version(t, 1)
        assert (v1.prompt, v1.model, v1.max_tokens, v1.message) == ("Summarise {text}", "demo-swift", 200, "first")
        assert [v.version for v in store.versions(t)] == [2, 1]

    def test_labels_point_and_moves_are_recorded(self, store: PromptStore) -> None:
        """A label points at a version, moves, is removed; every move is recorded; latest is implicit."""
        t = store.create("s", "v1 {x}", owner="ana")
        store.add_version(t.id, "v2 {x}", author="ana")
        store.set_label(t.id, "production", 1, user="ana")
        t = store.set_label(t.id, "production", 2, user="bob")
        assert t.labels == {"production": 2} and store.version(t, "production").prompt == "v2 {x}"
        assert store.version(t, "latest").version == 2
        t = store.set_label(t.id, "production", None, user="ana")
        assert t.labels == {}
        moves = [(m["old_version"], m["new_version"], m["user"]) for m in store.label_moves(t.id)]
        assert moves == [(2, None, "ana"), (1, 2, "bob"), (None, 1, "ana")]
        with pytest.raises(PromptError, match="cannot be set"):
            store.set_label(t.id, "latest", 1, user="ana")
        with pytest.raises(PromptNotFound, match="no version 9"):
            store.set_label(t.id, "staging", 9, user="ana")

    def test_names_unique_per_owner(self, store: PromptStore) -> None:
        """One owner cannot have two templates of one name; another owner may."""
        store.create("same", "x", owner="ana")
        store.create("same", "y", owner="bob")
        with pytest.raises(PromptError, match="already have a template"):
            store.create("same", "z", owner="ana")

    @pytest.mark.parametrize("name", ["", "Upper", "-dash", "has space", "x" * 65, "a/b", "a@b"])
    def test_bad_names_refused(self, store: PromptStore, name: str) -> None:
        """Names outside the rule are refused in words."""
        with pytest.raises(PromptError, match="not a valid template name"):
            store.create(name, "x", owner="ana")

    def test_request_rules_apply_to_a_version(self, store: PromptStore) -> None:
        """A version must fit the request cap and the gateway's parameter ranges."""
        small = PromptStore(store.engine, max_prompt_chars=100)
        with pytest.raises(PromptError, match="limit is 100"):
            small.create("long", "x" * 101, owner="ana")
        with pytest.raises(PromptError, match="temperature"):
            store.create("hot", "x", owner="ana", temperature=3.0)
        with pytest.raises(PromptError, match="NUL"):
            store.create("nul", "a\x00b", owner="ana")

    def test_version_cap(self, store: PromptStore) -> None:
        """A template keeps at most MAX_VERSIONS versions."""
        t = store.create("many", "x", owner="ana")
        for i in range(MAX_VERSIONS - 1):
            store.add_version(t.id, f"x{i}", author="ana")
        with pytest.raises(PromptError, match=f"most a template keeps \\({MAX_VERSIONS}\\)"):
            store.add_version(t.id, "one more", author="ana")

    def test_find_own_first_then_team(self, store: PromptStore) -> None:
        """A name finds the caller's own template, else the one team template of that name;
        two team templates of one name ask for owner/name."""
        ana = store.create("shared", "ana's", owner="ana", visibility="team")
        store.create("private", "bob's", owner="bob")
        assert store.find("shared", user="carl").id == ana.id
        with pytest.raises(PromptNotFound, match="is yours or shared"):
            store.find("private", user="carl")
        store.create("shared", "dan's", owner="dan", visibility="team")
        with pytest.raises(PromptNotFound, match="owner/shared"):
            store.find("shared", user="carl")
        assert store.find("shared", user="carl", owner="dan").owner == "dan"

    def test_delete_removes_everything(self, store: PromptStore) -> None:
        """Deleting a template removes its versions and labels; a second delete finds nothing."""
        t = store.create("gone", "x", owner="ana")
        store.set_label(t.id, "production", 1, user="ana")
        assert store.delete(t.id) and not store.delete(t.id)
        assert store.list("ana") == []

    def test_tables_join_an_existing_database(self, database_url: str) -> None:
        """A database made before this feature gets the tables on first use."""
        usage = UsageStore(database_url)
        try:
            PromptStore(usage.engine)
            PromptStore(usage.engine)  # idempotent
        finally:
            usage.close()
        names = set(inspect(create_engine(database_url)).get_table_names())
        assert {"prompt_templates", "prompt_versions", "prompt_labels", "prompt_label_moves"} <= names


class TestPermissions:
    def test_private_is_the_owners_team_is_everyones(self, svc: BlossomService) -> None:
        """A private template is listed and readable by its owner only; shared, by every member
        and viewer; an admin sees every template."""
        ana, bob = svc.session("ana", "s1"), svc.session("bob", "s2")
        viewer, admin = svc.session("vic", "s3", role="viewer"), svc.session("local", "s4", role="admin")
        t = ana.create_prompt("notes", "Take notes on {topic}")
        assert [x.name for x in bob.prompt_templates()] == []
        with pytest.raises(InvalidRequest, match="among yours and the team's"):
            bob.prompt_versions(t.id)
        with pytest.raises(InvalidRequest, match="is yours or shared"):
            bob.resolve_prompt("notes")
        assert [x.name for x in admin.prompt_templates()] == ["notes"]
        ana.share_prompt(t.id, True)
        for who in (bob, viewer):
            assert [x.name for x in who.prompt_templates()] == ["notes"]
            assert who.resolve_prompt("notes@1").prompt == "Take notes on {topic}"

    def test_only_the_owner_edits(self, svc: BlossomService) -> None:
        """Another member may use a team template but not version, label or share it."""
        ana, bob = svc.session("ana", "s1"), svc.session("bob", "s2")
        t = ana.create_prompt("notes", "x {a}", visibility="team")
        for attempt in (lambda: bob.add_prompt_version(t.id, "y"), lambda: bob.set_prompt_label(t.id, "prod", 1),
                        lambda: bob.share_prompt(t.id, False)):
            with pytest.raises(PermissionDenied, match="Only its owner \\(ana\\)"):
                attempt()
        with pytest.raises(PermissionDenied):
            bob.delete_prompt(t.id)

    def test_viewer_reads_only_and_admin_deletes_audited(self, svc: BlossomService) -> None:
        """A viewer cannot create; an admin deletes another's template, and the audit log says so."""
        with pytest.raises(PermissionDenied, match="viewer"):
            svc.session("vic", "s", role="viewer").create_prompt("mine", "x")
        t = svc.session("ana", "s1").create_prompt("notes", "x")
        admin = svc.session("local", "s2", role="admin")
        assert admin.delete_prompt(t.id)
        log = svc.audit_entries()
        assert "delete_template" in set(log["action"])

    def test_kiosk_visitor_cannot_share(self, svc: BlossomService) -> None:
        """An anonymous kiosk visitor keeps private templates only."""
        from blossom_dash.gateway.requests import KIOSK_PREFIX

        kiosk = svc.session(KIOSK_PREFIX + "abc", "s")
        with pytest.raises(PermissionDenied, match="anonymous"):
            kiosk.create_prompt("mine", "x", visibility="team")
        t = kiosk.create_prompt("mine", "x")
        with pytest.raises(PermissionDenied, match="anonymous"):
            kiosk.share_prompt(t.id, True)

    def test_errors_are_words(self, svc: BlossomService) -> None:
        """Bad input comes back as InvalidRequest with a hint, never a raw exception."""
        h = svc.session("ana", "s1")
        with pytest.raises(InvalidRequest) as info:
            h.create_prompt("ok", "Hi {0}")
        assert "positional" in info.value.message and info.value.hint
        t = h.create_prompt("ok", "Hi {who}")
        with pytest.raises(InvalidRequest, match="no label “prod”"):
            h.resolve_prompt("ok@prod")
        assert h.prompt_diff(t.id, 1, 1) == ""

    def test_a_long_identity_owns_its_templates(self, svc: BlossomService) -> None:
        """A user name longer than the owner column (cut to 128 characters there) still
        lists, resolves, edits and deletes its own templates."""
        h = svc.session("someone." + "x" * 300 + "@example.org", "s1")
        t = h.create_prompt("mine", "Hi {who}")
        assert [x.id for x in h.prompt_templates()] == [t.id] and h.resolve_prompt("mine").version == 1
        h.add_prompt_version(t.id, "Hello {who}")
        h.set_prompt_label(t.id, "production", 2)
        assert h.delete_prompt(t.id)

    def test_resolver_reads_each_reference_once(self, svc: BlossomService) -> None:
        """The Batch resolver returns the same version for a repeated reference and raises
        InvalidRequest for a bad one, every time."""
        h = svc.session("ana", "s1")
        h.create_prompt("ok", "Hi {who}")
        resolve = h.prompt_resolver()
        assert resolve("ok") is resolve("ok")
        for _ in range(2):
            with pytest.raises(InvalidRequest):
                resolve("nope")
