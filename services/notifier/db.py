"""The notifier's SQL: alerts and their deliveries (the outbox), runs and schedules as it judges them."""
from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from services.contracts import AlertRaised

INSERT_ALERT = """
INSERT INTO alerts (id, kind, job, run_name, condition_key, message, link, details, raised_at, cleared_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10)
ON CONFLICT DO NOTHING
RETURNING id
"""
# A condition already open takes the new occurrence as a repeat: no second alert until it clears.
REPEAT_ALERT = """
UPDATE alerts SET repeats = repeats + 1 WHERE condition_key = $1 AND cleared_at IS NULL AND id <> $2
"""
INSERT_DELIVERIES = """
INSERT INTO alert_deliveries (alert_id, channel, target)
SELECT $1, c, t FROM unnest($2::text[], $3::text[]) AS d(c, t)
ON CONFLICT DO NOTHING
"""
CLEAR = """
UPDATE alerts SET cleared_at = $2 WHERE condition_key = $1 AND cleared_at IS NULL RETURNING id, run_name, details
"""
OPEN_ALERT = "SELECT id, run_name, details FROM alerts WHERE condition_key = $1 AND cleared_at IS NULL"
OPEN_OF_KIND = "SELECT condition_key, job FROM alerts WHERE kind = $1 AND cleared_at IS NULL"


def condition(kind: str, job: str | None) -> str:
    return f"{kind}:{job or '_'}"


async def raise_alert(conn: asyncpg.Connection, alert: AlertRaised, targets: list[tuple[str, str]], *,
                      cleared: bool = False) -> bool:
    """Store the alert and a pending delivery per target, unless its condition is open already (a repeat)."""
    key = condition(alert.kind, alert.job)
    inserted = await conn.fetchval(
        INSERT_ALERT, alert.alert_id, alert.kind, alert.job, alert.run, key, alert.message, alert.link,
        json.dumps(alert.details), alert.occurred_at, alert.occurred_at if cleared else None,
    )
    if inserted is None:
        await conn.execute(REPEAT_ALERT, key, alert.alert_id)
        return False
    await conn.execute(INSERT_DELIVERIES, alert.alert_id, [c for c, _ in targets], [t for _, t in targets])
    return True


async def clear(conn: asyncpg.Connection, kind: str, job: str | None, at: datetime) -> asyncpg.Record | None:
    """Close the open alert of this condition; returns it, or None if none was open."""
    return await conn.fetchrow(CLEAR, condition(kind, job), at)


async def open_alert(conn: asyncpg.Connection, kind: str, job: str | None) -> asyncpg.Record | None:
    return await conn.fetchrow(OPEN_ALERT, condition(kind, job))


async def open_jobs(conn: asyncpg.Connection, kind: str) -> list[str | None]:
    return [row["job"] for row in await conn.fetch(OPEN_OF_KIND, kind)]


# --- runs ------------------------------------------------------------------------------------

UPSERT_CREATED = """
INSERT INTO notifier_runs AS r (run_id, job, name, incarnation, worker_id, created_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (run_id) DO UPDATE SET
    created_at = LEAST(r.created_at, EXCLUDED.created_at),
    incarnation = COALESCE(r.incarnation, EXCLUDED.incarnation),
    worker_id = COALESCE(r.worker_id, EXCLUDED.worker_id)
"""
UPSERT_STARTED = """
INSERT INTO notifier_runs AS r (run_id, job, name, incarnation, worker_id, started_at, status)
VALUES ($1, $2, $3, $4, $5, $6, 'processing')
ON CONFLICT (run_id) DO UPDATE SET
    started_at = LEAST(r.started_at, EXCLUDED.started_at),
    incarnation = COALESCE(EXCLUDED.incarnation, r.incarnation),
    worker_id = COALESCE(EXCLUDED.worker_id, r.worker_id),
    status = CASE WHEN r.terminal_seq IS NULL THEN 'processing' ELSE r.status END
"""
RESULT = "SELECT status, terminal_seq, started_at FROM notifier_runs WHERE run_id = $1 FOR UPDATE"
UPSERT_RESULT = """
INSERT INTO notifier_runs AS r (run_id, job, name, status, terminal_seq, finished_at, duration_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (run_id) DO UPDATE SET
    status = EXCLUDED.status, terminal_seq = EXCLUDED.terminal_seq, finished_at = EXCLUDED.finished_at,
    duration_ms = COALESCE(EXCLUDED.duration_ms, r.duration_ms)
"""
MEDIAN = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS median, count(*) AS runs
FROM (SELECT duration_ms FROM notifier_runs
      WHERE job = $1 AND status = 'success' AND duration_ms IS NOT NULL AND run_id <> $3
      ORDER BY finished_at DESC LIMIT $2) AS last_successes
"""
OPEN_RUNS = """
SELECT run_id, job, name, incarnation, worker_id, started_at FROM notifier_runs
WHERE terminal_seq IS NULL AND status = 'processing' AND started_at IS NOT NULL
"""
CREATED_BETWEEN = "SELECT EXISTS (SELECT 1 FROM notifier_runs WHERE job = $1 AND created_at BETWEEN $2 AND $3)"


async def run_created(conn: asyncpg.Connection, run_id: uuid.UUID, job: str, name: str, incarnation: uuid.UUID | None,
                      worker_id: str | None, at: datetime) -> None:
    await conn.execute(UPSERT_CREATED, run_id, job, name, incarnation, worker_id, at)


async def run_started(conn: asyncpg.Connection, run_id: uuid.UUID, job: str, name: str, incarnation: uuid.UUID | None,
                      worker_id: str | None, at: datetime) -> None:
    await conn.execute(UPSERT_STARTED, run_id, job, name, incarnation, worker_id, at)


async def previous_result(conn: asyncpg.Connection, run_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(RESULT, run_id)


async def store_result(conn: asyncpg.Connection, run_id: uuid.UUID, job: str, name: str, status: str, seq: int,
                       at: datetime, duration_ms: int | None) -> None:
    await conn.execute(UPSERT_RESULT, run_id, job, name, status, seq, at, duration_ms)


async def median_ms(conn: asyncpg.Connection, job: str, runs: int, excluding: uuid.UUID) -> tuple[float | None, int]:
    """The median duration of the job's last `runs` successes (not counting one run), and how many there were."""
    row = await conn.fetchrow(MEDIAN, job, runs, excluding)
    return (float(row["median"]) if row["median"] is not None else None), int(row["runs"])


async def open_runs(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch(OPEN_RUNS))


async def created_between(conn: asyncpg.Connection, job: str, start: datetime, end: datetime) -> bool:
    return bool(await conn.fetchval(CREATED_BETWEEN, job, start, end))


# --- schedules and state ---------------------------------------------------------------------

UPSERT_SCHEDULE = """
INSERT INTO notifier_schedules AS s (job, expression, announced_at, checked_until) VALUES ($1, $2, $3, $3)
ON CONFLICT (job) DO UPDATE SET
    announced_at = EXCLUDED.announced_at,
    checked_until = CASE WHEN s.expression = EXCLUDED.expression THEN s.checked_until ELSE EXCLUDED.checked_until END,
    expression = EXCLUDED.expression
"""


async def announce_schedule(conn: asyncpg.Connection, job: str, expression: str | None, at: datetime) -> None:
    """What a live worker says of a job's schedule now (None: unscheduled)."""
    if expression is None:
        await conn.execute("DELETE FROM notifier_schedules WHERE job = $1", job)
    else:
        await conn.execute(UPSERT_SCHEDULE, job, expression, at)


async def schedules(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    # A paused schedule (schedule_states, the recorder's) misses nothing: its slots are not due.
    return list(await conn.fetch(
        "SELECT s.job, s.expression, s.checked_until, COALESCE(p.paused, false) AS paused "
        "FROM notifier_schedules s LEFT JOIN schedule_states p ON p.job = s.job ORDER BY s.job"))


async def checked(conn: asyncpg.Connection, job: str, until: datetime) -> None:
    await conn.execute("UPDATE notifier_schedules SET checked_until = $2 WHERE job = $1", job, until)


async def get_state(conn: asyncpg.Connection, key: str) -> int | None:
    value = await conn.fetchval("SELECT value FROM notifier_state WHERE key = $1", key)
    return int(value) if value is not None else None


async def set_state(conn: asyncpg.Connection, key: str, value: int) -> None:
    await conn.execute(
        "INSERT INTO notifier_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        key, value,
    )


async def dead_letters(conn: asyncpg.Connection) -> tuple[int, int]:
    """(how many, the highest id) of the recorder's dead letters."""
    row = await conn.fetchrow("SELECT count(*) AS n, coalesce(max(id), 0) AS last FROM dead_letters")
    return int(row["n"]), int(row["last"])


# --- deliveries ------------------------------------------------------------------------------

# One due delivery, locked for as long as it is being sent: a crashed notifier's lock goes with its connection.
CLAIM = """
SELECT d.alert_id, d.channel, d.target, d.attempts, d.grouped,
       a.kind, a.job, a.run_name, a.message, a.link, a.details, a.raised_at
FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
WHERE d.state = 'pending' AND d.next_attempt_at <= now()
ORDER BY d.next_attempt_at
LIMIT 1
FOR UPDATE OF d SKIP LOCKED
"""
# The storm guard: how many alerts this receiver was sent within the window.
DELIVERED_LATELY = """
SELECT count(*) FROM alert_deliveries
WHERE channel = $1 AND target = $2 AND delivered_at > now() - make_interval(secs => $3)
"""
# Hold one delivery for the receiver's summary: the one already being gathered, or one a window from now.
HOLD = """
UPDATE alert_deliveries SET grouped = true, next_attempt_at = COALESCE(
    (SELECT min(next_attempt_at) FROM alert_deliveries
     WHERE channel = $2 AND target = $3 AND state = 'pending' AND grouped),
    now() + make_interval(secs => $4))
WHERE alert_id = $1 AND channel = $2 AND target = $3
"""
# Everything held for this receiver (the claimed row is locked already), oldest first.
GROUP = """
SELECT d.alert_id, d.channel, d.target, d.attempts, d.grouped,
       a.kind, a.job, a.run_name, a.message, a.link, a.details, a.raised_at
FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
WHERE d.channel = $1 AND d.target = $2 AND d.state = 'pending' AND d.grouped AND d.alert_id <> $3
ORDER BY a.raised_at, a.id
FOR UPDATE OF d SKIP LOCKED
"""
DELIVERED = """
UPDATE alert_deliveries SET state = 'delivered', delivered_at = now(), attempts = attempts + 1, last_error = NULL,
    summary_id = $4
WHERE alert_id = $1 AND channel = $2 AND target = $3
"""
RETRY = """
UPDATE alert_deliveries SET attempts = attempts + 1, last_error = $4,
    next_attempt_at = now() + make_interval(secs => $5), state = $6
WHERE alert_id = $1 AND channel = $2 AND target = $3
"""


async def claim(conn: asyncpg.Connection) -> asyncpg.Record | None:
    return await conn.fetchrow(CLAIM)


async def delivered(conn: asyncpg.Connection, row: Any, summary_id: uuid.UUID | None = None) -> None:
    await conn.execute(DELIVERED, row["alert_id"], row["channel"], row["target"], summary_id)


async def delivered_lately(conn: asyncpg.Connection, channel: str, target: str, window: float) -> int:
    return int(await conn.fetchval(DELIVERED_LATELY, channel, target, window))


async def hold_for_summary(conn: asyncpg.Connection, row: Any, window: float) -> None:
    await conn.execute(HOLD, row["alert_id"], row["channel"], row["target"], window)


async def claim_group(conn: asyncpg.Connection, row: Any) -> list[asyncpg.Record]:
    """The claimed held delivery and every other one held for the same receiver."""
    return [row, *await conn.fetch(GROUP, row["channel"], row["target"], row["alert_id"])]


async def retry_later(conn: asyncpg.Connection, row: Any, error: str, wait: float, give_up: bool) -> None:
    await conn.execute(RETRY, row["alert_id"], row["channel"], row["target"], error[:2000], wait,
                       "failed" if give_up else "pending")
