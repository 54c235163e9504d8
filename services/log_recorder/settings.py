"""Recorder settings (JOBLOG_* variables)."""
from __future__ import annotations

import json
import re

from pydantic import Field, field_validator

from services.contracts.events import TOKEN_PATTERN
from services.contracts.settings import CommonSettings


class RecorderSettings(CommonSettings):
    """What the log recorder needs."""

    recorder_consumer: str = Field("log_recorder", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Durable consumer name.")
    recorder_batch_size: int = Field(500, ge=1, le=10_000, description="Events applied per transaction.")
    recorder_ack_wait: float = Field(
        30.0, ge=1, le=3600,
        description="Seconds before an unacknowledged event goes to another recorder (after a crash, say).",
    )
    max_event_bytes: int = Field(256 * 1024, ge=1024, description="Larger messages are dead-lettered.")
    recorder_max_deliveries: int = Field(
        10, ge=2, le=1000,
        description="A message that failed this many deliveries for an unexpected reason is dead-lettered.",
    )
    worker_timeout: float = Field(30.0, gt=0, description="Seconds without heartbeat before a worker is lost.")

    # Retention (docs/retention.md): deletions in chunks, purges, the optional automatic policy, bounded bookkeeping.
    delete_chunk: int = Field(
        1000, ge=1, le=100_000,
        description="Runs removed per transaction while a deletion proceeds (the projection keeps moving between chunks).",
    )
    retention_days: float | None = Field(
        None, gt=0, description="Delete finished runs created more than this many days ago (unset: keep them; the default).",
    )
    retention_failed_days: float | None = Field(
        None, gt=0, description="Failed runs' retention in days, if it differs (e.g. keep failures longer).",
    )
    retention_jobs: str = Field(
        "", description='Per-job retention in days, JSON, e.g. {"sync_open_orders": 90}; these jobs ignore the two above.',
    )
    retention_interval: float = Field(
        3600.0, ge=10, le=7 * 24 * 3600, description="Seconds between two applications of the retention policy.",
    )
    tombstone_days: float = Field(
        7.0, gt=0, description="Days a deleted run's tombstone is kept after its messages were purged from the stream.",
    )
    dead_letter_days: float = Field(30.0, gt=0, description="Days dead letters are kept.")
    dead_letter_payload_bytes: int = Field(
        64 * 1024, ge=0, le=1024 * 1024, description="Bytes of a dead letter's payload kept (a prefix; its size is kept too).",
    )

    @field_validator("retention_jobs")
    @classmethod
    def _job_days(cls, value: str) -> str:
        job_days(value)
        return value

    @property
    def retention_per_job(self) -> dict[str, float]:
        return job_days(self.retention_jobs)

    @property
    def retention_on(self) -> bool:
        return bool(self.retention_days or self.retention_failed_days or self.retention_per_job)


def job_days(text: str) -> dict[str, float]:
    """{job: days} from JOBLOG_RETENTION_JOBS; raises ValueError naming the problem."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(value, dict):
        raise ValueError('expected an object of job id -> days, e.g. {"sync_open_orders": 90}')
    for job, days in value.items():
        if not re.fullmatch(TOKEN_PATTERN, job):
            raise ValueError(f"bad job id {job!r}")
        if isinstance(days, bool) or not isinstance(days, (int, float)) or not days > 0:
            raise ValueError(f"days of {job} must be a number above 0, got {days!r}")
    return {job: float(days) for job, days in value.items()}
