"""Recorder settings (JOBLOG_* variables)."""
from __future__ import annotations

from pydantic import Field

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
