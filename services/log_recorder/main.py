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
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from services.contracts import RunsDeleted, parse_event
from services.contracts.subjects import close_nats, ensure_streams
from services.log_recorder import db
from services.log_recorder.errors import DeadLetter
from services.log_recorder.projection import Batch
from services.log_recorder.settings import RecorderSettings
from services.log_recorder.watchdog import Watchdog

log = structlog.get_logger("joblog.recorder")

# Errors after which the same batch is tried again (the database is away), never dead-lettered.
TRANSIENT = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
             asyncpg.CannotConnectNowError, asyncpg.DeadlockDetectedError, asyncpg.SerializationError,
             asyncpg.AdminShutdownError, asyncpg.InvalidCachedStatementError, asyncpg.InternalClientError)
# A value the contract allows but Postgres refuses (a seq beyond int4, JSON's Infinity): retrying never helps.
# The client-side DataError is an InterfaceError, so it is caught before TRANSIENT.
REFUSED = (asyncpg.DataError, asyncpg.exceptions._base.DataError, asyncpg.CardinalityViolationError)


# A dead letter: subject, raw payload, reason, stream sequence.
Letter = tuple[str, bytes, str, int | None]
# A batch of messages reduced: the projection's rows, the dead letters, the highest stream sequence.
Reduced = tuple[Batch, list[Letter], int]


def refused(message: Msg, error: Exception, stream_seq: int | None) -> Letter:
    """The dead letter of a message whose event Postgres refuses to store."""
    return message.subject, bytes(message.data), f"refused by Postgres: {type(error).__name__}: {error}"[:2000], stream_seq


def classify(message: Msg, max_bytes: int, retention_subject: str) -> Any:
    """The event in a message, or raise DeadLetter saying why it can never be applied."""
    if len(message.data) > max_bytes:
        raise DeadLetter(f"too large: {len(message.data)} bytes (limit {max_bytes})")
    try:
        if message.subject == retention_subject:
            return RunsDeleted.model_validate_json(message.data)
        return parse_event(message.data)
    except ValidationError as error:
        errors = error.errors()
        # A newer producer is the likeliest cause of many errors at once: name that first.
        first = next((e for e in errors if e["loc"] and e["loc"][-1] == "schema_version"), errors[0])
        where = ".".join(str(p) for p in first["loc"]) or "message"
        kind = "not valid JSON" if first["type"] == "json_invalid" else "breaks the contract"
        if first["loc"] and first["loc"][-1] == "schema_version":
            kind = "unknown schema version"
        raise DeadLetter(f"{kind}: {where}: {first['msg']}") from None


def consumer_config(settings: RecorderSettings, **overrides: Any) -> ConsumerConfig:
    """The shared durable consumer: run events and retention events, acked one by one."""
    subjects = settings.subjects
    fields: dict[str, Any] = dict(
        name=settings.recorder_consumer, durable_name=settings.recorder_consumer,
        filter_subjects=[subjects.runs, subjects.retention],
        ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.recorder_ack_wait, max_ack_pending=50_000, max_deliver=-1,
    )
    return ConsumerConfig(**{**fields, **overrides})


async def ensure_consumer(js: Any, settings: RecorderSettings) -> None:
    """Create the durable consumer, or bring an older one (filtered on run events only) up to date.

    Several recorders share it; the last to start sets its ack wait.

    Where the server refuses the update, the consumer is recreated: from its ack floor when the
    stream has no retention event (nothing it skipped matters), else from the start (idempotent).
    """
    stream, name = settings.stream, settings.recorder_consumer
    wanted = sorted([settings.subjects.runs, settings.subjects.retention])
    try:
        info = await js.consumer_info(stream, name)
    except nats.js.errors.NotFoundError:
        info = None
    if info is not None:
        filters = sorted(info.config.filter_subjects or ([info.config.filter_subject] if info.config.filter_subject else []))
        # No filter is the whole stream, just as good: it is what a server before 2.10 makes of filter_subjects.
        if filters in ([], wanted) and info.config.ack_wait == settings.recorder_ack_wait:
            return
    try:
        await js.add_consumer(stream, consumer_config(settings))
        return
    except nats.js.errors.BadRequestError as error:
        if info is None:
            raise
        log.warning("cannot update the recorder's consumer in place; recreating it", error=str(error))
    start = (info.ack_floor.stream_seq if info.ack_floor else 0) + 1
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.get_last_msg(stream, settings.subjects.retention)
        start = 1
    await js.delete_consumer(stream, name)
    await js.add_consumer(
        stream, consumer_config(settings, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    )


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
        await ensure_consumer(self.js, self.settings)
        return await self.js.pull_subscribe_bind(self.settings.recorder_consumer, stream=self.settings.stream)

    async def consume(self, stopping: asyncio.Event, sub: Any = None) -> None:
        """Fetch and apply batches until stopping; the next batch is fetched and reduced while this one commits."""
        sub = sub or await self.subscribe()
        prefetched: asyncio.Task[tuple[list[Msg], Reduced]] | None = None
        while not stopping.is_set():
            fetching = prefetched or asyncio.create_task(self.prepare(sub))
            prefetched = None
            messages, reduced = await fetching
            if not messages:
                continue
            prefetched = asyncio.create_task(self.prepare(sub))
            try:
                await self.apply(messages, stopping, reduced)
            except Exception:
                # Not a known outage: keep the recorder up, and have the batch delivered again soon.
                log.exception("applying a batch failed unexpectedly; it will be redelivered")
                for message in messages:
                    with contextlib.suppress(Exception):
                        await message.nak(delay=1)
                await asyncio.sleep(1)
        if prefetched is not None:
            for message in (await prefetched)[0]:  # not applied: let another recorder have them now
                with contextlib.suppress(Exception):
                    await message.nak()

    async def prepare(self, sub: Any) -> tuple[list[Msg], Reduced]:
        messages = await self.fetch(sub)
        return messages, reduce(messages, self.settings)

    async def fetch(self, sub: Any) -> list[Msg]:
        """The next batch: wait up to a second for its first message, then take what is already there.

        nats-py's fetch(n), once it has to linger, waits for all n or its timeout, which would hold
        a trickle of events back for up to the timeout; so it lingers for one message only."""
        try:
            messages: list[Msg] = await sub.fetch(1, timeout=1)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            return []
        except Exception as error:
            log.warning("fetching events failed", error=repr(error))
            await asyncio.sleep(0.5)
            return []
        if self.settings.recorder_batch_size > 1:
            with contextlib.suppress(Exception):
                messages += await sub.fetch(self.settings.recorder_batch_size - 1, timeout=0.01)
        return messages

    async def apply(self, messages: list[Msg], stopping: asyncio.Event, reduced: Reduced | None = None) -> None:
        """Apply one batch, retrying while Postgres is away; ack only after commit."""
        batch, letters, last_seq = reduced or reduce(messages, self.settings)
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
            except REFUSED as error:
                if len(messages) > 1:
                    # Find the event Postgres refuses: the rest of the batch is applied one by one.
                    for message in messages:
                        await self.apply([message], stopping)
                    return
                letters = [refused(messages[0], error, last_seq or None)]
                log.warning("dead-lettered a message", subject=messages[0].subject, reason=letters[0][2])
                batch = Batch()
            except TRANSIENT as error:
                if stopping.is_set():
                    return  # unacked: redelivered to whoever consumes next
                log.warning("applying a batch failed; retrying", error=repr(error), backoff=backoff)
                for message in messages:
                    with contextlib.suppress(Exception):
                        await message.in_progress()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        for message in messages:
            await message.ack()
        self.applied += batch.events
        self.dead_lettered += len(letters)


def reduce(messages: list[Msg], settings: RecorderSettings) -> Reduced:
    """A batch of messages as one reduced Batch, its dead letters, and its highest stream sequence."""
    batch = Batch()
    letters: list[Letter] = []
    last_seq = 0
    retention = settings.subjects.retention
    for message in messages:
        seq = _stream_seq(message)
        last_seq = max(last_seq, seq or 0)
        try:
            batch.add(classify(message, settings.max_event_bytes, retention), seq)
        except DeadLetter as reason:
            log.warning("dead-lettered a message", subject=message.subject, stream_seq=seq, reason=str(reason),
                        event_id=(message.headers or {}).get("Nats-Msg-Id"))
            letters.append((message.subject, bytes(message.data), str(reason), seq))
    return batch, letters, last_seq


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
        sub = await recorder.subscribe()
        watchdog = Watchdog(settings, pool, recorder.js)
        watching = asyncio.create_task(watchdog.run(stopping), name="watchdog")
        log.info("recorder ready", consumer=settings.recorder_consumer, stream=settings.stream)
        if ready:
            ready.set()
        try:
            await recorder.consume(stopping, sub)
        finally:
            stopping.set()
            await watching
    log.info("recorder stopped")
