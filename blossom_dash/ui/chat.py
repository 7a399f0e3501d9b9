"""The Playground's chat: turns as inert markdown, their actions, the streamed answer, Stop.

A chat is a list of message dicts in ``st.session_state["playground_messages"]``
(``MESSAGES``), oldest first: ``role`` ("user" | "assistant"), ``content``, and for an
answer ``caption``, ``code``, ``model``, ``request_id`` and ``status`` ("ok", "stopped",
"refused" or "failed"; with ``error``, the words shown, ``severity``, the error's, and for
a rate-limit refusal ``retry_at``, epoch seconds). A prompt is appended before it is sent, so a refused or
failed one stays in the chat with its error and a Retry.

The actions under the newest turn (Regenerate, Edit, Retry) are callbacks that leave a
``PendingTurn`` in ``PENDING``; the page's run then answers it (``take_turn`` and
``answer``). Stop is ``st.chat_input(submit_mode="stop")``: Streamlit stops the script
at its next element, so ``answer`` keeps the partial text, closes the stream (the
gateway cancels the backend call and records a stopped stream with its partial usage)
and, without calling Streamlit again, asks ``stop_watcher`` (a small fragment ticking
while an answer streams) to redraw the chat with the answer marked stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import streamlit as st

from ..errors import DashError, RateLimited
from ..features import conversations, snippets
from ..features.prompt_text import RenderedPrompt
from ..session import SessionHandle
from .attachments import show_images
from .feedback import guard
from .history import answer_feedback
from .prompts import template_picker
from .safe import safe_markdown

log = logging.getLogger("blossom_dash.ui")
MESSAGES = "playground_messages"
PENDING = "playground_pending"
#: A template's own settings for the turn it sends (system, model, temperature, max_tokens).
TEMPLATE = "playground_template_params"
#: Set (a plain dict, so no Streamlit call is needed) when an answer was stopped; read by ``stop_watcher``.
STOPPED = "playground_stopped"
#: The ``?chat=`` id this session last followed (so a link is opened once, not on every run).
LINKED = "playground_linked_chat"
CHAT_ID = "playground_chat_id"
#: Set by ``stop_watcher`` for the run that redraws a stopped answer: the chat is saved then.
RESAVE = "playground_resave"
#: How often the stop watcher looks, seconds (a stopped answer is redrawn as stopped within this).
WATCH_EVERY_S = 0.5


#: Keeps the newest answer in view while it streams, as chat apps do: Streamlit has no
#: scroll API, so this constant script (no user text in it) scrolls the chat's scroll
#: container to its end every 200 ms until the user scrolls up or the answer ends.
FOLLOW_SCRIPT = """<script>
(() => {
  if (window.__blossomFollow) clearInterval(window.__blossomFollow);
  let stick = true, idle = 0;
  const scroller = (el) => {
    while (el && el !== document.body) {
      const s = getComputedStyle(el);
      if (/(auto|scroll)/.test(s.overflowY) && el.scrollHeight > el.clientHeight) return el;
      el = el.parentElement;
    }
    return document.scrollingElement;
  };
  const up = (e) => { if (e.deltaY < 0) stick = false; };
  window.addEventListener("wheel", up, {passive: true});
  window.__blossomFollow = setInterval(() => {
    const all = document.querySelectorAll('[data-testid="stChatMessage"]');
    const running = document.querySelector('[data-testid="stChatInputStopButton"]');
    idle = running ? 0 : idle + 1;
    if (idle > 10 || !stick) {
      clearInterval(window.__blossomFollow); window.removeEventListener("wheel", up); return;
    }
    if (all.length) { const box = scroller(all[all.length - 1]); box.scrollTop = box.scrollHeight; }
  }, 200);
})();
</script>"""


@dataclass(frozen=True)
class PendingTurn:
    """What the next run answers.

    Attributes:
        mode: ``"regenerate"`` (the last answer again, a new seed), ``"edit"`` (the last
            prompt replaced by ``text``), ``"retry"`` (the last, refused or failed, prompt
            again), ``"reask"`` (an earlier prompt at ``index`` asked again at the end) or
            ``"template"`` (``text``, a filled-in template, sent as a new prompt).
        text: The edited prompt (``edit``) or the rendered template (``template``).
        index: The message to ask again (``reask``).
    """

    mode: str
    text: str = ""
    index: int = -1


def messages() -> list[dict[str, Any]]:
    """This session's chat (created empty)."""
    return st.session_state.setdefault(MESSAGES, [])


def history_for(chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The earlier turns to send with the last prompt: answered pairs only.

    A refused, failed or empty answer and the prompt it answered are left out, so a
    retried prompt is not sent twice. ``chat[-1]`` (the prompt being answered) is not
    included.

    Returns:
        ``[{"role", "content"}]`` (plus ``images`` when a prompt had them), oldest first.
    """
    out: list[dict[str, Any]] = []
    body = chat[:-1]
    for i, msg in enumerate(body):
        if msg.get("role") != "user":
            continue
        reply = body[i + 1] if i + 1 < len(body) and body[i + 1].get("role") == "assistant" else None
        if reply is None or reply.get("status", "ok") not in ("ok", "stopped") or not reply.get("content"):
            continue
        prompt = {"role": "user", "content": msg.get("content", "")}
        if msg.get("images"):
            prompt["images"] = msg["images"]
        out += [prompt, {"role": "assistant", "content": reply["content"]}]
    return out


def take_turn(chat: list[dict[str, Any]], prompt: str | None, images: list[dict[str, Any]] | None = None
              ) -> tuple[bool, int | None]:
    """Apply this run's action to ``chat``: a new prompt, or the ``PENDING`` one.

    Returns:
        ``(answer_now, seed)``: whether the last message is a prompt to answer now, and a
        seed that overrides the settings' (a fresh one for Regenerate), else None.
    """
    pending: PendingTurn | None = st.session_state.pop(PENDING, None)
    if prompt is not None or images:
        chat.append({"role": "user", "content": prompt or "", **({"images": images} if images else {})})
        return True, None
    if pending is not None and pending.mode == "template":
        chat.append({"role": "user", "content": pending.text})
        return True, None
    if pending is None or not chat:
        return False, None
    if pending.mode == "reask" and 0 <= pending.index < len(chat) and chat[pending.index].get("role") == "user":
        asked = chat[pending.index]
        chat.append({k: v for k, v in asked.items() if k in ("role", "content", "images")})
        return True, None
    if chat[-1].get("role") == "assistant":
        chat.pop()  # regenerate, edit and retry replace the last answer
    if not chat or chat[-1].get("role") != "user":
        return False, None
    if pending.mode == "edit":
        chat[-1]["content"] = pending.text
    return True, (random.randint(0, 2**31 - 1) if pending.mode == "regenerate" else None)


def _later(mode: str, text: str = "", index: int = -1) -> None:
    st.session_state[PENDING] = PendingTurn(mode, text, index)


def _send_template(used: RenderedPrompt) -> None:
    _later("template", used.prompt)
    st.session_state[TEMPLATE] = {k: v for k, v in (("system", used.system), ("model", used.model),
                                                    ("temperature", used.temperature),
                                                    ("max_tokens", used.max_tokens)) if v is not None}


def template_overrides() -> dict[str, Any]:
    """The settings of the template this run sends (taken once), for ``answer``'s params."""
    return st.session_state.pop(TEMPLATE, None) or {}


def template_button(handle: SessionHandle, where: Any) -> None:
    """📚 beside the input: pick a prompt-library template, fill its variables, send it."""
    with where.popover("Template", icon="📚", help="Fill in a template from the Prompts page and send it"):
        used = template_picker(handle, "playground_template")
        if used is not None:
            st.caption("The template's system prompt and settings apply to this turn only.")
            st.button("Send", key="playground_template_send", type="primary", icon="📨", on_click=_send_template,
                      args=(used,))


def _edit_submitted(key: str) -> None:
    text = st.session_state.get(key, "")
    if text.strip():
        _later("edit", text)


def render_turn(msg: dict[str, Any]) -> None:
    """One chat message: its images, its text (made inert: no images load, no links), status,
    figures, code."""
    show_images(msg)
    if msg.get("content"):
        st.markdown(safe_markdown(msg["content"]))
    status = msg.get("status", "ok")
    if status == "stopped":
        st.caption(":orange-badge[⏹ Stopped] The answer was stopped here; what arrived is kept.")
    elif status in ("refused", "failed") and msg.get("error"):
        warn = msg.get("severity") == "warning"  # the error's own severity, as ``show_error`` draws it
        (st.warning if warn else st.error)(msg["error"], icon="⏳" if warn else "⚠️")
    if msg.get("caption"):
        st.caption(msg["caption"])
    if msg.get("code"):
        st.expander("Show code", icon="🐍").code(msg["code"], language="python")


def render_chat(handle: SessionHandle, chat: list[dict[str, Any]], *, answering: bool) -> None:
    """Every turn: 👍/👎 under each answer, and under the newest Regenerate, Edit, Copy; Retry
    on a refusal.

    Args:
        answering: A prompt is about to be answered in this run (no actions are shown).
    """
    last = len(chat) - 1
    for i, msg in enumerate(chat):
        with st.chat_message(msg["role"]):
            render_turn(msg)
            if answering:
                continue
            if msg["role"] == "assistant" and msg.get("status") in ("refused", "failed"):
                if i == last:
                    retry_button(msg)
                else:
                    st.button("Ask again", key=f"playground_reask_{i}", icon="↩️", type="tertiary",
                              on_click=_later, args=("reask", "", i - 1), help="Send this prompt again at the end")
            elif msg["role"] == "assistant":
                bar = st.container(horizontal=True, gap="small", vertical_alignment="center")
                answer_feedback(handle, msg, f"playground_vote_{i}", where=bar)
                if i == last:
                    _answer_actions(chat, msg, bar)


def _answer_actions(chat: list[dict[str, Any]], msg: dict[str, Any], bar: Any) -> None:
    """Regenerate, Edit the prompt and resend, Copy: the newest answer's tools, in ``bar``."""
    bar.button("Regenerate", key="playground_regenerate", icon="🔄", type="tertiary", on_click=_later,
               args=("regenerate",), help="Ask the same prompt again with a new seed")
    prompt = chat[-2].get("content", "") if len(chat) > 1 and chat[-2].get("role") == "user" else ""
    with bar.popover("Edit", icon="✏️", type="tertiary", help="Change the last prompt and send it again"):
        st.text_area("Your prompt", value=prompt, key="playground_edit_text", height=120)
        st.button("Send edited prompt", key="playground_edit_send", type="primary", icon="📨",
                  on_click=_edit_submitted, args=("playground_edit_text",))
    with bar.popover("Copy", icon="📋", type="tertiary", help="The answer as text, with a copy button"):
        st.caption("Use the copy icon at the top right of the box.")
        st.code(msg.get("content", ""), language="markdown", wrap_lines=True)


def retry_button(msg: dict[str, Any]) -> None:
    """Retry for a refused or failed prompt; after a rate-limit refusal it counts down first."""
    wait = float(msg.get("retry_at") or 0) - time.time()
    if wait > 0:
        _countdown(float(msg["retry_at"]))
    else:
        st.button("Retry", key="playground_retry", icon="🔁", on_click=_later, args=("retry",),
                  help="Send the same prompt again")


@st.fragment(run_every=1.0)
def _countdown(retry_at: float) -> None:
    """A live "Retry in N s" (a disabled button); the page redraws when the window allows."""
    left = retry_at - time.time()
    if left <= 0:
        st.rerun(scope="app")  # the fragment stops ticking: the full run shows an enabled Retry
    st.button(f"Retry in {left:.0f} s", key="playground_retry_wait", icon="⏳", disabled=True,
              help="The rate limit's moving window frees a slot then")


@st.fragment(run_every=WATCH_EVERY_S)
def stop_watcher() -> None:
    """Redraws the chat once an answer was stopped (``answer`` flags it without Streamlit)."""
    flags = st.session_state.setdefault(STOPPED, {})
    if flags.pop("stopped", False):
        st.session_state[RESAVE] = True
        st.rerun(scope="app")


def needs_save() -> bool:
    """Whether this run redraws a stopped answer that is not saved yet (taken once)."""
    return bool(st.session_state.pop(RESAVE, False))


def follow_chat_link(handle: SessionHandle) -> None:
    """Keep ``?chat=<id>`` and the open saved chat together, so a reload or a link resumes it.

    A link this session has not followed yet (a fresh tab, a reload, Monitor's request
    detail) opens that chat, if it is the user's (else the reason is shown and the link
    dropped); afterwards the URL names whichever chat is open (none for a new chat).
    """
    linked = st.query_params.get("chat")
    if linked and linked != st.session_state.get(LINKED):
        st.session_state[LINKED] = linked
        if linked != st.session_state.get(CHAT_ID):
            try:
                saved = handle.load_chat(linked)
            except DashError as err:
                st.warning(f"**The linked chat cannot be opened: {err.message}**" + (
                    f"\n\n{err.hint}" if err.hint else ""), icon="🔗")
            else:
                st.session_state[MESSAGES], st.session_state[CHAT_ID] = saved.messages, saved.id
                st.session_state.pop(PENDING, None)
    open_id = st.session_state.get(CHAT_ID)
    if open_id and st.query_params.get("chat") != open_id:
        st.query_params["chat"] = st.session_state[LINKED] = open_id
    elif not open_id and "chat" in st.query_params:
        del st.query_params["chat"]


def answer(handle: SessionHandle, chat: list[dict[str, Any]], params: dict[str, Any], *, stream_on: bool,
           context: str = "") -> dict[str, Any]:
    """Answer ``chat[-1]`` (a prompt) into a new assistant message, streaming it in view.

    The message is appended before the call; however the call ends it gets a status:
    ``ok``; ``refused`` (rate limit, budget, an invalid request) or ``failed`` (the
    backend) with the error's words; or ``stopped`` (Stop, or the page rerun mid-answer)
    with the partial text, the stream closed.

    Args:
        params: ``generate_text`` arguments (model, system, max_tokens, temperature, seed).
        context: The request's link for Monitor (``chat:<id>``); "" for none.

    Returns:
        The new assistant message (also ``chat[-1]``).
    """
    prompt = chat[-1]
    kwargs = {**params, "messages": history_for(chat)}
    if prompt.get("images"):
        kwargs["images"] = prompt["images"]
    if context:
        kwargs["context"] = context
    reply: dict[str, Any] = {"role": "assistant", "content": "", "status": "streaming", "model": params.get("model")}
    chat.append(reply)
    flags = st.session_state.setdefault(STOPPED, {})  # a dict: written below without calling Streamlit
    stream = None
    try:
        with st.chat_message("assistant"):
            st.html(FOLLOW_SCRIPT, unsafe_allow_javascript=True)
            if stream_on:
                stop_watcher()
                stream = handle.stream_text(prompt.get("content", ""), **kwargs)
                box = st.empty()
                box.caption("Waiting for the first token… press ■ in the box below to stop.")
                for chunk in stream:  # as st.write_stream does, but each redraw made inert
                    reply["content"] += chunk
                    box.markdown(safe_markdown(reply["content"]) + " ▌")
                box.markdown(safe_markdown(reply["content"]))
                result = stream.result
            else:
                with st.spinner("Waiting for the answer…"):
                    result = handle.generate_text(prompt.get("content", ""), **kwargs)
                reply["content"] = result.text
                st.markdown(safe_markdown(result.text))
        _finish(reply, result, prompt, params)
        reply["status"] = "ok"
    except DashError as err:
        reply.update(status="refused" if _refusal(err) else "failed", severity=err.severity,
                     error=f"**{err.message}**" + (f"\n\n{err.hint}" if err.hint and not _waits(err) else ""))
        if isinstance(err, RateLimited) and err.scope in ("user", "global"):
            reply["retry_at"] = time.time() + err.retry_after_s
        return reply
    except Exception as exc:  # a bug: logged with its traceback on the server, one sentence here
        log.exception("unexpected error while answering")
        reply.update(status="failed", severity="error", error=f"Something went wrong while answering: "
                     f"{type(exc).__name__}. The rest of the app still works; try again, and report it if it repeats.")
        return reply
    finally:
        if reply["status"] == "streaming":  # stopped: no Streamlit call may run from here
            if stream is not None:
                stream.close()  # cancels the backend call; records a stopped stream
                _finish(reply, stream.result, prompt, params)
            reply["status"] = "stopped"
            flags["stopped"] = True
    return reply


def _finish(reply: dict[str, Any], result: Any, prompt: dict[str, Any], params: dict[str, Any]) -> None:
    """Fill an answer's figures from its ``TextResult`` (pure Python: safe after Stop)."""
    if result is None:
        return
    from . import result_caption  # the package's caption builder (imported late: it imports this module)

    reply.update(caption=result_caption(result), model=result.model, request_id=result.request_id,
                 code=snippets.code_for_text(prompt.get("content", ""), **{
                     k: v for k, v in params.items() if k in ("model", "system", "max_tokens", "temperature", "seed")}))


def _refusal(err: DashError) -> bool:
    """Refused before any backend call (ours): a rate limit, a budget, a bad request."""
    return type(err).__name__ in ("RateLimited", "BudgetExceeded", "InvalidRequest", "NotRecorded",
                                  "PermissionDenied") and getattr(err, "scope", "user") != "upstream"


def _waits(err: DashError) -> bool:
    """A refusal whose hint is a fixed "Wait N s" the live countdown replaces."""
    return isinstance(err, RateLimited) and err.scope in ("user", "global")


def shared_conversation_ui(handle: SessionHandle, shared_id: str) -> None:
    """A permalinked chat, read-only, with "Start a new chat" and, for its owner or an admin, Delete."""
    shared = None
    with guard("opening the shared conversation"):
        shared = handle.service.load_conversation(shared_id)
        st.subheader(safe_markdown(shared.title))
        st.caption(conversations.describe(shared))
        for turn in shared.turns:
            with st.chat_message(turn.role):
                render_turn(dataclasses.asdict(turn))
    bar = st.container(horizontal=True)
    if bar.button("Start a new chat", key="playground_new_chat", icon="💬", type="primary"):
        del st.query_params["conversation"]
        st.rerun()
    if shared is not None and (shared.user == handle.user or handle.caller.is_admin) and bar.button(
            "Delete this shared chat", key="playground_delete_shared", icon="🗑️",
            help="Removes the permalink for everyone (the owner or an admin may)."):
        with guard("deleting the shared conversation"):
            handle.delete_conversation(shared_id)
            del st.query_params["conversation"]
            st.toast("Shared chat deleted.", icon="🗑️")
            st.rerun()


__all__ = [
    "MESSAGES",
    "PENDING",
    "TEMPLATE",
    "PendingTurn",
    "answer",
    "follow_chat_link",
    "needs_save",
    "history_for",
    "messages",
    "render_chat",
    "render_turn",
    "retry_button",
    "shared_conversation_ui",
    "stop_watcher",
    "take_turn",
    "template_button",
    "template_overrides",
]
