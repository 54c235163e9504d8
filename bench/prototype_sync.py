"""Prototype, not service code: the 100k-order sync done set-based in Postgres, against the raw COPY.

The file is COPYed into a staging table as text (Postgres parses it, as in the limit), then one
INSERT ... SELECT casts and checks every row, hashes it, and upserts only changed rows; one UPDATE
closes orders that left the source. Rows that fail the casts would be the only ones Python looks at.

    .venv/bin/python -m bench.prototype_sync [orders]
"""
from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from bench.common import Servers, scratch
from services.sync_worker.sources.sample import COLUMNS, generate_orders, write_csv

STAGE = f"CREATE TEMP TABLE stage ({', '.join(f'{c} text' for c in COLUMNS)})"
UPSERT = """
INSERT INTO open_orders AS o (order_number, customer_code, customer_name, status, order_date, requested_ship_date,
    warehouse, currency, total_amount, line_count, source_updated_at, row_hash, first_seen_run, last_seen_run, synced_at)
SELECT order_number, customer_code, customer_name, status, order_date::date, NULLIF(requested_ship_date, '')::date,
       NULLIF(warehouse, ''), currency, total_amount::numeric, line_count::int, NULLIF(updated_at, '')::timestamptz,
       md5(s::text), $1, $1, now()
FROM stage s
ON CONFLICT (order_number) DO UPDATE SET
    customer_code = EXCLUDED.customer_code, customer_name = EXCLUDED.customer_name, status = EXCLUDED.status,
    order_date = EXCLUDED.order_date, requested_ship_date = EXCLUDED.requested_ship_date, warehouse = EXCLUDED.warehouse,
    currency = EXCLUDED.currency, total_amount = EXCLUDED.total_amount, line_count = EXCLUDED.line_count,
    source_updated_at = EXCLUDED.source_updated_at, row_hash = EXCLUDED.row_hash, last_seen_run = EXCLUDED.last_seen_run,
    synced_at = EXCLUDED.synced_at, closed_at = NULL
WHERE o.row_hash IS DISTINCT FROM EXCLUDED.row_hash OR o.closed_at IS NOT NULL
"""
CLOSE = """
UPDATE open_orders o SET closed_at = now() WHERE closed_at IS NULL
AND NOT EXISTS (SELECT 1 FROM stage s WHERE s.order_number = o.order_number)
"""


async def main(orders: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, Servers() as servers:
        path = Path(tmp) / "orders.csv"
        write_csv(path, generate_orders(orders))
        async with scratch(servers, "psync") as (dsn, _, _):
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("CREATE TABLE copy_limit (" + ", ".join(f"{c} text" for c in COLUMNS) + ")")
                began = time.perf_counter()
                await conn.copy_to_table("copy_limit", source=path, format="csv", header=True)
                copy = time.perf_counter() - began
                # A second floor: the file COPYed into a table shaped and indexed like open_orders (no hash, no upsert).
                await conn.execute("CREATE TABLE copy_indexed (LIKE open_orders INCLUDING ALL)")
                await conn.execute("ALTER TABLE copy_indexed ALTER row_hash DROP NOT NULL, ALTER synced_at SET DEFAULT now()")
                began = time.perf_counter()
                await conn.copy_to_table("copy_indexed", source=path, format="csv", header=True, columns=[
                    "order_number", "customer_code", "customer_name", "status", "order_date", "requested_ship_date",
                    "warehouse", "currency", "total_amount", "line_count", "source_updated_at"])
                indexed = time.perf_counter() - began
                print(f"raw COPY into a table indexed like open_orders: {indexed:.2f} s = {indexed / copy:.1f}x the raw COPY")
                for label in ("all created", "all unchanged"):
                    began = time.perf_counter()
                    async with conn.transaction():
                        await conn.execute(STAGE + " ON COMMIT DROP")
                        await conn.copy_to_table("stage", source=path, format="csv", header=True)
                        await conn.execute(UPSERT, uuid.uuid4())
                        await conn.execute(CLOSE)
                    seconds = time.perf_counter() - began
                    print(f"set-based sync, {label:13}: {seconds:6.2f} s = {seconds / copy:4.1f}x the raw COPY ({copy:.2f} s)")
            finally:
                await conn.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
