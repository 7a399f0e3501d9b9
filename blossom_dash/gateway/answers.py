"""A backend's answer, or a cached one, as this request's result (``Gateway.run``).

``BUILDERS[kind](value, observation, prepared, backend, latency_ms, request_id)`` checks
what came back (a non-empty text, a real image or audio clip: anything else is an
``UpstreamError``) and returns ``(result, nbytes, usage)``; ``from_cache`` gives a
cached result this request's latency and id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..errors import UpstreamError
from ..results import AudioResult, ImageResult, TextResult, Usage
from ..sdk.backend import Backend
from ..sdk.images import verify_image
from ..sdk.speech import verify_audio
from ..sdk.transport import Observation
from .requests import Prepared

_Built = tuple[Any, int, Usage | None]


def _build_text(text: Any, obs: Observation, p: Prepared, backend: Backend, latency: float, rid: str) -> _Built:
    if not isinstance(text, str) or not text:
        raise UpstreamError(f"Model {p.model!r} on {backend.label} returned an empty answer.",
                            "Try again, raise max tokens, or pick another model.", status_code=200)
    usage = Usage.from_dict(obs.usage) if obs.usage else Usage.estimate(p.wire["messages"], text)
    return TextResult(text, p.model, backend.name, latency, None, usage, False, rid), len(text.encode()), usage


def _build_image(data: Any, obs: Observation, p: Prepared, backend: Backend, latency: float, rid: str) -> _Built:
    content_type, w, h = verify_image(data, backend.label)
    return (ImageResult(data, content_type, w, h, p.model, backend.name, p.wire["seed"], latency, False, rid),
            len(data), None)


def _build_speech(value: Any, obs: Observation, p: Prepared, backend: Backend, latency: float, rid: str) -> _Built:
    data, transcript = value
    clip = verify_audio(data, where=backend.label)
    usage = Usage.from_dict(obs.usage) if obs.usage else None
    return (AudioResult(data, clip.content_type, p.wire["voice"], clip.format, clip.duration_s, latency, False, rid,
                        p.model, backend.name, p.wire["audio_format"], transcript), len(data), usage)


BUILDERS: dict[str, Callable[..., _Built]] = {"text": _build_text, "image": _build_image, "audio": _build_speech}


def from_cache(value: Any, latency: float, rid: str) -> Any:
    """A cached result as this request's: its own latency and id, ``cached=True``."""
    if isinstance(value, TextResult):
        return TextResult(value.text, value.model, value.backend, latency, None, value.usage, True, rid,
                          value.finish_reason, cost=value.cost)
    return dataclasses.replace(value, latency_ms=latency, cached=True, request_id=rid)


__all__ = ["BUILDERS", "from_cache"]
