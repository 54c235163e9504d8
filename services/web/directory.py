"""Workers online, from their heartbeats on the stream (the web keeps the latest of each)."""
from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

import structlog
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from pydantic import ValidationError

from services.contracts import JobDescription, Subjects, WorkerHeartbeat
from services.contracts.events import utcnow

log = structlog.get_logger("joblog.web")


class WorkerDirectory:
    """The latest heartbeat of every worker, and what follows from them."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timedelta(seconds=timeout)
        self.beats: dict[str, WorkerHeartbeat] = {}

    def record(self, beat: WorkerHeartbeat) -> None:
        known = self.beats.get(beat.worker_id)
        if known is None or beat.occurred_at >= known.occurred_at:
            self.beats[beat.worker_id] = beat

    def online(self, now: datetime | None = None) -> list[WorkerHeartbeat]:
        now = now or utcnow()
        return sorted((b for b in self.beats.values() if now - b.occurred_at <= self.timeout), key=lambda b: b.worker_id)

    def lost(self, now: datetime | None = None) -> list[WorkerHeartbeat]:
        now = now or utcnow()
        return sorted((b for b in self.beats.values() if now - b.occurred_at > self.timeout), key=lambda b: b.worker_id)

    def is_alive(self, worker_id: str | None, now: datetime | None = None) -> bool | None:
        """True/False if we know the worker, None if we have never heard of it."""
        beat = self.beats.get(worker_id or "")
        if beat is None:
            return None
        return (now or utcnow()) - beat.occurred_at <= self.timeout

    def jobs(self) -> list[JobDescription]:
        found: dict[str, JobDescription] = {}
        for beat in sorted(self.beats.values(), key=lambda b: b.occurred_at):
            for job in beat.jobs:
                found[job.name] = job
        return [found[name] for name in sorted(found)]

    async def follow(self, js: JetStreamContext, subjects: Subjects, stopping: asyncio.Event) -> None:
        """Read the last heartbeat per worker, then every new one, until stopping."""
        while not stopping.is_set():
            try:
                sub = await js.subscribe(
                    subjects.heartbeats, stream=subjects.heartbeat_stream, ordered_consumer=True,
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                )
                while not stopping.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        message = await sub.next_msg(timeout=1)
                        with contextlib.suppress(ValidationError):
                            self.record(WorkerHeartbeat.model_validate_json(message.data))
            except Exception as error:  # NATS away or stream missing: keep trying
                log.warning("following heartbeats failed", error=repr(error))
                await asyncio.sleep(2)
