"""Live updates: the web follows the run events on NATS and fans them out to SSE clients.

A core subscription is enough: a browser that misses an event while reconnecting re-reads
the page, so nothing needs to be durable here. Updates are rendered from the event itself,
because the projection may still be a few milliseconds behind it.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from services.contracts import RunEvent, Subjects
from services.contracts.events import RunCreated, RunFailed, RunStarted, RunSucceeded, StepLogged, parse_event

log = structlog.get_logger("joblog.web")

# An SSE client that falls this far behind is dropped; its browser reconnects and re-reads.
QUEUE_SIZE = 1000
STATUS_OF = {"run.created": "new", "run.started": "processing", "run.succeeded": "success", "run.failed": "error"}


@dataclass(eq=False)
class Listener:
    """One SSE client: the run it follows (None for all runs) and its queue of updates."""

    run_name: str | None
    queue: asyncio.Queue[RunEvent | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    dropped: bool = False


class RunFeed:
    """Fans the run events out to every listener that wants them."""

    def __init__(self) -> None:
        self.listeners: set[Listener] = set()

    def listen(self, run_name: str | None) -> Listener:
        listener = Listener(run_name)
        self.listeners.add(listener)
        return listener

    def leave(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    def deliver(self, event: RunEvent) -> None:
        for listener in list(self.listeners):
            if listener.run_name is not None and listener.run_name != event.name:
                continue
            if listener.run_name is None and isinstance(event, StepLogged):
                continue  # the index shows runs, not their steps
            try:
                listener.queue.put_nowait(event)
            except asyncio.QueueFull:
                listener.dropped = True
                self.close(listener)

    def close(self, listener: Listener) -> None:
        """End one listener's stream (its browser will reconnect)."""
        self.listeners.discard(listener)
        with contextlib.suppress(asyncio.QueueFull):
            listener.queue.put_nowait(None)
        if listener.queue.full():
            # Make room for the end marker: the client is being dropped anyway.
            with contextlib.suppress(asyncio.QueueEmpty):
                listener.queue.get_nowait()
            listener.queue.put_nowait(None)

    def close_all(self) -> None:
        for listener in list(self.listeners):
            self.close(listener)

    async def subscribe(self, nc: NATS, subjects: Subjects) -> Any:
        """Subscribe to every run event of this deployment."""

        async def on_message(message: Msg) -> None:
            # Parse only what someone is watching: the stream can carry thousands of events a second.
            if not self.listeners:
                return
            if message.subject.endswith(".step") and all(listener.run_name is None for listener in self.listeners):
                return
            with contextlib.suppress(ValidationError):
                self.deliver(parse_event(message.data))

        return await nc.subscribe(subjects.runs, cb=on_message)


def run_update(event: RunEvent) -> dict[str, Any]:
    """What a run-level event changes about its run, for the index and the run header."""
    update: dict[str, Any] = {"name": event.name, "job": event.job, "seq": event.seq, "type": event.type}
    update["status"] = STATUS_OF.get(event.type)
    if isinstance(event, RunCreated):
        update["created_at"] = event.occurred_at
        update["trigger"] = event.trigger
        update["worker_id"] = event.worker_id
    if isinstance(event, RunStarted):
        update["started_at"] = event.occurred_at
        update["worker_id"] = event.worker_id
    if isinstance(event, (RunSucceeded, RunFailed)):
        update["finished_at"] = event.occurred_at
        update["duration_ms"] = event.duration_ms
        update["stats"] = event.stats
    if isinstance(event, RunFailed):
        update["error_message"] = event.error_message
    return update
