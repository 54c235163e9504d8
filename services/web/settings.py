"""Web settings (JOBLOG_* variables)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, FilePath, SecretStr, ValidationInfo, field_validator

from services.contracts.settings import CommonSettings

PASSWORD_HASH_HELP = "pbkdf2_sha256$<iterations>$<salt>$<base64 hash>"


class WebSettings(CommonSettings):
    """What the web service needs."""

    web_host: str = Field("127.0.0.1", description="Address the web listens on (0.0.0.0 in containers).")
    web_port: int = Field(8080, ge=1, le=65535, description="Port of the web UI and API.")
    web_processes: int = Field(
        1, ge=1, le=64,
        description="Web processes serving the one port (SO_REUSEPORT), under a supervisor when more than 1: about one per core.",
    )
    admin_password: SecretStr | None = Field(None, description="If set, every page but health needs it (HTTP Basic, user admin).")
    admin_password_hash: SecretStr | None = Field(
        None, description=f"Instead of the password itself: {PASSWORD_HASH_HELP} (make one with `python -m services.web.passwords`).",
    )
    web_users_file: Path | None = Field(
        None, description="Accounts, one name:role:hash a line (role viewer or operator; # comments); with or instead of admin.",
    )
    web_login_failures: int = Field(
        10, ge=1, le=1_000_000, description="Failed sign-ins one client address may make per minute before it gets 429.",
    )
    web_open: bool = Field(
        False, validate_default=True,
        description="Serve the pages without any password on a non-loopback address (refused unless set).",
    )
    web_tls_cert: FilePath | None = Field(None, description="PEM certificate (chain): the web serves HTTPS itself.")
    web_tls_key: FilePath | None = Field(None, validate_default=True, description="PEM private key of JOBLOG_WEB_TLS_CERT.")
    worker_timeout: float = Field(30.0, gt=0, description="Seconds without heartbeat before a worker counts as lost.")
    page_size: int = Field(50, ge=5, le=500, description="Runs per index page.")
    page_cache_size: int = Field(
        512, ge=0, le=100_000, description="Rendered index and run pages kept until the projection changes (0: none)."
    )
    recorder_consumer: str = Field("log_recorder", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The recorder's durable consumer, for the Jobs Monitor.")

    @field_validator("admin_password_hash")
    @classmethod
    def _readable_hash(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from services.web.passwords import parse_hash

            parse_hash(value.get_secret_value())
        return value

    @field_validator("web_users_file")
    @classmethod
    def _readable_users(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            from services.web.accounts import read_users_file

            names = {account.name for account in read_users_file(value)}  # a UsersFileError (a ValueError) names the line
            if "admin" in names and (info.data.get("admin_password") or info.data.get("admin_password_hash")):
                raise ValueError("admin is in the users file and also set by JOBLOG_ADMIN_PASSWORD(_HASH); keep one")
        return value

    @field_validator("web_open")
    @classmethod
    def _no_open_web_by_accident(cls, value: bool, info: ValidationInfo) -> bool:
        host = info.data.get("web_host", "127.0.0.1")
        signed = any(info.data.get(name) for name in ("admin_password", "admin_password_hash", "web_users_file"))
        if not value and not signed and host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(
                f"the web would listen on {host} with no password: set JOBLOG_ADMIN_PASSWORD(_HASH) or "
                "JOBLOG_WEB_USERS_FILE, or JOBLOG_WEB_OPEN=true to serve it open on purpose"
            )
        return value

    @field_validator("web_tls_key")
    @classmethod
    def _cert_and_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "web_tls_cert" not in info.data:
            return value  # the certificate itself was refused; that error is the one to show
        if (value is None) != (info.data["web_tls_cert"] is None):
            raise ValueError("set both JOBLOG_WEB_TLS_CERT and JOBLOG_WEB_TLS_KEY, or neither")
        return value

    @property
    def auth_enabled(self) -> bool:
        return self.admin_password is not None or self.admin_password_hash is not None or self.web_users_file is not None

    @property
    def tls_enabled(self) -> bool:
        return self.web_tls_cert is not None
