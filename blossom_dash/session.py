"""``SessionHandle``: one browser session's view of ``BlossomService``.

Each method is the service's method of the same name, called as this session's
user (``caller``): the pages hold a handle, never a bare user name. This module
does not import ``service`` (which imports it to hand handles out), so the
service is typed ``Any`` here.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .errors import PermissionDenied
from .features.batch import BatchStatus
from .features.compare import Comparison, TextComparison, Vote
from .features.conversations import Conversation
from .gateway import Caller, TextStream
from .policies.ratelimit import LimitStatus
from .results import AudioResult, ImageResult, TextResult


class SessionHandle:
    """One browser session's view of the service: identity and a private API key.

    Args:
        service: The process-wide service.
        user: The user identity (rate limits, metrics).
        session_id: The browser session (metrics).
        role: ``admin``, ``member`` or ``viewer`` (``BlossomService.role_for``); the
            service checks it on every admin action.
    """

    def __init__(self, service: Any, *, user: str, session_id: str = "", role: str = "member") -> None:
        self.service = service
        self.user = user
        self.session_id = session_id
        self.role = role
        self._api_key: str | None = None

    def set_api_key(self, key: str | None) -> None:
        """Use ``key`` for this session's requests only (None or "" clears it)."""
        self._api_key = key.strip() if key and key.strip() else None

    @property
    def has_session_key(self) -> bool:
        """Whether a session key is set (the key itself is never handed back)."""
        return self._api_key is not None

    @property
    def caller(self) -> Caller:
        """Who this session's requests are made as."""
        return Caller(self.user, self.session_id, self._api_key, self.role)

    def _ids(self) -> dict[str, Any]:
        return {"user": self.user, "session": self.session_id, "api_key": self._api_key}

    def _job_ids(self) -> dict[str, Any]:
        """As ``_ids``, but an admin may act on every user's job (``user=None``: any owner)."""
        return {**self._ids(), "user": None if self.role == "admin" else self.user}

    def generate_text(self, prompt: str, **kwargs: Any) -> TextResult:
        """``BlossomService.generate_text`` as this session's user."""
        return self.service.generate_text(prompt, **kwargs, caller=self.caller)

    def stream_text(self, prompt: str, **kwargs: Any) -> TextStream:
        """``BlossomService.stream_text`` as this session's user."""
        return self.service.stream_text(prompt, **kwargs, caller=self.caller)

    def generate_image(self, prompt: str, **kwargs: Any) -> ImageResult:
        """``BlossomService.generate_image`` as this session's user."""
        return self.service.generate_image(prompt, **kwargs, caller=self.caller)

    def rate_status(self) -> LimitStatus:
        """This user's and the global moving windows."""
        return self.service.limit_status(self.user)

    def generate_speech(self, text: str, **kwargs: Any) -> AudioResult:
        """``BlossomService.generate_speech`` as this session's user."""
        return self.service.generate_speech(text, **kwargs, caller=self.caller)

    def compare_text(self, prompt: str, models: list[str], **kwargs: Any) -> TextComparison:
        """``BlossomService.compare_text`` as this session's user."""
        return self.service.compare_text(prompt, models, **kwargs, **self._ids())

    def compare_images(self, prompt: str, models: list[str], **kwargs: Any) -> Comparison:
        """``BlossomService.compare_images`` as this session's user."""
        return self.service.compare_images(prompt, models, **kwargs, **self._ids())

    def compare_record(self, kind: str, prompt: str, panels: list[Any], **kwargs: Any) -> Comparison:
        """``BlossomService.compare_record`` as this session's user."""
        return self.service.compare_record(kind, prompt, panels, **kwargs, **self._ids())

    def vote(self, comparison_id: str, choice: str) -> Vote:
        """``BlossomService.vote`` as this session's user."""
        return self.service.vote(comparison_id, choice, **self._ids())

    def leaderboard(self, kind: str = "text") -> Any:
        """``BlossomService.leaderboard`` (the team's votes)."""
        return self.service.leaderboard(kind)

    def load_comparison(self, comparison_id: str) -> Comparison:
        """``BlossomService.load_comparison``."""
        return self.service.load_comparison(comparison_id)

    def submit_batch(self, rows: Any, **kwargs: Any) -> str:
        """``BlossomService.submit_batch`` as this session's user."""
        return self.service.submit_batch(rows, **kwargs, **self._ids())

    def batch_status(self, job_id: str) -> BatchStatus:
        """``BlossomService.batch_status`` of this user's job (an admin's: of any job)."""
        return self.service.batch_status(job_id, **self._job_ids())

    def batch_results(self, job_id: str, **kwargs: Any) -> pd.DataFrame:
        """``BlossomService.batch_results`` of this user's job."""
        return self.service.batch_results(job_id, **kwargs, **self._job_ids())

    def cancel_batch(self, job_id: str) -> BatchStatus:
        """``BlossomService.cancel_batch`` of this user's job (an admin may cancel any)."""
        return self.service.cancel_batch(job_id, **self._job_ids())

    def resume_batch(self, job_id: str, **kwargs: Any) -> BatchStatus:
        """``BlossomService.resume_batch`` of this user's job, with this session's key."""
        return self.service.resume_batch(job_id, **kwargs, **self._ids())

    def delete_batch(self, job_id: str) -> None:
        """``BlossomService.delete_batch`` of this user's job."""
        return self.service.delete_batch(job_id, **self._job_ids())

    def list_batches(self, *, everyone: bool = False) -> list[BatchStatus]:
        """``BlossomService.list_batches`` of this user, or of every user (admins only).

        Raises:
            PermissionDenied: ``everyone`` asked by someone who is not an admin.
        """
        if everyone:
            if self.role != "admin":
                raise PermissionDenied("Only an admin sees every user's batch jobs.", "Your own jobs are listed.")
            return self.service.list_batches(None, session=self.session_id)
        return self.service.list_batches(**self._ids())

    def delete_conversation(self, conversation_id: str) -> bool:
        """``BlossomService.delete_conversation`` as this session's caller (owner or admin)."""
        return self.service.delete_conversation(conversation_id, caller=self.caller)

    def delete_comparison(self, comparison_id: str) -> bool:
        """``BlossomService.delete_comparison`` as this session's caller (owner or admin)."""
        return self.service.delete_comparison(comparison_id, caller=self.caller)

    def save_conversation(self, messages: list[dict[str, Any]]) -> Conversation:
        """``BlossomService.save_conversation`` as this session's user."""
        return self.service.save_conversation(messages, **self._ids())

    # ----- the prompt library (service_prompts) ------------------------------------------

    def prompt_templates(self) -> list[Any]:
        """``BlossomService.prompt_templates``: this user's templates and the team's."""
        return self.service.prompt_templates(caller=self.caller)

    def prompt_versions(self, template_id: str) -> list[Any]:
        """``BlossomService.prompt_versions`` (newest first) as this session's caller."""
        return self.service.prompt_versions(template_id, caller=self.caller)

    def prompt_version(self, template_id: str, which: str | int = "latest") -> Any:
        """``BlossomService.prompt_version`` as this session's caller."""
        return self.service.prompt_version(template_id, which, caller=self.caller)

    def resolve_prompt(self, ref: str) -> Any:
        """``BlossomService.resolve_prompt`` (``name``, ``name@label``, ``name@3``) as this caller."""
        return self.service.resolve_prompt(ref, caller=self.caller)

    def prompt_resolver(self) -> Any:
        """``BlossomService.prompt_resolver`` for this caller (Batch's ``template`` column)."""
        return self.service.prompt_resolver(caller=self.caller)

    def create_prompt(self, name: str, prompt: str, **kwargs: Any) -> Any:
        """``BlossomService.create_prompt``, owned by this session's user."""
        return self.service.create_prompt(name, prompt, **kwargs, caller=self.caller)

    def add_prompt_version(self, template_id: str, prompt: str, **kwargs: Any) -> Any:
        """``BlossomService.add_prompt_version`` of this user's own template."""
        return self.service.add_prompt_version(template_id, prompt, **kwargs, caller=self.caller)

    def set_prompt_label(self, template_id: str, label: str, version: int | None) -> Any:
        """``BlossomService.set_prompt_label`` of this user's own template."""
        return self.service.set_prompt_label(template_id, label, version, caller=self.caller)

    def share_prompt(self, template_id: str, team: bool) -> Any:
        """``BlossomService.share_prompt`` of this user's own template."""
        return self.service.share_prompt(template_id, team, caller=self.caller)

    def delete_prompt(self, template_id: str) -> bool:
        """``BlossomService.delete_prompt`` (owner, or an admin) as this session's caller."""
        return self.service.delete_prompt(template_id, caller=self.caller)

    def prompt_diff(self, template_id: str, old: int, new: int) -> str:
        """``BlossomService.prompt_diff`` as this session's caller."""
        return self.service.prompt_diff(template_id, old, new, caller=self.caller)

    def prompt_label_moves(self, template_id: str) -> list[dict[str, Any]]:
        """``BlossomService.prompt_label_moves`` as this session's caller."""
        return self.service.prompt_label_moves(template_id, caller=self.caller)

    # ----- saved chats and answer feedback (service_chat) ----------------------------------

    def save_chat(self, chat_id: str | None, messages: list[dict[str, Any]]) -> Any:
        """``BlossomService.save_chat`` as this session's caller (returns a ``ChatSummary``)."""
        return self.service.save_chat(chat_id, messages, caller=self.caller)

    def list_chats(self, search: str | None = None, *, limit: int = 200) -> list[Any]:
        """``BlossomService.list_chats``: this user's own chats, newest first."""
        return self.service.list_chats(search, limit=limit, caller=self.caller)

    def load_chat(self, chat_id: str) -> Any:
        """``BlossomService.load_chat`` of this user's own chat (a ``Chat``)."""
        return self.service.load_chat(chat_id, caller=self.caller)

    def rename_chat(self, chat_id: str, title: str) -> Any:
        """``BlossomService.rename_chat`` of this user's own chat."""
        return self.service.rename_chat(chat_id, title, caller=self.caller)

    def delete_chat(self, chat_id: str) -> bool:
        """``BlossomService.delete_chat`` (owner, or an admin) as this session's caller."""
        return self.service.delete_chat(chat_id, caller=self.caller)

    def rate_answer(self, request_id: str, score: int | None, **kwargs: Any) -> Any:
        """``BlossomService.rate_answer`` (``model=``, ``comment=``) as this session's caller."""
        return self.service.rate_answer(request_id, score, **kwargs, caller=self.caller)

    def feedback_by_model(self, since_s: float | None = None) -> pd.DataFrame:
        """``BlossomService.feedback_by_model``, the comments this caller may read."""
        return self.service.feedback_by_model(since_s, caller=self.caller)

    # ----- comparisons' checks (service_compare) ---------------------------------------------

    def comparison_refusal(self, needed: int) -> Any:
        """``BlossomService.comparison_refusal`` for this user: None, or the error to show."""
        return self.service.comparison_refusal(needed, user=self.user)

    def models_recorded_for(self, kind: str, prompt: str) -> list[str]:
        """``BlossomService.models_recorded_for`` (the recordings are the team's)."""
        return list(self.service.models_recorded_for(kind, prompt))

    # ----- images in (service_vision) ---------------------------------------------------

    def vision_models(self) -> list[str]:
        """``BlossomService.vision_models``: the text models that see images."""
        return self.service.vision_models()

    def model_sees_images(self, model: str | None) -> bool:
        """``BlossomService.model_sees_images``: whether ``model`` takes images."""
        return self.service.model_sees_images(model)
