"""The prompt library: named templates with immutable versions and labels, in the usage database.

As Langfuse's and LiteLLM's prompt management: a **template** has a name (unique per
owner, ``NAME_RE``), an owner and a visibility (``private``, or ``team``: every signed-in
member may read and use it); its **versions** 1, 2, 3... are never changed once saved,
each holding an optional system prompt, a user prompt with ``{variables}``, an optional
model and parameters (temperature, max_tokens), a commit message, its author and time;
its **labels** (``production``, ``staging``...) each point at one version, and every move
of a label is recorded (``prompt_label_moves``). ``latest`` is implicit: the newest version.

The template syntax, ``variables``, ``render``, ``diff`` and ``parse_ref`` are in
``prompt_text`` (re-exported here): ``{topic}`` is a variable, ``{{ }}`` literal braces.
Caps: ``MAX_TEMPLATES_PER_USER`` (500), ``MAX_VERSIONS`` (200) a template,
``MAX_LABELS`` (20) a template, a version's texts within the request cap.

Four tables on the shared ``store.metadata`` (``TABLES``), created on first use with
``ensure_tables`` (idempotent; under the store's schema lock, so replicas may start at once).
Permissions are the service's (``service_prompts``); this module stores and reads.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ..telemetry.store import ensure_tables, metadata
from .prompt_text import (
    LABEL_RE,
    LATEST,
    NAME_RE,
    RESERVED_VARIABLES,
    PromptError,
    PromptNotFound,
    PromptTemplate,
    PromptVersion,
    RenderedPrompt,
    check_version,
    diff,
    parse_ref,
    render,
    variables,
)

MAX_VERSIONS = 200
MAX_TEMPLATES_PER_USER = 500
MAX_LABELS = 20
MESSAGE_CHARS = 500
VISIBILITIES = ("private", "team")

prompt_templates = Table(
    "prompt_templates",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("owner", String(128), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("visibility", String(8), nullable=False),  # private | team
    Column("created", Float, nullable=False),  # unix epoch seconds, UTC
    Column("updated", Float, nullable=False),
    UniqueConstraint("owner", "name", name="uq_prompt_templates_owner_name"),
)

prompt_versions = Table(
    "prompt_versions",
    metadata,
    Column("template_id", String(16), ForeignKey("prompt_templates.id"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("system", Text, nullable=True),
    Column("prompt", Text, nullable=False),
    Column("model", String(128), nullable=True),
    Column("temperature", Float, nullable=True),
    Column("max_tokens", Integer, nullable=True),
    Column("message", String(MESSAGE_CHARS), nullable=False),
    Column("author", String(128), nullable=False),
    Column("created", Float, nullable=False),
)

prompt_labels = Table(
    "prompt_labels",
    metadata,
    Column("template_id", String(16), ForeignKey("prompt_templates.id"), primary_key=True),
    Column("label", String(32), primary_key=True),
    Column("version", Integer, nullable=False),
)

prompt_label_moves = Table(
    "prompt_label_moves",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("template_id", String(16), nullable=False, index=True),
    Column("label", String(32), nullable=False),
    Column("old_version", Integer, nullable=True),  # None: the label was new
    Column("new_version", Integer, nullable=True),  # None: the label was removed
    Column("user", String(128), nullable=False),
    Column("ts", Float, nullable=False),
)

TABLES = (prompt_templates, prompt_versions, prompt_labels, prompt_label_moves)


def _template(row: Any, latest: int, labels: dict[str, int]) -> PromptTemplate:
    return PromptTemplate(row.id, row.owner, row.name, row.visibility, float(row.created), float(row.updated),
                          int(latest), labels)


class PromptStore:
    """Templates, versions and labels in the usage database; no permission checks (the service's).

    Args:
        engine: The usage store's SQLAlchemy engine.
        max_prompt_chars: The request cap a version's texts must fit (``Settings.max_prompt_chars``).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the tables cannot be created.
    """

    def __init__(self, engine: Engine, *, max_prompt_chars: int = 5000) -> None:
        self.engine = engine
        self.max_prompt_chars = max_prompt_chars
        ensure_tables(engine, TABLES)

    # ----- reading --------------------------------------------------------------------

    def _labels(self, conn: Connection, ids: list[str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {i: {} for i in ids}
        if ids:
            for r in conn.execute(select(prompt_labels).where(prompt_labels.c.template_id.in_(ids))):
                out[r.template_id][r.label] = int(r.version)
        return out

    def list(self, user: str, *, everyone: bool = False) -> list[PromptTemplate]:
        """``user``'s templates and the team's, by name then owner (``everyone``: every template).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the read failed.
        """
        latest = (select(prompt_versions.c.template_id, func.max(prompt_versions.c.version).label("latest"))
                  .group_by(prompt_versions.c.template_id).subquery())
        q = (select(prompt_templates, latest.c.latest)
             .join(latest, latest.c.template_id == prompt_templates.c.id)
             .order_by(prompt_templates.c.name, prompt_templates.c.owner))
        if not everyone:
            q = q.where(or_(prompt_templates.c.owner == user, prompt_templates.c.visibility == "team"))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
            labels = self._labels(conn, [r.id for r in rows])
        return [_template(r, r.latest, labels[r.id]) for r in rows]

    def get(self, template_id: str) -> PromptTemplate:
        """One template by id.

        Raises:
            PromptNotFound: no such template.
        """
        with self.engine.connect() as conn:
            row = conn.execute(select(prompt_templates).where(prompt_templates.c.id == str(template_id))).first()
            if row is None:
                raise PromptNotFound(f"No template has the id {str(template_id)[:40]!r}; it may have been deleted.")
            latest = conn.execute(select(func.max(prompt_versions.c.version))
                                  .where(prompt_versions.c.template_id == row.id)).scalar()
            labels = self._labels(conn, [row.id])[row.id]
        return _template(row, latest or 0, labels)

    def find(self, name: str, *, user: str, owner: str | None = None) -> PromptTemplate:
        """The template called ``name`` that ``user`` sees: their own first, else the team's.

        Args:
            owner: Whose template, when two team templates share the name.

        Raises:
            PromptNotFound: none by that name is visible to ``user``, or several team
                templates share it and ``owner`` does not say which.
        """
        q = (select(prompt_templates.c.id, prompt_templates.c.owner, prompt_templates.c.visibility)
             .where(prompt_templates.c.name == name))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        own = [r.id for r in rows if r.owner == user and owner in (None, user)]
        if own:
            return self.get(own[0])
        team = [(r.id, r.owner) for r in rows if r.visibility == "team" and owner in (None, r.owner)]
        if not team:
            whose = f" of {owner}" if owner else ""
            raise PromptNotFound(f"No template called “{name}”{whose} is yours or shared with the team.")
        if len(team) > 1:
            owners = ", ".join(sorted(o for _, o in team)[:5])
            raise PromptNotFound(f"Several team templates are called “{name}” (by {owners}); "
                                 f"write owner/{name} to pick one.")
        return self.get(team[0][0])

    def version(self, template: PromptTemplate, which: str | int = LATEST) -> PromptVersion:
        """A version of ``template``: a number, a label, or ``latest``.

        Raises:
            PromptNotFound: no such version or label.
        """
        text = str(which).strip()
        if text == LATEST:
            number = template.latest
        elif text.isdigit():
            number = int(text)
        elif text in template.labels:
            number = template.labels[text]
        else:
            raise PromptNotFound(f"“{template.name}” has no label “{text[:40]}” "
                                 f"(its labels: {', '.join(sorted(template.labels)) or 'none'}; latest is implicit).")
        with self.engine.connect() as conn:
            row = conn.execute(select(prompt_versions).where(prompt_versions.c.template_id == template.id,
                                                             prompt_versions.c.version == number)).first()
        if row is None:
            raise PromptNotFound(f"“{template.name}” has no version {number} (versions 1 to {template.latest}).")
        return self._version(template, row)

    @staticmethod
    def _version(template: PromptTemplate, row: Any) -> PromptVersion:
        return PromptVersion(template.id, template.name, template.owner, int(row.version), row.system, row.prompt,
                             row.model, None if row.temperature is None else float(row.temperature),
                             None if row.max_tokens is None else int(row.max_tokens), row.message, row.author,
                             float(row.created))

    def versions(self, template: PromptTemplate) -> list[PromptVersion]:
        """Every version of ``template``, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(prompt_versions).where(prompt_versions.c.template_id == template.id)
                                .order_by(prompt_versions.c.version.desc())).all()
        return [self._version(template, r) for r in rows]

    def label_moves(self, template_id: str) -> list[dict[str, Any]]:
        """Every recorded label move of a template, newest first:
        ``{"label", "old_version", "new_version", "user", "ts"}`` (None: new / removed)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(prompt_label_moves).where(prompt_label_moves.c.template_id == template_id)
                                .order_by(prompt_label_moves.c.id.desc())).all()
        return [{"label": r.label, "old_version": r.old_version, "new_version": r.new_version, "user": r.user,
                 "ts": float(r.ts)} for r in rows]

    # ----- writing --------------------------------------------------------------------

    def create(self, name: str, prompt: str, *, owner: str, system: str | None = None, model: str | None = None,
               temperature: float | None = None, max_tokens: int | None = None, message: str = "",
               visibility: str = "private") -> PromptTemplate:
        """A new template with its version 1.

        Raises:
            PromptError: a bad name or visibility, a version ``check_version`` refuses, a
                name ``owner`` already uses, or ``MAX_TEMPLATES_PER_USER`` reached.
        """
        name = str(name).strip()
        if not NAME_RE.match(name):
            raise PromptError(f"“{name[:80]}” is not a valid template name: 1-64 lowercase letters, digits and "
                              "_ . -, starting with a letter or digit (e.g. support-reply).")
        if visibility not in VISIBILITIES:
            raise PromptError(f"Visibility is private or team, not {visibility!r}.")
        check_version(system, prompt, model=model, temperature=temperature, max_tokens=max_tokens,
                      max_prompt_chars=self.max_prompt_chars)
        now = time.time()
        template_id = secrets.token_hex(6)
        try:
            with self.engine.begin() as conn:
                count = conn.execute(select(func.count()).select_from(prompt_templates)
                                     .where(prompt_templates.c.owner == owner)).scalar() or 0
                if count >= MAX_TEMPLATES_PER_USER:
                    raise PromptError(f"You have {count} templates, the most one user may keep "
                                      f"({MAX_TEMPLATES_PER_USER}); delete some first.")
                conn.execute(insert(prompt_templates).values(id=template_id, owner=owner, name=name,
                                                             visibility=visibility, created=now, updated=now))
                self._insert_version(conn, template_id, 1, system, prompt, model, temperature, max_tokens,
                                     message or "First version", owner, now)
        except IntegrityError:
            raise PromptError(f"You already have a template called “{name}”; add a version to it, "
                              "or pick another name.") from None
        return self.get(template_id)

    @staticmethod
    def _insert_version(conn: Connection, template_id: str, version: int, system: str | None, prompt: str,
                        model: str | None, temperature: float | None, max_tokens: int | None, message: str,
                        author: str, now: float) -> None:
        conn.execute(insert(prompt_versions).values(
            template_id=template_id, version=version, system=system or None, prompt=prompt, model=model or None,
            temperature=None if temperature is None else float(temperature), max_tokens=max_tokens,
            message=" ".join(str(message).split())[:MESSAGE_CHARS], author=author, created=now))

    def add_version(self, template_id: str, prompt: str, *, author: str, system: str | None = None,
                    model: str | None = None, temperature: float | None = None, max_tokens: int | None = None,
                    message: str = "") -> PromptVersion:
        """Save the next version of a template (the old ones stay as they were).

        Raises:
            PromptNotFound: no such template.
            PromptError: ``check_version`` refuses it, ``MAX_VERSIONS`` reached, or
                another version was saved at the same moment (try again).
        """
        template = self.get(template_id)
        check_version(system, prompt, model=model, temperature=temperature, max_tokens=max_tokens,
                      max_prompt_chars=self.max_prompt_chars)
        if template.latest >= MAX_VERSIONS:
            raise PromptError(f"“{template.name}” has {template.latest} versions, the most a template keeps "
                              f"({MAX_VERSIONS}); start a new template.")
        now = time.time()
        number = template.latest + 1
        try:
            with self.engine.begin() as conn:
                self._insert_version(conn, template.id, number, system, prompt, model, temperature, max_tokens,
                                     message or f"Version {number}", author, now)
                conn.execute(update(prompt_templates).where(prompt_templates.c.id == template.id).values(updated=now))
        except IntegrityError:
            raise PromptError(f"Someone saved a version of “{template.name}” at the same moment; "
                              "reload and try again.") from None
        return self.version(self.get(template.id), number)

    def set_label(self, template_id: str, label: str, version: int | None, *, user: str) -> PromptTemplate:
        """Point ``label`` at ``version`` (None removes it), recording the move.

        Raises:
            PromptNotFound: no such template or version.
            PromptError: a bad label name, ``latest``, or ``MAX_LABELS`` reached.
        """
        label = str(label).strip()
        if label == LATEST:
            raise PromptError("“latest” always means the newest version; it cannot be set.")
        if not LABEL_RE.match(label):
            raise PromptError(f"“{label[:40]}” is not a valid label: 1-32 lowercase letters, digits, _ and -, "
                              "starting with a letter (e.g. production).")
        template = self.get(template_id)
        if version is not None and not 1 <= int(version) <= template.latest:
            raise PromptNotFound(f"“{template.name}” has no version {version} (versions 1 to {template.latest}).")
        old = template.labels.get(label)
        if old == version:
            return template
        if old is None and len(template.labels) >= MAX_LABELS:
            raise PromptError(f"“{template.name}” has {MAX_LABELS} labels, the most it may have.")
        now = time.time()
        with self.engine.begin() as conn:
            where = (prompt_labels.c.template_id == template.id) & (prompt_labels.c.label == label)
            conn.execute(delete(prompt_labels).where(where))
            if version is not None:
                conn.execute(insert(prompt_labels).values(template_id=template.id, label=label, version=int(version)))
            conn.execute(insert(prompt_label_moves).values(template_id=template.id, label=label, old_version=old,
                                                           new_version=version, user=user, ts=now))
            conn.execute(update(prompt_templates).where(prompt_templates.c.id == template.id).values(updated=now))
        return self.get(template.id)

    def set_visibility(self, template_id: str, visibility: str) -> PromptTemplate:
        """Make a template ``private`` or ``team``.

        Raises:
            PromptNotFound / PromptError: no such template; a bad visibility.
        """
        if visibility not in VISIBILITIES:
            raise PromptError(f"Visibility is private or team, not {visibility!r}.")
        template = self.get(template_id)
        with self.engine.begin() as conn:
            conn.execute(update(prompt_templates).where(prompt_templates.c.id == template.id)
                         .values(visibility=visibility, updated=time.time()))
        return self.get(template.id)

    def delete(self, template_id: str) -> bool:
        """Delete a template, its versions, labels and label history; whether it existed."""
        with self.engine.begin() as conn:
            for table in (prompt_labels, prompt_versions):
                conn.execute(delete(table).where(table.c.template_id == template_id))
            conn.execute(delete(prompt_label_moves).where(prompt_label_moves.c.template_id == template_id))
            return conn.execute(delete(prompt_templates).where(prompt_templates.c.id == template_id)).rowcount > 0


__all__ = [
    "LATEST",
    "MAX_LABELS",
    "MAX_TEMPLATES_PER_USER",
    "MAX_VERSIONS",
    "NAME_RE",
    "RESERVED_VARIABLES",
    "TABLES",
    "VISIBILITIES",
    "PromptError",
    "PromptNotFound",
    "PromptStore",
    "PromptTemplate",
    "PromptVersion",
    "RenderedPrompt",
    "check_version",
    "diff",
    "parse_ref",
    "render",
    "variables",
]
