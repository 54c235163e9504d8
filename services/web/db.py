"""The web's SQL: read-only queries over the projection and open_orders."""
from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import asyncpg

# joblog_seq_gap(seen) and joblog_seq_count(seen) (migration 0009) as expressions: SQL functions with a
# FROM are not inlined, and Postgres sets each call up again at every execution of a statement (~0.15 ms
# of its CPU for the two per run row, NULL seen_seqs included; 50 rows of the index: ~7 ms); as subqueries
# they are planned once with the statement. tests/web/test_run_page_cache.py checks they agree with the
# functions. The ?gap= filter reads the stored column has_gap (migration 0014, indexed by job_logs_with_gap).
SEQ_GAP = """(SELECT CASE
        WHEN b IS NULL OR isempty(b) THEN NULL
        WHEN lower(b) > 1 THEN 0
        WHEN upper(b) <> (SELECT upper(x) FROM unnest(b) x LIMIT 1) THEN (SELECT upper(x) - 1 FROM unnest(b) x LIMIT 1)
    END FROM (SELECT {seen} * '{{[1,2000000000)}}'::int4multirange AS b) s)"""
SEQ_COUNT = """(SELECT COALESCE(sum(upper(x) - lower(x)), 0)::integer FROM unnest({seen} * '{{[1,2000000000)}}'::int4multirange) x)"""

RUN_COLUMNS = f"""
    id, name, job, status, trigger, requested_by, worker_id, host, created_at, updated_at, started_at,
    finished_at, duration_ms, stats, error_class, error_message, error_traceback, failed_step, last_seq,
    terminal_seq, error_fingerprint, {SEQ_GAP.format(seen="seen_seqs")} AS seq_gap,
    {SEQ_COUNT.format(seen="seen_seqs")} AS seq_seen, seen_seqs IS NOT NULL AS seqs_known
"""


def _like_escape(text: str) -> str:
    """text matched literally by LIKE/ILIKE (its default escape character is the backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def list_runs(
    conn: asyncpg.Connection,
    *,
    limit: int,
    status: str | None = None,
    job: str | None = None,
    search: str | None = None,
    fingerprint: str | None = None,
    gap: bool = False,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[asyncpg.Record]:
    """Most recent first, keyset-paginated on (created_at, id): fast at any depth."""
    where, args = [], []  # type: list[str], list[Any]
    if status:
        args.append(status)
        where.append(f"status = ${len(args)}")
    if job:
        args.append(job)
        where.append(f"job = ${len(args)}")
    if search:
        args.append(_like_escape(search) + "%")
        where.append(f"name LIKE ${len(args)}")
    if fingerprint:  # the same error as a run (job_logs_fingerprint)
        args.append(fingerprint)
        where.append(f"error_fingerprint = ${len(args)}")
    if gap:  # runs whose events have a gap (job_logs_with_gap)
        where.append("has_gap")
    if before:
        args.extend(before)
        where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    sql = f"SELECT {RUN_COLUMNS} FROM job_logs {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"
    return await conn.fetch(sql, *args)


async def projection_version(conn: asyncpg.Connection) -> int:
    """Moves with every committed change to the projection; read it before the rows it guards."""
    return await conn.fetchval("SELECT version FROM projection_version")


async def get_run(conn: asyncpg.Connection, name: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {RUN_COLUMNS} FROM job_logs WHERE name = $1", name)


LIST_DETAILS = """
SELECT key, message, level, data, first_seq, seq, created_at, updated_at
FROM job_log_details WHERE job_log_id = $1 AND first_seq > $2 AND ($4::text[] IS NULL OR level = ANY($4))
ORDER BY first_seq LIMIT $3
"""


async def list_details(
    conn: asyncpg.Connection, run_id: uuid.UUID, after_seq: int = 0, limit: int = 500, levels: list[str] | None = None
) -> list[asyncpg.Record]:
    """A run's details in the order the run emitted them (only these levels, if given)."""
    return await conn.fetch(LIST_DETAILS, run_id, after_seq, limit, levels)


async def count_details(conn: asyncpg.Connection, run_id: uuid.UUID, levels: list[str] | None = None) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM job_log_details WHERE job_log_id = $1 AND ($2::text[] IS NULL OR level = ANY($2))", run_id, levels)


LATEST_PER_JOB = f"""
SELECT k.job, r.* FROM unnest($1::text[]) AS k(job)
LEFT JOIN LATERAL (
    SELECT {RUN_COLUMNS.replace("job,", "")} FROM job_logs WHERE job = k.job ORDER BY created_at DESC, id DESC LIMIT 1
) r ON true
"""


async def latest_runs(conn: asyncpg.Connection, jobs: list[str]) -> dict[str, asyncpg.Record]:
    """The most recent run of each job (by index, not by scanning every run)."""
    return {row["job"]: row for row in await conn.fetch(LATEST_PER_JOB, jobs) if row["id"]}


async def known_jobs(conn: asyncpg.Connection) -> list[str]:
    """Jobs that have runs; a loose index scan so it stays cheap at a million runs."""
    rows = await conn.fetch(
        """
        WITH RECURSIVE jobs(job) AS (
            (SELECT job FROM job_logs ORDER BY job LIMIT 1)
            UNION ALL
            SELECT (SELECT job FROM job_logs WHERE job > jobs.job ORDER BY job LIMIT 1) FROM jobs WHERE jobs.job IS NOT NULL
        ) SELECT job FROM jobs WHERE job IS NOT NULL
        """
    )
    return [row["job"] for row in rows]


class OrderSort(NamedTuple):
    """A column Open Orders sorts by: its SQL, the Python type of its values (what a cursor holds), NULLs or not."""

    column: str
    kind: type
    nullable: bool = False


ORDER_SORTS = {
    "order_number": OrderSort("order_number", str),
    "customer": OrderSort("customer_name", str),
    "status": OrderSort("status", str),
    "order_date": OrderSort("order_date", date),
    "ship_date": OrderSort("requested_ship_date", date, nullable=True),
    "total": OrderSort("total_amount", Decimal),
    "warehouse": OrderSort("warehouse", str, nullable=True),
}
ORDER_SQL_TYPES = {str: "text", date: "date", Decimal: "numeric"}
ORDER_FIELDS = """order_number, customer_code, customer_name, status, order_date, requested_ship_date,
                  warehouse, currency, total_amount, line_count, synced_at"""
# The expression of the trigram index open_orders_search (migration 0011).
ORDER_SEARCH = "(order_number || ' ' || customer_name || ' ' || customer_code) ILIKE $1"


class OrderKey(NamedTuple):
    """Where an order stands in a sort: its value of the sort column (None for NULL) and its order number."""

    value: Any
    order_number: str


def _order_search(search: str | None) -> tuple[str, list[Any]]:
    if not search:
        return "closed_at IS NULL", []
    return f"closed_at IS NULL AND {ORDER_SEARCH}", [f"%{_like_escape(search)}%"]


async def count_open_orders(conn: asyncpg.Connection, search: str | None) -> int:
    """How many open orders (match the search): read from a partial index (and the trigram index for a search)."""
    where, args = _order_search(search)
    return await conn.fetchval(f"SELECT count(*) FROM open_orders WHERE {where}", *args)


async def list_open_orders(
    conn: asyncpg.Connection, *, search: str | None, sort: str, descending: bool, limit: int,
    after: OrderKey | None = None, before: OrderKey | None = None, offset: int = 0,
) -> tuple[list[asyncpg.Record], bool]:
    """A page of open orders (closed ones are hidden) in a whitelisted sort, NULLs last and ties by order
    number; after a position, before one (read backwards, returned in order), or (old clients' ?page=) at an
    offset. Also says whether more orders follow in the direction read.

    By keyset on (column, order_number) with open_orders_by_<column> (migration 0013): forwards for
    ascending, backwards for descending. A nullable column's NULLs are a segment of their own, read after
    (or, backwards, before) the others, so each segment is one index range."""
    spec = ORDER_SORTS[sort]
    where, base = _order_search(search)
    if offset:  # an old client's ?page=N: OFFSET, as before keysets
        direction = "DESC" if descending else "ASC"
        nulls = " NULLS LAST" if spec.nullable else ""  # (on a NOT NULL column it would keep the index from serving DESC)
        rows = await conn.fetch(
            f"""SELECT {ORDER_FIELDS} FROM open_orders WHERE {where}
                ORDER BY {spec.column} {direction}{nulls}, order_number {direction}
                LIMIT ${len(base) + 1} OFFSET ${len(base) + 2}""", *base, limit + 1, offset)
        return rows[:limit], len(rows) > limit
    backwards = before is not None
    key = before if backwards else after
    reading_desc = descending != backwards  # the direction the index is read in
    way, op = ("DESC", "<") if reading_desc else ("ASC", ">")
    segments = ["values", "nulls"] if spec.nullable else ["values"]
    if backwards:
        segments.reverse()
    if key is not None:  # from the key's segment on
        segments = segments[segments.index("nulls" if key.value is None else "values"):]
    found: list[asyncpg.Record] = []
    for segment in segments:
        args = list(base)
        conditions = [where]
        if segment == "nulls":
            conditions.append(f"{spec.column} IS NULL")
        elif spec.nullable:
            conditions.append(f"{spec.column} IS NOT NULL")
        order = f"{spec.column} {way}, order_number {way}"  # the index's order (its NULLs sort last, read forwards)
        if key is not None and segment == segments[0]:  # the key's own segment: what comes after the key
            if segment == "nulls":
                args.append(key.order_number)
                conditions.append(f"order_number {op} ${len(args)}::text")
            else:
                args.extend(key)
                conditions.append(
                    f"({spec.column}, order_number) {op} (${len(args) - 1}::{ORDER_SQL_TYPES[spec.kind]}, ${len(args)}::text)")
        args.append(limit + 1 - len(found))
        found.extend(await conn.fetch(
            f"SELECT {ORDER_FIELDS} FROM open_orders WHERE {' AND '.join(conditions)} ORDER BY {order} LIMIT ${len(args)}",
            *args))
        if len(found) > limit:
            break
    more, rows = len(found) > limit, found[:limit]
    return (rows[::-1] if backwards else rows), more


async def last_successful_sync(conn: asyncpg.Connection) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT name, finished_at FROM job_logs WHERE job = 'sync_open_orders' AND status = 'success'
           ORDER BY created_at DESC, id DESC LIMIT 1"""
    )


async def recorder_health(conn: asyncpg.Connection) -> dict[str, Any]:
    """Where the projection stands, and the newest dead letters."""
    state = await conn.fetchrow(
        "SELECT consumer, last_stream_seq, last_event_at, applied_events, updated_at FROM projection_state ORDER BY updated_at DESC LIMIT 1"
    )
    dead = await conn.fetch(
        "SELECT id, subject, reason, stream_seq, received_at FROM dead_letters ORDER BY id DESC LIMIT 20"
    )
    dead_total = await conn.fetchval("SELECT count(*) FROM dead_letters")
    return {"state": state, "dead_letters": dead, "dead_total": dead_total}


async def run_names(conn: asyncpg.Connection, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Names of the given runs (what the workers' heartbeats say they are running)."""
    if not run_ids:
        return {}
    rows = await conn.fetch("SELECT id, name FROM job_logs WHERE id = ANY($1::uuid[])", run_ids)
    return {row["id"]: row["name"] for row in rows}


# The projection's counters (migration 0013): at most (statuses x 16 shards) rows, however many runs.
RUNS_BY_STATUS = "SELECT status, sum(runs)::bigint AS runs FROM run_status_counts GROUP BY status"


async def runs_by_status(conn: asyncpg.Connection) -> dict[str, int]:
    """Runs per status, as the projection counts them (never a scan of job_logs)."""
    return {row["status"]: row["runs"] for row in await conn.fetch(RUNS_BY_STATUS)}


DETAILS_CHANGED_AFTER = """
SELECT key, message, level, first_seq, seq, created_at, updated_at
FROM job_log_details WHERE job_log_id = $1 AND seq > $2
ORDER BY seq LIMIT $3
"""


async def details_changed_after(conn: asyncpg.Connection, run_id: uuid.UUID, after_seq: int, limit: int) -> list[asyncpg.Record]:
    """A run's details logged or updated after a seq, in seq order (what a live page resuming there lacks)."""
    return await conn.fetch(DETAILS_CHANGED_AFTER, run_id, after_seq, limit)


async def runs_of_workers(conn: asyncpg.Connection, worker_ids: list[str], limit: int) -> list[asyncpg.Record]:
    """Processing runs held by the given workers (their state changes when a worker is lost or back)."""
    if not worker_ids:
        return []
    return await conn.fetch(
        f"""SELECT {RUN_COLUMNS} FROM job_logs WHERE status = 'processing' AND worker_id = ANY($1::text[])
            ORDER BY created_at DESC, id DESC LIMIT $2""",
        worker_ids, limit,
    )


RECENT_ACTIONS = """
SELECT event_id, occurred_at, actor, action, job, target, detail, source FROM actions
ORDER BY occurred_at DESC, event_id DESC LIMIT $1
"""


async def recent_actions(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """The audit trail, newest first (the recorder writes it from action.* events)."""
    return await conn.fetch(RECENT_ACTIONS, limit)


# The notifier's alerts (services/notifier), with how far each channel got in delivering them.
RECENT_ALERTS = """
SELECT a.id, a.kind, a.job, a.run_name, a.message, a.repeats, a.raised_at, a.cleared_at,
       COALESCE(json_agg(json_build_object('channel', d.channel, 'state', d.state, 'attempts', d.attempts,
                                           'last_error', left(d.last_error, 200), 'grouped', d.grouped)
                ORDER BY d.channel, d.target) FILTER (WHERE d.alert_id IS NOT NULL), '[]') AS deliveries
FROM alerts a LEFT JOIN alert_deliveries d ON d.alert_id = a.id
GROUP BY a.id ORDER BY a.raised_at DESC, a.id LIMIT $1
"""


async def recent_alerts(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """The newest alerts, each with its deliveries (channel, state, attempts, last error)."""
    return await conn.fetch(RECENT_ALERTS, limit)
