"""Liveness time, one clock for every service: JetStream's.

Whether a worker is alive is judged by how long ago JetStream stored its last heartbeat, never by
the worker's own clock (``occurred_at``), so a worker with a wrong clock is neither lost early nor
kept alive forever, and the web's "stalled" and the recorder's "lost" agree.

- JetStreamClock estimates JetStream's "now" from the metadata timestamps of the messages received.
- follow_workers is the one loop that follows the workers' heartbeats and stops; it hands each
  event with its JetStream timestamp to a callback.

This module imports nothing from the services.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog
from nats.js.api import DeliverPolicy
from pydantic import ValidationError

from services.contracts.events import WorkerHeartbeat, WorkerStopped, parse_worker_event
from services.contracts.subjects import Subjects

log = structlog.get_logger("joblog.liveness")

WorkerEvent = WorkerHeartbeat | WorkerStopped
OnWorkerEvent = Callable[[WorkerEvent, datetime], None]


class JetStreamClock:
    """JetStream's "now", estimated from the messages received (their metadata timestamps).

    A message is received after JetStream stored it, so ``local receive time - its timestamp`` is
    the clocks' difference plus a delay that is never negative; the smallest value seen is the best
    estimate of the difference. Before any message, JetStream's now is taken to be the local now.
    """

    def __init__(self, local: Callable[[], float] = time.time) -> None:
        self._local = local
        self.offset: float | None = None  # seconds: local clock minus JetStream's

    def observe(self, stored_at: datetime, received_at: float | None = None) -> None:
        """A message JetStream stored at stored_at arrived now (or at received_at, local epoch seconds)."""
        received = self._local() if received_at is None else received_at
        offset = received - stored_at.timestamp()
        if self.offset is None or offset < self.offset:
            self.offset = offset

    def now(self) -> datetime:
        """JetStream's current time as best known (UTC)."""
        return datetime.fromtimestamp(self._local() - (self.offset or 0.0), timezone.utc)

    def age(self, stored_at: datetime) -> timedelta:
        """How long ago, on JetStream's clock, a message was stored."""
        return self.now() - stored_at


def stored_at(message: Any) -> datetime | None:
    """A JetStream message's metadata timestamp (when the server stored it), or None if it has none."""
    try:
        stamp = message.metadata.timestamp
    except Exception:  # not a JetStream message, or metadata it cannot parse
        return None
    return stamp if isinstance(stamp, datetime) else None


class _StreamReset(Exception):
    """The stream was recreated, or holds messages the consumer did not deliver: subscribe again."""


async def follow_workers(
    js: Any, subjects: Subjects, on_event: OnWorkerEvent, stopping: asyncio.Event, *,
    retry_seconds: float = 1.0, check_seconds: float = 5.0,
) -> None:
    """Call on_event(event, stored_at) for the last heartbeat and stop of every worker, then each new one.

    An ordered consumer on ``subjects.worker_events`` (heartbeats and stops), delivering the last
    message per subject first; events arrive in stream order. Messages that are not a valid
    WorkerHeartbeat / WorkerStopped are skipped. On any error (NATS away, stream missing) it
    resubscribes after retry_seconds; after check_seconds without a message it asks for the stream's
    state and resubscribes if the stream was recreated (an ordered consumer would wait forever for
    the old sequence) or holds messages it was not given. A resubscription replays the last event
    per subject, so on_event must accept an event it has seen before. Returns when stopping is set.
    on_event runs in the loop: keep it short.
    """
    while not stopping.is_set():
        sub = None
        try:
            created = (await js.stream_info(subjects.heartbeat_stream)).created
            sub = await js.subscribe(
                subjects.worker_events, stream=subjects.heartbeat_stream, ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            )
            last_seq, quiet_since = 0, time.monotonic()
            while not stopping.is_set():
                try:
                    message = await sub.next_msg(timeout=0.5)
                except asyncio.TimeoutError:
                    if time.monotonic() - quiet_since >= check_seconds:
                        info = await js.stream_info(subjects.heartbeat_stream)
                        if info.created != created or info.state.last_seq > last_seq:
                            raise _StreamReset(f"stream {subjects.heartbeat_stream} moved on without this consumer")
                        quiet_since = time.monotonic()
                    continue
                quiet_since = time.monotonic()
                with contextlib.suppress(Exception):
                    last_seq = max(last_seq, message.metadata.sequence.stream)
                try:
                    event = parse_worker_event(message.data)
                except ValidationError:
                    continue
                at = stored_at(message)
                on_event(event, at if at is not None else event.occurred_at)
        except Exception as error:  # NATS away, stream missing or recreated: keep trying
            log.warning("following workers failed; subscribing again", error=repr(error))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), retry_seconds)
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
