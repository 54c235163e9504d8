"""Worker settings (JOBLOG_* variables)."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from services.contracts.schedules import parse_schedule
from services.contracts.settings import CommonSettings, readable

SAMPLE_CSV = Path(__file__).parent / "data" / "sample_open_orders.csv"

# Columns named like SourceOrder's fields; alias an ERP's own names with AS.
DEFAULT_ORDERS_QUERY = (
    "SELECT order_number, customer_code, customer_name, status, order_date, requested_ship_date, "
    "warehouse, currency, total_amount, line_count, updated_at FROM open_orders ORDER BY order_number"
)


def default_worker_id() -> str:
    host = socket.gethostname().split(".")[0][:40] or "worker"
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in f"{host}-{os.getpid()}")


class WorkerSettings(CommonSettings):
    """What the sync worker needs."""

    worker_id: str = Field(default_factory=default_worker_id, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    orders_source: Literal["csv", "postgres", "http"] = Field("csv", description="Where SyncOpenOrdersJob reads orders.")
    orders_csv_path: Path = Field(SAMPLE_CSV, description="CSV file of open orders (source csv).")
    orders_dsn: SecretStr | None = Field(None, validate_default=True, description="The ERP's Postgres DSN (source postgres).")
    orders_query: str = Field(DEFAULT_ORDERS_QUERY, min_length=1, description="SELECT returning the open orders (source postgres).")
    orders_url: str | None = Field(None, validate_default=True, description="First page of the orders API (source http).")
    orders_http_token: SecretStr | None = Field(None, description="Bearer token for the orders API, if it needs one.")
    orders_http_timeout: float = Field(30.0, gt=0, le=600, description="Seconds per HTTP request to the orders API.")
    orders_http_retries: int = Field(4, ge=0, le=20, description="Retries of one page after a 5xx or connection error.")
    orders_http_backoff: float = Field(0.5, gt=0, le=60, description="First retry delay in seconds; doubles per retry.")
    sync_batch_size: int = Field(2000, ge=1, le=50_000, description="Orders upserted per transaction.")
    sync_progress_interval: float = Field(0.5, ge=0, le=60, description="Seconds between progress updates of a sync.")
    heartbeat_interval: float = Field(5.0, gt=0, le=300, description="Seconds between worker heartbeats.")
    shutdown_grace: float = Field(30.0, ge=0, description="Seconds running jobs get to finish on SIGTERM.")
    cancel_grace: float = Field(5.0, ge=0, le=3600, description="Seconds a cancelled run gets to stop at its next step before its task is cancelled.")
    outbox_batch_size: int = Field(500, ge=1, le=10_000)
    worker_max_runs: int = Field(8, ge=1, le=200, description="Runs one worker executes at once; more triggers wait in the queue.")
    schedules: dict[str, str] = Field(default_factory=dict, description="Job id -> cron expression or 'every <n><s|m|h|d>'.")
    job_concurrency: dict[str, int] = Field(default_factory=dict, description="Job id -> max concurrent runs (overrides the job's default).")

    @field_validator("orders_dsn")
    @classmethod
    def _dsn_for_postgres(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if info.data.get("orders_source") == "postgres":
            if value is None:
                raise ValueError("required when JOBLOG_ORDERS_SOURCE=postgres")
            if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
                raise ValueError("expected postgresql://user@host:port/database")
        return value

    @field_validator("orders_url")
    @classmethod
    def _url_for_http(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("orders_source") == "http":
            if not value:
                raise ValueError("required when JOBLOG_ORDERS_SOURCE=http")
            if not value.startswith(("http://", "https://")):
                raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("orders_csv_path")
    @classmethod
    def _readable_csv(cls, value: Path, info: ValidationInfo) -> Path:
        return readable(value) if info.data.get("orders_source", "csv") == "csv" else value

    @field_validator("schedules")
    @classmethod
    def _valid_schedules(cls, value: dict[str, str]) -> dict[str, str]:
        for job, expression in value.items():
            try:
                parse_schedule(expression)
            except ValueError as error:
                raise ValueError(f"{job}: {error}") from None
        return value

    @field_validator("job_concurrency")
    @classmethod
    def _positive_concurrency(cls, value: dict[str, int]) -> dict[str, int]:
        for job, limit in value.items():
            if limit < 1:
                raise ValueError(f"{job}: max concurrency must be at least 1")
        return value

    def unknown_jobs(self, known: list[str]) -> str | None:
        """The first setting that names a job this worker does not have, as one line; None if all are known.

        Checked where the jobs are registered (the worker's start), so these settings stay plain data."""
        for variable, by_job in (("JOBLOG_SCHEDULES", self.schedules), ("JOBLOG_JOB_CONCURRENCY", self.job_concurrency)):
            unknown = sorted(set(by_job) - set(known))
            if unknown:
                return f"invalid setting {variable}: unknown job {unknown[0]!r}; known: {', '.join(known)}"
        return None
