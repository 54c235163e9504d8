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
COUNT_OUTBOX = "SELECT count(*) FROM outbox"


async def append_outbox(conn: asyncpg.Connection, rows: Sequence[tuple[str, uuid.UUID, bytes]]) -> None:
    """Keep events durably until JetStream has them; NOTIFY wakes the relay."""
    await conn.copy_records_to_table("outbox", records=rows, columns=OUTBOX_COLUMNS)
    await conn.execute("SELECT pg_notify('joblog_outbox', '')")


async def fetch_outbox(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(FETCH_OUTBOX, limit)


async def delete_outbox(conn: asyncpg.Connection, ids: list[int]) -> None:
    await conn.execute(DELETE_OUTBOX, ids)


# Open orders ---------------------------------------------------------------------------------

ORDER_COLUMNS = (
    "order_number", "customer_code", "customer_name", "status", "order_date",
    "requested_ship_date", "warehouse", "currency", "total_amount", "line_count",
    "source_updated_at", "row_hash",
)

CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS order_staging ON COMMIT DELETE ROWS AS
SELECT {", ".join(ORDER_COLUMNS)} FROM open_orders WITH NO DATA
"""

COUNT_CHANGES = """
SELECT count(*) FILTER (WHERE o.order_number IS NULL) AS created,
       count(*) FILTER (WHERE o.order_number IS NOT NULL
                        AND (o.row_hash <> s.row_hash OR o.closed_at IS NOT NULL)) AS updated,
       count(*) FILTER (WHERE o.row_hash = s.row_hash AND o.closed_at IS NULL) AS unchanged
FROM order_staging s LEFT JOIN open_orders o USING (order_number)
"""

UPSERT_ORDERS = f"""
INSERT INTO open_orders ({", ".join(ORDER_COLUMNS)}, first_seen_run, last_seen_run, synced_at, closed_at)
SELECT {", ".join(ORDER_COLUMNS)}, $1::uuid, $1::uuid, $2::timestamptz, NULL FROM order_staging
ON CONFLICT (order_number) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in ORDER_COLUMNS[1:])},
    last_seen_run = EXCLUDED.last_seen_run,
    synced_at = EXCLUDED.synced_at,
    closed_at = NULL
"""

CLOSE_MISSING = """
UPDATE open_orders SET closed_at = $2
WHERE closed_at IS NULL AND last_seen_run IS DISTINCT FROM $1::uuid
"""


async def prepare_staging(conn: asyncpg.Connection) -> None:
    await conn.execute(CREATE_STAGING)


async def upsert_orders(
    conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]], run_id: uuid.UUID, now: datetime
) -> dict[str, int]:
    """Upsert a batch by order number (inside the caller's transaction); returns the counts."""
    await conn.copy_records_to_table("order_staging", records=rows, columns=ORDER_COLUMNS)
    counts = dict(await conn.fetchrow(COUNT_CHANGES))
    await conn.execute(UPSERT_ORDERS, run_id, now)
    return counts


async def close_missing_orders(conn: asyncpg.Connection, run_id: uuid.UUID, now: datetime) -> int:
    """Close the open orders this run did not see in the source; returns how many."""
    status = await conn.execute(CLOSE_MISSING, run_id, now)
    return int(status.split()[-1])
