"""blossom-dash: a Streamlit dashboard over the blossom-ai SDK (core library).

Public API::

    from blossom_dash import Settings, BlossomService
    with BlossomService(Settings(backend="demo")) as svc:
        print(svc.generate_text("Hello").text)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import errors
    from .errors import (
        AuthenticationFailed,
        BackendUnavailable,
        DashError,
        InvalidRequest,
        RateLimited,
        UpstreamError,
    )
    from .gateway import Caller, TextStream
    from .results import AudioResult, ImageResult, TextResult, Usage
    from .service import BlossomService
    from .session import SessionHandle
    from .settings import Settings

# Imported on first use (PEP 562), so that ``python -m blossom_dash.health`` (a container's
# probe, every 30 s) loads the settings alone, not the service, pandas and the SDK:
# about 1 s of CPU a probe otherwise.
_WHERE = {
    "errors": "", "AuthenticationFailed": ".errors", "BackendUnavailable": ".errors", "DashError": ".errors",
    "InvalidRequest": ".errors", "RateLimited": ".errors", "UpstreamError": ".errors",
    "Caller": ".gateway", "TextStream": ".gateway",
    "AudioResult": ".results", "ImageResult": ".results", "TextResult": ".results", "Usage": ".results",
    "BlossomService": ".service", "SessionHandle": ".session", "Settings": ".settings",
}


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _WHERE[name]:
        value = importlib.import_module(f".{name}", __name__)
    else:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AudioResult",
    "AuthenticationFailed",
    "BackendUnavailable",
    "BlossomService",
    "Caller",
    "DashError",
    "ImageResult",
    "InvalidRequest",
    "RateLimited",
    "SessionHandle",
    "Settings",
    "TextResult",
    "TextStream",
    "UpstreamError",
    "Usage",
    "errors",
]
