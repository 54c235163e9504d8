"""Worker settings (JOBLOG_* variables)."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field

from services.contracts.settings import CommonSettings

SAMPLE_CSV = Path(__file__).parent / "data" / "sample_open_orders.csv"


def default_worker_id() -> str:
    host = socket.gethostname().split(".")[0][:40] or "worker"
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in f"{host}-{os.getpid()}")


class WorkerSettings(CommonSettings):
    """What the sync worker needs."""

    worker_id: str = Field(default_factory=default_worker_id, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    orders_source: Literal["csv"] = Field("csv", description="Where SyncOpenOrdersJob reads orders.")
    orders_csv_path: Path = Field(SAMPLE_CSV, description="CSV file of open orders (source csv).")
    sync_batch_size: int = Field(2000, ge=1, le=50_000, description="Orders upserted per transaction.")
    heartbeat_interval: float = Field(5.0, gt=0, le=300, description="Seconds between worker heartbeats.")
    shutdown_grace: float = Field(30.0, ge=0, description="Seconds running jobs get to finish on SIGTERM.")
    outbox_batch_size: int = Field(500, ge=1, le=10_000)
