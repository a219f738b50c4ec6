"""Server settings, each declared once with its default, unit and help.

Every setting is read from a ``TUNEDOCK_<NAME>`` environment variable, then from an
optional ``.env`` file in the working directory; command-line flags of ``tunedock serve``
override both.
"""

from __future__ import annotations

import os
import sys
from email.utils import parseaddr
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_PORT = 8040


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEDOCK_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path("~/.tunedock"),
        description="Data directory: database, replica logs, client config and mail outbox.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store; default: SQLite file tunedock.db in the home.",
    )
    database_pool_size: int = Field(default=5, ge=1, description="Connections kept open to PostgreSQL.")
    database_max_overflow: int = Field(
        default=10, ge=0, description="Extra PostgreSQL connections allowed under load beyond the pool size."
    )
    database_pool_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a request waits for a database connection before a 503."
    )
    host: str = Field(default="127.0.0.1", description="Address the server listens on.")
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="TCP port of the server.")
    public_url: str | None = Field(
        default=None,
        description="Base URL that clients use to reach the server, shown in endpoint "
        "snippets; default: http://<host>:<port>.",
    )
    model_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Directories that models may be registered from, separated by the OS "
        "path separator; default: the home and the demo models.",
    )
    admin_username: str = Field(default="admin", description="Username of the first admin.")
    admin_password: str | None = Field(
        default=None,
        description="Password of the first admin; generated and printed once when unset.",
    )
    admin_api_key: str | None = Field(
        default=None,
        description="Becomes the first admin's first API key (both scopes) when set; "
        "otherwise one is generated and printed once.",
    )
    admin_email: str = Field(default="admin@localhost", description="Email of the first admin.")
    replica_start_timeout: float = Field(
        default=600.0, gt=0, description="Seconds a replica may take to load before the deploy fails."
    )
    replica_python: str = Field(
        default=sys.executable, description="Python interpreter that runs model-server processes."
    )
    rate_limit_per_key: int = Field(
        default=0, ge=0, description="Inference requests per minute for each API key; 0 turns the limit off."
    )
    rate_limit_per_model: int = Field(
        default=0, ge=0, description="Inference requests per minute for each model; 0 turns the limit off."
    )
    sign_in_attempts: int = Field(
        default=5, ge=1, description="Failed sign-ins per username, and per client address, within "
        "sign_in_window before further attempts get 429."
    )
    sign_in_window: float = Field(default=300.0, gt=0, description="Seconds over which failed sign-ins count.")
    supervise_interval: float = Field(
        default=2.0, gt=0, description="Seconds between two health checks of every live replica."
    )
    crash_limit: int = Field(
        default=3, ge=1, description="Replica crashes within crash_window that un-deploy a deployment."
    )
    crash_window: float = Field(default=600.0, gt=0, description="Seconds over which crashes are counted.")
    drain_timeout: float = Field(
        default=60.0, ge=0, description="Seconds that in-flight requests get to finish before replicas stop."
    )
    notify_poll_interval: float = Field(
        default=1.0, gt=0, description="Seconds between two looks at the notification outbox."
    )
    min_idle_undeploy_after: float = Field(
        default=60.0, ge=0, description="The shortest scaling.idle_undeploy_after, in seconds, that a deploy may set."
    )
    idle_warning_lead: float = Field(
        default=600.0, gt=0, description="Seconds before an idle un-deploy that the warning email is sent "
        "(at most half the idle time)."
    )
    log_level: str = Field(default="INFO", description="Log level of the server.")
    console_url: str | None = Field(
        default=None,
        description="Base URL of the web console used in links inside notifications; "
        "default: the public URL.",
    )
    smtp_host: str | None = Field(
        default=None,
        description="SMTP server that sends notification emails. When unset, emails are "
        "written as .eml files to the outbox folder in the home.",
    )
    smtp_port: int = Field(default=587, ge=1, le=65535, description="TCP port of the SMTP server.")
    smtp_security: Literal["none", "starttls", "tls"] = Field(
        default="starttls",
        description="Encryption of the SMTP connection: none, starttls (upgrade a plain "
        "connection, usually port 587) or tls (TLS from the first byte, usually port 465).",
    )
    smtp_username: str | None = Field(
        default=None, description="User name for SMTP login. No login is attempted when unset."
    )
    smtp_password: SecretStr | None = Field(default=None, description="Password for SMTP login.")
    smtp_password_file: Path | None = Field(
        default=None,
        description="File containing the SMTP password, read at each delivery with surrounding "
        "whitespace removed. Set this or the SMTP password, not both.",
    )
    smtp_from: str = Field(
        default="Tunedock <tunedock@localhost>", description="From header of notification emails."
    )
    smtp_timeout: float = Field(
        default=30.0, gt=0, description="Seconds each SMTP network operation may take."
    )
    smtp_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the certificate authorities trusted for the SMTP server's "
        "certificate; default: the system's trust store.",
    )
    notify_recipients: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Email addresses that receive every notification, separated by commas.",
    )
    notify_message_id_domain: str = Field(
        default="tunedock.local",
        description="Domain part of the Message-ID header of notification emails.",
    )
    notify_max_attempts: int = Field(
        default=6, ge=1, description="Delivery attempts of one notification before it fails for good."
    )
    notify_retry_base_seconds: float = Field(
        default=5.0, gt=0, description="Seconds before the first retry. Each later retry waits twice as long."
    )
    notify_retry_max_seconds: float = Field(
        default=3600.0, gt=0, description="Maximum wait in seconds between two delivery attempts."
    )
    webhook_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a webhook request may take before it counts as a failed attempt."
    )

    @field_validator("model_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part.strip()]
        return value

    @field_validator("notify_recipients", mode="before")
    @classmethod
    def _split_recipients(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list):
            return value
        addresses = [str(part).strip() for part in value if str(part).strip()]
        for address in addresses:
            if "@" not in parseaddr(address)[1]:
                raise ValueError(f"invalid email address {address!r} in the notification recipients")
        return addresses

    @field_validator("smtp_password_file")
    @classmethod
    def _check_one_password(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("smtp_password") is not None:
            raise ValueError("set the SMTP password or the SMTP password file, not both")
        return value

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'tunedock.db'}"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    @property
    def console_base_url(self) -> str:
        if self.console_url:
            return self.console_url.rstrip("/")
        return self.base_url

    @property
    def allowed_model_roots(self) -> list[Path]:
        if self.model_roots:
            return [root.expanduser().resolve() for root in self.model_roots]
        # Imported here so that reading settings does not import the demo package.
        from tunedock.demo.registry import demo_models_root, minilm_model_path

        return [self.home_dir, demo_models_root().resolve(), minilm_model_path().resolve()]

    @property
    def replica_logs_dir(self) -> Path:
        return self.home_dir / "logs" / "replicas"

    @property
    def client_config_path(self) -> Path:
        return self.home_dir / "client.json"
