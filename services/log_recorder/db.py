"""The recorder's SQL: one statement per table per batch, merged by the projection's rules."""
from __future__ import annotations

from datetime import datetime

import asyncpg

from services.log_recorder.projection import Batch

# The run's terminal event is the one with the lowest seq, whatever order they arrive in.
_WINS = "(EXCLUDED.terminal_seq IS NOT NULL AND (j.terminal_seq IS NULL OR EXCLUDED.terminal_seq < j.terminal_seq))"
_TERMINAL_COLUMNS = (
    "terminal_seq", "finished_at", "duration_ms", "stats", "error_class", "error_message",
    "error_traceback", "failed_step",
)

UPSERT_RUNS = f"""
INSERT INTO job_logs AS j (
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
INSERT INTO job_log_details AS d (job_log_id, key, message, level, data, first_seq, seq, created_at, updated_at)
SELECT s.run_id, s.key, s.message, s.level, s.data::jsonb, s.first_seq, s.seq, s.created_at, s.updated_at
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[],
            $8::timestamptz[], $9::timestamptz[])
     AS s(run_id, key, message, level, data, first_seq, seq, created_at, updated_at)
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


async def apply_batch(conn: asyncpg.Connection, batch: Batch) -> None:
    """Write a reduced batch; the caller owns the transaction."""
    if batch.runs:
        await conn.execute(UPSERT_RUNS, *batch.run_columns())
    if batch.details:
        await conn.execute(UPSERT_DETAILS, *batch.detail_columns())


async def store_dead_letters(conn: asyncpg.Connection, letters: list[tuple[str, bytes, str, int | None]]) -> None:
    if letters:
        await conn.execute(INSERT_DEAD_LETTERS, *map(list, zip(*letters)))


async def track_position(
    conn: asyncpg.Connection, consumer: str, stream_seq: int, last_event_at: datetime | None, applied: int
) -> None:
    await conn.execute(TRACK_POSITION, consumer, stream_seq, last_event_at, applied)
