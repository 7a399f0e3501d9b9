"""Images in a chat message, in ``BlossomService`` (mixin ``VisionMethods``): which
models see images, so a page can warn before anything is sent.

The rules (types, sizes, counts) are ``gateway.vision``'s; the gateway refuses a
request with images for a model that does not see them (``vision.require_sight``),
whatever a page shows.
"""

from __future__ import annotations

from .gateway import Gateway
from .gateway.vision import sees_images, vision_models


class VisionMethods:
    """``vision_models`` and ``model_sees_images``; needs ``BlossomService._gw``."""

    @property
    def _gw(self) -> Gateway:  # provided by BlossomService
        raise NotImplementedError

    def vision_models(self) -> list[str]:
        """The live backend's text models whose input modalities include images (its
        model facts, ``ModelCatalog.info``), in the backend's order; [] when it names none.

        Never raises for a backend failure (its facts are then unknown: [])."""
        return vision_models(self._gw)

    def model_sees_images(self, model: str | None) -> bool:
        """Whether ``model`` (None: the default text model) takes images, by the backend's
        model facts; False when they do not say."""
        name = model or self._default_text_model()
        return bool(name) and sees_images(self._gw.model_info("text", name))

    def _default_text_model(self) -> str:
        """The model a request without one is sent to: the setting, else the backend's
        first text model ("" when it lists none)."""
        preferred = getattr(getattr(self, "settings", None), "default_text_model", "")
        if preferred:
            return str(preferred)
        names = self._gw.list_models("text").names
        return names[0] if names else ""


__all__ = ["VisionMethods"]
