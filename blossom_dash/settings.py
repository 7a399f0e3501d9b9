"""Settings for blossom-dash, read from the environment (pydantic-settings).

Every field maps to an environment variable prefixed ``BLOSSOM_DASH_`` (for example
``BLOSSOM_DASH_BACKEND=demo``). The Pollinations key is the one exception: it is read
from ``POLLINATIONS_API_KEY`` (or ``.streamlit/secrets.toml`` through ``ui.py``) and is
held as a ``SecretStr`` so that it never appears in a repr, a log line or a cache key.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .pricing import load_prices_file

#: The real Pollinations gateway (BLOSSOM_SDK.md, "Endpoints and redirection").
POLLINATIONS_URL = "https://gen.pollinations.ai"


class Settings(BaseSettings):
    """Process-wide configuration of the service.

    Attributes:
        backend: ``"auto"`` (Pollinations when a key is set and it answers a quick
            probe, else the embedded demo), ``"demo"``, ``"pollinations"``, or a base
            URL ``http(s)://host[:port]`` of a Pollinations- or OpenAI-compatible server.
        api_key: Pollinations key (``sk_`` secret or ``pk_`` publishable), from
            ``POLLINATIONS_API_KEY`` or ``BLOSSOM_DASH_API_KEY``.
        demo_latency: Simulate per-model TTFT and tokens/s on the demo backend; off for
            benchmarks.
        demo_faults: Enable the embedded demo backend's fault injection (``/_demo/faults``,
            ``X-Demo-Fault``, ``fault-*`` models), ``BLOSSOM_DASH_DEMO_FAULTS``; off, so
            that nobody reaching the app can make its demo fail; the tests turn it on.
        request_timeout_s: Deadline of one text or speech call, seconds, retries and
            the default-model lookup included; for a stream, the deadline of its
            first delta.
        image_timeout_s: Deadline of one image generation, seconds (same rules).
        stream_timeout_s: Deadline of a whole stream, first byte to last, seconds.
        retries: Extra attempts for transient upstream failures (502/503/504 and a
            connection reset before any byte arrived); waits honour ``Retry-After``
            up to ``retry_max_wait_s``, always inside the call's deadline. A stream
            is retried only before its first delta.
        breaker_failures: Consecutive backend failures (timeouts, connection errors,
            5xx) that open the circuit breaker; 4xx answers and our own refusals do
            not count.
        breaker_reset_s: Seconds an open circuit fails fast before one probe request
            is let through (half-open).
        max_response_bytes: Largest response body accepted from a backend; a larger
            one is refused with ``UpstreamError`` and never cached.
        cache_enabled / cache_ttl_s / cache_max_entries / cache_max_bytes: the
            response cache, capped both in entries and in bytes.
        persistent_cache: Also record every cached answer on disk
            (``<data_dir>/replay``) so it survives restarts.
        replay_only: Serve recorded answers only and never call a backend (offline
            demos); implies ``persistent_cache``.
        per_user_rpm / global_rpm: moving-window request limits per minute.
        batch_share: The fraction of a user's ``per_user_rpm`` their batch rows may
            take (0.05 to 1.0; ``ceil(share × per_user_rpm)`` requests per minute), so a
            running batch leaves the rest of the window to their interactive requests
            (``policies.ratelimit``). Applies always, not only while they chat.
        data_dir: Folder for the SQLite usage store (created on first run).
        database_url: Any SQLAlchemy URL; empty means ``sqlite:///<data_dir>/usage.db``.
        max_prompt_chars: Longest accepted prompt (all messages together); the SDK
            caps a request at 5,000 characters (BLOSSOM_SDK.md).
        metrics_window: How many recent events the collector keeps in memory.
        default_text_model / default_image_model: preferred models when the page
            picks none; empty means the first model the backend lists.
        user: Fallback user identity for calls made without one.
        backends: The allow-list of named backends an admin may switch to, beside
            ``demo`` and ``pollinations``: ``name=url`` pairs, comma-separated, or a JSON
            object ``{"name": "url"}``. Each gets its own key from
            ``BLOSSOM_DASH_BACKEND_<NAME>_KEY`` (upper-case, non-alphanumerics as ``_``),
            never the server's Pollinations key.
        allow_custom_backend: Let an admin type any ``http(s)://`` URL on Controls; such
            a backend gets no key and its error bodies are never quoted.
        admins: E-mails of the admins (comma-separated, or a JSON list).
        allowed_emails / allowed_domains: Who may sign in at all (comma-separated or
            JSON lists); both empty lets every signed-in user in as a member.
        allow_anonymous: Kiosk mode: without sign-in, every browser session is an
            anonymous member with a signed random id (never an admin).
        kiosk_secret: HMAC-SHA256 key that signs kiosk ids; unset, a random one per process.
        kiosk_rpm: Requests per minute of each kiosk visitor (capped by ``per_user_rpm``).
        budget_user_day / budget_user_month / budget_team_day / budget_team_month:
            Spending budgets in pollen (``policies.budget``): per user or for everyone
            together, per UTC calendar day or month; unset is no budget. Admins change
            them on Controls (that then holds on this replica until a restart, or, with
            Redis, for every replica until one starts with a changed value).
        budget_user_day_requests (and ``_user_month_``, ``_team_day_``,
            ``_team_month_requests``): The same budgets counted in requests.
        log_level: Level of the one-JSON-line-per-request log on stderr.
        log_prompts: Include the (truncated) prompt in those log lines.
        metrics_port: Serve Prometheus metrics on this port (off when unset).
        store_prompts / prompt_chars: Keep the first ``prompt_chars`` characters of
            each prompt in the usage store, or no prompt at all.
        retention_days: History older than this many days may be deleted from the
            Monitor page (never deleted silently); None keeps everything.
        redis_url: ``redis://host:port/db`` (or ``rediss://``) shared by every replica:
            rate limits and the response cache live there, exact across processes and
            restarts. Empty: both stay in this process (one replica, zero infra).
        db_pool_size / db_max_overflow: SQLAlchemy connection pool of a server database
            (PostgreSQL): connections kept open, and extra ones allowed under load.
        db_pool_timeout_s: Seconds a request for a pooled connection waits before failing.
        db_connect_timeout_s: Seconds to wait for the database server to accept a
            connection (PostgreSQL's ``connect_timeout``).
        batch_lease_s: Seconds a replica holds a claimed batch row (its lease); a row
            whose lease expires without an answer is claimed again by a live replica,
            and the late answer of the stalled one is discarded (fencing token).
        alert_webhook: URL the alerts are POSTed to as JSON with a Slack-compatible
            ``text`` field (``telemetry.alerts``); it may carry a token, so it is never
            shown or logged whole. Unset: alerts are listed on Controls, not sent.
        alert_error_rate: Error rate over the last 5 minutes (a fraction) that raises
            an alert, once per crossing, and a "recovered" one when it falls back.
        alert_min_requests: Fewest requests in those 5 minutes for an error-rate alert.
        alert_attempts: Most POSTs of one alert (retried with exponential backoff on
            connection errors, 5xx and 429) before it is marked failed.
        prices: A TOML or CSV file of model -> per-unit prices in pollen
            (``pricing.load_prices_file``) for the models the backend does not price;
            read and checked at start (a bad file is refused naming its line or table
            and field). None: only the backend's prices.
    """

    model_config = SettingsConfigDict(
        env_prefix="BLOSSOM_DASH_", extra="ignore", populate_by_name=True
    )

    backend: str = "auto"
    api_key: SecretStr | None = Field(
        default=None,
        # Only these two variables: a bare "api_key" alias would also read any
        # unrelated API_KEY variable from the environment.
        validation_alias=AliasChoices("POLLINATIONS_API_KEY", "BLOSSOM_DASH_API_KEY"),
    )
    demo_latency: bool = True
    demo_faults: bool = False
    request_timeout_s: float = Field(default=60.0, gt=0, le=600)
    image_timeout_s: float = Field(default=120.0, gt=0, le=600)
    retries: int = Field(default=1, ge=0, le=5)
    retry_max_wait_s: float = Field(default=5.0, ge=0, le=60)
    stream_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    breaker_failures: int = Field(default=5, ge=1, le=10_000)
    breaker_reset_s: float = Field(default=30.0, gt=0, le=3600)
    max_response_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, le=1024**3)

    cache_enabled: bool = True
    cache_ttl_s: float = Field(default=3600.0, gt=0)
    cache_max_entries: int = Field(default=512, ge=1, le=100_000)
    cache_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, le=64 * 1024**3)
    persistent_cache: bool = False
    replay_only: bool = False

    per_user_rpm: int = Field(default=30, ge=1, le=100_000)
    global_rpm: int = Field(default=120, ge=1, le=1_000_000)
    batch_share: float = Field(default=0.5, ge=0.05, le=1.0)

    data_dir: Path = Path("data")
    database_url: str = ""

    max_prompt_chars: int = Field(default=5000, ge=1, le=5000)
    metrics_window: int = Field(default=5000, ge=100, le=1_000_000)
    default_text_model: str = ""
    default_image_model: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_prompts: bool = False
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    store_prompts: bool = True
    prompt_chars: int = Field(default=200, ge=0, le=5000)
    retention_days: float | None = Field(default=None, gt=0)
    user: str = "anonymous"
    backends: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    allow_custom_backend: bool = False
    admins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_emails: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_domains: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allow_anonymous: bool = False
    kiosk_secret: SecretStr | None = None
    kiosk_rpm: int = Field(default=10, ge=1, le=100_000)
    budget_user_day: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    budget_user_month: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    budget_team_day: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    budget_team_month: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    budget_user_day_requests: int | None = Field(default=None, ge=0)
    budget_user_month_requests: int | None = Field(default=None, ge=0)
    budget_team_day_requests: int | None = Field(default=None, ge=0)
    budget_team_month_requests: int | None = Field(default=None, ge=0)

    redis_url: SecretStr | None = None
    db_pool_size: int = Field(default=5, ge=1, le=200)
    db_max_overflow: int = Field(default=10, ge=0, le=500)
    db_pool_timeout_s: float = Field(default=10.0, gt=0, le=300)
    db_connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    batch_lease_s: float = Field(default=30.0, ge=1, le=3600)

    alert_webhook: SecretStr | None = None
    alert_error_rate: float = Field(default=0.2, gt=0, le=1)
    alert_min_requests: int = Field(default=20, ge=1, le=1_000_000)
    alert_attempts: int = Field(default=5, ge=1, le=20)
    prices: Path | None = None

    @field_validator("backends", mode="before")
    @classmethod
    def _backend_list(cls, value: object) -> object:
        """``team=http://h:8000, ollama=http://127.0.0.1:11434`` or JSON -> {name: url}."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                value = json.loads(text)
            else:
                pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
                if any(len(p) != 2 for p in pairs):
                    raise ValueError("expected name=url pairs separated by commas, or a JSON object")
                value = {k.strip(): v.strip() for k, v in pairs}
        if not isinstance(value, dict):
            raise ValueError("expected name=url pairs or a JSON object")
        out = {}
        for name, url in value.items():
            name, url = str(name).strip().lower(), str(url).strip().rstrip("/")
            if name in {"auto", "demo", "pollinations"} or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"{name!r} cannot name a backend (letters, digits, - and _; not a built-in)")
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"backend {name!r} needs an http(s):// URL, not {url!r}")
            out[name] = url
        return out

    @field_validator("admins", "allowed_emails", "allowed_domains", mode="before")
    @classmethod
    def _email_list(cls, value: object) -> object:
        """``a@x.org, b@y.org`` or ``["a@x.org"]`` -> lower-case entries, blanks dropped."""
        if isinstance(value, str):
            text = value.strip()
            items = json.loads(text) if text.startswith("[") else text.split(",")
        else:
            items = value or []
        if not isinstance(items, list):
            raise ValueError("expected a comma-separated list or a JSON list")
        return [str(i).strip().lower().lstrip("@") for i in items if str(i).strip()]

    @field_validator("budget_user_day", "budget_user_month", "budget_team_day", "budget_team_month",
                     "budget_user_day_requests", "budget_user_month_requests", "budget_team_day_requests",
                     "budget_team_month_requests", mode="before")
    @classmethod
    def _blank_budget_is_none(cls, value: object) -> object:
        """An empty ``BLOSSOM_DASH_BUDGET_*`` is no budget."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        value = value.strip()
        if value.lower() in {"auto", "demo", "pollinations"}:
            return value.lower()
        if value.startswith(("http://", "https://")) and len(value) > len("http://"):
            return value.rstrip("/")
        if value.replace("-", "").replace("_", "").isalnum():
            return value.lower()  # a named backend of ``backends`` (checked when it is built)
        raise ValueError(
            f"backend must be auto, demo, pollinations or an http(s):// URL, not {value!r}"
        )

    @field_validator("prices", mode="before")
    @classmethod
    def _blank_prices_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("prices", mode="after")
    @classmethod
    def _prices_file_reads(cls, value: Path | None) -> Path | None:
        if value is not None:
            load_prices_file(value)  # ValueError naming the file, line or table, and field
        return value

    @field_validator("alert_webhook", mode="after")
    @classmethod
    def _webhook_is_http(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("BLOSSOM_DASH_ALERT_WEBHOOK must be an http(s):// URL")
        return value

    @field_validator("api_key", "redis_url", "alert_webhook", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _backend_is_known(self) -> Settings:
        builtin = {"auto", "demo", "pollinations"}
        if not self.backend.startswith(("http://", "https://")) and self.backend not in builtin | set(self.backends):
            names = ", ".join(sorted(builtin | set(self.backends)))
            raise ValueError(f"backend must be one of {names} or an http(s):// URL, not {self.backend!r}")
        return self

    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL of the usage store.

        Returns:
            ``database_url`` when set, else ``sqlite:///<data_dir>/usage.db``.
        """
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'usage.db').as_posix()}"
