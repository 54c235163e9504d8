"""The worker's SQL: run names, the outbox, and open orders."""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

RESERVE_NAME = """
INSERT INTO run_names (name, run_id, job) VALUES ($1, $2, $3)
ON CONFLICT (name) DO NOTHING
RETURNING name
"""


async def reserve_run_name(conn: asyncpg.Connection, base: str, run_id: uuid.UUID, job: str) -> str:
    """The first free name of base, base-2, base-3 ...; unique across every worker."""
    suffix = 1
    while True:
        name = base if suffix == 1 else f"{base}-{suffix}"
        if await conn.fetchval(RESERVE_NAME, name, run_id, job):
            return name
        suffix += 1


OUTBOX_COLUMNS = ("subject", "event_id", "payload")

FETCH_OUTBOX = "SELECT id, subject, event_id, payload FROM outbox ORDER BY id LIMIT $1"
DELETE_OUTBOX = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"


async def append_outbox(conn: asyncpg.Connection, rows: Sequence[tuple[str, uuid.UUID | str, bytes]]) -> None:
    """Keep events durably until JetStream has them; NOTIFY wakes the relay."""
    await conn.copy_records_to_table("outbox", records=rows, columns=OUTBOX_COLUMNS)
    await conn.execute("SELECT pg_notify('joblog_outbox', '')")


async def outbox_runs(conn: asyncpg.Connection, subjects: Any) -> set[str]:
    """Names of the runs that still have events in the outbox ({prefix}.run.{job}.{name}.{kind})."""
    rows = await conn.fetch("SELECT DISTINCT subject FROM outbox")
    prefix = f"{subjects.prefix}.run."
    return {r["subject"].split(".")[-2] for r in rows if r["subject"].startswith(prefix)}


async def fetch_outbox(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(FETCH_OUTBOX, limit)


async def delete_outbox(conn: asyncpg.Connection, ids: list[int]) -> None:
    await conn.execute(DELETE_OUTBOX, ids)


# Open orders ---------------------------------------------------------------------------------

# What a source provides, in the order SourceOrder.record() returns it.
ORDER_COLUMNS = (
    "order_number", "customer_code", "customer_name", "status", "order_date",
    "requested_ship_date", "warehouse", "currency", "total_amount", "line_count",
    "source_updated_at",
)

# A batch lands here by COPY; ON COMMIT DELETE ROWS empties it after every batch.
CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS order_staging ON COMMIT DELETE ROWS AS
SELECT {", ".join(ORDER_COLUMNS)} FROM open_orders WITH NO DATA
"""
# Every order number this run saw, kept on the server (not in the worker) to close the rest.
CREATE_SEEN = "CREATE TEMP TABLE IF NOT EXISTS order_seen (order_number text NOT NULL)"
CLEAR_SEEN = "TRUNCATE order_seen"

# The hash is computed here, in C, and times in UTC so it does not depend on the session.
ROW_HASH = "md5(ROW({}, s.source_updated_at AT TIME ZONE 'UTC')::text)".format(
    ", ".join(f"s.{c}" for c in ORDER_COLUMNS[1:-1])
)

# One statement per batch: remember the numbers, insert new orders, rewrite only the changed
# or reopened ones (unchanged rows are not written at all), and count which was which.
UPSERT_ORDERS = f"""
WITH seen AS (
    INSERT INTO order_seen SELECT order_number FROM order_staging
), staged AS (
    SELECT s.*, {ROW_HASH} AS row_hash FROM order_staging s
), written AS (
    INSERT INTO open_orders ({", ".join(ORDER_COLUMNS)}, row_hash, first_seen_run, last_seen_run, synced_at, closed_at)
    SELECT {", ".join(ORDER_COLUMNS)}, row_hash, $1::uuid, $1::uuid, $2::timestamptz, NULL FROM staged
    ON CONFLICT (order_number) DO UPDATE SET
        {", ".join(f"{c} = EXCLUDED.{c}" for c in ORDER_COLUMNS[1:])},
        row_hash = EXCLUDED.row_hash,
        last_seen_run = EXCLUDED.last_seen_run,
        synced_at = EXCLUDED.synced_at,
        closed_at = NULL
    WHERE open_orders.row_hash <> EXCLUDED.row_hash OR open_orders.closed_at IS NOT NULL
    RETURNING (xmax = 0) AS created
)
SELECT count(*) FILTER (WHERE created) AS created, count(*) FILTER (WHERE NOT created) AS updated FROM written
"""

CLOSE_MISSING = """
UPDATE open_orders o SET closed_at = $1
WHERE o.closed_at IS NULL AND NOT EXISTS (SELECT 1 FROM order_seen s WHERE s.order_number = o.order_number)
"""


async def prepare_staging(conn: asyncpg.Connection) -> None:
    """The connection's staging and seen tables, empty."""
    await conn.execute(CREATE_STAGING)
    await conn.execute(CREATE_SEEN)
    await conn.execute(CLEAR_SEEN)


async def upsert_orders(
    conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]], run_id: uuid.UUID, now: datetime
) -> dict[str, int]:
    """Upsert a batch by order number (inside the caller's transaction); returns the counts."""
    await conn.copy_records_to_table("order_staging", records=rows, columns=ORDER_COLUMNS)
    written = await conn.fetchrow(UPSERT_ORDERS, run_id, now)
    return {"created": written["created"], "updated": written["updated"],
            "unchanged": len(rows) - written["created"] - written["updated"]}


async def close_missing_orders(conn: asyncpg.Connection, now: datetime) -> int:
    """Close the open orders this run did not see in the source; returns how many."""
    await conn.execute("ANALYZE order_seen")  # a temp table has no statistics: let the planner hash it
    status = await conn.execute(CLOSE_MISSING, now)
    await conn.execute(CLEAR_SEEN)
    return int(status.split()[-1])
