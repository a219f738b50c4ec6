"""Server settings, each declared once with its default, unit and help.

Every setting is read from a ``TUNEDOCK_<NAME>`` environment variable, then from an
optional ``.env`` file in the working directory; command-line flags of ``tunedock serve``
override both.
"""

from __future__ import annotations

import os
import sys
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
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
    log_level: str = Field(default="INFO", description="Log level of the server.")

    @field_validator("model_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part.strip()]
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
