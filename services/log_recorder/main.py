"""The recorder's run loop: fetch a batch, apply it in one transaction, ack after commit."""
from __future__ import annotations

import asyncio
import contextlib
import signal
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import nats
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from services.contracts import parse_event
from services.contracts.subjects import close_nats, ensure_streams
from services.log_recorder import db
from services.log_recorder.errors import DeadLetter
from services.log_recorder.projection import Batch
from services.log_recorder.settings import RecorderSettings

log = structlog.get_logger("joblog.recorder")

# Errors after which the same batch is tried again (the database is away), never dead-lettered.
TRANSIENT = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
             asyncpg.CannotConnectNowError, asyncpg.DeadlockDetectedError, asyncpg.SerializationError,
             asyncpg.AdminShutdownError)


def classify(message: Msg, max_bytes: int) -> Any:
    """The event in a message, or raise DeadLetter saying why it can never be applied."""
    if len(message.data) > max_bytes:
        raise DeadLetter(f"too large: {len(message.data)} bytes (limit {max_bytes})")
    try:
        event = parse_event(message.data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        kind = "not valid JSON" if first["type"] == "json_invalid" else "breaks the contract"
        if first["loc"] and first["loc"][-1] == "schema_version":
            kind = "unknown schema version"
        raise DeadLetter(f"{kind}: {where}: {first['msg']}") from None
    return event


class Recorder:
    """Projects one durable consumer's messages into Postgres."""

    def __init__(self, settings: RecorderSettings, pool: asyncpg.Pool, nc: NATS) -> None:
        self.settings = settings
        self.pool = pool
        self.nc = nc
        self.js = nc.jetstream(timeout=5)
        self.applied = 0
        self.dead_lettered = 0

    async def subscribe(self) -> Any:
        subjects = self.settings.subjects
        return await self.js.pull_subscribe(
            subjects.runs, durable=self.settings.recorder_consumer, stream=subjects.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                ack_wait=30, max_ack_pending=50_000, max_deliver=-1,
            ),
        )

    async def consume(self, stopping: asyncio.Event) -> None:
        sub = await self.subscribe()
        while not stopping.is_set():
            try:
                messages = await sub.fetch(self.settings.recorder_batch_size, timeout=1)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            except Exception as error:
                log.warning("fetching events failed", error=repr(error))
                await asyncio.sleep(0.5)
                continue
            await self.apply(messages, stopping)

    async def apply(self, messages: list[Msg], stopping: asyncio.Event) -> None:
        """Apply one batch, retrying while Postgres is away; ack only after commit."""
        batch = Batch()
        letters: list[tuple[str, bytes, str, int | None]] = []
        last_seq = 0
        for message in messages:
            seq = _stream_seq(message)
            last_seq = max(last_seq, seq or 0)
            try:
                batch.add(classify(message, self.settings.max_event_bytes))
            except DeadLetter as reason:
                log.warning("dead-lettered a message", subject=message.subject, stream_seq=seq, reason=str(reason))
                letters.append((message.subject, bytes(message.data), str(reason), seq))
        backoff = 0.2
        while True:
            try:
                async with self.pool.acquire() as conn:
                    async with conn.transaction():
                        await db.apply_batch(conn, batch)
                        await db.store_dead_letters(conn, letters)
                        await db.track_position(
                            conn, self.settings.recorder_consumer, last_seq, batch.last_event_at, batch.events
                        )
                break
            except TRANSIENT as error:
                if stopping.is_set():
                    return  # unacked: redelivered to whoever consumes next
                log.warning("applying a batch failed; retrying", error=repr(error), backoff=backoff)
                for message in messages:
                    with contextlib.suppress(Exception):
                        await message.in_progress()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        for message in messages:
            await message.ack()
        self.applied += batch.events
        self.dead_lettered += len(letters)


def _stream_seq(message: Msg) -> int | None:
    try:
        return message.metadata.sequence.stream
    except Exception:
        return None


async def run(settings: RecorderSettings, ready: asyncio.Event | None = None, stopping: asyncio.Event | None = None) -> None:
    """Run the recorder until SIGTERM/SIGINT (or stopping is set)."""
    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(asyncpg.create_pool(settings.database_url, min_size=1, max_size=4))

        async def on_error(error: Exception) -> None:
            log.warning("nats error", error=repr(error))

        nc = await nats.connect(
            servers=settings.nats_servers, name="joblog-recorder", max_reconnect_attempts=-1,
            reconnect_time_wait=0.5, error_cb=on_error,
        )
        stack.push_async_callback(close_nats, nc)
        recorder = Recorder(settings, pool, nc)
        await ensure_streams(recorder.js, settings.subjects, settings.stream_replicas)
        log.info("recorder ready", consumer=settings.recorder_consumer, stream=settings.stream)
        if ready:
            ready.set()
        await recorder.consume(stopping)
    log.info("recorder stopped")
