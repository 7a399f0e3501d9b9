"""The prompt library in ``BlossomService``: who may read, use, edit and delete a template.

The storage and the template syntax are ``features.prompts``'s; this mixin checks the
caller's authority and puts every failure in words (``InvalidRequest``,
``PermissionDenied``, ``DashError``). The rules:

- **Read and use** (list, versions, diff, render, Batch's ``template`` column): the
  owner; every signed-in caller (member, viewer, admin) for a ``team`` template; an
  admin for any template.
- **Create**: members and admins (a viewer reads only); an anonymous kiosk visitor may
  keep private templates but not share them with the team.
- **Edit** (new version, labels, sharing): the owner only.
- **Delete**: the owner, or an admin (audited).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .errors import DashError, InvalidRequest, PermissionDenied
from .features.prompts import (
    PromptError,
    PromptNotFound,
    PromptStore,
    PromptTemplate,
    PromptVersion,
    diff,
    parse_ref,
)
from .gateway import Caller
from .service_access import AccessMethods
from .settings import Settings

_HINT = "Fix it and save again."
#: An owner's identity as the tables keep it (``prompt_templates.owner`` is 128 characters).
_OWNER_CHARS = 128


def _me(caller: Caller) -> str:
    return caller.user[:_OWNER_CHARS]


@contextmanager
def _words(what: str) -> Iterator[None]:
    """``PromptError`` as ``InvalidRequest``, a database failure as ``DashError``, both in words."""
    try:
        yield
    except PromptNotFound as exc:
        raise InvalidRequest(str(exc), "Pick a template from the Prompts page's list.") from exc
    except PromptError as exc:
        raise InvalidRequest(str(exc), _HINT) from exc
    except SQLAlchemyError as exc:
        raise DashError(f"The prompt library could not {what}: the usage database refused.",
                        "Try again; if it repeats, check the database.") from exc


class PromptMethods(AccessMethods):
    """Prompt templates for the Prompts page, the pickers and Batch; mixed into ``BlossomService``."""

    settings: Settings
    _lock: threading.RLock

    def _prompts(self) -> PromptStore:
        """The prompt tables, created in the usage database on first use."""
        with self._lock:
            store = getattr(self, "_prompt_store", None)
            if store is None:
                with _words("open its tables"):
                    store = self._prompt_store = PromptStore(self.store.engine,
                                                             max_prompt_chars=self.settings.max_prompt_chars)
            return store

    @staticmethod
    def _may_read(caller: Caller, template: PromptTemplate) -> bool:
        return template.owner == _me(caller) or template.visibility == "team" or caller.is_admin

    def _readable(self, template_id: str, caller: Caller | None) -> PromptTemplate:
        caller = caller or Caller("local")
        with _words("read the template"):
            template = self._prompts().get(template_id)
        if not self._may_read(caller, template):  # a private template of someone else: as if absent
            raise InvalidRequest(f"No template has the id {template_id!r} among yours and the team's.",
                                 "Pick a template from the Prompts page's list.")
        return template

    def _owned(self, template_id: str, caller: Caller | None, what: str) -> tuple[Caller, PromptTemplate]:
        caller = caller or Caller("local")
        template = self._readable(template_id, caller)
        if template.owner != _me(caller):
            raise PermissionDenied(f"Only its owner ({template.owner}) may {what} “{template.name}”.",
                                   "Make a copy: create a template of your own from its text.")
        return caller, template

    def prompt_templates(self, *, caller: Caller | None = None) -> list[PromptTemplate]:
        """The caller's templates and the team's (an admin's: every template), by name.

        Raises:
            DashError: the database cannot be read.
        """
        caller = caller or Caller("local")
        with _words("list the templates"):
            return self._prompts().list(_me(caller), everyone=caller.is_admin)

    def prompt_template(self, template_id: str, *, caller: Caller | None = None) -> PromptTemplate:
        """One template the caller may read, by id.

        Raises:
            InvalidRequest: no such template among those the caller may read.
        """
        return self._readable(template_id, caller)

    def prompt_versions(self, template_id: str, *, caller: Caller | None = None) -> list[PromptVersion]:
        """Every version of a template the caller may read, newest first.

        Raises:
            InvalidRequest: no such template among those the caller may read.
        """
        template = self._readable(template_id, caller)
        with _words("read the versions"):
            return self._prompts().versions(template)

    def prompt_version(self, template_id: str, which: str | int = "latest", *,
                       caller: Caller | None = None) -> PromptVersion:
        """One version (a number, a label or ``latest``) of a template the caller may read.

        Raises:
            InvalidRequest: no such template, version or label.
        """
        template = self._readable(template_id, caller)
        with _words("read the version"):
            return self._prompts().version(template, which)

    def resolve_prompt(self, ref: str, *, caller: Caller | None = None) -> PromptVersion:
        """The version a reference names: ``name``, ``name@label``, ``name@3``, ``owner/name@...``.

        The caller's own template by that name first, else the team's (``PromptStore.find``).

        Raises:
            InvalidRequest: a malformed reference, or no such template, label or version
                among those the caller may read (the message names which).
        """
        caller = caller or Caller("local")
        with _words("find the template"):
            owner, name, which = parse_ref(ref)
            store = self._prompts()
            return store.version(store.find(name, user=_me(caller), owner=owner), which)

    def prompt_resolver(self, *, caller: Caller | None = None) -> Callable[[str], PromptVersion]:
        """``resolve_prompt`` for one caller, remembering each reference (for Batch's preview:
        a file of 10,000 rows naming one template reads it once).

        The function raises ``InvalidRequest`` for a reference it cannot resolve.
        """
        found: dict[str, PromptVersion | InvalidRequest] = {}

        def resolve(ref: str) -> PromptVersion:
            if ref not in found:
                try:
                    found[ref] = self.resolve_prompt(ref, caller=caller)
                except InvalidRequest as exc:
                    found[ref] = exc
            hit = found[ref]
            if isinstance(hit, InvalidRequest):
                raise hit
            return hit

        return resolve

    def create_prompt(self, name: str, prompt: str, *, system: str | None = None, model: str | None = None,
                      temperature: float | None = None, max_tokens: int | None = None, message: str = "",
                      visibility: str = "private", caller: Caller | None = None) -> PromptTemplate:
        """A new template, owned by the caller, with its version 1.

        Raises:
            PermissionDenied: a viewer, or a kiosk visitor sharing with the team.
            InvalidRequest: a bad name, a name the caller already uses, a bad template
                (``prompt_text.check_version``), or the caller's 500 templates reached.
        """
        caller = caller or Caller("local")
        if caller.role == "viewer":
            raise PermissionDenied("A viewer reads templates but does not create them.",
                                   "Ask an admin for the member role.")
        if visibility == "team" and caller.is_kiosk:
            raise PermissionDenied("An anonymous visitor cannot share templates with the team.",
                                   "Keep it private, or sign in.")
        with _words("save the template"):
            return self._prompts().create(name, prompt, owner=_me(caller), system=system, model=model,
                                          temperature=temperature, max_tokens=max_tokens, message=message,
                                          visibility=visibility)

    def add_prompt_version(self, template_id: str, prompt: str, *, system: str | None = None,
                           model: str | None = None, temperature: float | None = None,
                           max_tokens: int | None = None, message: str = "",
                           caller: Caller | None = None) -> PromptVersion:
        """Save the next version of the caller's own template.

        Raises:
            PermissionDenied: the caller does not own it.
            InvalidRequest: a bad template, or its 200 versions reached.
        """
        caller, template = self._owned(template_id, caller, "add a version to")
        with _words("save the version"):
            return self._prompts().add_version(template.id, prompt, author=_me(caller), system=system,
                                               model=model, temperature=temperature, max_tokens=max_tokens,
                                               message=message)

    def set_prompt_label(self, template_id: str, label: str, version: int | None, *,
                         caller: Caller | None = None) -> PromptTemplate:
        """Point a label of the caller's own template at ``version`` (None removes it); recorded.

        Raises:
            PermissionDenied: the caller does not own it.
            InvalidRequest: a bad label, ``latest``, or no such version.
        """
        caller, template = self._owned(template_id, caller, "move the labels of")
        with _words("move the label"):
            return self._prompts().set_label(template.id, label, version, user=_me(caller))

    def share_prompt(self, template_id: str, team: bool, *, caller: Caller | None = None) -> PromptTemplate:
        """Share the caller's own template with the team (``team=True``) or make it private.

        Raises:
            PermissionDenied: the caller does not own it, or is an anonymous kiosk visitor.
        """
        caller, template = self._owned(template_id, caller, "share")
        if team and caller.is_kiosk:
            raise PermissionDenied("An anonymous visitor cannot share templates with the team.", "Sign in first.")
        with _words("change the sharing"):
            return self._prompts().set_visibility(template.id, "team" if team else "private")

    def delete_prompt(self, template_id: str, *, caller: Caller | None = None) -> bool:
        """Delete a template with its versions and labels: its owner or an admin (audited) may.

        Raises:
            InvalidRequest: no such template among those the caller may read.
            PermissionDenied: neither the owner nor an admin.
        """
        caller = caller or Caller("local")
        template = self._readable(template_id, caller)
        if template.owner != _me(caller):
            self._owner_or_admin(caller, "prompt template", template.id, template.owner)
        with _words("delete the template"):
            return self._prompts().delete(template.id)

    def prompt_diff(self, template_id: str, old: int, new: int, *, caller: Caller | None = None) -> str:
        """The unified diff between two versions of a template the caller may read ("" when equal).

        Raises:
            InvalidRequest: no such template or version.
        """
        template = self._readable(template_id, caller)
        with _words("read the versions"):
            store = self._prompts()
            return diff(store.version(template, old), store.version(template, new))

    def prompt_label_moves(self, template_id: str, *, caller: Caller | None = None) -> list[dict[str, Any]]:
        """Every recorded move of a readable template's labels, newest first (``PromptStore.label_moves``)."""
        template = self._readable(template_id, caller)
        with _words("read the label history"):
            return self._prompts().label_moves(template.id)


__all__ = ["PromptMethods"]
