"""`joblog rebuild`: replay the run stream into fresh tables and swap them in atomically.

1. Create job_logs_rebuild / job_log_details_rebuild shaped like the live tables (columns,
   defaults, constraints and indexes, under temporary names).
2. Replay the stream from its first message up to its last sequence at that moment, with the
   recorder's own projection, into the fresh tables; then catch up once more.
3. In one transaction: lock the live tables against writers (readers go on), catch up the last
   few events, drop the live tables and rename the fresh ones into their place. The web keeps
   reading the old tables until that transaction commits, and the new ones right after.

Live recorders keep running: events they apply to the old tables are in the stream up to the
sequence read under the lock, and they land in the new tables after the swap (idempotently).
"""
from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from tqdm import tqdm

from services.contracts.nats import connect
from services.contracts.subjects import close_nats, ensure_streams
from services.log_recorder import db
from services.log_recorder import snapshot as snapshots
from services.log_recorder.errors import RebuildFailed, is_refused
from services.log_recorder.main import reduce, refused
from services.log_recorder.settings import RecorderSettings

SUFFIX = "__rb"
FETCH = 2000
# One rebuild at a time: a second would drop the first one's fresh tables mid-replay.
REBUILD_LOCK = 7_305_118_203


@dataclass
class RebuildReport:
    """What a rebuild did."""

    replayed: int
    stream_last_seq: int
    runs: int
    details: int
    snapshot_seq: int | None = None  # the snapshot it started from, if any
    replay_seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.replayed / self.replay_seconds if self.replay_seconds > 0 else 0.0


async def _shape(conn: asyncpg.Connection, live: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The live table's constraints (name, definition) and its other indexes (name, definition)."""
    constraints = [
        (r["conname"], r["def"]) for r in await conn.fetch(
            "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
            "WHERE conrelid = $1::regclass AND contype IN ('p', 'u', 'c', 'f') ORDER BY contype DESC, conname", live)
    ]
    indexes = [
        (r["indexname"], r["indexdef"]) for r in await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1 "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass)", live)
    ]
    return constraints, indexes


def _retarget(definition: str) -> str:
    """A definition that names a live table, pointed at its fresh twin."""
    for live, fresh in ((db.LIVE.details, db.REBUILD.details), (db.LIVE.runs, db.REBUILD.runs)):
        definition = re.sub(rf"(?<![\w.]){live}\b(?=\s*\(|\s+USING|\s*$)", fresh, definition)
        definition = re.sub(rf"(\w+\.){live}\b", rf"\g<1>{fresh}", definition)
    return definition


async def prepare(conn: asyncpg.Connection) -> tuple[list[tuple[str, str]], list[str]]:
    """Create the fresh tables with their constraints (the replay's upserts need them).

    Returns the (kind, name) renames the swap must undo, and the other indexes' definitions: they are
    built once the replay is done, which is much faster than keeping them up to date row by row."""
    referencing = await conn.fetch(
        "SELECT conrelid::regclass::text AS t FROM pg_constraint WHERE confrelid = $1::regclass AND conrelid <> $2::regclass",
        db.LIVE.runs, db.LIVE.details,
    )
    if referencing:
        raise RebuildFailed(f"tables reference {db.LIVE.runs} ({', '.join(r['t'] for r in referencing)}); "
                            "the rebuild cannot swap it under them")
    renames: list[tuple[str, str]] = []
    deferred: list[str] = []
    await conn.execute(f"DROP TABLE IF EXISTS {db.REBUILD.details}, {db.REBUILD.runs}")
    for live, fresh in ((db.LIVE.runs, db.REBUILD.runs), (db.LIVE.details, db.REBUILD.details)):
        constraints, indexes = await _shape(conn, live)
        await conn.execute(f"CREATE TABLE {fresh} (LIKE {live} INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED)")
        options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE oid = $1::regclass", live)
        if options:  # LIKE copies no storage parameters: job_logs' fillfactor keeps its steps' updates HOT
            await conn.execute(f"ALTER TABLE {fresh} SET ({', '.join(options)})")
        for name, definition in constraints:
            await conn.execute(f'ALTER TABLE {fresh} ADD CONSTRAINT "{name}{SUFFIX}" {_retarget(definition)}')
            renames.append(("constraint", name))
        for name, definition in indexes:
            create = re.sub(rf'INDEX "?{re.escape(name)}"? ON ', f'INDEX "{name}{SUFFIX}" ON ', definition, count=1)
            deferred.append(re.sub(rf"ON (\w+\.)?{live} ", rf"ON \g<1>{fresh} ", create, count=1))
            renames.append(("index", name))
    return renames, deferred


class Replay:
    """An ephemeral, unacknowledged consumer over the whole run stream, applied into the fresh tables."""

    def __init__(self, settings: RecorderSettings, pool: asyncpg.Pool, js: Any) -> None:
        self.settings = settings
        self.pool = pool
        self.js = js
        self.position = 0
        self.replayed = 0
        self.sub: Any = None

    async def open(self) -> None:
        """Start reading right after the position (from the stream's start at first)."""
        subjects = self.settings.subjects
        where: dict[str, Any] = {"deliver_policy": DeliverPolicy.ALL}
        if self.position:
            where = {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": self.position + 1}
        self.sub = await self.js.pull_subscribe(
            f"{subjects.prefix}.>", stream=subjects.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                inactive_threshold=120.0, mem_storage=True, **where,
            ),
        )

    async def until(self, last_seq: int, conn: asyncpg.Connection | None = None, bar: tqdm | None = None) -> None:
        """Apply every message up to last_seq (in conn's transaction, or one transaction per batch)."""
        while self.position < last_seq:
            try:
                messages = await self.sub.fetch(FETCH, timeout=2)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                if (await self.sub.consumer_info()).num_pending == 0:
                    return  # the last sequences were removed from the stream
                continue
            top = await self._apply(conn, messages)
            self.replayed += len(messages)
            if bar is not None:
                bar.update(top - self.position)
            self.position = max(self.position, top)

    async def _apply(self, conn: asyncpg.Connection | None, messages: list[Any]) -> int:
        """Apply messages to the fresh tables; returns their highest stream sequence."""
        if conn is None:
            async with self.pool.acquire() as own:
                return await self._apply(own, messages)
        batches, letters, top = reduce(messages, self.settings)
        try:
            async with conn.transaction():  # a savepoint inside the swap's transaction
                for batch in batches:
                    await db.apply_batch(conn, batch, db.REBUILD)
                await db.store_dead_letters(conn, letters, self.settings.dead_letter_payload_bytes)
        except Exception as error:
            if not is_refused(error):
                raise
            # As in the recorder: bisect down to the event Postgres refuses, dead-letter it, apply the rest.
            if len(messages) > 1:
                middle = len(messages) // 2
                await self._apply(conn, messages[:middle])
                await self._apply(conn, messages[middle:])
            else:
                await db.store_dead_letters(conn, [refused(messages[0], error, top or None)], self.settings.dead_letter_payload_bytes)
        return top

    async def close(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
            self.sub = None


# Runs in the live projection that the replay did not produce and no deletion removed.
UNSEEN_RUNS = f"""
SELECT l.name FROM {db.LIVE.runs} l
WHERE NOT EXISTS (SELECT 1 FROM {db.REBUILD.runs} r WHERE r.id = l.id)
  AND NOT EXISTS (SELECT 1 FROM deleted_runs t WHERE t.name = l.name)
ORDER BY l.name LIMIT 3
"""


async def swap(conn: asyncpg.Connection, replay: Replay, js: Any, stream: str, renames: list[tuple[str, str]]) -> int:
    """Catch up under a writers' lock and put the fresh tables in place; returns the last sequence."""
    async with conn.transaction():
        # EXCLUSIVE: live recorders wait, readers go on until the renames below.
        await conn.execute(f"LOCK TABLE {db.LIVE.runs}, {db.LIVE.details} IN EXCLUSIVE MODE")
        last_seq = (await js.stream_info(stream)).state.last_seq
        await replay.until(last_seq, conn)
        # Never delete a run the stream no longer shows (lost messages, another stream): refuse instead.
        missing = await conn.fetch(UNSEEN_RUNS)
        if missing:
            count = await conn.fetchval(f"SELECT count(*) FROM ({UNSEEN_RUNS.replace('LIMIT 3', '')}) m")
            raise RebuildFailed(
                f"{count} runs of the projection are not in the stream {stream} (e.g. {', '.join(r['name'] for r in missing)}) "
                "and were never deleted: a rebuild would lose them; the projection is left as it is"
            )
        sequence = await conn.fetchval("SELECT pg_get_serial_sequence($1, 'id')", db.LIVE.details)
        if sequence:
            await conn.execute(f"ALTER SEQUENCE {sequence} OWNED BY {db.REBUILD.details}.id")
        await conn.execute(f"DROP TABLE {db.LIVE.details}, {db.LIVE.runs}")
        await conn.execute(f"ALTER TABLE {db.REBUILD.runs} RENAME TO {db.LIVE.runs}")
        await conn.execute(f"ALTER TABLE {db.REBUILD.details} RENAME TO {db.LIVE.details}")
        for kind, name in renames:
            if kind == "index":
                await conn.execute(f'ALTER INDEX "{name}{SUFFIX}" RENAME TO "{name}"')
            else:
                table = await conn.fetchval(
                    "SELECT conrelid::regclass::text FROM pg_constraint WHERE conname = $1", f"{name}{SUFFIX}")
                await conn.execute(f'ALTER TABLE {table} RENAME CONSTRAINT "{name}{SUFFIX}" TO "{name}"')
        # The per-job statistics follow the new job_logs (its triggers, then job_stats recomputed from it).
        await conn.execute("SELECT joblog_install_job_stats()")
        await db.bump_version(conn)
    return last_seq


PURGED = "SELECT COALESCE((SELECT purged_messages FROM stream_purges WHERE stream = $1), 0)"


# EXCLUSIVE conflicts with the ROW SHARE a reaper's claim (SELECT ... FOR UPDATE) holds while it purges:
# it waits for the purges in flight and holds new claims back, without locking every tombstone row.
HOLD_PURGES = "LOCK TABLE deleted_runs IN EXCLUSIVE MODE"


async def check_stream(conn: asyncpg.Connection, js: Any, stream: str, after: int = 0) -> None:
    """Refuse a stream that lost messages joblog did not purge itself (limits, a manual purge, a lost node).

    Every sequence up to last_seq held a message once, so last_seq - messages were removed; the
    reaper counts what it purged (deleted runs' messages) in stream_purges. More removed than that
    means a rebuild would lose or change the runs those messages held. From a snapshot at `after`,
    only the messages after it matter: limits remove the oldest first, so a stream starting right
    after the snapshot (or earlier) is whole where it counts."""
    async with conn.transaction():
        # A reaper purges a claimed run's messages before it commits their count: wait for the
        # purges in flight and keep others from starting until both sides have been read, so
        # neither is seen without the other.
        await conn.execute(HOLD_PURGES)
        state = (await js.stream_info(stream)).state
        purged = await conn.fetchval(PURGED, stream)
    removed = state.last_seq - state.messages
    if removed <= purged or (after and state.first_seq <= after + 1):
        return
    if state.first_seq > 1 and state.first_seq - 1 > purged:
        raise RebuildFailed(
            f"the stream {stream} now starts at message {state.first_seq}: messages 1 to "
            f"{state.first_seq - 1} are gone (limits, a purge or a lost node) and joblog purged only {purged:,} "
            "messages of deleted runs, so a rebuild would delete the runs they held; the projection is left as it is "
            "(a snapshot taken with `joblog snapshot` lets a rebuild start after them)"
        )
    raise RebuildFailed(
        f"{removed - purged:,} messages of the stream {stream} are gone that joblog did not purge (limits, a "
        "manual purge or a lost node): a rebuild would lose or change the runs they held; the projection is left "
        "as it is (a snapshot taken with `joblog snapshot` lets a rebuild start after them)"
    )


async def rebuild(settings: RecorderSettings, *, progress: bool = True, full: bool = False) -> RebuildReport:
    """Replay the run stream into fresh tables and swap them in; the web keeps serving.

    With a snapshot (`joblog snapshot`) the fresh tables start as the snapshot and only the stream
    after its position is replayed; full=True replays the whole stream (e.g. after the projection's
    rules changed, which a snapshot taken under the old rules would not show)."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3)
    nc: Any = None
    replay: Replay | None = None
    lock = await pool.acquire()
    try:
        if not await lock.fetchval("SELECT pg_try_advisory_lock($1)", REBUILD_LOCK):
            raise RebuildFailed("another rebuild of this database is running; wait for it to finish")
        nc = await connect(settings, "joblog-rebuild", reconnect=False)
        js = nc.jetstream(timeout=10)
        await ensure_streams(js, settings.subjects, settings.stream_replicas)
        async with pool.acquire() as conn:
            start = None if full else await snapshots.newest(conn, settings.stream)
            await check_stream(conn, js, settings.stream, start.stream_seq if start else 0)
        async with pool.acquire() as conn:
            renames, deferred = await prepare(conn)
            if start is not None:
                await snapshots.restore(conn)
        replay = Replay(settings, pool, js)
        replay.position = start.stream_seq if start else 0
        await replay.open()
        began = time.monotonic()
        target = (await js.stream_info(settings.stream)).state.last_seq
        # tqdm shows events/s and the ETA as it goes; the report says the rate at the end.
        with tqdm(total=max(target - replay.position, 0), unit="event", desc="rebuild", disable=not progress) as bar:
            await replay.until(target, bar=bar)
        replay_seconds = time.monotonic() - began
        async with pool.acquire() as conn:
            for definition in deferred:
                await conn.execute(definition)
        # Events that arrived meanwhile, outside the lock, so the locked part stays short.
        await replay.until((await js.stream_info(settings.stream)).state.last_seq)
        for attempt in range(5):
            committed = replay.position
            try:
                async with pool.acquire() as conn:
                    last_seq = await swap(conn, replay, js, settings.stream, renames)
                break
            except asyncpg.DeadlockDetectedError:
                if attempt == 4:
                    raise
                # What the rolled-back catch-up applied is gone: read it again.
                await replay.close()
                replay.position = committed
                await replay.open()
                await asyncio.sleep(0.2 * (attempt + 1))
        async with pool.acquire() as conn:
            runs = await conn.fetchval(f"SELECT count(*) FROM {db.LIVE.runs}")
            details = await conn.fetchval(f"SELECT count(*) FROM {db.LIVE.details}")
        return RebuildReport(replayed=replay.replayed, stream_last_seq=last_seq, runs=runs, details=details,
                             snapshot_seq=start.stream_seq if start else None, replay_seconds=replay_seconds)
    finally:
        if replay is not None:
            await replay.close()
        if nc is not None:
            await close_nats(nc)
        await pool.release(lock)  # the session ends with the pool: the lock goes with it
        await pool.close()
