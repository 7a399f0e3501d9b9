"""The team-wide features of ``BlossomService``: Compare, Batch, replay recordings and shared chats.

A base class of ``service.BlossomService`` (kept apart so that the composition in
``service.py`` stays short): thin methods that check who asks and hand the work to
``features/`` and ``policies/``, over the gateway. Nothing here holds request logic.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from sqlalchemy.exc import SQLAlchemyError

from .errors import BackendUnavailable, DashError, InvalidRequest
from .features.batch import BatchRow, BatchRunner, BatchStatus, check_owner, check_rows, store_errors
from .features.batch_cost import BatchEstimate, estimate_batch
from .features.conversations import Conversation, ConversationError, ConversationStore
from .gateway import Caller, Gateway, TextStream
from .gateway.account import AccountReader
from .gateway.models import ModelInfo
from .policies.cache import CacheStats
from .policies.replay import ImportReport, RecordError
from .results import ImageResult
from .sdk.account import Account
from .sdk.backend import Backend
from .sdk.loop import LoopThread
from .service_access import AccessMethods
from .telemetry.spend import typical_completion_tokens

log = logging.getLogger("blossom_dash")



class FeatureMethods(AccessMethods):
    """Compare, Batch, replay and conversation methods; mixed into ``BlossomService``."""

    _loop: LoopThread  # the service's event loop, set by BlossomService

    @property
    def _gw(self) -> Gateway:  # provided by BlossomService
        raise NotImplementedError

    @property
    def backend(self) -> Backend:  # provided by BlossomService
        raise NotImplementedError

    def backend_info(self) -> dict[str, Any]:  # provided by BlossomService
        raise NotImplementedError

    def stream_text(self, prompt: str, **kwargs: Any) -> TextStream:  # provided by BlossomService
        raise NotImplementedError

    def generate_image(self, prompt: str, **kwargs: Any) -> ImageResult:  # provided by BlossomService
        raise NotImplementedError

    # ----- the backend's account (key type and balance; gateway/account.py) -------------------

    def account(self, *, refresh: bool = False, caller: Caller | None = None) -> Account | None:
        """What the live backend says about a key: type (sk_/pk_), name, budget, balance.

        Read through ``gateway.account.AccountReader`` (``GET /account/key`` and
        ``GET /account/balance``, 3 s each at most), kept 60 s per backend and key, so
        every page may ask; not asked while the backend's circuit breaker is open (the
        last answer is given). Without a caller, or for a caller without a key of their
        own, it is the server's key for this backend, the same for everyone; for a
        caller whose session has its own key, that key's account (it goes where that
        session's requests go, the live backend, and nowhere else). A kiosk visitor
        without a key of their own gets None: the server key's balance is not for
        anonymous visitors.

        Args:
            refresh: Ask the backend now (the Controls page's refresh button).
            caller: Whose key (None: the server's).

        Returns:
            ``sdk.account.Account`` (parts it could not read are None, with why in
            ``detail``), or None when the backend has no key of its own (the demo) or
            no account API (a non-Pollinations server that answers neither endpoint).
        """
        with self._lock:
            reader = getattr(self, "_account_reader", None)
            if reader is None:
                reader = self._account_reader = AccountReader(self._loop)
        offline = self._gw.breaker().state().circuit == "open"
        own = caller.api_key if caller is not None else None
        if own is None and caller is not None and caller.is_kiosk:
            return None  # an anonymous visitor is not shown the server key's balance
        return reader.get(self.backend, api_key=own, refresh=refresh, offline=offline)

    # ----- comparisons: service_compare.CompareMethods (delete_comparison below) --------

    # ----- batch jobs (the Batch page; logic in batch.py) --------------------------------

    def _batch_runner(self) -> BatchRunner:
        """The batch runner: its tables and daemon threads are created on first use
        (``start_batch_runner`` does it when the service starts)."""
        with self._lock:
            if self._closed:
                raise BackendUnavailable("The service has been shut down.", "Reload the page to start it again.")
            runner = getattr(self, "_batch", None)
            if runner is None:
                with store_errors("started"):
                    runner = self._batch = BatchRunner(self._gw, self.store.engine,
                                                       lease_s=self.settings.batch_lease_s)
            return runner

    def start_batch_runner(self) -> bool:
        """Start working batch jobs now: this replica then takes its share of every
        running job on the database (and continues those of a replica that stopped)
        without waiting for a visit to the Batch page.

        Returns:
            Whether it runs; False (logged) if the database cannot be used now, in
            which case the first batch call tries again and says why.
        """
        try:
            self._batch_runner()
            return True
        except DashError as exc:
            log.warning("batch runner not started: %s", exc.message)
            return False

    def submit_batch(self, rows: Sequence[BatchRow | Mapping[str, Any]], *, name: str = "",
                     user: str = "anonymous", session: str = "", api_key: str | None = None) -> str:
        """Start a background job that answers every row with ``generate_text``.

        Each row is one request of kind ``text`` as ``user`` (cache, rate limits and
        Monitor as usual); a full rate-limit window pauses the job rather than
        failing rows. The job outlives the page and is kept in the usage database.

        Args:
            rows: 1 to ``batch.MAX_ROWS`` rows: ``BatchRow`` (``batch.parse_csv``'s
                valid rows) or mappings with ``prompt`` and optional ``model``,
                ``system``, ``temperature``, ``max_tokens``, ``seed``.
            name: A label for the job list (the file name).

        Returns:
            The job id (32 hex characters).

        Raises:
            InvalidRequest: no rows, too many, or a row that cannot run.
            BackendUnavailable: the service is shut down or the database failed.
        """
        checked = check_rows(rows, max_prompt_chars=self.settings.max_prompt_chars)
        runner = self._batch_runner()
        with store_errors("saved"):
            return runner.submit(checked, user=user, session=session, api_key=api_key, name=str(name or ""))

    def model_info(self, kind: str, model: str) -> ModelInfo | None:
        """The live backend's facts about ``model`` (``Gateway.model_info``: price from its
        ``/text|image|audio/models`` entry, else ``BLOSSOM_DASH_PRICES``; paid-only;
        health; modalities); None when neither knows it. Never raises for a backend
        failure (cached facts, or the settings file's).

        Raises:
            InvalidRequest: ``kind`` is not text, image or audio.
        """
        return self._gw.model_info(kind, model)

    def estimate_batch(self, rows: Sequence[BatchRow], *, model: str | None = None,
                       max_tokens: int = 512) -> BatchEstimate:
        """The estimated cost of running ``rows`` (``batch_cost.estimate_batch``: an upper
        bound, prompts at ~4 characters per token and answers at their full max_tokens;
        and a typical figure, answers at each model's mean completion length over the
        last 7 days of this dashboard's history), at the text models' prices in the
        catalog (``model_info``; a model it does not know, or one without a price, leaves
        its rows unpriced).

        Args:
            rows: The parsed rows (invalid ones are skipped).
            model / max_tokens: The job's defaults for rows that leave them blank.
        """
        def price_of(name: str) -> Any:
            try:
                info = self.model_info("text", name)
            except DashError:
                info = None
            return info.price if info is not None else None

        try:
            typical = typical_completion_tokens(self.store)
        except (DashError, SQLAlchemyError) as exc:  # a refinement: the upper bound stands without it
            log.warning("no typical answer lengths for the batch estimate: %s", exc)
            typical = {}
        return estimate_batch(rows, price_of, model=model, max_tokens=max_tokens, typical=typical)

    def batch_status(self, job_id: str, *, user: str | None = None, session: str = "",
                     api_key: str | None = None) -> BatchStatus:
        """Counts (done/failed/remaining), ETA and rate-limit wait of ``user``'s job.

        Raises:
            InvalidRequest: no such job of ``user`` (any user's when None).
            BackendUnavailable: the database failed.
        """
        runner = self._batch_runner()
        with store_errors("read"):
            return runner.status(check_owner(runner, job_id, user))

    def batch_results(self, job_id: str, *, limit: int | None = None, user: str | None = None, session: str = "",
                      api_key: str | None = None) -> pd.DataFrame:
        """The job's rows in file order: input, answer, model, latency, tokens, error.

        Args:
            limit: Only the first ``limit`` rows (a live view); None = all.

        Returns:
            A DataFrame with ``batch.RESULT_COLUMNS``.

        Raises:
            InvalidRequest, BackendUnavailable: as ``batch_status``.
        """
        runner = self._batch_runner()
        with store_errors("read"):
            return runner.results(check_owner(runner, job_id, user), limit=limit)

    def cancel_batch(self, job_id: str, *, user: str | None = None, session: str = "",
                     api_key: str | None = None) -> BatchStatus:
        """Stop ``user``'s job: no further rows start; rows in flight finish and are kept.

        Returns:
            The job's status after the cancel (cancelling a stopped job changes nothing).

        Raises:
            InvalidRequest, BackendUnavailable: as ``batch_status``.
        """
        runner = self._batch_runner()
        with store_errors("cancelled"):
            runner.cancel(check_owner(runner, job_id, user))
            return runner.status(job_id)

    def resume_batch(self, job_id: str, *, retry_failed: bool = False, user: str | None = None,
                     session: str = "", api_key: str | None = None) -> BatchStatus:
        """Run the unfinished rows of an interrupted or cancelled job (finished rows are kept).

        Args:
            retry_failed: Also run the rows that failed.

        Raises:
            InvalidRequest: no such job, it is running, or nothing is left to run.
            BackendUnavailable: as ``batch_status``.
        """
        runner = self._batch_runner()
        with store_errors("resumed"):
            runner.resume(check_owner(runner, job_id, user), user=runner.owner(job_id) or "anonymous",
                          session=session, api_key=api_key, retry_failed=retry_failed)
            return runner.status(job_id)

    def delete_batch(self, job_id: str, *, user: str | None = None, session: str = "",
                     api_key: str | None = None) -> None:
        """Delete a stopped job of ``user`` and its rows.

        Raises:
            InvalidRequest: no such job, or it is running.
            BackendUnavailable: as ``batch_status``.
        """
        runner = self._batch_runner()
        with store_errors("deleted"):
            runner.delete(check_owner(runner, job_id, user))

    def list_batches(self, user: str | None, *, session: str = "", api_key: str | None = None,
                     limit: int = 50) -> list[BatchStatus]:
        """``user``'s newest ``limit`` jobs (everyone's when None), newest first.

        Raises:
            BackendUnavailable: the database failed.
        """
        runner = self._batch_runner()
        with store_errors("listed"):
            return runner.list(user, limit=limit)

    # ----- replay and shared conversations (logic in replay.py, conversations.py) --------

    def configure_replay(self, *, persistent: bool | None = None, replay_only: bool | None = None,
                         caller: Caller | None = None) -> CacheStats:
        """Turn recording (the persistent cache) and replay-only mode on or off, for everyone.

        Args:
            persistent: Record every answer under ``<data_dir>/replay`` and serve it
                after a restart; off keeps the recordings and turns replay-only off.
            replay_only: Serve recordings only; nothing reaches a backend and no
                rate-limit slot is spent. On also turns recording on.

        Returns:
            ``cache.stats()`` after the change.

        Raises:
            PermissionDenied: the caller is not an admin.
            InvalidRequest: ``persistent=False`` together with ``replay_only=True``.
            DashError: the recordings folder cannot be opened.
        """
        caller = self._admin(caller, "change recording and replay")
        old = self.cache.stats()
        try:
            new = self.cache.configure(persistent=persistent, replay_only=replay_only)
            self._audit(caller, "configure_replay", {"persistent": old.persistent, "replay_only": old.replay_only},
                        {"persistent": new.persistent, "replay_only": new.replay_only})
            return new
        except ValueError as exc:
            raise InvalidRequest(f"Replay settings not applied: {exc}.",
                                 "Leave the persistent cache on while replay-only is on.") from exc
        except OSError as exc:
            raise DashError(f"The recordings folder {self.settings.data_dir / 'replay'} cannot be opened: {exc}.",
                            "Check that the data directory exists and is writable, then try again.") from exc

    def export_recordings(self, *, caller: Caller | None = None) -> bytes:
        """Every recorded answer as one ``.zip`` to replay elsewhere (``replay.RecordingStore.export``;
        admin: it holds everyone's prompts).

        Raises:
            PermissionDenied: the caller is not an admin.
            DashError: the recordings cannot be read.
        """
        self._admin(caller, "export the recordings")
        try:
            return self.cache.export_recordings(self.backend_info())
        except (OSError, ValueError) as exc:
            raise DashError(f"The recordings could not be exported: {exc}.",
                            "Check the data directory, then try again.") from exc

    def import_recordings(self, data: bytes, *, caller: Caller | None = None) -> ImportReport:
        """Merge an exported ``.zip`` into the recordings (admin, audited: imported answers are
        served to everyone); nothing changes unless all of it reads.

        Returns:
            ``ImportReport``: added, skipped (already recorded), total.

        Raises:
            PermissionDenied: the caller is not an admin.
            InvalidRequest: not a blossom-dash replay export, a newer format version,
                or damaged (the message says which).
            DashError: the recordings folder cannot be written.
        """
        caller = self._admin(caller, "import recordings")
        try:
            report = self.cache.import_recordings(data)
            self._audit(caller, "import_recordings", None, {"added": report.added, "bytes": len(data)})
            return report
        except RecordError as exc:
            raise InvalidRequest(f"Nothing was imported. {exc}",
                                 "Export it again from blossom-dash (Controls → Replay) and import that .zip.") from exc
        except (OSError, ValueError) as exc:
            raise DashError(f"The recordings could not be written: {exc}.",
                            "Check that the data directory is writable, then try again.") from exc

    def clear_recordings(self, *, caller: Caller | None = None) -> int:
        """Delete every recorded answer (the in-memory cache keeps what it has not read from them).

        Returns:
            How many recordings were deleted.

        Raises:
            PermissionDenied: the caller is not an admin.
            DashError: the recordings folder cannot be opened.
        """
        caller = self._admin(caller, "delete the recordings")
        try:
            n = self.cache.clear_recordings()
            self._audit(caller, "clear_recordings", None, {"deleted": n})
            return n
        except OSError as exc:
            raise DashError(f"The recordings could not be deleted: {exc}.", "Check the data directory.") from exc

    def _conversations(self) -> ConversationStore:
        """The ``conversations`` table, created in the usage database on first use."""
        with self._lock:
            store = getattr(self, "_conversation_store", None)
            if store is None:
                store = self._conversation_store = ConversationStore(self.store.engine)
            return store

    def delete_conversation(self, conversation_id: str, *, caller: Caller | None = None) -> bool:
        """Delete a shared conversation: its owner or an admin may (admins' deletes are audited).

        Returns:
            Whether it existed.

        Raises:
            InvalidRequest: the id is malformed or unknown.
            PermissionDenied: the caller neither shared it nor is an admin.
            DashError: the database refused.
        """
        from sqlalchemy.exc import SQLAlchemyError

        conv = self.load_conversation(conversation_id)
        self._owner_or_admin(caller, "shared conversation", conv.id, conv.user)
        try:
            return self._conversations().delete(conv.id)
        except SQLAlchemyError as exc:
            raise DashError("The conversation could not be deleted: the usage database refused.",
                            "Try again; if it repeats, check the database.") from exc

    def delete_comparison(self, comparison_id: str, *, caller: Caller | None = None) -> bool:
        """Delete a stored comparison and its vote: its owner or an admin may (admins' audited).

        Raises:
            InvalidRequest: the id is malformed or unknown.
            PermissionDenied: the caller neither made it nor is an admin.
            StorageFailed: the database refused.
        """
        comp = self.load_comparison(comparison_id)
        self._owner_or_admin(caller, "comparison", comp.id, comp.user)
        return self._comparisons().delete(comp.id)

    def save_conversation(self, messages: list[dict[str, Any]], *, user: str = "anonymous", session: str = "",
                          api_key: str | None = None) -> Conversation:
        """Save a snapshot of a Playground chat for its permalink (``?conversation=<id>``).

        Args:
            messages: ``[{"role": "user"|"assistant", "content", "caption"?, "code"?}]``.
            user: Who shares it.

        Returns:
            The saved ``Conversation`` (its ``id`` goes in the link).

        Raises:
            InvalidRequest: empty chat, a bad role, too long (``conversations.MAX_*``).
            DashError: the database refused the write.
        """
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return self._conversations().save(messages, user=user)
        except ConversationError as exc:
            raise InvalidRequest(str(exc), "Chat first, then share.") from exc
        except SQLAlchemyError as exc:
            raise DashError("The conversation could not be saved: the usage database refused the write.",
                            "Try again; if it repeats, check the database.") from exc

    def load_conversation(self, conversation_id: str) -> Conversation:
        """A shared conversation, to show read-only.

        Raises:
            InvalidRequest: the id is malformed or unknown (the link is wrong or cut short).
            DashError: the database cannot be read.
        """
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return self._conversations().load(conversation_id)
        except ConversationError as exc:
            raise InvalidRequest(f"This conversation link does not open anything: {exc}",
                                 "Check that the link was copied whole, or start a new chat.") from exc
        except SQLAlchemyError as exc:
            raise DashError("The conversation could not be read from the usage database.",
                            "Try again in a moment.") from exc
