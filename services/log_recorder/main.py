"""The recorder's run loop: fetch a batch, apply it in one transaction, ack after commit."""
from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack
from typing import Any, NamedTuple

import asyncpg
import nats
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import TypeAdapter, ValidationError

from services.contracts import ActionTaken, RunEvent, RunsDeleted, parse_event, parse_schedule_event
from services.contracts.nats import connect
from services.contracts.process import stop_on_signals
from services.contracts.subjects import close_nats, ensure_streams, ensure_streams_when_ready
from services.log_recorder import db
from services.log_recorder.errors import TRANSIENT, DeadLetter, is_refused
from services.log_recorder.projection import Batch
from services.log_recorder.settings import RecorderSettings
from services.log_recorder.retention import Reaper
from services.log_recorder.watchdog import Watchdog

log = structlog.get_logger("joblog.recorder")

# Seconds the fetching loop gathers messages in one pull while a batch commits (see Recorder._fetch_into).
GATHER = 0.002

# A dead letter: subject, raw payload, reason, stream sequence.
Letter = tuple[str, bytes, str, int | None]
# A batch of messages reduced: the projection's batches (each ends at a deletion), the dead letters,
# the highest stream sequence.
Reduced = tuple[list[Batch], list[Letter], int]


def letter(message: Msg, reason: str) -> Letter:
    return message.subject, bytes(message.data), reason[:2000], _stream_seq(message)


def refused(message: Msg, error: Exception, stream_seq: int | None = None) -> Letter:
    """The dead letter of a message whose event Postgres refuses to store."""
    return message.subject, bytes(message.data), f"refused by Postgres: {type(error).__name__}: {error}"[:2000], (
        stream_seq if stream_seq is not None else _stream_seq(message))


def classify(message: Msg, max_bytes: int, subjects: Any) -> Any:
    """The event in a message, or raise DeadLetter saying why it can never be applied."""
    if len(message.data) > max_bytes:
        raise DeadLetter(f"too large: {len(message.data)} bytes (limit {max_bytes})")
    try:
        if message.subject == subjects.retention:
            deleted = RunsDeleted.model_validate_json(message.data)
            _check_cutoff(deleted, message)
            return deleted
        if message.subject.startswith(subjects.actions[:-1]):
            return ActionTaken.model_validate_json(message.data)
        if message.subject.startswith(subjects.schedules[:-1]):
            return parse_schedule_event(message.data)
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


def _check_cutoff(deleted: RunsDeleted, message: Msg) -> None:
    """A cutoff later than the message itself would delete runs that do not exist yet: refused."""
    if deleted.created_before is None:
        return
    try:
        sent_at = message.metadata.timestamp  # JetStream's clock, the same for every recorder and a rebuild
    except Exception:
        return
    if deleted.created_before > sent_at:
        raise DeadLetter(
            f"created_before {deleted.created_before.isoformat()} is later than the deletion itself "
            f"({sent_at.isoformat()}): a deletion can only cover runs created before it was sent"
        )


def consumer_config(settings: RecorderSettings, **overrides: Any) -> ConsumerConfig:
    """The shared durable consumer: the whole run stream (run events, deletions, actions), acked one by one.

    No subject filter: the stream holds exactly what the recorder projects, and a filter costs the
    server work per message (several filters cut a 2.10+ server's delivery rate several times)."""
    fields: dict[str, Any] = dict(
        name=settings.recorder_consumer, durable_name=settings.recorder_consumer,
        ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.recorder_ack_wait, max_ack_pending=50_000, max_deliver=-1,
    )
    return ConsumerConfig(**{**fields, **overrides})


async def ensure_consumer(js: Any, settings: RecorderSettings) -> None:
    """Create the durable consumer, or bring an older one (filtered by subject) up to date.

    Several recorders share it; the last to start sets its ack wait.

    Where the server refuses the update, the consumer is recreated: from its ack floor when the
    stream has no retention event (nothing it skipped matters), else from the start (idempotent).
    """
    stream, name = settings.stream, settings.recorder_consumer
    try:
        info = await js.consumer_info(stream, name)
    except nats.js.errors.NotFoundError:
        info = None
    if info is not None:
        filters = info.config.filter_subjects or ([info.config.filter_subject] if info.config.filter_subject else [])
        if not filters and info.config.ack_wait == settings.recorder_ack_wait:
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
        self.sub: Any = None
        self._checked_at = 0.0
        self._conn: asyncpg.Connection | None = None
        self._backlog = 0  # messages JetStream held for the consumer after the last one fetched
        self.reaper_wake = asyncio.Event()  # the reaper's, once it runs (retention.py)

    async def subscribe(self) -> Any:
        await ensure_consumer(self.js, self.settings)
        return await self.js.pull_subscribe_bind(self.settings.recorder_consumer, stream=self.settings.stream)

    async def consume(self, stopping: asyncio.Event, sub: Any = None) -> None:
        """Fetch and apply batches until stopping.

        Two loops: one fetches messages as they come and folds them into the next batch (Pending), the
        other applies whatever is folded each time the previous batch has committed. So an event waits
        for the batch in flight and then its own, never for a batch fetched before it arrived; under a
        backlog the next batch is fetched and reduced while this one commits."""
        self.sub = sub or await self.subscribe()
        pending = Pending(self.settings)
        fetching = asyncio.create_task(self._fetch_into(pending, stopping), name="recorder-fetch")
        try:
            while True:
                taken = await pending.take()
                if taken is None:
                    break  # stopping, and nothing left to apply
                messages, reduced = taken
                pending.applying = True
                try:
                    await self.apply(messages, stopping, reduced)
                except Exception:
                    # Not a known outage: keep the recorder up, and have the batch delivered again soon.
                    log.exception("applying a batch failed unexpectedly; it will be redelivered")
                    for message in messages:
                        with contextlib.suppress(Exception):
                            await message.nak(delay=1)
                    await asyncio.sleep(1)
                finally:
                    pending.applying = False
                if stopping.is_set():
                    break
        finally:
            stopping.set()
            pending.stop()
            await fetching
            for message in pending.messages:  # fetched, not applied: let another recorder have them now
                with contextlib.suppress(Exception):
                    await message.nak()
            await self._drop_connection()

    async def _fetch_into(self, pending: Pending, stopping: asyncio.Event) -> None:
        """Fetch into pending until stopping, never holding more than a batch that is not applied yet.

        While a batch commits and no backlog waits, what arrives is gathered for a moment (GATHER) in
        one pull: a pull per message would cost a request and a socket write each (a third of the
        recorder's time at 2,000 events/s), and the batch in flight takes longer than that anyway."""
        try:
            while not stopping.is_set():
                room = await pending.room()
                if not room:
                    continue
                if pending.applying and not self._backlog:
                    messages = await self.gather(self.sub, room)
                else:
                    messages = await self.fetch(self.sub, room)
                if messages:
                    self._backlog = _pending(messages[-1], 0)
                pending.add(messages)
        finally:
            pending.stop()

    async def gather(self, sub: Any, room: int) -> list[Msg]:
        """What arrives within GATHER seconds, at most room, in one pull."""
        try:
            messages: list[Msg] = await sub.fetch(room, timeout=GATHER)
            return messages
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            return []
        except Exception as error:
            log.warning("fetching events failed", error=repr(error))
            await asyncio.sleep(0.5)
            return []

    async def fetch(self, sub: Any, room: int | None = None) -> list[Msg]:
        """The next messages, at most room (a batch): wait up to a second for the first, then take what
        is already there.

        nats-py's fetch(n), once it has to linger, waits for all n or its timeout, which would hold
        a trickle of events back for up to the timeout; so it lingers for one message only, and then
        asks for exactly as many as JetStream says are waiting."""
        room = room or self.settings.recorder_batch_size
        try:
            messages: list[Msg] = await sub.fetch(1, timeout=1)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            await self.recreate_if_gone()
            return []
        except Exception as error:
            log.warning("fetching events failed", error=repr(error))
            await asyncio.sleep(0.5)
            await self.recreate_if_gone()
            return []
        more = min(room - 1, _pending(messages[0], room))
        if more > 0:
            with contextlib.suppress(Exception):
                messages += await sub.fetch(more, timeout=0.01)
        return messages

    async def recreate_if_gone(self, every: float = 5.0) -> None:
        """Now and then while idle: if the stream or the consumer was deleted (a new NATS volume, an
        operator), create them again and read on, instead of waiting forever on a consumer that is gone."""
        now = asyncio.get_running_loop().time()
        if now - self._checked_at < every:
            return
        self._checked_at = now
        try:
            await self.js.consumer_info(self.settings.stream, self.settings.recorder_consumer)
            return
        except nats.js.errors.NotFoundError:
            log.warning("the recorder's consumer is gone (stream recreated?); creating it again",
                        stream=self.settings.stream, consumer=self.settings.recorder_consumer)
        except Exception:
            return  # NATS away: the next check looks again
        with contextlib.suppress(Exception):
            await ensure_streams(self.js, self.settings.subjects, self.settings.stream_replicas)
            self.sub = await self.subscribe()

    async def apply(self, messages: list[Msg], stopping: asyncio.Event, reduced: Reduced | None = None) -> None:
        """Apply one batch, retrying while Postgres is away; ack only after commit.

        No message can stop the projection: when Postgres refuses the batch, it is split in halves until
        the message it refuses is alone, and that one is dead-lettered with the reason. An unexpected
        error (a bug) is retried by redelivery, and past max deliveries it is isolated the same way.
        """
        batches, letters, last_seq = reduced or reduce(messages, self.settings)
        position = db.Position(self.settings.recorder_consumer, last_seq, _last_event_at(batches), _events(batches))
        backoff = 0.2
        while True:
            try:
                reaper_work = await self._write(batches, letters, position)
                break
            except TRANSIENT as error:
                await self._drop_connection()
                if is_refused(error):
                    await self._isolate(messages, stopping, error)
                    return
                if stopping.is_set():
                    return  # unacked: redelivered to whoever consumes next
                log.warning("applying a batch failed; retrying", error=repr(error), backoff=backoff)
                for message in messages:
                    with contextlib.suppress(Exception):
                        await message.in_progress()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as error:
                if is_refused(error) or _deliveries(messages) >= self.settings.recorder_max_deliveries:
                    await self._isolate(messages, stopping, error)
                    return
                raise  # consume() naks the batch: it comes back after a delay
        for message in messages:
            await message.ack()
        if reaper_work:
            self.reaper_wake.set()  # a deletion to carry out, or a late event of a purged run to purge again
        self.applied += _events(batches)
        self.dead_lettered += len(letters)

    async def _write(self, batches: list[Batch], letters: list[Letter], position: db.Position) -> bool:
        """Commit the batches, their dead letters and the consumer's position; True when the reaper has work.

        The common batch (no deletion) is one statement, atomic on its own: one round trip."""
        conn = await self._connection()
        keep = self.settings.dead_letter_payload_bytes
        if len(batches) == 1 and not batches[0].deletions:
            return await db.apply_batch(conn, batches[0], position=position, letters=letters, keep=keep)
        reaper_work = False
        async with conn.transaction():
            for batch in batches[:-1]:
                reaper_work = await db.apply_batch(conn, batch) or reaper_work
            return await db.apply_batch(conn, batches[-1], position=position, letters=letters, keep=keep) or reaper_work

    async def _connection(self) -> asyncpg.Connection:
        """The connection batches are written on, kept between them (a connection handed back to the pool
        is reset there: a round trip of its own in every batch)."""
        if self._conn is None:
            self._conn = await self.pool.acquire()
        return self._conn

    async def _drop_connection(self) -> None:
        """Give the connection back (the pool replaces a broken one); the next batch takes a fresh one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await self.pool.release(conn, timeout=5)

    async def _isolate(self, messages: list[Msg], stopping: asyncio.Event, error: Exception) -> None:
        """Bisect a batch that failed for good down to the message at fault; dead-letter that one."""
        if len(messages) > 1:
            middle = len(messages) // 2
            for half in (messages[:middle], messages[middle:]):
                await self.apply(half, stopping)
            return
        message = messages[0]
        if is_refused(error):
            reason = refused(message, error)
        else:
            reason = letter(message, f"failed {_deliveries(messages)} deliveries: {type(error).__name__}: {error}")
        log.warning("dead-lettered a message", subject=message.subject, stream_seq=reason[3], reason=reason[2])
        conn = await self._connection()
        await db.apply_batch(conn, Batch(), position=db.Position(self.settings.recorder_consumer, reason[3] or 0, None, 0),
                             letters=[reason], keep=self.settings.dead_letter_payload_bytes)
        await message.ack()
        self.dead_lettered += 1


class Pending:
    """Messages fetched and folded into the next batch, waiting for the batch in flight to commit."""

    def __init__(self, settings: RecorderSettings) -> None:
        self.settings = settings
        self.messages: list[Msg] = []
        self.reduced: Reduced = ([Batch()], [], 0)
        self._changed = asyncio.Event()
        self._closed = False
        self.applying = False  # a batch taken from here is being written

    def add(self, messages: list[Msg]) -> None:
        if messages:
            self.messages += messages
            self.reduced = reduce(messages, self.settings, self.reduced)
            self._changed.set()

    def stop(self) -> None:
        """Fetch no more (the fetching loop stopped, or the recorder is stopping)."""
        self._closed = True
        self._changed.set()

    async def take(self) -> tuple[list[Msg], Reduced] | None:
        """Everything folded so far, once there is something; None once closed with nothing left."""
        while not self.messages:
            if self._closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        taken = self.messages, self.reduced
        self.messages, self.reduced = [], ([Batch()], [], 0)
        self._changed.set()
        return taken

    async def room(self) -> int:
        """How many more messages may be fetched now: waits while a whole batch waits (0 once stopped)."""
        while len(self.messages) >= self.settings.recorder_batch_size and not self._closed:
            self._changed.clear()
            await self._changed.wait()
        return 0 if self._closed else self.settings.recorder_batch_size - len(self.messages)


def _events(batches: list[Batch]) -> int:
    return sum(batch.events for batch in batches)


def _last_event_at(batches: list[Batch]) -> Any:
    times = [batch.last_event_at for batch in batches if batch.last_event_at is not None]
    return max(times) if times else None


def _deliveries(messages: list[Msg]) -> int:
    """The most times any of these messages has been delivered (JetStream counts)."""
    most = 1
    for message in messages:
        with contextlib.suppress(Exception):
            most = max(most, message.metadata.num_delivered)
    return most


class _Routes(NamedTuple):
    """The subjects classify() tells apart, formatted once per batch instead of once per message."""

    retention: str
    actions: str
    schedules: str


def reduce(messages: list[Msg], settings: RecorderSettings, into: Reduced | None = None) -> Reduced:
    """Messages as projection batches (a new one after each deletion), their dead letters, the highest
    stream seq; folded into what `into` holds already, if given."""
    batches, letters, last_seq = into or ([Batch()], [], 0)
    subjects = settings.subjects
    routes = _Routes(subjects.retention, subjects.actions, subjects.schedules)
    parsed = _parse_run_events(messages, settings.max_event_bytes, routes)
    for message in messages:
        seq = _stream_seq(message)
        last_seq = max(last_seq, seq or 0)
        try:
            event = parsed[id(message)] if id(message) in parsed else classify(message, settings.max_event_bytes, routes)
        except DeadLetter as reason:
            log.warning("dead-lettered a message", subject=message.subject, stream_seq=seq, reason=str(reason),
                        event_id=(message.headers or {}).get("Nats-Msg-Id"))
            letters.append((message.subject, bytes(message.data), str(reason), seq))
            continue
        if batches[-1].closed:
            batches.append(Batch())
        batches[-1].add(event, seq)
    return batches, letters, last_seq


RUN_EVENTS: TypeAdapter[list[RunEvent]] = TypeAdapter(list[RunEvent])


def _parse_run_events(messages: list[Msg], max_bytes: int, routes: _Routes) -> dict[int, Any]:
    """The run events of these messages in one pydantic-core call (by id(message)); {} when any of them is
    not one, and then classify() parses each alone, so a bad message is still a dead letter with its reason.

    The payloads are joined into one JSON array. Each must be one object ({...}) and the array must hold
    exactly one event per payload, so no payload can lend its text to its neighbours."""
    candidates = [m for m in messages if len(m.data) <= max_bytes and m.subject != routes.retention
                  and not m.subject.startswith(routes.actions[:-1]) and not m.subject.startswith(routes.schedules[:-1])]
    if len(candidates) < 2 or not all(m.data[:1] == b"{" and m.data[-1:] == b"}" for m in candidates):
        return {}
    try:
        events = RUN_EVENTS.validate_json(b"[" + b",".join(m.data for m in candidates) + b"]")
    except ValidationError:
        return {}
    if len(events) != len(candidates):
        return {}
    return {id(m): event for m, event in zip(candidates, events)}


def _pending(message: Msg, unknown: int) -> int:
    """How many messages the consumer held after this one when it was delivered (unknown: when it cannot say)."""
    try:
        return int(message.metadata.num_pending)
    except Exception:
        return unknown


def _stream_seq(message: Msg) -> int | None:
    """The message's stream sequence, read from its ack subject (cheaper than nats-py's whole metadata):
    $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.... or, with domain and account hash,
    $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<stream seq>...."""
    tokens = (message.reply or "").split(".")
    try:
        if tokens[0] == "$JS" and tokens[1] == "ACK":
            if len(tokens) == 9:
                return int(tokens[5])
            if len(tokens) >= 11:
                return int(tokens[7])
    except (IndexError, ValueError):
        pass
    try:
        return message.metadata.sequence.stream
    except Exception:
        return None


async def run(settings: RecorderSettings, ready: asyncio.Event | None = None, stopping: asyncio.Event | None = None) -> None:
    """Run the recorder until SIGTERM/SIGINT (or stopping is set)."""
    stopping = stop_on_signals(stopping)
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(asyncpg.create_pool(settings.database_url, min_size=1, max_size=4))

        nc = await connect(settings, "joblog-recorder")
        stack.push_async_callback(close_nats, nc)
        recorder = Recorder(settings, pool, nc)
        await ensure_streams_when_ready(recorder.js, settings.subjects, settings.stream_replicas)
        sub = await recorder.subscribe()
        watchdog = Watchdog(settings, pool, recorder.js)
        watching = asyncio.create_task(watchdog.run(stopping), name="watchdog")
        reaper = Reaper(settings, pool, recorder.js)
        recorder.reaper_wake = reaper.wake
        reaping = asyncio.create_task(reaper.run(stopping), name="reaper")
        log.info("recorder ready", consumer=settings.recorder_consumer, stream=settings.stream)
        if ready:
            ready.set()
        try:
            await recorder.consume(stopping, sub)
        finally:
            stopping.set()
            await watching
            await reaping
    log.info("recorder stopped")
