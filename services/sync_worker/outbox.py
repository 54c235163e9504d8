"""The outbox: events are committed to Postgres first, then relayed to JetStream in order.

If NATS is down the rows wait; the relay retries with backoff and deletes a row only after
JetStream acknowledged it. The Nats-Msg-Id header (= event_id) drops a re-sent duplicate.
One relay at a time publishes (a Postgres advisory lock), so rows leave in id order; a relay
that cannot reach NATS lets go of the lock at once, so a worker whose NATS is away never holds
back the events of the others.
"""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence

import asyncpg
import structlog
from nats.js import JetStreamContext

from services.contracts import RunEvent, Subjects
from services.sync_worker import db

log = structlog.get_logger("joblog.worker.outbox")

RELAY_LOCK = 7_305_118_202


class NatsUnreachable(Exception):
    """JetStream did not acknowledge what the relay published."""


def encode(subjects: Subjects, events: Sequence[RunEvent]) -> list[tuple[str, uuid.UUID, bytes]]:
    """Outbox rows for events: (subject, event_id, JSON payload)."""
    return [(subjects.for_event(e), e.event_id, e.model_dump_json().encode()) for e in events]


class Relay:
    """Publishes outbox rows to JetStream, oldest first."""

    def __init__(
        self, pool: asyncpg.Pool, js: JetStreamContext, batch_size: int = 500,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        self._pool = pool
        self._js = js
        self._connected = connected
        self._batch_size = batch_size
        self._wake = asyncio.Event()
        self.published = 0

    def wake(self, *_: object) -> None:
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Hold the relay lock and publish until stopping is set and the outbox is empty."""
        backoff = 0.1
        nats_backoff = 0.1
        while True:
            try:
                if not self._connected():
                    # Our NATS is away: leave the lock to a worker that can publish.
                    if stopping.is_set():
                        return
                    await asyncio.sleep(0.5)
                    continue
                async with self._pool.acquire() as conn:
                    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                        if stopping.is_set():
                            return
                        await _wait(self._wake, 1.0)
                        continue
                    try:
                        await conn.add_listener("joblog_outbox", self.wake)
                        await self._drain_forever(conn, stopping)
                        return
                    except NatsUnreachable as error:
                        log.warning("publishing outbox failed; letting another worker relay", error=str(error),
                                    backoff=nats_backoff)
                    finally:
                        with contextlib.suppress(Exception):
                            await conn.remove_listener("joblog_outbox", self.wake)
                            await conn.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK)
                # Unlocked: another relay may take over now; try again after a while.
                if stopping.is_set() and not self._connected():
                    return
                await asyncio.sleep(nats_backoff)
                nats_backoff = min(nats_backoff * 2, 5.0)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("outbox relay lost Postgres; retrying", error=str(error), backoff=backoff)
                if stopping.is_set():
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _drain_forever(self, conn: asyncpg.Connection, stopping: asyncio.Event) -> None:
        while True:
            self._wake.clear()
            rows = await db.fetch_outbox(conn, self._batch_size)
            if not rows:
                if stopping.is_set():
                    return
                await _wait(self._wake, 1.0)
                continue
            try:
                await self._publish(rows)
            except Exception as error:  # NATS down, timeouts: keep the rows, and the lock for nobody
                raise NatsUnreachable(f"{len(rows)} events waiting: {error!r}") from error
            await db.delete_outbox(conn, [row["id"] for row in rows])
            self.published += len(rows)

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> None:
        # Pipelined in order on one connection; wait for every ack before deleting.
        futures = []
        for row in rows:
            futures.append(
                await self._js.publish_async(
                    row["subject"], bytes(row["payload"]), headers={"Nats-Msg-Id": str(row["event_id"])}
                )
            )
        await asyncio.wait_for(asyncio.gather(*futures), timeout=10)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
