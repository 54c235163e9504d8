"""Workers online, stopped and lost, from their heartbeats and stops on the stream.

The web keeps, per worker id, the newest incarnation (process) it heard of: its last heartbeat
and whether it stopped cleanly. Ages are measured on JetStream's clock (services.contracts.liveness),
the same the recorder judges "lost" by, never on the worker's own.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from services.contracts import JobDescription, Subjects, WorkerHeartbeat, WorkerStopped
from services.contracts.liveness import JetStreamClock, WorkerEvent, follow_workers

WorkerState = Literal["online", "lost", "stopped"]


@dataclass
class Worker:
    """What the web knows of one worker id: its newest incarnation."""

    beat: WorkerHeartbeat | None  # its last heartbeat (None: we only saw it stop)
    seen_at: datetime  # JetStream's timestamp of the last event of this incarnation
    stop: WorkerStopped | None = None

    @property
    def incarnation(self) -> uuid.UUID | None:
        return self.stop.incarnation if self.stop is not None else self.beat.incarnation if self.beat else None


class WorkerDirectory:
    """The newest incarnation of every worker id, and what follows from them."""

    def __init__(self, timeout: float, clock: JetStreamClock | None = None) -> None:
        self.timeout = timedelta(seconds=timeout)
        self.clock = clock or JetStreamClock()
        self.workers: dict[str, Worker] = {}

    def record(self, event: WorkerEvent, seen_at: datetime) -> None:
        """One heartbeat or stop, stored by JetStream at seen_at (events come in stream order)."""
        self.clock.observe(seen_at)
        known = self.workers.get(event.worker_id)
        if isinstance(event, WorkerStopped):
            self._record_stop(known, event, seen_at)
        elif known is None:
            self.workers[event.worker_id] = Worker(event, seen_at)
        elif known.incarnation == event.incarnation:
            if known.stop is None and (known.beat is None or seen_at >= known.seen_at):
                known.beat, known.seen_at = event, seen_at  # a stopped incarnation stays stopped
        elif known.stop is not None or known.beat is None or event.started_at >= known.beat.started_at:
            self.workers[event.worker_id] = Worker(event, seen_at)  # a newer process under this id
        # else: a late heartbeat of an older incarnation; the newer one is kept

    def _record_stop(self, known: Worker | None, stop: WorkerStopped, seen_at: datetime) -> None:
        if known is None:
            self.workers[stop.worker_id] = Worker(None, seen_at, stop)
        elif known.incarnation == stop.incarnation or known.incarnation is None:
            known.stop, known.seen_at = stop, max(seen_at, known.seen_at)
        elif known.stop is not None:
            self.workers[stop.worker_id] = Worker(None, seen_at, stop)  # the later of two stops
        # else: an older process stopped while a newer one runs under the same id: keep the newer

    def state(self, worker_id: str | None, now: datetime | None = None) -> WorkerState | None:
        """online, lost (no heartbeat within the timeout) or stopped; None if never heard of."""
        worker = self.workers.get(worker_id or "")
        if worker is None:
            return None
        if worker.stop is not None:
            return "stopped"
        return "online" if (now or self.clock.now()) - worker.seen_at <= self.timeout else "lost"

    def _beats(self, wanted: WorkerState, now: datetime | None) -> list[WorkerHeartbeat]:
        now = now or self.clock.now()
        return sorted(
            (w.beat for worker_id, w in self.workers.items() if w.beat is not None and self.state(worker_id, now) == wanted),
            key=lambda b: b.worker_id,
        )

    def online(self, now: datetime | None = None) -> list[WorkerHeartbeat]:
        return self._beats("online", now)

    def lost(self, now: datetime | None = None) -> list[WorkerHeartbeat]:
        return self._beats("lost", now)

    def stopped(self) -> list[WorkerStopped]:
        return sorted((w.stop for w in self.workers.values() if w.stop is not None), key=lambda s: s.worker_id)

    def is_alive(self, worker_id: str | None, now: datetime | None = None) -> bool | None:
        """True if online, False if lost, None if stopped cleanly or never heard of (neither says stalled)."""
        state = self.state(worker_id, now)
        return None if state in (None, "stopped") else state == "online"

    def jobs(self) -> list[JobDescription]:
        """Every job a worker described, the newest description of each."""
        found: dict[str, JobDescription] = {}
        beats = [w for w in self.workers.values() if w.beat is not None]
        for worker in sorted(beats, key=lambda w: w.seen_at):
            assert worker.beat is not None
            for job in worker.beat.jobs:
                found[job.name] = job
        return [found[name] for name in sorted(found)]

    async def follow(self, js: object, subjects: Subjects, stopping: asyncio.Event) -> None:
        """Follow the workers' heartbeats and stops until stopping."""
        await follow_workers(js, subjects, self.record, stopping)
