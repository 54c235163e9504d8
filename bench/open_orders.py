"""Open Orders at 100,000 open orders: a deep page by cursor against the first page, in one run.

    .venv/bin/python -m bench open_orders
    JOBLOG_BENCH_ORDERS=200000 .venv/bin/python -m bench open_orders
    JOBLOG_BENCH_BASELINE=/path/to/other/checkout ...   # also its web's first page and ?page=200, same run

A scratch database gets the orders (generate_series: 40 customers, a third without ship date, a fifth
without warehouse, many equal dates and totals), VACUUM ANALYZE, then `python -m joblog web` on it and
wrk -t1 -c16 per page: the first page (newest orders), page 200 by cursor (?after=, what "Next" links
give), the same page 200 by ?page=200 (OFFSET, what old clients still get), page 200 sorted by ship date
descending (a nullable column read backwards), and a search's first and 20th page. The target: page 200
by cursor costs what the first page costs (ratio of p50s, same run). The count that heads the page is
timed on its own too (index-only on a partial index once vacuumed; after an update of a tenth of the
orders, as a sync leaves them, before autovacuum).
"""
from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import Result, Servers, nats_server_version, scratch, service_env, service_process
from bench.web import CONNECTIONS, wait_for_port, wrk
from joblog.servers import free_port
from services.web import db as web_db
from services.web.params import encode_order_cursor

SECONDS = 4
WARMUP = 1
PAGE = 50
DEEP = 200

INSERT_ORDERS = """
INSERT INTO open_orders (order_number, customer_code, customer_name, status, order_date, requested_ship_date, warehouse,
                         currency, total_amount, line_count, row_hash, synced_at)
SELECT 'SO-' || (1000000 + i), 'C-' || (i % 40), (ARRAY['Acme Industrial Supply', 'Baltic Marine Parts', 'Nordwind Logistik',
        'Kunde Müller & Söhne'])[1 + i % 4] || ' ' || (i % 10),
       (ARRAY['open', 'on_hold', 'partially_shipped'])[1 + i % 3], DATE '2026-01-01' + (i % 365),
       CASE WHEN i % 3 = 0 THEN NULL ELSE DATE '2026-02-01' + (i % 400) END,
       CASE WHEN i % 5 = 0 THEN NULL ELSE 'WH-' || (i % 7) END, 'EUR', (i % 5000) * 3.25, 1 + i % 24, 'h', now()
FROM generate_series(1, $1::int) AS i
"""


def order_count() -> int:
    return int(os.environ.get("JOBLOG_BENCH_ORDERS", "100000"))


async def cursor_of_page(conn: asyncpg.Connection, page: int, sort: str, direction: str, column: str,
                         where: str = "closed_at IS NULL", *args: object) -> str:
    """The ?after= cursor that the "Next" link of page-1 gives (the last order of page - 1)."""
    row = await conn.fetchrow(
        f"""SELECT {column} AS value, order_number FROM open_orders WHERE {where}
            ORDER BY {column} {direction} NULLS LAST, order_number {direction} OFFSET $%d LIMIT 1""" % (len(args) + 1),
        *args, (page - 1) * PAGE - 1)
    return encode_order_cursor(sort, direction, row["value"], row["order_number"])


async def key_of_page(conn: asyncpg.Connection, page: int, sort: str, direction: str) -> web_db.OrderKey:
    column = web_db.ORDER_SORTS[sort].column
    row = await conn.fetchrow(
        f"""SELECT {column} AS value, order_number FROM open_orders WHERE closed_at IS NULL
            ORDER BY {column} {direction} NULLS LAST, order_number {direction} OFFSET $1 LIMIT 1""", (page - 1) * PAGE - 1)
    return web_db.OrderKey(row["value"], row["order_number"])


async def timed(conn: asyncpg.Connection, sql: str, times: int = 20) -> float:
    """Median ms of a statement."""
    spent = []
    for _ in range(times):
        began = time.perf_counter()
        await conn.fetchval(sql)
        spent.append((time.perf_counter() - began) * 1000)
    return statistics.median(spent)


async def query_times(conn: asyncpg.Connection, cursors: dict[str, tuple[str, str, Any]]) -> dict[str, float]:
    """Median ms of the page's SQL alone (services.web.db.list_open_orders, 50 times each)."""
    figures = {}
    for label, (sort, direction, key) in cursors.items():
        spent = []
        for _ in range(50):
            began = time.perf_counter()
            if isinstance(key, int):
                await web_db.list_open_orders(conn, search=None, sort=sort, descending=direction == "desc", limit=PAGE, offset=key)
            else:
                await web_db.list_open_orders(conn, search=None, sort=sort, descending=direction == "desc", limit=PAGE, after=key)
            spent.append((time.perf_counter() - began) * 1000)
        figures[label] = statistics.median(spent)
    return figures


async def open_orders(servers: Servers) -> tuple[list[Result], dict[str, float]]:
    orders = order_count()
    async with scratch(servers, "orders") as (dsn, stream, prefix):
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(INSERT_ORDERS, orders)
            await conn.execute("VACUUM (ANALYZE) open_orders")
            count = "SELECT count(*) FROM open_orders WHERE closed_at IS NULL"
            count_vacuumed = await timed(conn, count)
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + count))
            deep = await cursor_of_page(conn, DEEP, "order_date", "desc", "order_date")
            deep_ship = await cursor_of_page(conn, DEEP, "ship_date", "desc", "requested_ship_date")
            search = "closed_at IS NULL AND (order_number || ' ' || customer_name || ' ' || customer_code) ILIKE $1"
            deep_search = await cursor_of_page(conn, 20, "order_date", "desc", "order_date", search, "%acme%")
            sql = await query_times(conn, {
                "first page": ("order_date", "desc", None),
                f"page {DEEP} by cursor": ("order_date", "desc", await key_of_page(conn, DEEP, "order_date", "desc")),
                f"page {DEEP} by offset": ("order_date", "desc", (DEEP - 1) * PAGE),
                f"page {DEEP} by ship date descending, by cursor": ("ship_date", "desc", await key_of_page(conn, DEEP, "ship_date", "desc")),
            })
        finally:
            await conn.close()
        port = free_port()
        env = service_env(servers.nats_url, dsn, stream, prefix, JOBLOG_WEB_PORT=str(port))
        base = f"http://127.0.0.1:{port}/open_orders"
        pages = {
            "first page": base,
            f"page {DEEP} by cursor": f"{base}?sort=order_date&dir=desc&after={deep}",
            f"page {DEEP} by ?page= (offset, old clients)": f"{base}?sort=order_date&dir=desc&page={DEEP}",
            f"page {DEEP} by ship date descending (NULLs last), by cursor": f"{base}?sort=ship_date&dir=desc&after={deep_ship}",
            "search `acme`, first page": f"{base}?q=acme",
            "search `acme`, page 20 by cursor": f"{base}?q=acme&sort=order_date&dir=desc&after={deep_search}",
        }
        figures: dict[str, dict[str, float]] = {}
        with service_process("web", env):
            wait_for_port(port)
            for label, url in pages.items():
                await asyncio.to_thread(wrk, url, WARMUP, None)
                figures[label] = await asyncio.to_thread(wrk, url, SECONDS, None)
        baseline = os.environ.get("JOBLOG_BENCH_BASELINE")
        if baseline:  # another checkout's web (e.g. before keysets) on the same orders, same load, same run
            with service_process("web", env, tree=Path(baseline)):
                wait_for_port(port)
                for label, url in {"first page": base, f"page {DEEP} by ?page=": f"{base}?sort=order_date&dir=desc&page={DEEP}"}.items():
                    await asyncio.to_thread(wrk, url, WARMUP, None)
                    figures[f"baseline {baseline}: {label}"] = await asyncio.to_thread(wrk, url, SECONDS, None)
        conn = await asyncpg.connect(dsn)
        try:  # a sync updates rows: their pages leave the visibility map until a vacuum
            await conn.execute("UPDATE open_orders SET synced_at = now() WHERE order_number LIKE '%0'")
            count_updated = await timed(conn, count)
        finally:
            await conn.close()
    server = await nats_server_version(servers.nats_url) + " (the web's live feed; pages read Postgres)"
    first, deep_figure = figures["first page"], figures[f"page {DEEP} by cursor"]
    ratio = deep_figure["p50"] / first["p50"] if first["p50"] else float("inf")
    errors = sum(f["errors"] for f in figures.values())
    notes = [f"{label}: {f['rps']:,.0f} req/s, p50 {f['p50']:.1f} ms, p99 {f['p99']:.1f} ms" for label, f in figures.items()]
    notes += ["the page's SQL alone (median of 50): " + ", ".join(f"{label} {ms:.2f} ms" for label, ms in sql.items())]
    notes += [
        f"the count heading the page ({orders:,} open orders): {count_vacuumed:.1f} ms vacuumed, "
        f"{count_updated:.1f} ms after a tenth of the orders were updated (median of 20)",
        "count plan (vacuumed): " + " / ".join(line.strip() for line in plan.splitlines()),
        f"wrk -t1 -c{CONNECTIONS} -d{SECONDS}s after {WARMUP} s; errors or non-2xx: {errors:.0f}",
    ]
    return [Result(
        f"9. Open Orders page {DEEP} by cursor ({orders:,} orders)",
        f"p50 {deep_figure['p50']:.1f} ms, p99 {deep_figure['p99']:.1f} ms, {deep_figure['rps']:,.0f} req/s",
        f"the first page: p50 {first['p50']:.1f} ms, {first['rps']:,.0f} req/s",
        f"{ratio:.2f}x", "<= 1.5x the first page (keyset: flat at any depth)", ratio <= 1.5 and errors == 0,
        ".venv/bin/python -m bench open_orders", notes, {}, server,
    )], {}
