"""`joblog snapshot`: the projection at a stream position, so a rebuild replays only the stream after it.

The position is the recorder consumer's ack floor: every message up to it has been acknowledged, and
the recorder acknowledges only after the transaction that applied it committed, so a REPEATABLE READ
copy taken afterwards holds all of them (and perhaps some later ones, which a replay applies again,
idempotently). One snapshot is kept (projection_snapshot_runs / _details, no indexes: only a rebuild
reads them), described by its row in projection_snapshots.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import nats.js.errors

from services.contracts.nats import connect
from services.contracts.subjects import close_nats
from services.log_recorder import db
from services.log_recorder.errors import RebuildFailed
from services.log_recorder.settings import RecorderSettings

RUNS = "projection_snapshot_runs"
DETAILS = "projection_snapshot_details"
# A snapshot and a rebuild never run at once (rebuild.REBUILD_LOCK).
SNAPSHOT_LOCK = 7_305_118_203


@dataclass
class Snapshot:
    """A snapshot's position and size."""

    stream_seq: int
    runs: int
    details: int
    seconds: float = 0.0


async def take(settings: RecorderSettings) -> Snapshot:
    """Copy the projection at the recorder's ack floor; replaces the previous snapshot."""
    conn = await asyncpg.connect(settings.database_url)
    nc: Any = None
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SNAPSHOT_LOCK):
            raise RebuildFailed("a rebuild or another snapshot of this database is running; wait for it to finish")
        nc = await connect(settings, "joblog-snapshot", reconnect=False)
        js = nc.jetstream(timeout=10)
        try:
            info = await js.consumer_info(settings.stream, settings.recorder_consumer)
        except nats.js.errors.NotFoundError:
            raise RebuildFailed(f"no recorder consumer {settings.recorder_consumer} on {settings.stream}: "
                                "start a recorder first (a snapshot is of what it projected)") from None
        floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
        started = time.monotonic()
        async with conn.transaction(isolation="repeatable_read"):
            pending = await conn.fetchval("SELECT count(*) FROM run_deletions WHERE finished_at IS NULL")
            if pending:
                raise RebuildFailed(f"{pending} deletion(s) still in progress: a snapshot now would keep runs they "
                                    "remove; try again when the Monitor shows none")
            await conn.execute(f"DROP TABLE IF EXISTS {RUNS}, {DETAILS}")
            await conn.execute(f"CREATE TABLE {RUNS} AS SELECT * FROM {db.LIVE.runs}")
            await conn.execute(f"CREATE TABLE {DETAILS} AS SELECT * FROM {db.LIVE.details}")
            runs = await conn.fetchval(f"SELECT count(*) FROM {RUNS}")
            details = await conn.fetchval(f"SELECT count(*) FROM {DETAILS}")
            await conn.execute("DELETE FROM projection_snapshots")
            await conn.execute(
                "INSERT INTO projection_snapshots (stream, stream_seq, runs, details) VALUES ($1, $2, $3, $4)",
                settings.stream, floor, runs, details)
        return Snapshot(floor, runs, details, time.monotonic() - started)
    finally:
        if nc is not None:
            await close_nats(nc)
        await conn.close()


async def newest(conn: asyncpg.Connection, stream: str) -> Snapshot | None:
    """The snapshot of this stream, if one was taken (and its tables are there)."""
    row = await conn.fetchrow(
        "SELECT stream_seq, runs, details FROM projection_snapshots WHERE stream = $1 ORDER BY id DESC LIMIT 1", stream)
    if row is None or not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL",
                                               RUNS, DETAILS):
        return None
    return Snapshot(row["stream_seq"], row["runs"], row["details"])


async def _columns(conn: asyncpg.Connection, table: str) -> list[str]:
    """The table's columns that can be written (a generated one, like job_logs.has_gap, is computed)."""
    return [r["attname"] for r in await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped "
        "AND attgenerated = '' ORDER BY attnum", table)]


async def restore(conn: asyncpg.Connection) -> None:
    """Load the snapshot into the rebuild's fresh tables: the columns both have (a column added since gets its
    default, a generated one is computed again)."""
    for snapshot, fresh in ((RUNS, db.REBUILD.runs), (DETAILS, db.REBUILD.details)):
        wanted = set(await _columns(conn, fresh))
        shared = ", ".join(f'"{c}"' for c in await _columns(conn, snapshot) if c in wanted)
        await conn.execute(f"INSERT INTO {fresh} ({shared}) SELECT {shared} FROM {snapshot}")
