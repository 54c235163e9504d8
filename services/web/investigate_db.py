"""The web's SQL for finding what went wrong: search, failure groups, a run's timeline, comparison, downloads.

Search matches ILIKE '%text%' on the expressions the trigram indexes of migration 0009 cover
(job_log_details_search, job_logs_error_search): keep the expressions here and there the same.
"""
from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg

from services.web.db import RUN_COLUMNS, _like_escape

# The longest a search may take before it is given up (a very common word over millions of messages).
SEARCH_TIMEOUT = "8s"
SEARCH_SECONDS = 8.0  # the same, for all the windows of one search together


def _search_where(filters: dict[str, Any], args: list[Any], run: str = "j") -> list[str]:
    where = []
    for column, key, op in (("job", "job", "="), ("status", "status", "="), ("created_at", "since", ">="),
                            ("created_at", "until", "<"), ("name", "run", "=")):
        if filters.get(key) is not None:
            args.append(filters[key])
            where.append(f"{run}.{column} {op} ${len(args)}")
    return where


# Newest-first search in windows of detail ids (see docs/performance.md section 7). A text one message
# in twenty holds is found among the newest few thousand rows; a rare one costs a trigram index scan or
# a few. What is slow is checking `ILIKE` on many rows (several µs each): a plain `ORDER BY id DESC LIMIT`
# either walks the id index back past every non-match (a text common once but absent lately, or filtered
# out by job, status or time) or collects every match through the trigram index to sort them. So the
# newest RECENT_WINDOW ids are searched first (the planner picks its plan); then windows of ids below,
# FIRST_WINDOW wide and GROWTH times wider each, each a bitmap AND of the trigram index and an id range
# (only that window's candidates are checked), until a page is found or the ids run out. A text the
# planner expects in at most RARE_ROWS messages (its statistics of the indexed expression say so well;
# the filters are not counted: a rare job does not make a common text cheap to check) skips the windows,
# the newest too: one bitmap scan of the trigram index finds every match.
RARE_ROWS = 3_000
RECENT_WINDOW = 4_000
FIRST_WINDOW = 64_000
GROWTH = 4

SEARCH_COLUMNS = """d.id, d.key, d.message, d.level, d.data::text AS data_text, d.first_seq, d.created_at,
                    j.name, j.job, j.status, j.worker_id, j.created_at AS run_created_at, j.started_at"""


def _detail_search(filters: dict[str, Any]) -> tuple[list[str], list[Any]]:
    args: list[Any] = [f"%{_like_escape(filters['text'])}%"]
    return ["joblog_detail_text(d.key, d.message, d.data) ILIKE $1", *_search_where(filters, args)], args


def id_windows(low: int, high: int, first: int) -> list[tuple[int, int]]:
    """The [from, to) windows of ids, newest first, that cover low..high-1: `first` wide, then GROWTH times
    wider each (the last one ends at low)."""
    windows, width, top = [], first, high
    while top > low:
        bottom = max(low, top - width)
        windows.append((bottom, top))
        width *= GROWTH
        top = bottom
    return windows


async def search_details(conn: asyncpg.Connection, filters: dict[str, Any], limit: int) -> list[asyncpg.Record]:
    """Messages whose text, key or data contain the text (any case), newest first, keyset on the detail's id
    (`before`: ids below it). Runs in the caller's transaction if it has one (see search_transaction), whose
    settings it changes (enable_indexscan, statement_timeout): call it last there."""
    if not conn.is_in_transaction():
        async with search_transaction(conn):
            return await search_details(conn, filters, limit)
    where, args = _detail_search(filters)
    select = f"SELECT {SEARCH_COLUMNS} FROM job_log_details d JOIN job_logs j ON j.id = d.job_log_id WHERE {' AND '.join(where)}"
    if filters.get("run") is not None:  # one run's messages: its own index finds them, no windows
        if filters.get("before") is not None:
            args.append(filters["before"])
            select += f" AND d.id < ${len(args)}"
        return await conn.fetch(f"{select} ORDER BY d.id DESC LIMIT ${len(args) + 1}", *args, limit)
    bounds = await conn.fetchrow("SELECT min(id) AS low, max(id) AS high FROM job_log_details")
    if bounds["low"] is None:
        return []
    low, high = bounds["low"], bounds["high"] + 1
    if filters.get("before") is not None:
        high = max(low, min(filters["before"], high))
    in_window = f" AND d.id >= ${len(args) + 1} AND d.id < ${len(args) + 2}"
    sql = f"{select}{in_window} ORDER BY d.id DESC LIMIT ${len(args) + 3}"
    deadline = time.monotonic() + SEARCH_SECONDS
    # How many messages hold the text, filters aside: what a bitmap scan of the trigram index would check.
    plan = await conn.fetchval(
        f"EXPLAIN (FORMAT JSON) SELECT 1 FROM job_log_details d WHERE {where[0]} AND d.id >= $2 AND d.id < $3",
        args[0], low, high)
    found: list[asyncpg.Record] = []
    newest = high
    if json.loads(plan)[0]["Plan"]["Plan Rows"] > RARE_ROWS:
        # A common text: the newest ids first, with the plan the planner picks (the id index, row by row).
        newest = max(low, high - RECENT_WINDOW)
        found = list(await conn.fetch(sql, *args, newest, high, limit))
        if len(found) >= limit or newest <= low:
            return found
    rare = newest == high
    # A rare text, or not enough among the newest: the rest lies further back, where walking the id index
    # row by row is the slow plan. Each window is a bitmap AND (index-only scans, as the join to the run
    # may use, stay allowed). All the windows together stop at SEARCH_SECONDS.
    for bottom, top in [(low, newest)] if rare else id_windows(low, newest, FIRST_WINDOW):
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            raise asyncpg.QueryCanceledError("the search's windows took longer than SEARCH_SECONDS")
        await conn.execute(f"SET LOCAL enable_indexscan = off; SET LOCAL statement_timeout = {left_ms}")
        found += await conn.fetch(sql, *args, bottom, top, limit - len(found))
        if len(found) >= limit:
            break
    return found


@contextlib.asynccontextmanager
async def search_transaction(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A read-only transaction for one search's queries, each stopped at SEARCH_TIMEOUT, each planned for its
    own text and bounds (a generic plan knows neither)."""
    async with conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = '{SEARCH_TIMEOUT}'; SET LOCAL plan_cache_mode = force_custom_plan")
        yield


async def search_errors(conn: asyncpg.Connection, filters: dict[str, Any], limit: int) -> list[asyncpg.Record]:
    """Failed runs whose error class or message contain the text, newest first (in the caller's transaction
    if it has one)."""
    if not conn.is_in_transaction():
        async with search_transaction(conn):
            return await search_errors(conn, filters, limit)
    args: list[Any] = [f"%{_like_escape(filters['text'])}%"]
    where = ["j.error_message IS NOT NULL", "(COALESCE(j.error_class, '') || ' ' || j.error_message) ILIKE $1",
             *_search_where(filters, args)]
    args.append(limit)
    sql = f"""
        SELECT j.name, j.job, j.status, j.worker_id, j.created_at, j.started_at, j.error_class, j.error_message, j.failed_step
        FROM job_logs j WHERE {' AND '.join(where)}
        ORDER BY j.created_at DESC, j.id DESC LIMIT ${len(args)}"""
    return await conn.fetch(sql, *args)


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


# A job that has not succeeded for this many runs has no "previous successful run" to compare with
# (bounded, so a page of a job that always fails never scans all its runs).
PREVIOUS_LOOKBACK = 1000


async def page_after(conn: asyncpg.Connection, name: str, seq: int, per_page: int, levels: list[str] | None) -> int:
    """The `after` of the page of a run's messages (per_page a page, from the first) that holds the message at seq
    (0 for the first page, or for a run that does not exist: the page's own query says so)."""
    return await conn.fetchval(PAGE_AFTER, name, seq, per_page, levels)


PAGE_AFTER = """
WITH r AS (SELECT id FROM job_logs WHERE name = $1),
     b AS (SELECT (count(*) / $3) * $3 AS start FROM job_log_details
           WHERE job_log_id = (SELECT id FROM r) AND first_seq < $2 AND ($4::text[] IS NULL OR level = ANY($4)))
SELECT CASE WHEN (SELECT start FROM b) = 0 THEN 0 ELSE COALESCE((
    SELECT first_seq FROM job_log_details WHERE job_log_id = (SELECT id FROM r) AND ($4::text[] IS NULL OR level = ANY($4))
    ORDER BY first_seq OFFSET (SELECT start FROM b) - 1 LIMIT 1), 0) END
"""

# Everything a run page shows, in one round trip (issue 15): the run; unless the caller already holds the
# page of messages of the run's `page_version` ($5), that page (one more row than asked, to tell whether
# there is more), the count of its messages when the page does not hold them all, and the run's first
# $6 steps with when the next was logged when the page's rows are not the whole run; its error's group
# (how many runs failed with its fingerprint, since when); and the job's previous successful run among
# its PREVIOUS_LOOKBACK runs before it. CTEs and subqueries in a CASE branch not taken are
# never run. page_version moves with every change to the run's row, which every event of the run makes
# (the recorder upserts the run with each batch of its events: last_seq, seen_seqs), xmin being the
# transaction that wrote the row's current version; a rebuild writes new rows, a deletion removes it.
RUN_PAGE = f"""
WITH r AS (SELECT {RUN_COLUMNS}, xmin::text || '/' || last_seq AS page_version FROM job_logs WHERE name = $1),
     d AS (SELECT key, message, level, first_seq, seq, created_at, updated_at FROM job_log_details
           WHERE job_log_id = (SELECT id FROM r) AND first_seq > $2 AND ($4::text[] IS NULL OR level = ANY($4))
           ORDER BY first_seq LIMIT $3 + 1),
     page AS (SELECT $5::text IS DISTINCT FROM (SELECT page_version FROM r) AS wanted),
     partial AS (SELECT $2 > 0 OR $4::text[] IS NOT NULL OR (SELECT count(*) FROM d) > $3 AS yes)
SELECT r.*,
       CASE WHEN (SELECT wanted FROM page) THEN
           (SELECT array_agg(ROW(key, message, level, first_seq, seq, created_at, updated_at) ORDER BY first_seq) FROM d)
       END AS details,
       CASE WHEN (SELECT wanted FROM page) THEN
           CASE WHEN (SELECT yes FROM partial) THEN
               (SELECT count(*) FROM job_log_details WHERE job_log_id = r.id AND ($4::text[] IS NULL OR level = ANY($4)))
           ELSE (SELECT count(*) FROM d) END
       END AS total,
       CASE WHEN (SELECT wanted FROM page) AND (SELECT yes FROM partial) THEN
           (SELECT array_agg(ROW(key, level, first_seq, created_at, next_at) ORDER BY first_seq)
            FROM (SELECT key, level, first_seq, created_at, lead(created_at) OVER (ORDER BY first_seq) AS next_at
                  FROM (SELECT key, level, first_seq, created_at FROM job_log_details WHERE job_log_id = r.id
                        ORDER BY first_seq LIMIT $6) s) t)
       END AS steps,
       CASE WHEN r.error_fingerprint IS NOT NULL THEN
           (SELECT ROW(count(*), min(created_at)) FROM job_logs g WHERE g.error_fingerprint = r.error_fingerprint)
       END AS error_group,
       (SELECT name FROM (
            SELECT name, status, created_at, id FROM job_logs p WHERE p.job = r.job AND (p.created_at, p.id) < (r.created_at, r.id)
            ORDER BY created_at DESC, id DESC LIMIT {PREVIOUS_LOOKBACK}) x
        WHERE status = 'success' ORDER BY created_at DESC, id DESC LIMIT 1) AS previous_success
FROM r
"""


async def run_page(conn: asyncpg.Connection, name: str, after: int, per_page: int, levels: list[str] | None,
                   known_version: str | None, steps: int) -> asyncpg.Record | None:
    """A run page's row (RUN_PAGE): the run's columns, page_version, details (tuples: key, message, level,
    first_seq, seq, created_at, updated_at; None when known_version is still the run's), total, steps (tuples:
    key, level, first_seq, created_at, next_at; None when the details are the whole run), error_group
    ((runs, first_seen) or None) and previous_success; None when there is no such run."""
    return await conn.fetchrow(RUN_PAGE, name, after, per_page, levels, known_version, steps)


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
