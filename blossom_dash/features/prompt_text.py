"""The prompt library's template text: the syntax, variables, rendering, diffs and references.

No storage here (``prompts.PromptStore`` keeps templates): pure functions over the value
types ``PromptVersion``, ``PromptTemplate`` and ``RenderedPrompt``.

The syntax is Python's ``str.format`` field syntax, narrowed (``variables``): ``{topic}``
is a variable (lowercase letters, digits and ``_``, as Batch column names are after
normalising); ``{{`` and ``}}`` are literal braces; positional fields (``{}``, ``{0}``),
attribute and index access (``{a.b}``, ``{a[0]}``), conversions (``{a!r}``) and format
specs (``{a:>10}``) are refused: they would let a template read an object's attributes
or pad a value to any size. ``render`` inserts values literally: a value holding ``{x}``
is not expanded again. Names that are Batch's own columns (``RESERVED_VARIABLES``) are
refused as variables, so a Batch file can hold one column per variable.
"""

from __future__ import annotations

import difflib
import functools
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..gateway.requests import TextRequest

#: A template's name: lowercase letters, digits, ``_ . -``; starts with a letter or digit; 1-64 chars.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
#: A label's name (``latest`` is implicit and cannot be set).
LABEL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
#: A variable's name: as a Batch column name after normalising (lowercase, ``_``).
VARIABLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
#: Names a variable may not take: they are Batch's own columns (``batch_files.COLUMNS``).
RESERVED_VARIABLES = frozenset({"prompt", "model", "system", "temperature", "max_tokens", "seed", "template"})
LATEST = "latest"
MAX_VARIABLES = 50


class PromptError(ValueError):
    """A template, version or label is malformed or cannot be saved; the message says why, in words."""


class PromptNotFound(PromptError):
    """No template, version or label answers to the name or number given."""


@dataclass(frozen=True)
class PromptVersion:
    """One immutable version of a template.

    Attributes:
        template_id / name / owner: The template it belongs to.
        version: 1, 2, 3...
        system: The system prompt, or None.
        prompt: The user prompt with ``{variables}``.
        model / temperature / max_tokens: Optional request parameters (None = the caller's).
        message: The commit message.
        author: Who saved it.
        created: When, epoch seconds (UTC).
    """

    template_id: str
    name: str
    owner: str
    version: int
    system: str | None
    prompt: str
    model: str | None
    temperature: float | None
    max_tokens: int | None
    message: str
    author: str
    created: float

    @property
    def variables(self) -> list[str]:
        """The variables of the system prompt then the prompt, in order of first use."""
        return variables((self.system or "") + "\n" + self.prompt)

    @property
    def ref(self) -> str:
        """``name@version``: what a Batch ``template`` cell holds to pin this version."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class PromptTemplate:
    """A template with its labels.

    Attributes:
        id: Random id (12 hex digits).
        owner / name / visibility: As stored.
        created / updated: Epoch seconds (UTC); ``updated`` moves with a new version or label.
        latest: The newest version's number.
        labels: Label name -> version number (``latest`` not included).
    """

    id: str
    owner: str
    name: str
    visibility: str
    created: float
    updated: float
    latest: int
    labels: dict[str, int]


@dataclass(frozen=True)
class RenderedPrompt:
    """A template filled in, ready for a request.

    Attributes:
        system / prompt: The texts with every variable replaced.
        model / temperature / max_tokens: The version's parameters (None = the caller's).
        ref: ``name@version`` of what was rendered.
    """

    system: str | None
    prompt: str
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    ref: str = ""


@functools.lru_cache(maxsize=256)  # a Batch file renders one template thousands of times
def _fields(text: str) -> tuple[tuple[str, str | None], ...]:
    """``(literal, field or None)`` pieces of ``text``, with the syntax checked.

    Raises:
        PromptError: unbalanced braces, or a field this syntax refuses (see the module doc).
    """
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:  # "Single '}' encountered in format string" and the like
        raise PromptError(f"The template's braces do not match ({exc}); "
                          "write {{ and }} for literal braces.") from None
    out: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parsed:
        if field is None:
            out.append((literal, None))
            continue
        shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if field == "" or field.isdigit():
            raise PromptError(f"{shown} is a positional field; name the variable, e.g. {{topic}}. "
                              "Write {{ and }} for literal braces.")
        if "." in field or "[" in field:
            raise PromptError(f"{shown} reads an attribute or an index; a variable is a plain name, e.g. {{topic}}.")
        if conversion or spec:
            raise PromptError(f"{shown} has a conversion or a format spec; write the bare variable {{{field}}}.")
        if not VARIABLE_RE.match(field):
            raise PromptError(f"{shown}: a variable's name has lowercase letters, digits and _ only "
                              "(and does not start with a digit), at most 64 characters.")
        if field in RESERVED_VARIABLES:
            raise PromptError(f"{shown}: “{field}” is one of Batch's own columns; pick another name.")
        out.append((literal, field))
    return tuple(out)


def variables(text: str) -> list[str]:
    """The variables of ``text``, in order of first use, each once.

    Raises:
        PromptError: the syntax is wrong (see the module doc), in words.
    """
    seen: dict[str, None] = {}
    for _, field in _fields(text):
        if field is not None:
            seen.setdefault(field, None)
    return list(seen)


def _fill(text: str, values: Mapping[str, str]) -> str:
    return "".join(literal + (str(values[field]) if field is not None else "") for literal, field in _fields(text))


def render(version: PromptVersion, values: Mapping[str, Any]) -> RenderedPrompt:
    """``version``'s system prompt and prompt with ``values`` put in, literally.

    Args:
        version: The version to fill in.
        values: Variable name -> value (``str()`` is applied); every variable of the
            version, and no other.

    Returns:
        ``RenderedPrompt`` with the version's model and parameters.

    Raises:
        PromptError: variables missing from ``values`` or names in ``values`` the
            version does not have, both named.
    """
    wanted = version.variables
    missing = [v for v in wanted if v not in values]
    unknown = sorted(k for k in values if k not in wanted)
    if missing or unknown:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(f"{{{v}}}" for v in missing))
        if unknown:
            parts.append("not in the template: " + ", ".join(f"{{{k}}}" for k in unknown))
        raise PromptError(f"{version.ref} cannot be filled in: {'; '.join(parts)}.")
    system = _fill(version.system, values) if version.system else None
    return RenderedPrompt(system, _fill(version.prompt, values), version.model, version.temperature,
                          version.max_tokens, version.ref)


def diff(old: PromptVersion, new: PromptVersion) -> str:
    """A unified diff (``difflib.unified_diff``) from ``old`` to ``new``, for ``st.code(language="diff")``.

    The lines compared: ``# system`` then its lines, ``# prompt`` then its lines, and
    ``# model`` / ``# temperature`` / ``# max_tokens`` lines. "" when they are the same.
    """
    def lines(v: PromptVersion) -> list[str]:
        return ["# system", *(v.system or "").splitlines(), "# prompt", *v.prompt.splitlines(),
                f"# model: {v.model or '(default)'}", f"# temperature: {_blank(v.temperature)}",
                f"# max_tokens: {_blank(v.max_tokens)}"]

    return "\n".join(difflib.unified_diff(lines(old), lines(new), f"{old.name} v{old.version}",
                                          f"{new.name} v{new.version}", lineterm=""))


def _blank(value: object) -> str:
    return "(default)" if value is None else str(value)


def parse_ref(ref: str) -> tuple[str | None, str, str]:
    """A template reference as ``(owner or None, name, label or version)``.

    ``name`` (the latest version), ``name@production`` (a label), ``name@3`` (version 3);
    ``owner/name@...`` names another user's team template when two share a name.

    Raises:
        PromptError: the reference is malformed.
    """
    text = str(ref).strip()
    owner: str | None = None
    if "/" in text:
        owner, text = text.rsplit("/", 1)
        owner = owner.strip() or None
    name, _, which = text.partition("@")
    name, which = name.strip(), (which.strip() or LATEST)
    if not NAME_RE.match(name):
        raise PromptError(f"“{str(ref)[:80]}” is not a template name: use lowercase letters, digits and _ . - "
                          "(e.g. summary, summary@production or summary@3).")
    if not (which.isdigit() or which == LATEST or LABEL_RE.match(which)):
        raise PromptError(f"“{which[:40]}” in “{str(ref)[:80]}” is neither a version number nor a label.")
    return owner, name, which


def check_version(system: str | None, prompt: str, *, model: str | None, temperature: float | None,
                  max_tokens: int | None, max_prompt_chars: int) -> list[str]:
    """The variables of a version about to be saved, after checking every rule.

    The request rules are the gateway's (``TextRequest.problems``): the prompt and
    system prompt within ``max_prompt_chars`` together, the model's name, the
    temperature and max_tokens ranges.

    Raises:
        PromptError: the first broken rule, in words.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("The prompt is empty; a template needs a user prompt.")
    if system is not None and not isinstance(system, str):
        raise PromptError("The system prompt must be text.")
    found = variables((system or "") + "\n" + prompt)
    if len(found) > MAX_VARIABLES:
        raise PromptError(f"The template has {len(found)} variables; at most {MAX_VARIABLES}.")
    problems = TextRequest(prompt, model, system or None, None, max_tokens, temperature).problems(max_prompt_chars)
    if problems:
        raise PromptError(problems[0].message)
    return found


__all__ = [
    "LABEL_RE",
    "LATEST",
    "MAX_VARIABLES",
    "NAME_RE",
    "RESERVED_VARIABLES",
    "VARIABLE_RE",
    "PromptError",
    "PromptNotFound",
    "PromptTemplate",
    "PromptVersion",
    "RenderedPrompt",
    "check_version",
    "diff",
    "parse_ref",
    "render",
    "variables",
]
