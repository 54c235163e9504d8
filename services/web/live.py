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


# How many recent "command id -> run name" pairs the feed remembers (Run now lands on its run).
COMMANDS_KEPT = 10_000


class RunFeed:
    """Fans the run events out to every listener that wants them; remembers which run each command started."""

    def __init__(self) -> None:
        self.listeners: set[Listener] = set()
        self.commands: dict[str, str] = {}
        self.waiting: dict[str, set[asyncio.Future[str]]] = {}

    def run_of_command(self, command_id: str) -> str | None:
        return self.commands.get(command_id)

    async def wait_for_command(self, command_id: str, timeout: float) -> str | None:
        """The name of the run command_id started, as soon as its run.created passes; None after timeout."""
        if command_id in self.commands:
            return self.commands[command_id]
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(command_id, set()).add(future)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            waiters = self.waiting.get(command_id, set())
            waiters.discard(future)
            if not waiters:
                self.waiting.pop(command_id, None)

    def _remember(self, event: RunCreated) -> None:
        if not event.command_id:
            return
        self.commands[event.command_id] = event.name
        if len(self.commands) > COMMANDS_KEPT:
            self.commands.pop(next(iter(self.commands)))
        for future in self.waiting.get(event.command_id, set()):
            if not future.done():
                future.set_result(event.name)

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
            created = message.subject.endswith(".created")  # one per run: which command started it
            if not self.listeners and not created:
                return
            if message.subject.endswith(".step") and all(listener.run_name is None for listener in self.listeners):
                return
            with contextlib.suppress(ValidationError):
                event = parse_event(message.data)
                if isinstance(event, RunCreated):
                    self._remember(event)
                if self.listeners:
                    self.deliver(event)

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
