"""Open Orders' search reads the trigram index (migration 0011), and finds what it found before."""
from __future__ import annotations

from datetime import date, datetime, timezone

from services.web import db as web_db

ORDERS = [
    ("SO-100001", "C-10021", "Acme Industrial Supply"),
    ("SO-100002", "C-10034", "Baltic Marine Parts"),
    ("SO-200003", "C-20077", "Kunde Müller 100% & Söhne"),
]


async def _orders(db) -> None:  # type: ignore[no-untyped-def]
    await db.executemany(
        """INSERT INTO open_orders (order_number, customer_code, customer_name, status, order_date, currency,
                                    total_amount, line_count, row_hash, synced_at)
           VALUES ($1, $2, $3, 'open', $4, 'EUR', 10, 1, 'h', $5)""",
        [(n, c, name, date(2026, 1, i + 1), datetime(2026, 1, 1, tzinfo=timezone.utc)) for i, (n, c, name) in enumerate(ORDERS)],
    )


async def test_the_search_is_answered_from_the_trigram_index(db):
    await _orders(db)
    # Enough orders for the planner to prefer an index to reading them all.
    await db.execute("""INSERT INTO open_orders (order_number, customer_code, customer_name, status, order_date, currency,
                                                 total_amount, line_count, row_hash, synced_at)
                        SELECT 'SO-' || (300000 + i), 'C-' || (i % 40), 'Customer ' || (i % 40), 'open', DATE '2026-01-01',
                               'EUR', 10, 1, 'h', now() FROM generate_series(1, 20000) AS i""")
    await db.execute("ANALYZE open_orders")
    async with db.transaction():
        rows, _ = await web_db.list_open_orders(db, search="baltic", sort="order_number", descending=False, limit=50)
        total = await web_db.count_open_orders(db, "baltic")
        scans = await db.fetchval("SELECT pg_stat_get_xact_numscans('open_orders_search'::regclass)")
    assert [r["order_number"] for r in rows] == ["SO-100002"] and total == 1
    assert scans >= 1  # the query's expression is the index's: change one, change both


async def test_the_search_matches_number_name_or_code_case_blind_and_literally(db):
    await _orders(db)

    async def found(q: str) -> list[str]:
        rows, _ = await web_db.list_open_orders(db, search=q, sort="order_number", descending=False, limit=50)
        return [r["order_number"] for r in rows]

    assert await found("so-1000") == ["SO-100001", "SO-100002"]
    assert await found("c-20077") == ["SO-200003"]
    assert await found("MÜLLER") == ["SO-200003"]
    assert await found("100%") == ["SO-200003"]  # % is a character here, not a wildcard
    assert await found("SO_1") == []  # nor is _
    await db.execute("UPDATE open_orders SET closed_at = now() WHERE order_number = 'SO-100002'")
    assert await found("baltic") == []  # closed orders are not shown
