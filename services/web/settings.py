"""Web settings (JOBLOG_* variables)."""
from __future__ import annotations

from pydantic import Field, SecretStr

from services.contracts.settings import CommonSettings


class WebSettings(CommonSettings):
    """What the web service needs."""

    web_host: str = Field("127.0.0.1", description="Address the web listens on (0.0.0.0 in containers).")
    web_port: int = Field(8080, ge=1, le=65535, description="Port of the web UI and API.")
    admin_password: SecretStr | None = Field(None, description="If set, every page but health needs it (HTTP Basic, user admin).")
    worker_timeout: float = Field(30.0, gt=0, description="Seconds without heartbeat before a worker counts as lost.")
    page_size: int = Field(50, ge=5, le=500, description="Runs per index page.")
