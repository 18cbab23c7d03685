"""Settings, read once from the environment; every process uses the same names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    """Everything the engine reads from its environment, with working defaults."""

    #: Peewee database URL. SQLite (WAL) by default; ``postgresql://…`` for scale.
    database_url: str = "sqlite:///var/invites.db"
    #: Dramatiq broker. ``redis://…`` (default) or ``amqp://…`` for RabbitMQ.
    broker_url: str = "redis://127.0.0.1:6379/0"
    #: Where email goes: a folder of ``.eml`` files (``file://…`` or a path) or ``smtp://…``.
    mail_url: str = "file://var/outbox"
    #: Address the emails come from.
    mail_from: str = "Portal Invites <no-reply@portal.invalid>"
    #: Base of the links in emails (sign-in and set-password pages of the client portal).
    portal_base_url: str = "http://127.0.0.1:8000"
    #: How long a claimed step may stay unfinished before the sweep enqueues it again.
    step_lease_s: int = 300
    #: How often the scheduler runs the sweep.
    sweep_interval_s: int = 10
    #: How many due invitations one claim takes.
    sweep_batch_size: int = 500
    #: Delivery attempts before an invitation is marked failed (SMTP 4xx, connection errors).
    max_delivery_attempts: int = 6
    #: First retry delay; doubles each attempt, with jitter, up to ``retry_max_backoff_ms``.
    retry_min_backoff_ms: int = 15_000
    retry_max_backoff_ms: int = 600_000
    #: Socket timeout of every SMTP operation.
    smtp_timeout_s: int = 30
    #: Time limit of one workflow step (must exceed the SMTP timeouts of one conversation).
    step_time_limit_ms: int = 120_000
    #: Lifetime of a password-reset link.
    reset_token_ttl_s: int = 3600
    #: How long an idempotency key is remembered.
    idempotency_ttl_s: int = 86_400
    #: Dramatiq's Redis maintenance chance (per million calls); see docs/guarantees.md.
    redis_maintenance_chance: int = 20_000
    #: How long dead-lettered messages are kept (both brokers). RabbitMQ fixes it when the
    #: queue is first declared: every process must use the same value (docs/deploy.md).
    dead_message_ttl_ms: int = 7 * 86_400_000
    #: The RabbitMQ server's ``consumer_timeout`` (its default, 30 min). A worker refuses to start
    #: when a time limit or retry delay of ours is not below it (docs/deploy.md).
    rabbitmq_consumer_timeout_ms: int = 1_800_000
    #: Log lines as JSON (``json``) or text (``text``).
    log_format: str = "text"
    #: ``1``: workers run by the ``dramatiq`` command add Dramatiq's Prometheus middleware
    #: (its exposition server: ``dramatiq_prom_host``/``_port``/``_db``; docs/operations.md).
    worker_prometheus: bool = False
    #: The HTTP API (``invites api``): the address it binds (local only by default), its port
    #: (``portal_base_url``'s default points at it) and how many uvicorn worker processes serve it.
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = 1
    #: Tests and demos only: a file holding seconds to add to the wall clock in every process.
    clock_offset_file: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        d = cls()
        return cls(
            database_url=env.get("DATABASE_URL") or d.database_url,
            broker_url=env.get("BROKER_URL") or d.broker_url,
            mail_url=env.get("MAIL_URL") or d.mail_url,
            mail_from=env.get("MAIL_FROM") or d.mail_from,
            portal_base_url=(env.get("PORTAL_BASE_URL") or d.portal_base_url).rstrip("/"),
            step_lease_s=_int(env, "STEP_LEASE_S", d.step_lease_s),
            sweep_interval_s=_int(env, "SWEEP_INTERVAL_S", d.sweep_interval_s),
            sweep_batch_size=_int(env, "SWEEP_BATCH_SIZE", d.sweep_batch_size),
            max_delivery_attempts=_int(env, "MAX_DELIVERY_ATTEMPTS", d.max_delivery_attempts),
            retry_min_backoff_ms=_int(env, "RETRY_MIN_BACKOFF_MS", d.retry_min_backoff_ms),
            retry_max_backoff_ms=_int(env, "RETRY_MAX_BACKOFF_MS", d.retry_max_backoff_ms),
            smtp_timeout_s=_int(env, "SMTP_TIMEOUT_S", d.smtp_timeout_s),
            step_time_limit_ms=_int(env, "STEP_TIME_LIMIT_MS", d.step_time_limit_ms),
            reset_token_ttl_s=_int(env, "RESET_TOKEN_TTL_S", d.reset_token_ttl_s),
            idempotency_ttl_s=_int(env, "IDEMPOTENCY_TTL_S", d.idempotency_ttl_s),
            redis_maintenance_chance=_int(
                env, "REDIS_MAINTENANCE_CHANCE", d.redis_maintenance_chance
            ),
            dead_message_ttl_ms=_int(env, "DEAD_MESSAGE_TTL_MS", d.dead_message_ttl_ms),
            rabbitmq_consumer_timeout_ms=_int(
                env, "RABBITMQ_CONSUMER_TIMEOUT_MS", d.rabbitmq_consumer_timeout_ms
            ),
            log_format=env.get("LOG_FORMAT") or d.log_format,
            worker_prometheus=env.get("WORKER_PROMETHEUS", "").lower() in ("1", "true", "yes", "on"),
            api_host=env.get("API_HOST") or d.api_host,
            api_port=_int(env, "API_PORT", d.api_port),
            api_workers=_int(env, "API_WORKERS", d.api_workers),
            clock_offset_file=env.get("CLOCK_OFFSET_FILE") or d.clock_offset_file,
        )

    def outbox_dir(self) -> Path | None:
        """The folder of ``.eml`` files when ``mail_url`` is not SMTP."""
        if self.mail_url.startswith(("smtp://", "smtp+starttls://", "smtps://")):
            return None
        return Path(self.mail_url.removeprefix("file://"))


_current: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    global _current
    if _current is None:
        _current = Settings.from_env()
    return _current


def configure(settings: Settings) -> Settings:
    """Replace the process's settings (entry points and tests)."""
    global _current
    _current = settings
    return settings
