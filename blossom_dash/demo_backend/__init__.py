"""An offline stand-in for gen.pollinations.ai, for demos, tests and benchmarks.

It speaks the same HTTP as the real API, so the blossom-ai SDK cannot tell the
difference, but it is honest: every model is named ``demo-*``, every answer says it
comes from the demo backend, and faults happen only when asked for (see ``FAULTS``)
and only on a server started with them enabled (``create_app(faults=True)``,
``DemoServer(faults=True)``, ``--faults``).
"""

from __future__ import annotations

from .app import DemoServer, create_app
from .content import IMAGE_MODELS, TEXT_MODELS, ImageModel, TextModel, count_tokens
from .faults import FAULTS

__all__ = [
    "FAULTS",
    "IMAGE_MODELS",
    "TEXT_MODELS",
    "DemoServer",
    "ImageModel",
    "TextModel",
    "count_tokens",
    "create_app",
]
