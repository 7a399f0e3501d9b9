"""The prompt library's widgets: the Prompts page's parts and ``template_picker`` for other pages.

Every call goes through the session handle (``SessionHandle.prompt_*``); the service
checks who may do what, and this module hides what the caller's role cannot do. Widget
keys are namespaced ``prompts_*`` (the page) or ``<key>_*`` (a picker).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from ..features.batch_templates import batch_file_for
from ..features.prompt_text import PromptError, PromptTemplate, PromptVersion, RenderedPrompt, render, variables
from ..session import SessionHandle
from .feedback import guard
from .safe import code_span
from .times import local_time

SYNTAX_HELP = ("Write variables as {name} (lowercase letters, digits and _); {{ and }} are literal braces. "
               "Positional {}, {a.b}, {a[0]}, {a!r} and {a:spec} are refused.")


def template_label(t: PromptTemplate, user: str) -> str:
    """One line for a template in a list: name, owner (when not yours), sharing, latest version, labels."""
    who = "" if t.owner == user else f" · by {t.owner}"
    labels = "".join(f" · {name}→v{v}" for name, v in sorted(t.labels.items()))
    return f"{t.name}{who} · {'👥 team' if t.visibility == 'team' else '🔒 private'} · v{t.latest}{labels}"


def version_choices(t: PromptTemplate) -> list[str]:
    """What a version picker offers: ``latest``, the labels, then every version number, newest first."""
    return ["latest", *sorted(t.labels), *(str(n) for n in range(t.latest, 0, -1))]


def _default_index(t: PromptTemplate) -> int:
    """``production`` when the template has that label (as Langfuse serves by default), else ``latest``."""
    return version_choices(t).index("production") if "production" in t.labels else 0


def _choice_label(t: PromptTemplate, choice: str) -> str:
    if choice == "latest":
        return f"latest (v{t.latest})"
    if choice in t.labels:
        return f"{choice} (v{t.labels[choice]})"
    return f"v{choice}"


def _detected(text: str) -> None:
    """The variables ``text`` uses, or what is wrong with its braces, as a caption."""
    try:
        found = variables(text)
    except PromptError as exc:
        st.warning(str(exc), icon="✏️")
        return
    st.caption("Variables: " + (", ".join(code_span("{" + v + "}") for v in found) if found else "none"))


def _optional_number(label: str, key: str, *, kind: type, default: Any, lo: Any, hi: Any, step: Any) -> Any:
    """A number input that may be left empty (None: the caller's default)."""
    value = st.number_input(label, min_value=lo, max_value=hi, value=default, step=step, key=key,
                            placeholder="default")
    return None if value is None else kind(value)


def version_form(key: str, base: PromptVersion | None = None) -> dict[str, Any]:
    """The fields of a version (system, prompt, model, temperature, max_tokens, message), with
    the detected variables under the texts; prefilled from ``base``. Returns their values."""
    system = st.text_area("System prompt (optional)", value=(base.system or "") if base else "",
                          key=f"{key}_system", height=80)
    prompt = st.text_area("Prompt", value=base.prompt if base else "", key=f"{key}_prompt", height=140,
                          help=SYNTAX_HELP)
    _detected(system + "\n" + prompt)
    left, mid, right = st.columns(3)
    with left:
        model = st.text_input("Model (optional)", value=(base.model or "") if base else "", key=f"{key}_model")
    with mid:
        temperature = _optional_number("Temperature", f"{key}_temperature", kind=float,
                                       default=base.temperature if base else None, lo=0.0, hi=2.0, step=0.1)
    with right:
        max_tokens = _optional_number("Max tokens", f"{key}_max_tokens", kind=int,
                                      default=base.max_tokens if base else None, lo=1, hi=8192, step=64)
    message = st.text_input("What changed (commit message)", key=f"{key}_message", max_chars=500)
    return {"system": system.strip() or None, "prompt": prompt, "model": model.strip() or None,
            "temperature": temperature, "max_tokens": max_tokens, "message": message}


def create_ui(handle: SessionHandle) -> PromptTemplate | None:
    """The "New template" expander; the created template once its button is pressed."""
    if handle.role == "viewer":
        return None
    with st.expander("➕ New template", expanded=False):
        name = st.text_input("Name", key="prompts_new_name", placeholder="support-reply",
                             help="1-64 lowercase letters, digits and _ . - (unique among your templates).")
        fields = version_form("prompts_new")
        team = st.toggle("Share with the team", key="prompts_new_team",
                         help="Every signed-in member may then read and use it; only you edit it.")
        if st.button("Create template", key="prompts_create", type="primary"):
            with guard("creating the template"):
                created = handle.create_prompt(name, visibility="team" if team else "private", **fields)
                st.toast(f"Created {created.name} v1.", icon="📚")
                return created
    return None


def render_versions(handle: SessionHandle, t: PromptTemplate) -> list[PromptVersion]:
    """The versions table (newest first, with labels and local times); returns the versions."""
    versions = handle.prompt_versions(t.id)
    by_version: dict[int, list[str]] = {}
    for label, number in t.labels.items():
        by_version.setdefault(number, []).append(label)
    st.dataframe(pd.DataFrame([{
        "version": v.version, "labels": ", ".join(sorted(by_version.get(v.version, []))),
        "message": v.message, "author": v.author, "saved": local_time(v.created),
        "variables": ", ".join(v.variables), "model": v.model or ""} for v in versions]),
        hide_index=True, width="stretch", key=f"prompts_versions_{t.id}")
    return versions


def try_ui(handle: SessionHandle, t: PromptTemplate) -> RenderedPrompt | None:
    """"Try it": pick a version, fill its variables, see the rendered system prompt and prompt;
    and a Batch file for that version (``batch_templates.batch_file_for``)."""
    choice = st.selectbox("Version", version_choices(t), key=f"prompts_try_version_{t.id}", index=_default_index(t),
                          format_func=lambda c: _choice_label(t, c))
    version = handle.prompt_version(t.id, choice)
    values = {v: st.text_input(f"{{{v}}}", key=f"prompts_try_{t.id}_{v}") for v in version.variables}
    ref = t.name if choice == "latest" else f"{t.name}@{choice}"
    st.download_button("Batch file for this template", batch_file_for(ref, version), key=f"prompts_batch_{t.id}",
                       file_name=f"{t.name}-batch.csv", mime="text/csv", icon="🗂️", on_click="ignore",
                       help=f"A CSV with a template column ({ref}) and one column per variable, for the Batch page.")
    if missing := [v for v, value in values.items() if not value.strip()]:
        st.caption("Fill in " + ", ".join(code_span("{" + v + "}") for v in missing) + " to see the prompt.")
        return None
    rendered = render(version, values)
    if rendered.system:
        st.caption("System prompt")
        st.code(rendered.system, language=None, wrap_lines=True)
    st.caption(f"Prompt ({rendered.ref})")
    st.code(rendered.prompt, language=None, wrap_lines=True)
    return rendered


def diff_ui(handle: SessionHandle, t: PromptTemplate) -> None:
    """Two version pickers and the unified diff between them."""
    if t.latest < 2:
        st.caption("One version so far: save a second to compare.")
        return
    numbers = list(range(t.latest, 0, -1))
    left, right = st.columns(2)
    old = left.selectbox("From", numbers, index=1, key=f"prompts_diff_old_{t.id}", format_func=lambda n: f"v{n}")
    new = right.selectbox("To", numbers, index=0, key=f"prompts_diff_new_{t.id}", format_func=lambda n: f"v{n}")
    text = handle.prompt_diff(t.id, old, new)
    if text:
        st.code(text, language="diff")
    else:
        st.caption(f"v{old} and v{new} are the same.")


def manage_ui(handle: SessionHandle, t: PromptTemplate, versions: list[PromptVersion]) -> bool:
    """The owner's controls (new version, labels, sharing) and delete (owner or admin).

    Returns:
        Whether something changed (the page reruns to show it).
    """
    changed = False
    mine = t.owner == handle.user
    if mine:
        with st.expander("✏️ New version", expanded=False):
            fields = version_form(f"prompts_edit_{t.id}_{t.latest}", versions[0] if versions else None)
            if st.button("Save as a new version", key=f"prompts_save_{t.id}", type="primary"):
                with guard("saving the version"):
                    saved = handle.add_prompt_version(t.id, **fields)
                    st.toast(f"Saved {saved.ref}.", icon="📚")
                    changed = True
        with st.expander("🏷️ Labels and sharing", expanded=False):
            left, right = st.columns(2)
            label = left.text_input("Label", value="production", key=f"prompts_label_{t.id}",
                                    help="e.g. production or staging; latest always means the newest version.")
            number = right.selectbox("Version", list(range(t.latest, 0, -1)), key=f"prompts_label_version_{t.id}",
                                     format_func=lambda n: f"v{n}")
            a, b = st.columns(2)
            if a.button("Set label", key=f"prompts_set_label_{t.id}"):
                with guard("moving the label"):
                    handle.set_prompt_label(t.id, label, number)
                    changed = True
            if b.button("Remove label", key=f"prompts_remove_label_{t.id}", disabled=label not in t.labels):
                with guard("removing the label"):
                    handle.set_prompt_label(t.id, label, None)
                    changed = True
            moves = handle.prompt_label_moves(t.id)[:10]
            for m in moves:
                old = "new" if m["old_version"] is None else f"v{m['old_version']}"
                new = "removed" if m["new_version"] is None else f"v{m['new_version']}"
                st.caption(f"{local_time(m['ts'])} · {code_span(m['label'])} {old} → {new} by {m['user']}")
            team = st.toggle("Shared with the team", value=t.visibility == "team", key=f"prompts_team_{t.id}")
            if team != (t.visibility == "team"):
                with guard("changing the sharing"):
                    handle.share_prompt(t.id, team)
                    changed = True
    if mine or handle.role == "admin":
        with st.expander("🗑️ Delete", expanded=False):
            sure = st.checkbox(f"Delete {t.name} and its {t.latest} version(s) for good", key=f"prompts_sure_{t.id}")
            if st.button("Delete template", key=f"prompts_delete_{t.id}", disabled=not sure):
                with guard("deleting the template"):
                    handle.delete_prompt(t.id)
                    st.session_state.pop("prompts_selected", None)
                    changed = True
    return changed


def template_picker(handle: SessionHandle, key: str) -> RenderedPrompt | None:
    """A compact "Use a template" expander: a template, a label or version, one input per variable.

    For the Playground and Compare: put the result's ``system`` / ``prompt`` (and
    ``model`` / ``temperature`` / ``max_tokens`` when not None) into the request.

    Args:
        handle: This session's handle.
        key: A prefix for the widgets' keys, unique on the page (``playground_template``).

    Returns:
        The filled-in template once a template is picked and every variable has a
        value; None before (or when the library cannot be read: the reason is shown).
    """
    with st.expander("📚 Use a template", expanded=False):
        with guard("reading the prompt library"):
            templates = handle.prompt_templates()
            if not templates:
                st.caption("No templates yet: make one on the Prompts page.")
                return None
            by_id = {t.id: t for t in templates}
            chosen = st.selectbox("Template", [None, *by_id], key=f"{key}_template",
                                  format_func=lambda i: "—" if i is None else template_label(by_id[i], handle.user))
            if chosen is None:
                return None
            t = by_id[chosen]
            choice = st.selectbox("Version", version_choices(t), key=f"{key}_version_{t.id}", index=_default_index(t),
                                  format_func=lambda c: _choice_label(t, c))
            version = handle.prompt_version(t.id, choice)
            values = {v: st.text_input(f"{{{v}}}", key=f"{key}_{t.id}_{v}") for v in version.variables}
            if missing := [v for v, value in values.items() if not value.strip()]:
                st.caption("Fill in " + ", ".join(code_span("{" + v + "}") for v in missing) + ".")
                return None
            rendered = render(version, values)
            st.caption(f"Using {code_span(rendered.ref)}" + (f" · model {code_span(rendered.model)}"
                                                              if rendered.model else ""))
            return rendered
    return None


__all__ = [
    "SYNTAX_HELP",
    "create_ui",
    "diff_ui",
    "manage_ui",
    "render_versions",
    "template_label",
    "template_picker",
    "try_ui",
    "version_choices",
    "version_form",
]
