"""The recorder's SQL: one statement per table per batch, merged by the projection's rules.

The projection statements name their tables as {runs} / {details}: the live tables, or the
fresh ones a rebuild fills before it swaps them in.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache
import asyncpg

from services.contracts import WorkerHeartbeat
from services.log_recorder.projection import Batch


@dataclass(frozen=True)
class Tables:
    """Which pair of tables a projection writes."""

    runs: str = "job_logs"
    details: str = "job_log_details"


LIVE = Tables()
REBUILD = Tables("job_logs_rebuild", "job_log_details_rebuild")


@cache
def sql(template: str, tables: Tables) -> str:
    return template.format(runs=tables.runs, details=tables.details)


# The run's terminal event is the one with the lowest seq, whatever order they arrive in.
_WINS = "(EXCLUDED.terminal_seq IS NOT NULL AND (j.terminal_seq IS NULL OR EXCLUDED.terminal_seq < j.terminal_seq))"
_TERMINAL_COLUMNS = (
    "terminal_seq", "finished_at", "duration_ms", "stats", "error_class", "error_message",
    "error_traceback", "failed_step",
)

# Runs deleted by an administrator stay deleted: tombstoned names and the latest cutoff are skipped.
_NOT_DELETED = """
WHERE NOT EXISTS (SELECT 1 FROM deleted_runs t WHERE t.name = s.name)
  AND s.created_at >= COALESCE((SELECT max(created_before) FROM run_deletions), '-infinity')"""

UPSERT_RUNS = f"""
INSERT INTO {{runs}} AS j (
    id, name, job, status, terminal_seq, trigger, requested_by, worker_id, host, created_at, updated_at,
    started_at, finished_at, duration_ms, stats, error_class, error_message, error_traceback,
    failed_step, last_seq)
SELECT s.id, s.name, s.job, s.status, s.terminal_seq, s.trigger, s.requested_by, s.worker_id, s.host,
       s.created_at, s.updated_at, s.started_at, s.finished_at, s.duration_ms, s.stats::jsonb,
       s.error_class, s.error_message, s.error_traceback, s.failed_step, s.last_seq
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[],
            $13::timestamptz[], $14::bigint[], $15::text[], $16::text[], $17::text[], $18::text[],
            $19::text[], $20::int[])
     AS s(id, name, job, status, terminal_seq, trigger, requested_by, worker_id, host, created_at,
          updated_at, started_at, finished_at, duration_ms, stats, error_class, error_message,
          error_traceback, failed_step, last_seq)
{_NOT_DELETED}
ON CONFLICT (id) DO UPDATE SET
    status = CASE
        WHEN {_WINS} THEN EXCLUDED.status
        WHEN j.terminal_seq IS NOT NULL THEN j.status
        WHEN joblog_status_rank(EXCLUDED.status) > joblog_status_rank(j.status) THEN EXCLUDED.status
        ELSE j.status END,
    {", ".join(f"{c} = CASE WHEN {_WINS} THEN EXCLUDED.{c} ELSE j.{c} END" for c in _TERMINAL_COLUMNS)},
    trigger = COALESCE(j.trigger, EXCLUDED.trigger),
    requested_by = COALESCE(j.requested_by, EXCLUDED.requested_by),
    worker_id = COALESCE(j.worker_id, EXCLUDED.worker_id),
    host = COALESCE(j.host, EXCLUDED.host),
    started_at = COALESCE(j.started_at, EXCLUDED.started_at),
    created_at = LEAST(j.created_at, EXCLUDED.created_at),
    updated_at = GREATEST(j.updated_at, EXCLUDED.updated_at),
    last_seq = GREATEST(j.last_seq, EXCLUDED.last_seq)
"""

UPSERT_DETAILS = """
INSERT INTO {details} AS d (job_log_id, key, message, level, data, first_seq, seq, created_at, updated_at)
SELECT s.run_id, s.key, s.message, s.level, s.data::jsonb, s.first_seq, s.seq, s.created_at, s.updated_at
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[],
            $8::timestamptz[], $9::timestamptz[])
     AS s(run_id, key, message, level, data, first_seq, seq, created_at, updated_at)
WHERE EXISTS (SELECT 1 FROM {runs} r WHERE r.id = s.run_id)  -- not a deleted run
ON CONFLICT (job_log_id, key) DO UPDATE SET
    message = CASE WHEN EXCLUDED.seq > d.seq THEN EXCLUDED.message ELSE d.message END,
    level = CASE WHEN EXCLUDED.seq > d.seq THEN EXCLUDED.level ELSE d.level END,
    data = CASE WHEN EXCLUDED.seq > d.seq THEN EXCLUDED.data ELSE d.data END,
    updated_at = CASE WHEN EXCLUDED.seq > d.seq THEN EXCLUDED.updated_at ELSE d.updated_at END,
    seq = GREATEST(d.seq, EXCLUDED.seq),
    first_seq = LEAST(d.first_seq, EXCLUDED.first_seq),
    created_at = CASE WHEN EXCLUDED.first_seq < d.first_seq THEN EXCLUDED.created_at ELSE d.created_at END
WHERE EXCLUDED.seq <> d.seq OR EXCLUDED.first_seq <> d.first_seq
"""

INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (subject, payload, reason, stream_seq)
SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::bigint[])
ON CONFLICT (stream_seq) DO NOTHING
"""

TRACK_POSITION = """
INSERT INTO projection_state AS p (consumer, last_stream_seq, last_event_at, applied_events, updated_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (consumer) DO UPDATE SET
    last_stream_seq = GREATEST(p.last_stream_seq, EXCLUDED.last_stream_seq),
    last_event_at = GREATEST(p.last_event_at, EXCLUDED.last_event_at),
    applied_events = p.applied_events + EXCLUDED.applied_events,
    updated_at = now()
"""


RECORD_DELETION = """
INSERT INTO run_deletions (event_id, names, created_before, requested_by, occurred_at, stream_seq)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (event_id) DO NOTHING
"""

TOMBSTONE_NAMES = """
INSERT INTO deleted_runs (name, deleted_at, event_id)
SELECT unnest($1::text[]), $2, $3
ON CONFLICT (name) DO NOTHING
"""

DELETE_RUNS_BY_NAME = "DELETE FROM {runs} WHERE name = ANY($1::text[])"

DELETE_RUNS_CREATED_BEFORE = """
WITH gone AS (DELETE FROM {runs} WHERE created_at < $1 RETURNING name)
INSERT INTO deleted_runs (name, deleted_at, event_id)
SELECT name, $2, $3 FROM gone
ON CONFLICT (name) DO NOTHING
"""


async def apply_batch(conn: asyncpg.Connection, batch: Batch, tables: Tables = LIVE) -> None:
    """Write a reduced batch; the caller owns the transaction.

    Deletions go first, so the batch's events of a deleted run are skipped whatever their order.
    """
    for deleted, stream_seq in batch.deletions:
        await conn.execute(
            RECORD_DELETION, deleted.event_id, deleted.names, deleted.created_before, deleted.requested_by,
            deleted.occurred_at, stream_seq,
        )
        if deleted.names:
            await conn.execute(TOMBSTONE_NAMES, deleted.names, deleted.occurred_at, deleted.event_id)
            await conn.execute(sql(DELETE_RUNS_BY_NAME, tables), deleted.names)
        if deleted.created_before is not None:
            await conn.execute(
                sql(DELETE_RUNS_CREATED_BEFORE, tables), deleted.created_before, deleted.occurred_at, deleted.event_id
            )
    if batch.runs:
        await conn.execute(sql(UPSERT_RUNS, tables), *batch.run_columns())
    if batch.details:
        await conn.execute(sql(UPSERT_DETAILS, tables), *batch.detail_columns())
    if tables is LIVE and (batch.runs or batch.deletions):
        await bump_version(conn)


BUMP_VERSION = "UPDATE projection_version SET version = version + 1"


async def bump_version(conn: asyncpg.Connection) -> None:
    """Tell readers (the web's page cache) the projection changed; commits with the change."""
    await conn.execute(BUMP_VERSION)


async def store_dead_letters(conn: asyncpg.Connection, letters: list[tuple[str, bytes, str, int | None]]) -> None:
    if letters:
        await conn.execute(INSERT_DEAD_LETTERS, *map(list, zip(*letters)))


async def track_position(
    conn: asyncpg.Connection, consumer: str, stream_seq: int, last_event_at: datetime | None, applied: int
) -> None:
    await conn.execute(TRACK_POSITION, consumer, stream_seq, last_event_at, applied)


UPSERT_WORKERS = """
INSERT INTO workers AS w (worker_id, host, pid, started_at, last_seen_at, running, jobs)
-- unnest cannot take ragged uuid arrays: running travels as one '{...}' literal per worker.
SELECT s.worker_id, s.host, s.pid, s.started_at, s.last_seen_at, s.running::uuid[], s.jobs::jsonb
FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[], $5::timestamptz[], $6::text[], $7::text[])
     AS s(worker_id, host, pid, started_at, last_seen_at, running, jobs)
ON CONFLICT (worker_id) DO UPDATE SET
    host = EXCLUDED.host, pid = EXCLUDED.pid, started_at = EXCLUDED.started_at,
    last_seen_at = EXCLUDED.last_seen_at, running = EXCLUDED.running, jobs = EXCLUDED.jobs,
    lost_at = NULL
WHERE EXCLUDED.last_seen_at > w.last_seen_at
"""


async def record_heartbeats(conn: asyncpg.Connection, beats: dict[str, tuple[WorkerHeartbeat, datetime]]) -> None:
    """Store the latest heartbeat of each worker (seen_at: JetStream's time of the message)."""
    if not beats:
        return
    rows = sorted(beats.values(), key=lambda b: b[0].worker_id)
    await conn.execute(
        UPSERT_WORKERS,
        [b.worker_id for b, _ in rows], [b.host for b, _ in rows], [b.pid for b, _ in rows],
        [b.started_at for b, _ in rows], [seen for _, seen in rows],
        ["{" + ",".join(str(r) for r in b.running) + "}" for b, _ in rows],
        [json.dumps([j.model_dump() for j in b.jobs]) for b, _ in rows],
    )


# Runs still open whose worker has not been heard from since the cutoff.
ORPHANED_RUNS = """
SELECT j.id, j.name, j.job, w.worker_id, w.last_seen_at
FROM job_logs j JOIN workers w ON w.worker_id = j.worker_id
WHERE j.status IN ('new', 'processing') AND w.last_seen_at < $1
ORDER BY j.id
"""

MARK_WORKERS_LOST = """
UPDATE workers SET lost_at = now() WHERE worker_id = ANY($1::text[]) AND lost_at IS NULL AND last_seen_at < $2
"""


async def orphaned_runs(conn: asyncpg.Connection, seen_before: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(ORPHANED_RUNS, seen_before)


async def mark_workers_lost(conn: asyncpg.Connection, worker_ids: list[str], seen_before: datetime) -> None:
    await conn.execute(MARK_WORKERS_LOST, worker_ids, seen_before)


RECORD_LAG = """
INSERT INTO projection_state AS p (consumer, num_pending, num_ack_pending, num_redelivered, stream_last_seq, lag_checked_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (consumer) DO UPDATE SET
    num_pending = EXCLUDED.num_pending, num_ack_pending = EXCLUDED.num_ack_pending,
    num_redelivered = EXCLUDED.num_redelivered, stream_last_seq = EXCLUDED.stream_last_seq,
    lag_checked_at = EXCLUDED.lag_checked_at
"""


async def record_lag(
    conn: asyncpg.Connection, consumer: str, pending: int, ack_pending: int, redelivered: int, stream_last_seq: int
) -> None:
    """JetStream's view of the consumer's lag, for the Jobs Monitor and /metrics."""
    await conn.execute(RECORD_LAG, consumer, pending, ack_pending, redelivered, stream_last_seq)
