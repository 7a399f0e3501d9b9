"""Errors on a page: a ``DashError`` as words, anything else as one sentence, never a
traceback; and the history banner (``history_banner``) every page shows when request
history is paused or off."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from ..errors import DashError
from ..telemetry.collector import StorageStatus

log = logging.getLogger("blossom_dash.ui")


def show_error(err: DashError) -> None:
    """Render a service error as words: what happened, and what to do."""
    text = f"**{err.message}**" + (f"\n\n{err.hint}" if err.hint else "")
    if err.severity == "warning":
        st.warning(text, icon="⏳")
    else:
        st.error(text, icon="⚠️")


@contextmanager
def guard(what: str) -> Iterator[None]:
    """Turn any error inside the block into a message on the page, never a traceback.

    ``DashError`` shows its message and hint; anything else (a bug) is logged with
    its traceback on the server and shown as one sentence.
    """
    try:
        yield
    except DashError as err:
        show_error(err)
    except Exception as exc:
        log.exception("unexpected error while %s", what)
        st.error(f"Something went wrong while {what}: {type(exc).__name__}. The rest of the app still works; "
                 "try again, and report it if it repeats.", icon="⚠️")


def history_banner(status: StorageStatus, *, details: bool = True) -> None:
    """Say so when request history is not being written (``BlossomService.storage_status``).

    ``off``: an error with the reason and what to do (the app runs on a temporary
    history); ``paused``: a warning (requests are still answered, the events wait);
    a failing journal alone: a caption (events are kept in memory until it works).
    Draws nothing while all is well. ``details=False`` (anyone but an admin): "off"
    without the reason and the fix, which name the server's files and commands.
    """
    if status.history == "off" and not details:
        st.error("**History is off on this server.** Requests are answered, but this run's chats, comparisons "
                 "and batch jobs are kept only until the app stops. An admin sees why and what to do.", icon="🗄️")
    elif status.history == "off":
        st.error(f"**History is off: {status.reason}**\n\n{status.hint}", icon="🗄️")
    elif status.history == "paused":
        lost = f" {status.lost:,} events could not be kept." if status.lost else ""
        st.warning(f"**History is paused: {status.reason}.**\n\n{status.hint}{lost}", icon="⏸️")
    elif status.journal == "failing":
        st.caption(f"⚠️ History: {status.journal_reason}. {status.hint}")
