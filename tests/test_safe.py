"""safe_markdown: untrusted text renders with no image, no link and no HTML, and code stays code.

Rendered with markdown-it-py (CommonMark, as Streamlit's renderer parses it) to check
what a browser would get; bare-URL autolinking (GFM, which markdown-it needs an extra
package for) is checked on the markdown itself: URLs end up inside code spans.
"""

from __future__ import annotations

import re

import pytest
from markdown_it import MarkdownIt

from blossom_dash.ui.safe import code_span, safe_markdown

URL = "http://127.0.0.1:9/x.png"
md = MarkdownIt("commonmark").enable(["table", "strikethrough"])


def html(text: str) -> str:
    return md.render(text)


def outside_code(markdown: str) -> str:
    """``markdown`` with fenced blocks and inline code spans removed."""
    markdown = re.sub(r"(?ms)^```.*?^```[ \t]*$", "", markdown)
    return re.sub(r"(`+).+?\1", "", markdown)


@pytest.mark.parametrize("text", [
    f"![x]({URL})",
    f'![x]({URL} "title")',
    f"text ![x][ref]\n\n[ref]: {URL}",
    f"[click]({URL})",
    f"[click][r]\n\n[r]: {URL}",
    f"<{URL}>",
    f'<img src="{URL}">',
    f'<div>\n\n![x]({URL})\n\n</div>',
    f"<div>\n```\n\n![x]({URL})",  # an HTML block would end a fake fence at the blank line
    f"\\`not code ![x]({URL})`",  # an escaped backtick opens no code span
    f"<a title='`'>![x]({URL})`",  # a tag binds before a code span
    f"```py`not a fence\n![x]({URL})\n```",  # a backtick in the info string: not a fence
    f"- item\n  ```\n  code\nout ![x]({URL})",  # an indented fence ends with its list item
    f"> quote ![x]({URL})",
    f"| a | b |\n|---|---|\n| ![x]({URL}) | [l]({URL}) |",
    f"**![x]({URL})** _[l]({URL})_",
    f"![a ![b]({URL})]({URL})",
])
def test_nothing_loads_or_links(text: str) -> None:
    """No <img>, no <a>, no raw HTML in what the markdown renders to."""
    out = html(safe_markdown(text))
    assert "<img" not in out and "<a " not in out and "<div" not in out and "<a>" not in out, out


def test_images_and_links_become_words() -> None:
    """An image reads "[image: alt]"; a link keeps its text and shows its URL as code."""
    out = safe_markdown(f"See ![a chart]({URL}) and [the docs](https://docs.example.com/a).")
    assert out == r"See \[image: a chart\] and the docs (`https://docs.example.com/a`)."
    assert "[image: a chart]" in html(out) and "<code>https://docs.example.com/a</code>" in html(out)
    assert safe_markdown(f"![]({URL})") == r"\[image: no description\]"


def test_bare_urls_and_addresses_are_code_not_autolinks() -> None:
    """GFM links bare URLs, www. names and e-mail addresses: each is put in a code span."""
    out = safe_markdown("Visit https://evil.example/x, www.example.org or mail ana@example.com.")
    assert out == "Visit `https://evil.example/x`, `www.example.org` or mail `ana@example.com`."
    assert not re.search(r"https?://|www\.|@", outside_code(out))


def test_raw_html_is_shown_as_text() -> None:
    """Tags are escaped, so they show as typed."""
    out = html(safe_markdown("<script>alert(1)</script> <b>bold</b>"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out and "<b>" not in out


def test_code_stays_code() -> None:
    """Fenced blocks and inline code keep their text exactly (markdown inside them never renders)."""
    fenced = f"Before\n\n```python\nitems = [1](2)\nprint('![x]({URL})')\n```\n\nAfter `arr[0] < n` done"
    out = safe_markdown(fenced)
    assert f"```python\nitems = [1](2)\nprint('![x]({URL})')\n```\n" in out
    assert "`arr[0] < n`" in out
    rendered = html(out)
    assert f"print('![x]({URL})')" in rendered.replace("&#x27;", "'") and "<code>arr[0] &lt; n</code>" in rendered
    assert safe_markdown("```\nunclosed ![x](u)") == "```\nunclosed ![x](u)", "a fence runs to the end"


def test_prose_markdown_still_renders() -> None:
    """Headings, lists, emphasis and tables are kept: an answer stays readable."""
    out = html(safe_markdown("# Title\n\n- **bold** and _it_\n\n| a | b |\n|---|---|\n| 1 | 2 |"))
    assert "<h1>Title</h1>" in out and "<strong>bold</strong>" in out and "<em>it</em>" in out
    assert "<table>" in out


def test_as_typed_and_limit_for_cards() -> None:
    """A prompt on a card shows exactly as typed, on one clipped line, its URL as code."""
    out = safe_markdown(f"# [a](b)\n![x]({URL}) " + "word " * 50, limit=60, as_typed=True)
    assert out.startswith(r"\# \[a\]\(b\) \!\[x\]\(`http://127.0.0.1:9/x.png`\)") and out.endswith("…")
    rendered = html(out)
    assert "<h1>" not in rendered and "<img" not in rendered and "<a " not in rendered


def test_code_span_cannot_be_closed_early() -> None:
    """A model name with backticks stays one code span."""
    assert code_span("a`b") == "``a`b``"
    assert html(code_span(f"x` ![i]({URL}) `")).count("<code>") == 1
    assert "<img" not in html(code_span(f"x` ![i]({URL}) `"))
