"""One settings object, read once from the environment (prefix COLLECTFLOW_) or `.env`."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Without PREFECT_API_URL (the demo, a laptop, CI) each command starts Prefect's ephemeral API
# server, whose cold start can exceed Prefect's 20 s default on a loaded machine ("Timed out
# while attempting to connect to ephemeral Prefect API server"). Set before Prefect is imported;
# a value the user set wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


class Settings(BaseSettings):
    """Where Collectflow keeps its data and how it sends mail.

    Without an SMTP host, messages are written to a Maildir (`outbox`) that any mail client
    opens. The SMTP password is a SecretStr: never printed, never logged; the database URL's
    password is masked wherever the URL is shown (`safe_url`), the settings' repr included, and
    a setting refused is named without its value.
    """

    model_config = SettingsConfigDict(
        env_prefix="COLLECTFLOW_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = "sqlite:///collectflow.db"
    policy: Path = PROJECT_ROOT / "policy.yaml"
    templates: Path = PROJECT_ROOT / "templates"
    outbox: Path = Path("outbox")
    timezone: str = "UTC"
    run_lock_wait: float = 30.0  # seconds a daily run waits for another one of the same database

    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_tls: bool = False
    smtp_ca_file: Path | None = None
    smtp_timeout: float = 30.0
    smtp_concurrency: int = 4
    smtp_rate_per_second: float | None = None

    delivery_lease_seconds: float = 900.0
    delivery_retry_seconds: float = 300.0
    delivery_retry_cap_seconds: float = 6 * 3600.0

    suspension_webhook_url: str | None = None
    suspension_webhook_secret: SecretStr | None = None
    webhook_attempts: int = 3
    webhook_timeout: float = 10.0
    webhook_backoff: float = 1.0
    exports: Path = Path("exports")

    smtp_from: str = "Accounts Receivable <billing@example.com>"
    reply_to: str | None = None
    unsubscribe_mailto: str | None = None
    # Retired (the one-click URL is the customer page's, below): set, delivery refuses to start
    # and says so (mail.compose.refuse_retired_settings), rather than ignore them silently.
    unsubscribe_url: str | None = None
    unsubscribe_secret: SecretStr | None = None

    # The customer page (flows/feedback): the keys that sign answer links (comma-separated,
    # the first signs, all verify) and the page's public base URL.
    link_secret: SecretStr | None = None
    public_url: str | None = None

    @field_validator("database_url")
    @classmethod
    def _a_database_url(cls, value: str) -> str:
        try:
            make_url(value)
        except ArgumentError:
            raise ValueError(
                "not a database URL (like sqlite:///collectflow.db or postgresql://user@host/db)"
            ) from None
        return value

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, safe_url(value) if name == "database_url" else value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA timezone {value!r}") from exc
        return value


def safe_url(url: str) -> str:
    """A database URL fit to print: its password, if any, shown as `***`."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a database URL)"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests call `get_settings.cache_clear()` after monkeypatching)."""
    return Settings()
