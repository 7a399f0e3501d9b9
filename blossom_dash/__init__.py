"""blossom-dash: a Streamlit dashboard over the blossom-ai SDK (core library).

Public API::

    from blossom_dash import Settings, BlossomService
    with BlossomService(Settings(backend="demo")) as svc:
        print(svc.generate_text("Hello").text)
"""

from __future__ import annotations

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
from .service import BlossomService, SessionHandle
from .settings import Settings

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
