"""The recorder's SQL: one statement per batch (a CTE per table), merged by the projection's rules.

The projection statements name their tables as {runs} / {details}: the live tables, or the
fresh ones a rebuild fills before it swaps them in.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import asyncpg

from services.contracts import WorkerHeartbeat, WorkerStopped
from services.log_recorder.projection import Batch, action_columns, schedule_columns, scrub


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
    "error_traceback", "failed_step", "error_fingerprint",
)

# Runs deleted by an administrator stay deleted: their names are tombstoned. A cutoff is applied once,
# where it stands in the stream, and never kept as a filter (it would hide runs created later).
_NOT_DELETED = """
WHERE NOT EXISTS (SELECT 1 FROM deleted_runs t WHERE t.name = s.name)"""

UPSERT_RUNS = f"""
INSERT INTO {{runs}} AS j (
    id, name, job, status, terminal_seq, trigger, requested_by, worker_id, host, created_at, updated_at,
    started_at, finished_at, duration_ms, stats, error_class, error_message, error_traceback,
    failed_step, last_seq, incarnation, command_id, error_fingerprint, seen_seqs)
SELECT s.id, s.name, s.job, s.status, s.terminal_seq, s.trigger, s.requested_by, s.worker_id, s.host,
       s.created_at, s.updated_at, s.started_at, s.finished_at, s.duration_ms, s.stats::jsonb,
       s.error_class, s.error_message, s.error_traceback, s.failed_step, s.last_seq, s.incarnation, s.command_id,
       s.error_fingerprint, s.seen_seqs::int4multirange
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[],
            $13::timestamptz[], $14::bigint[], $15::text[], $16::text[], $17::text[], $18::text[],
            $19::text[], $20::int[], $21::uuid[], $22::text[], $23::text[], $24::text[])
     AS s(id, name, job, status, terminal_seq, trigger, requested_by, worker_id, host, created_at,
          updated_at, started_at, finished_at, duration_ms, stats, error_class, error_message,
          error_traceback, failed_step, last_seq, incarnation, command_id, error_fingerprint, seen_seqs)
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
    incarnation = COALESCE(EXCLUDED.incarnation, j.incarnation),
    command_id = COALESCE(j.command_id, EXCLUDED.command_id),
    created_at = LEAST(j.created_at, EXCLUDED.created_at),
    updated_at = GREATEST(j.updated_at, EXCLUDED.updated_at),
    last_seq = GREATEST(j.last_seq, EXCLUDED.last_seq),
    seen_seqs = j.seen_seqs + EXCLUDED.seen_seqs  -- NULL (a run from before 0009) stays unknown
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
INSERT INTO dead_letters (subject, payload, reason, stream_seq, payload_bytes)
SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::bigint[], $5::int[])
ON CONFLICT (stream_seq) DO NOTHING
"""

# A dead letter keeps this much of its payload (enough to see what it was); payload_bytes says how much it had.
DEAD_LETTER_PAYLOAD_BYTES = 4096

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
INSERT INTO run_deletions (event_id, names, created_before, requested_by, occurred_at, stream_seq, job, except_jobs,
                           statuses, finished_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (event_id) DO NOTHING
"""

# The job is remembered when the projection knows it: the reaper then purges exact subjects.
TOMBSTONE_NAMES = """
INSERT INTO deleted_runs (name, deleted_at, event_id, job)
SELECT n.name, $2, $3, (SELECT j.job FROM job_logs j WHERE j.name = n.name)
FROM unnest($1::text[]) AS n(name)
ON CONFLICT (name) DO NOTHING
"""

DELETE_RUNS_BY_NAME = "DELETE FROM {runs} WHERE name = ANY($1::text[])"

INSERT_ACTIONS = """
INSERT INTO actions (event_id, occurred_at, actor, action, job, target, detail, source, stream_seq)
SELECT s.event_id, s.occurred_at, s.actor, s.action, s.job, s.target, s.detail::jsonb, s.source, s.stream_seq
FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::bigint[])
     AS s(event_id, occurred_at, actor, action, job, target, detail, source, stream_seq)
ON CONFLICT (event_id) DO NOTHING
"""

# A job's schedule state: its newest schedule.paused / schedule.resumed (stream order) wins.
UPSERT_SCHEDULE_STATES = """
INSERT INTO schedule_states AS s (job, paused, requested_by, reason, changed_at, event_id, stream_seq)
SELECT * FROM unnest($1::text[], $2::boolean[], $3::text[], $4::text[], $5::timestamptz[], $6::uuid[], $7::bigint[])
ON CONFLICT (job) DO UPDATE SET
    paused = EXCLUDED.paused, requested_by = EXCLUDED.requested_by, reason = EXCLUDED.reason,
    changed_at = EXCLUDED.changed_at, event_id = EXCLUDED.event_id, stream_seq = EXCLUDED.stream_seq
WHERE (EXCLUDED.stream_seq, EXCLUDED.changed_at) >= (s.stream_seq, s.changed_at)
"""

# The runs a created_before deletion covers: $1 cutoff, $2 job (or null: any), $3 jobs left out, $4 statuses (or null: any).
CUTOFF = """created_at < $1 AND ($2::text IS NULL OR job = $2) AND NOT (job = ANY(COALESCE($3::text[], '{{}}')))
  AND ($4::text[] IS NULL OR status = ANY($4::text[]))"""

DELETE_RUNS_CREATED_BEFORE = f"""
WITH gone AS (DELETE FROM {{runs}} WHERE {CUTOFF} RETURNING name, job)
INSERT INTO deleted_runs (name, deleted_at, event_id, job)
SELECT name, $5, $6, job FROM gone
ON CONFLICT (name) DO NOTHING
"""

# A created_before deletion in progress (carried out in chunks by the reaper) must delete what it would
# have deleted at its place in the stream. So a run of this batch is spared by it when its events here
# come after the deletion in the stream ($2: their lowest stream sequence; null when unknown) and it
# does not match the deletion as it stands (not in the projection yet, or not in its statuses); a
# run matching it stays matching (created_at only moves earlier, a terminal status never changes).
# Events from before the deletion (a parallel recorder's batch that commits late) take a spare back.
SPARE_LATE_RUNS = """
INSERT INTO run_deletion_spared (event_id, name)
SELECT d.event_id, s.name
FROM run_deletions d CROSS JOIN unnest($1::text[], $2::bigint[]) AS s(name, seq)
WHERE d.finished_at IS NULL AND d.created_before IS NOT NULL AND COALESCE(s.seq > d.stream_seq, true)
  AND NOT EXISTS (SELECT 1 FROM job_logs j WHERE j.name = s.name AND j.created_at < d.created_before
                  AND (d.job IS NULL OR j.job = d.job) AND NOT (j.job = ANY(COALESCE(d.except_jobs, '{}')))
                  AND (d.statuses IS NULL OR j.status = ANY(d.statuses)))
ON CONFLICT DO NOTHING
"""

UNSPARE_EARLY_RUNS = """
DELETE FROM run_deletion_spared p USING run_deletions d, unnest($1::text[], $2::bigint[]) AS s(name, seq)
WHERE p.event_id = d.event_id AND p.name = s.name AND d.finished_at IS NULL AND s.seq < d.stream_seq
"""

# A tombstoned run's event reached the stream after its purge (a late relay): purge it again.
REARM_PURGE = """
UPDATE deleted_runs t SET purged_at = NULL, job = COALESCE(t.job, s.job)
FROM unnest($1::text[], $2::text[]) AS s(name, job)
WHERE t.name = s.name AND t.purged_at IS NOT NULL
"""


# The common batch in ONE statement ---------------------------------------------------------------
# Each part below is a data-modifying CTE whose parameters count from $1; batch_statement joins the
# parts a batch needs into one WITH, renumbering them. A single statement is atomic without BEGIN /
# COMMIT, so a batch costs one round trip. Every part sees the tables as they were before the statement
# (none reads what another writes), which is what each needs:
# - the spares read job_logs before this batch's upsert (they ran before it as statements too), and a
#   name comes once with its lowest stream seq, so spare (seq after the deletion) and unspare (seq
#   before it) never touch the same row;
# - details go to the runs this statement writes (runs_written: every run of the batch but a deleted
#   one; a detail's run is always in its batch), so a deleted run gets no detail even while the
#   reaper has yet to remove its rows, which it then does anyway.
# The final SELECT reads the parts in order, which runs them in that order (a CTE runs when first
# read): every writer locks rows as the statements did one by one (runs, details, the version row,
# the consumer's position), so recorders sharing a consumer never deadlock. Statement triggers on
# job_logs (job_stats, run counts) fire at the statement's end, inside the same transaction.

_PARTS: dict[str, tuple[str, str, int]] = {  # part: (CTE name, statement, parameters)
    "spare": ("spared", SPARE_LATE_RUNS, 2),  # $1 names (each once), $2 their lowest stream seq here
    "unspare": ("unspared", UNSPARE_EARLY_RUNS, 2),
    "runs": ("runs_written", UPSERT_RUNS.rstrip() + "\nRETURNING j.id", 24),
    "rearm": ("rearmed", REARM_PURGE, 2),
    "details": ("details_written", UPSERT_DETAILS.replace(
        "WHERE EXISTS (SELECT 1 FROM {runs} r WHERE r.id = s.run_id)  -- not a deleted run",
        "WHERE s.run_id IN (SELECT id FROM runs_written)  -- not a deleted run"), 9),
    "actions": ("actions_written", INSERT_ACTIONS, 9),
    "schedules": ("schedules_written", UPSERT_SCHEDULE_STATES, 7),
    "letters": ("letters_written", INSERT_DEAD_LETTERS, 5),
    "version": ("bumped", "UPDATE projection_version SET version = version + 1", 0),
    "position": ("tracked", TRACK_POSITION, 4),
}


def _renumber(text: str, by: int) -> str:
    return re.sub(r"\$(\d+)", lambda m: f"${int(m[1]) + by}", text) if by else text


@cache
def batch_statement(parts: tuple[str, ...], tables: Tables = LIVE) -> str:
    """One statement writing these parts of a batch, in this order; its row counts each part's rows."""
    ctes: list[str] = []
    offset = 0
    for part in parts:
        name, statement, count = _PARTS[part]
        if "RETURNING" not in statement:
            statement = statement.rstrip() + "\nRETURNING 1"
        statement = statement.strip().replace("{runs}", tables.runs).replace("{details}", tables.details)
        ctes.append(f"{name} AS (\n{_renumber(statement, offset)}\n)")
        offset += count
    reads = ", ".join(f"(SELECT count(*) FROM {_PARTS[part][0]}) AS {part}" for part in parts)
    return "WITH " + ",\n".join(ctes) + f"\nSELECT {reads}"


@dataclass(frozen=True)
class Position:
    """Where a consumer's batch ends: written with the batch (projection_state)."""

    consumer: str
    stream_seq: int
    last_event_at: datetime | None
    applied: int


def _names(batch: Batch) -> tuple[list[str], list[int | None], list[str]]:
    """Each run name of the batch once, with its lowest stream seq here (null when unknown) and its job."""
    first: dict[str, int | None] = {}
    jobs: dict[str, str] = {}
    for run in batch.runs.values():
        seq = batch.first_stream_seq.get(run.id)
        held = first.get(run.name)
        first[run.name] = seq if held is None else (held if seq is None else min(held, seq))
        jobs.setdefault(run.name, run.job)
    names = sorted(first)
    return names, [first[n] for n in names], [jobs[n] for n in names]


async def apply_batch(
    conn: asyncpg.Connection, batch: Batch, tables: Tables = LIVE, *, position: Position | None = None,
    letters: Sequence[tuple[str, bytes, str, int | None]] = (), keep: int = DEAD_LETTER_PAYLOAD_BYTES,
) -> bool:
    """Write a reduced batch (and, given them, the consumer's position and dead letters); True when the
    reaper has work from it.

    The batch's rows are one statement, atomic on its own: a batch without a deletion needs no
    transaction around it. A batch ends at a deletion (Batch.closed), so the deletion goes last, in
    statements of its own: the caller wraps such a batch in a transaction. Into the live tables a
    deletion is only recorded here (and names tombstoned, so later events of those runs are skipped):
    the reaper (retention.py) removes the rows in bounded chunks of their own, outside this
    transaction, and purges the runs' messages from the stream. A rebuild's fresh tables are not read
    by anyone yet, so there the deletion is carried out at once, where it stands in the stream.
    """
    live = tables is LIVE
    parts: list[str] = []
    args: list[Any] = []
    if batch.runs:
        names, first_seqs, jobs = _names(batch) if live else ([], [], [])
        if live:
            parts += ["spare", "unspare"]
            args += [names, first_seqs, names, first_seqs]
        parts.append("runs")
        args += batch.run_columns()
        if live:
            parts.append("rearm")
            args += [names, jobs]
    if batch.details:
        parts.append("details")
        args += batch.detail_columns()
    if batch.actions:
        parts.append("actions")
        args += action_columns(batch.actions)
    if batch.schedules:
        parts.append("schedules")
        args += schedule_columns(batch.schedules)
    if letters:
        parts.append("letters")
        args += dead_letter_columns(letters, keep)
    if live and (batch.runs or batch.deletions or batch.schedules):
        parts.append("version")
    if position is not None:
        parts.append("position")
        args += [position.consumer, position.stream_seq, position.last_event_at, position.applied]
    reaper_work = False
    if parts:
        written = await conn.fetchrow(batch_statement(tuple(parts), tables), *args)
        reaper_work = bool(written and "rearm" in parts and written["rearm"])
    for deleted, stream_seq in batch.deletions:
        reaper_work = True
        await conn.execute(
            RECORD_DELETION, deleted.event_id, deleted.names, deleted.created_before, deleted.requested_by,
            deleted.occurred_at, stream_seq, deleted.job, deleted.except_jobs,
            list(deleted.statuses) if deleted.statuses is not None else None,
            None if live else deleted.occurred_at,
        )
        if deleted.names:
            await conn.execute(TOMBSTONE_NAMES, deleted.names, deleted.occurred_at, deleted.event_id)
            if not live:
                await conn.execute(sql(DELETE_RUNS_BY_NAME, tables), deleted.names)
        if deleted.created_before is not None and not live:
            await conn.execute(
                sql(DELETE_RUNS_CREATED_BEFORE, tables), deleted.created_before, deleted.job, deleted.except_jobs,
                list(deleted.statuses) if deleted.statuses is not None else None, deleted.occurred_at, deleted.event_id,
            )
    return reaper_work


BUMP_VERSION = "UPDATE projection_version SET version = version + 1"


async def bump_version(conn: asyncpg.Connection) -> None:
    """Tell readers (the web's page cache) the projection changed; commits with the change."""
    await conn.execute(BUMP_VERSION)


def dead_letter_columns(letters: Sequence[tuple[str, bytes, str, int | None]], keep: int) -> list[list[Any]]:
    """Dead letters with a bounded prefix of their payload (a deleted run's text must not live on in full)."""
    return [[s for s, _, _, _ in letters], [p[:keep] for _, p, _, _ in letters], [r for _, _, r, _ in letters],
            [q for _, _, _, q in letters], [len(p) for _, p, _, _ in letters]]


async def store_dead_letters(conn: asyncpg.Connection, letters: list[tuple[str, bytes, str, int | None]],
                             keep: int = DEAD_LETTER_PAYLOAD_BYTES) -> None:
    """Store dead letters with a bounded prefix of their payload (a deleted run's text must not live on in full)."""
    if letters:
        await conn.execute(INSERT_DEAD_LETTERS, *dead_letter_columns(letters, keep))


async def track_position(
    conn: asyncpg.Connection, consumer: str, stream_seq: int, last_event_at: datetime | None, applied: int
) -> None:
    await conn.execute(TRACK_POSITION, consumer, stream_seq, last_event_at, applied)


# Heartbeats ----------------------------------------------------------------------------------
# Each is written on its own (a savepoint each): one that Postgres refuses is dropped with a warning
# and never stops the others, nor the judge.

UPSERT_WORKER = """
INSERT INTO workers AS w (worker_id, host, pid, started_at, last_seen_at, jobs, stopped_at)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
ON CONFLICT (worker_id) DO UPDATE SET
    host = EXCLUDED.host, pid = EXCLUDED.pid, started_at = EXCLUDED.started_at,
    last_seen_at = EXCLUDED.last_seen_at, jobs = COALESCE(EXCLUDED.jobs, w.jobs),
    stopped_at = EXCLUDED.stopped_at, lost_at = NULL
WHERE EXCLUDED.last_seen_at >= w.last_seen_at
"""

UPSERT_INCARNATION = """
INSERT INTO worker_incarnations AS i (incarnation, worker_id, host, pid, started_at, first_seen_at, last_seen_at, stopped_at)
VALUES ($1, $2, $3, $4, $5, $6, $6, $7)
ON CONFLICT (incarnation) DO UPDATE SET
    last_seen_at = GREATEST(i.last_seen_at, EXCLUDED.last_seen_at),
    first_seen_at = LEAST(i.first_seen_at, EXCLUDED.first_seen_at),
    stopped_at = COALESCE(i.stopped_at, EXCLUDED.stopped_at)
"""

# The runs a heartbeat lists are held by its incarnation, as of the heartbeat's time.
RENEW_LEASES = """
INSERT INTO run_leases AS l (run_id, incarnation, listed_at)
SELECT unnest($1::uuid[]), $2, $3
ON CONFLICT (run_id) DO UPDATE SET
    incarnation = EXCLUDED.incarnation, listed_at = GREATEST(l.listed_at, EXCLUDED.listed_at)
"""


async def record_worker_event(conn: asyncpg.Connection, event: WorkerHeartbeat | WorkerStopped, seen_at: datetime) -> None:
    """Store one heartbeat or stop (seen_at: JetStream's time of the message); the caller owns the transaction."""
    stopped_at = seen_at if isinstance(event, WorkerStopped) else None
    jobs = json.dumps([j.model_dump() for j in event.jobs]) if isinstance(event, WorkerHeartbeat) else None
    started_at = event.started_at if isinstance(event, WorkerHeartbeat) else seen_at
    host = scrub(event.host)
    await conn.execute(UPSERT_WORKER, event.worker_id, host, event.pid, started_at, seen_at, jobs, stopped_at)
    if event.incarnation is None:
        return
    await conn.execute(UPSERT_INCARNATION, event.incarnation, event.worker_id, host, event.pid, started_at, seen_at, stopped_at)
    if isinstance(event, WorkerHeartbeat) and event.running:
        await conn.execute(RENEW_LEASES, list(event.running), event.incarnation, seen_at)


# Judging --------------------------------------------------------------------------------------

# Open runs the judge has not seen before start their lease now (JetStream's clock).
NOTICE_OPEN_RUNS = """
INSERT INTO run_leases (run_id, incarnation, noticed_at)
SELECT j.id, j.incarnation, $1 FROM job_logs j
WHERE j.status IN ('new', 'processing') AND j.incarnation IS NOT NULL
ON CONFLICT (run_id) DO UPDATE SET noticed_at = COALESCE(run_leases.noticed_at, EXCLUDED.noticed_at)
"""

# A run is orphaned when its incarnation did not stop cleanly and either no heartbeat of it has
# listed the run since the cutoff, or a newer process of the same worker id began beating after
# the old one fell silent (a restarted container keeps its worker id). Runs of events without an
# incarnation (older workers) are judged by their worker id's heartbeats, as before.
ORPHANED_RUNS = """
WITH open_runs AS (
    SELECT j.id, j.name, j.job, j.worker_id, j.incarnation,
           COALESCE(l.listed_at, l.noticed_at) AS held_at,  -- last listed; else when first judged
           COALESCE(GREATEST(l.listed_at, i.last_seen_at), l.noticed_at) AS heard_at
    FROM job_logs j
    JOIN run_leases l ON l.run_id = j.id
    LEFT JOIN worker_incarnations i ON i.incarnation = j.incarnation
    WHERE j.status IN ('new', 'processing') AND j.incarnation IS NOT NULL AND i.stopped_at IS NULL
), judged AS (
    SELECT o.*, (SELECT min(n.first_seen_at) FROM worker_incarnations n
                  WHERE n.worker_id = o.worker_id AND n.incarnation <> o.incarnation
                    AND n.first_seen_at > o.heard_at) AS replaced_at
    FROM open_runs o
)
SELECT id, name, job, worker_id, incarnation, held_at AS last_seen_at, replaced_at
FROM judged WHERE held_at < $1 OR replaced_at IS NOT NULL
UNION ALL
SELECT j.id, j.name, j.job, w.worker_id, NULL, w.last_seen_at, NULL
FROM job_logs j JOIN workers w ON w.worker_id = j.worker_id
WHERE j.status IN ('new', 'processing') AND j.incarnation IS NULL AND w.last_seen_at < $1 AND w.stopped_at IS NULL
ORDER BY 1
"""

MARK_WORKERS_LOST = """
UPDATE workers SET lost_at = now() WHERE worker_id = ANY($1::text[]) AND lost_at IS NULL AND last_seen_at < $2
"""

# Leases of runs that have ended, and processes long gone, are of no further use.
FORGET_ENDED = """
WITH ended AS (
    DELETE FROM run_leases l WHERE NOT EXISTS (
        SELECT 1 FROM job_logs j WHERE j.id = l.run_id AND j.status IN ('new', 'processing'))
      AND COALESCE(l.listed_at, l.noticed_at) < $1
)
DELETE FROM worker_incarnations WHERE last_seen_at < $2
"""


async def notice_open_runs(conn: asyncpg.Connection, now: datetime) -> None:
    await conn.execute(NOTICE_OPEN_RUNS, now)


async def orphaned_runs(conn: asyncpg.Connection, seen_before: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(ORPHANED_RUNS, seen_before)


async def mark_workers_lost(conn: asyncpg.Connection, worker_ids: list[str], seen_before: datetime) -> None:
    await conn.execute(MARK_WORKERS_LOST, worker_ids, seen_before)


async def forget_ended(conn: asyncpg.Connection, leases_before: datetime, processes_before: datetime) -> None:
    await conn.execute(FORGET_ENDED, leases_before, processes_before)
