"""Untrusted text as inert markdown: model answers, model names, prompts shown back, titles.

``st.markdown`` renders whatever markdown it is given, so an answer holding
``![x](http://host/track.png)`` makes every viewer's browser fetch that URL, and a
``[link](url)`` is one click from anywhere. Streamlit already shows raw HTML as text
unless ``unsafe_allow_html=True`` (which the pages never pass); this module also
escapes ``<`` so that no HTML block or tag can form at all.

``safe_markdown`` keeps what makes an answer readable (headings, lists, emphasis,
tables, fenced and inline code) and turns the rest into plain text:

- an image ``![alt](url)`` becomes ``[image: alt]``; nothing is loaded;
- a link ``[text](url)`` becomes ``text (url)`` with the URL as inline code, and bare
  URLs, ``www.`` names and e-mail addresses become inline code too, so nothing is
  clickable (markdown never links inside code);
- ``\\ [ ] < > $`` are backslash-escaped, so no link, image, reference, HTML or math
  can form from what is left.

Fenced code blocks that open at column 0 (the usual form) and one-line inline code
spans are passed through as they are: markdown shows their content literally. When in
doubt the text is treated as prose and escaped: at worst a backslash shows inside code
(an indented fence in a list, say), never a live image or link.
"""

from __future__ import annotations

import re

#: A fence opening at column 0; a backtick fence's info string holds no backtick
#: (CommonMark: otherwise the line is an inline code span, not a fence).
_FENCE_OPEN = re.compile(r"^(?:(`{3,})[^`]*|(~{3,}).*)$")
#: Left to right, as CommonMark's precedence: an angle-bracket run (an HTML tag or an
#: autolink, which bind before code spans), else a one-line code span whose opening
#: backticks are not escaped.
_INLINE = re.compile(r"<[^<>\n]*>|(?<![\\`])(`+)(?!`)([^\n]+?)(?<!`)\1(?!`)")
_IMAGE = re.compile(r"!\[([^\]\n]*)\](?:\([^)\n]*\)|\[[^\]\n]*\])?")
_LINK = re.compile(r"\[([^\]\n]*)\]\(\s*<?([^)\s>]*)>?(?:\s+[^)\n]*)?\)")
#: Bare URLs, www. names and e-mail addresses (what GFM links by itself); trailing
#: punctuation stays outside, as GFM leaves it.
_URL = re.compile(r"(?:\b[a-zA-Z][a-zA-Z0-9+.-]*://|\bwww\.|\b(?:mailto|xmpp):)(?:[^\s<>`]*[^\s<>`.,;:!?)'\"])?"
                  r"|\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_SPECIAL = re.compile(r"([\\\[\]<>$])")
#: Every character markdown gives a meaning to, for text shown exactly as typed.
_ALL_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")
#: Private-use characters mark the code kept while the prose around it is escaped.
_HOLD_OPEN, _HOLD_CLOSE = "\ue000", "\ue001"
_HELD = re.compile(f"{_HOLD_OPEN}(\\d+){_HOLD_CLOSE}")


def code_span(text: str) -> str:
    """``text`` on one line as a markdown inline code span (shown literally, never a link).

    The backtick fence is one longer than any run of backticks in ``text``, so the text
    cannot close it early.
    """
    flat = " ".join(str(text).split())
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") or not flat else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def _prose(text: str, held: list[str], *, as_typed: bool = False) -> str:
    """Prose (no code): images and links to plain text, URLs to code, specials escaped."""

    def hold(piece: str) -> str:
        held.append(piece)
        return f"{_HOLD_OPEN}{len(held) - 1}{_HOLD_CLOSE}"

    if as_typed:  # every markdown character escaped: nothing but the URLs needs changing
        return _ALL_SPECIAL.sub(r"\\\1", _URL.sub(lambda m: hold(code_span(m.group(0))), text))
    text = _IMAGE.sub(lambda m: f"[image: {m.group(1).strip() or 'no description'}]", text)
    text = _LINK.sub(lambda m: f"{m.group(1)} ({hold(code_span(m.group(2)))})" if m.group(2) else m.group(1), text)
    text = _URL.sub(lambda m: hold(code_span(m.group(0))), text)
    return _SPECIAL.sub(r"\\\1", text)


def _inline(line_block: str, held: list[str]) -> str:
    """Prose that may hold inline code spans: the spans kept, the rest made inert."""
    out, pos = [], 0
    for m in _INLINE.finditer(line_block):
        if m.group(1) is None:  # an angle-bracket run: prose, so its "<" gets escaped
            continue
        out.append(_prose(line_block[pos:m.start()], held))
        held.append(m.group(0))
        out.append(f"{_HOLD_OPEN}{len(held) - 1}{_HOLD_CLOSE}")
        pos = m.end()
    out.append(_prose(line_block[pos:], held))
    return "".join(out)


def safe_markdown(text: str | None, *, limit: int | None = None, as_typed: bool = False) -> str:
    """Untrusted ``text`` as markdown that loads nothing and links nowhere (see the module docstring).

    Args:
        text: A model's answer, a prompt, a model name, a title (None gives "").
        limit: When given, the text is first flattened to one line and clipped to
            this many characters (an ellipsis marks the cut), for cards and captions.
        as_typed: Show the text exactly as typed (a prompt on a card): every markdown
            character is escaped, so no heading, list or emphasis forms either; URLs
            still become inline code (escaping alone does not stop GFM's autolinks).

    Returns:
        Markdown for ``st.markdown`` (and the other elements that render markdown).
    """
    raw = str(text or "").replace(_HOLD_OPEN, "").replace(_HOLD_CLOSE, "")
    if limit is not None:
        raw = " ".join(raw.split())
        if len(raw) > limit:
            raw = raw[: max(limit - 1, 0)].rstrip() + "…"
    held: list[str] = []
    if as_typed:
        return _HELD.sub(lambda m: held[int(m.group(1))], _prose(raw, held, as_typed=True))
    out: list[str] = []
    prose: list[str] = []
    fence: str | None = None
    for line in raw.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        if fence is not None:
            out.append(line)
            if re.fullmatch(rf" {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", body):
                fence = None
            continue
        if m := _FENCE_OPEN.match(body):
            out.append(_inline("".join(prose), held))
            prose = []
            fence = m.group(1) or m.group(2)
            out.append(line)
            continue
        prose.append(line)
    out.append(_inline("".join(prose), held))
    return _HELD.sub(lambda m: held[int(m.group(1))], "".join(out))


__all__ = ["code_span", "safe_markdown"]
