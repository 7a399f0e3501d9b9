"""Which recordings answer a given prompt: the Compare page's replay-only model list.

``RecordingStore.models_recorded_for`` reads every record's request once per store
change and asks ``prompt_of`` what it said; this module holds that rule.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any


def prompt_of(request: Mapping[str, Any], kind: str) -> str | None:
    """The single prompt a recorded request of ``kind`` asked, stripped, or None.

    A text request counts when it holds exactly one user message, last, after at most
    system messages (a one-turn prompt with any settings); an image request by its
    ``prompt``. Any other kind, or a request of another kind, gives None.
    """
    if request.get("kind") != kind:
        return None
    if kind == "text":
        messages = [m for m in request.get("messages") or [] if isinstance(m, Mapping)]
        roles = [m.get("role") for m in messages]
        if not roles or roles[-1] != "user" or roles.count("user") != 1 or set(roles) - {"system", "user"}:
            return None
        said = messages[-1].get("content")
    elif kind == "image":
        said = request.get("prompt")
    else:
        return None
    return said.strip() if isinstance(said, str) else None


def models_for(requests: Iterable[Mapping[str, Any]], kind: str, prompt: str) -> list[str]:
    """The models of ``requests`` that asked ``prompt`` as ``kind``: most recorded first, then by name."""
    want = prompt.strip()
    counts: Counter[str] = Counter(str(r.get("model")) for r in requests
                                   if r.get("model") and prompt_of(r, kind) == want)
    return [m for m, _ in sorted(counts.items(), key=lambda mc: (-mc[1], mc[0]))]


__all__ = ["models_for", "prompt_of"]
