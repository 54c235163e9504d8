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
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Union

import asyncpg
import structlog
from nats.js import JetStreamContext

from services.contracts import RunEvent, Subjects
from services.sync_worker import db

log = structlog.get_logger("joblog.worker.outbox")

RELAY_LOCK = 7_305_118_202


class NatsUnreachable(Exception):
    """JetStream did not acknowledge what the relay published."""


# An outbox row: (subject, event_id, JSON payload); the event_id as a UUID or its canonical text.
OutboxRow = tuple[str, Union[uuid.UUID, str], bytes]


def encode(subjects: Subjects, events: Sequence[RunEvent | OutboxRow]) -> list[OutboxRow]:
    """Outbox rows for events (an already encoded row, from StepEncoder, is taken as it is)."""
    return [e if isinstance(e, tuple) else (subjects.for_event(e), e.event_id, e.model_dump_json().encode()) for e in events]


_LEVELS = frozenset(("debug", "info", "warning", "error"))
_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class StepEncoder:
    """run.step events of one run straight to their outbox row: one JSON serialisation per event.

    ctx.log is the worker's hot path. Building and validating a StepLogged model and then dumping
    it costs ~16 µs per event; the worker itself fills the run's fields (validated once, when the
    run was created), so only what the job passes (key, message, level, data) is checked here,
    against the same limits as the contract (StepLogged). The JSON is the model's field for field
    (tests/sync_worker/test_step_encoder.py parses it with parse_event and compares). Anything
    this cannot encode exactly as the model would (a data value JSON does not know, NaN, text
    that is not valid Unicode, a limit broken) returns None, and the caller takes the model's
    path, which validates and reports as before.
    """

    def __init__(self, subjects: Subjects, run_id: uuid.UUID, name: str, job: str) -> None:
        self.subject = f"{subjects.prefix}.run.{job}.{name}.step"
        self._head = b'{"schema_version":1,"event_id":"'
        self._run = f'","run_id":"{run_id}","name":{_dumps(name)},"job":{_dumps(job)},"seq":'.encode()
        self._second = -1
        self._stamp = ""
        self._ids: list[str] = []

    def _event_id(self) -> str:
        """A fresh uuid4 in its canonical text; the random bytes are read 256 ids at a time."""
        if not self._ids:
            raw = bytearray(os.urandom(16 * 256))
            for i in range(0, len(raw), 16):
                raw[i + 6] = (raw[i + 6] & 0x0F) | 0x40  # version 4
                raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80  # RFC 4122 variant
            h = raw.hex()
            self._ids = [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
                         for i in range(0, len(h), 32)]
        return self._ids.pop()

    def _occurred_at(self) -> str:
        """Now, as pydantic writes an AwareDatetime in UTC: 2026-01-31T12:34:56.123456Z."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        micros = int((now - second) * 1_000_000)
        return f"{self._stamp}.{micros:06d}Z" if micros else f"{self._stamp}Z"

    def row(self, seq: int, key: str, message: str, level: str, data: dict[str, Any] | None) -> OutboxRow | None:
        if not (0 < len(key) <= 200 and len(message) <= 20_000 and level in _LEVELS):
            return None
        event_id = self._event_id()
        try:
            tail = (f',"occurred_at":"{self._occurred_at()}","type":"run.step","key":{_dumps(key)},'
                    f'"message":{_dumps(message)},"level":"{level}","data":{_dumps(data) if data else "null"}}}').encode()
        except (TypeError, ValueError):  # not JSON as-is (UnicodeEncodeError is a ValueError): the model's path
            return None
        return self.subject, event_id, self._head + event_id.encode() + self._run + str(seq).encode() + tail


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
