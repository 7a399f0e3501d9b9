"""Errors on a page: a ``DashError`` as words, anything else as one sentence, never a traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from ..errors import DashError

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
