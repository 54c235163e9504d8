"""The web's SQL for finding what went wrong: search, failure groups, a run's timeline, comparison, downloads.

Search matches ILIKE '%text%' on the expressions the trigram indexes of migration 0009 cover
(job_log_details_search, job_logs_error_search): keep the expressions here and there the same.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from services.web.db import RUN_COLUMNS, _like_escape

# The longest a search may take before it is given up (a very common word over millions of messages).
SEARCH_TIMEOUT = "8s"


def _search_where(filters: dict[str, Any], args: list[Any], run: str = "j") -> list[str]:
    where = []
    for column, key, op in (("job", "job", "="), ("status", "status", "="), ("created_at", "since", ">="),
                            ("created_at", "until", "<"), ("name", "run", "=")):
        if filters.get(key) is not None:
            args.append(filters[key])
            where.append(f"{run}.{column} {op} ${len(args)}")
    return where


async def search_details(conn: asyncpg.Connection, filters: dict[str, Any], limit: int) -> list[asyncpg.Record]:
    """Messages whose text, key or data contain the text (any case), newest first, keyset on the detail's id."""
    args: list[Any] = [f"%{_like_escape(filters['text'])}%"]
    where = ["joblog_detail_text(d.key, d.message, d.data) ILIKE $1", *_search_where(filters, args)]
    if filters.get("before") is not None:
        args.append(filters["before"])
        where.append(f"d.id < ${len(args)}")
    args.append(limit)
    sql = f"""
        SELECT d.id, d.key, d.message, d.level, d.data::text AS data_text, d.first_seq, d.created_at,
               j.name, j.job, j.status, j.worker_id, j.created_at AS run_created_at, j.started_at
        FROM job_log_details d JOIN job_logs j ON j.id = d.job_log_id
        WHERE {' AND '.join(where)}
        ORDER BY d.id DESC LIMIT ${len(args)}"""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL statement_timeout = '{SEARCH_TIMEOUT}'")
        return await conn.fetch(sql, *args)


async def search_errors(conn: asyncpg.Connection, filters: dict[str, Any], limit: int) -> list[asyncpg.Record]:
    """Failed runs whose error class or message contain the text, newest first."""
    args: list[Any] = [f"%{_like_escape(filters['text'])}%"]
    where = ["j.error_message IS NOT NULL", "(COALESCE(j.error_class, '') || ' ' || j.error_message) ILIKE $1",
             *_search_where(filters, args)]
    args.append(limit)
    sql = f"""
        SELECT j.name, j.job, j.status, j.worker_id, j.created_at, j.started_at, j.error_class, j.error_message, j.failed_step
        FROM job_logs j WHERE {' AND '.join(where)}
        ORDER BY j.created_at DESC, j.id DESC LIMIT ${len(args)}"""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL statement_timeout = '{SEARCH_TIMEOUT}'")
        return await conn.fetch(sql, *args)


async def page_after(conn: asyncpg.Connection, run_id: uuid.UUID, seq: int, per_page: int, levels: list[str] | None) -> int:
    """The `after` of the page of a run's messages (per_page a page, from the first) that holds the message at seq."""
    before = await conn.fetchval(
        "SELECT count(*) FROM job_log_details WHERE job_log_id = $1 AND first_seq < $2 AND ($3::text[] IS NULL OR level = ANY($3))",
        run_id, seq, levels)
    start = (before // per_page) * per_page
    if start == 0:
        return 0
    return await conn.fetchval(
        """SELECT first_seq FROM job_log_details WHERE job_log_id = $1 AND ($3::text[] IS NULL OR level = ANY($3))
           ORDER BY first_seq OFFSET $2 LIMIT 1""", run_id, start - 1, levels)


STEP_TIMES = """
SELECT key, level, message, first_seq, created_at,
       lead(created_at) OVER (ORDER BY first_seq) AS next_at
FROM (SELECT key, level, message, first_seq, created_at FROM job_log_details
      WHERE job_log_id = $1 ORDER BY first_seq LIMIT $2) d
ORDER BY first_seq
"""


async def step_times(conn: asyncpg.Connection, run_id: uuid.UUID, limit: int) -> list[asyncpg.Record]:
    """A run's first `limit` messages with when each was logged and when the next one was."""
    return await conn.fetch(STEP_TIMES, run_id, limit)


async def error_group(conn: asyncpg.Connection, fingerprint: str) -> asyncpg.Record:
    """How many runs failed with this fingerprint, and since when."""
    return await conn.fetchrow(
        "SELECT count(*) AS runs, min(created_at) AS first_seen, max(created_at) AS last_seen FROM job_logs WHERE error_fingerprint = $1",
        fingerprint)


# A job that has not succeeded for this many runs has no "previous successful run" to compare with
# (bounded, so a page of a job that always fails never scans all its runs).
PREVIOUS_LOOKBACK = 1000


async def previous_success(conn: asyncpg.Connection, job: str, created_at: datetime, run_id: uuid.UUID) -> str | None:
    """The name of the job's last successful run before this one, among its previous PREVIOUS_LOOKBACK runs."""
    return await conn.fetchval(
        """SELECT name FROM (
               SELECT name, status, created_at, id FROM job_logs WHERE job = $1 AND (created_at, id) < ($2, $3)
               ORDER BY created_at DESC, id DESC LIMIT $4) r
           WHERE status = 'success' ORDER BY created_at DESC, id DESC LIMIT 1""", job, created_at, run_id, PREVIOUS_LOOKBACK)


FAILURE_GROUPS = """
SELECT g.error_fingerprint AS fingerprint, g.runs AS run_count, g.first_seen, g.last_seen, g.jobs, l.name AS latest,
       l.error_class, l.error_message, l.failed_step, l.job AS latest_job
FROM (
    SELECT error_fingerprint, count(*) AS runs, min(created_at) AS first_seen, max(created_at) AS last_seen,
           array_agg(DISTINCT job ORDER BY job) AS jobs
    FROM job_logs WHERE error_fingerprint IS NOT NULL AND ($1::timestamptz IS NULL OR created_at >= $1)
      AND ($2::text IS NULL OR job = $2)
    GROUP BY error_fingerprint
) g
CROSS JOIN LATERAL (
    SELECT name, error_class, error_message, failed_step, job FROM job_logs
    WHERE error_fingerprint = g.error_fingerprint ORDER BY created_at DESC, id DESC LIMIT 1
) l
ORDER BY g.last_seen DESC, g.error_fingerprint LIMIT $3
"""


async def failure_groups(conn: asyncpg.Connection, since: datetime | None, job: str | None, limit: int) -> list[asyncpg.Record]:
    """Failed runs grouped by their error's fingerprint, the group seen most recently first."""
    return await conn.fetch(FAILURE_GROUPS, since, job, limit)


async def runs_of_group(conn: asyncpg.Connection, fingerprints: list[str], each: int) -> list[asyncpg.Record]:
    """The newest `each` runs of every group."""
    return await conn.fetch(
        f"""SELECT f.fingerprint, r.* FROM unnest($1::text[]) AS f(fingerprint)
            CROSS JOIN LATERAL (SELECT {RUN_COLUMNS} FROM job_logs WHERE error_fingerprint = f.fingerprint
                                ORDER BY created_at DESC, id DESC LIMIT $2) r""", fingerprints, each)


DETAILS_FOR_EXPORT = """
SELECT key, message, level, data, first_seq, seq, created_at, updated_at
FROM job_log_details WHERE job_log_id = $1 AND first_seq > $2
ORDER BY first_seq LIMIT $3
"""


async def details_for_export(conn: asyncpg.Connection, run_id: uuid.UUID, after: int, limit: int) -> list[asyncpg.Record]:
    """The next `limit` messages of a run after seq `after` (a download reads them all, a chunk at a time)."""
    return await conn.fetch(DETAILS_FOR_EXPORT, run_id, after, limit)
