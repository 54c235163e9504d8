"""Settings every service shares: where NATS and Postgres are, and how to name the streams.

Read from JOBLOG_* environment variables by pydantic-settings, never at import time.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.contracts.redaction import redact
from services.contracts.subjects import Subjects

ENV_PREFIX = "JOBLOG_"


class CommonSettings(BaseSettings):
    """Connection and naming settings shared by the worker, the recorder and the web."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server(s), comma-separated.")
    nats_user: str | None = Field(None, min_length=1, max_length=200, description="NATS user (with JOBLOG_NATS_PASSWORD).")
    nats_password: SecretStr | None = Field(None, description="Password of JOBLOG_NATS_USER.")
    nats_token: SecretStr | None = Field(None, description="NATS authentication token.")
    nats_creds: Path | None = Field(None, description="NATS .creds file (JWT and NKey seed).")
    nats_nkey_seed: Path | None = Field(None, description="File holding an NKey seed (SU...).")
    nats_tls_ca: Path | None = Field(None, description="CA certificate that signed the NATS server's TLS certificate.")
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/joblog", description="Postgres DSN (asyncpg)."
    )
    stream: str = Field("JOBS", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="JetStream stream of run events.")
    subject_prefix: str = Field("joblog", pattern=r"^[a-z0-9_-]{1,32}$", description="First token of every subject.")
    stream_replicas: int = Field(1, ge=1, le=5, description="Replicas of each stream (3 on a NATS cluster).")
    timezone: str = Field("UTC", description="Time zone of run names and page timestamps.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, value: str) -> str:
        for url in value.split(","):
            if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"expected nats://host:port, got {url.strip()!r}")
        return value

    @field_validator("nats_creds", "nats_nkey_seed", "nats_tls_ca")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        return readable(value) if value is not None else None

    @field_validator("nats_password")
    @classmethod
    def _password_needs_user(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and not info.data.get("nats_user"):
            raise ValueError("set JOBLOG_NATS_USER too")
        return value

    @field_validator("database_url")
    @classmethod
    def _pg_scheme(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected postgresql://user@host:port/database")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @property
    def subjects(self) -> Subjects:
        return Subjects(prefix=self.subject_prefix, stream=self.stream)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",")]


def readable(path: Path) -> Path:
    """path, if this process can read it; else a ValueError naming why (for a settings validator)."""
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    return path


S = TypeVar("S", bound=BaseSettings)


def describe_error(error: ValidationError) -> str:
    """One line naming the first bad variable and why."""
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "?"
    value = first.get("input")
    # A mistyped DSN or URL is shown without its password.
    shown = "" if value is None or isinstance(value, dict) else f" (got {redact(str(value))[:80]!r})"
    return f"invalid setting {ENV_PREFIX}{field.upper()}: {first['msg']}{shown}"


# Where a running `joblog dev` says its servers are (joblog/dev.py writes it, relative to the checkout).
DEV_STACK_FILE = Path(".joblog") / "stack.env"


def dev_stack_file(directory: Path | None = None) -> Path | None:
    """The stack file of a `joblog dev` running in this checkout; None if none runs (a stale file is ignored)."""
    path = (directory or Path.cwd()) / DEV_STACK_FILE
    try:
        text = path.read_text()
    except OSError:
        return None
    found = re.search(r"^JOBLOG_DEV_PID=(\d+)$", text, re.MULTILINE)
    if found is None:
        return None
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return path


def load_settings(cls: type[S]) -> S:
    """Build settings from the environment, or stop the process with one clear line.

    In a checkout where `joblog dev` runs, its servers are the defaults: JOBLOG_* variables win."""
    try:
        return cls(_env_file=dev_stack_file())  # type: ignore[call-arg]
    except ValidationError as error:
        print(f"joblog: {describe_error(error)}", file=sys.stderr)
        raise SystemExit(2) from None
