"""The request pipeline, once: typed requests (``requests``), the pipeline
(``pipeline.Gateway``), streams (``streams.TextStream``) and model lists (``models``)."""

from .models import ModelCatalog, ModelList
from .pipeline import Gateway, outcome_of
from .requests import Caller, ImageRequest, Prepared, SpeechRequest, TextRequest
from .streams import TextStream

__all__ = ["Caller", "Gateway", "ImageRequest", "ModelCatalog", "ModelList", "Prepared", "SpeechRequest",
           "TextRequest", "TextStream", "outcome_of"]
