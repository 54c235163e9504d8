"""Web settings (JOBLOG_* variables)."""
from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from services.contracts.settings import CommonSettings

PASSWORD_HASH_HELP = "pbkdf2_sha256$<iterations>$<salt>$<base64 hash>"


class WebSettings(CommonSettings):
    """What the web service needs."""

    web_host: str = Field("127.0.0.1", description="Address the web listens on (0.0.0.0 in containers).")
    web_port: int = Field(8080, ge=1, le=65535, description="Port of the web UI and API.")
    admin_password: SecretStr | None = Field(None, description="If set, every page but health needs it (HTTP Basic, user admin).")
    admin_password_hash: SecretStr | None = Field(
        None, description=f"Instead of the password itself: {PASSWORD_HASH_HELP} (make one with `python -m services.web.passwords`).",
    )
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

    @property
    def auth_enabled(self) -> bool:
        return self.admin_password is not None or self.admin_password_hash is not None
