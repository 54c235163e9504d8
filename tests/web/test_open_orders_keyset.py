"""Open Orders page by keyset: every order exactly once and in order, in every sort and direction, NULLs last
and ties by order number, with a search too; a cursor that was cut or changed is a 400; ?page= still works."""
from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest

from services.web import db as web_db
from services.web.params import encode_order_cursor

CUSTOMERS = ["Acme Industrial Supply", "Baltic Marine Parts", "Nordwind Logistik"]
ORDERS = 137  # three pages, the last one short
CLOSED = 9


async def _orders(db: Any) -> None:
    """Orders with many ties in every column, NULL ship dates and warehouses, and some closed ones."""
    await db.execute(
        """INSERT INTO open_orders (order_number, customer_code, customer_name, status, order_date, requested_ship_date,
                                    warehouse, currency, total_amount, line_count, row_hash, synced_at, closed_at)
           SELECT 'SO-' || (100000 + (i * 7919) % 1000), 'C-' || (i % 3), ($1::text[])[1 + i % 3],
                  (ARRAY['open', 'on_hold', 'partially_shipped'])[1 + i % 3 * (i % 2)],
                  DATE '2026-11-01' + (i % 5), CASE WHEN i % 3 = 0 THEN NULL ELSE DATE '2026-12-01' + (i % 4) END,
                  CASE WHEN i % 5 < 2 THEN NULL ELSE 'WH-' || (i % 2) END, 'EUR', (i % 6) * 12.5, 1, 'h', now(),
                  CASE WHEN i > $2::int THEN now() END
           FROM generate_series(1, $2::int + $3::int) AS i""",
        CUSTOMERS, ORDERS, CLOSED)


async def _expected(db: Any, sort: str, direction: str, search: str | None = None) -> list[str]:
    """The order numbers in the order the page promises, by one query over every open order."""
    column = web_db.ORDER_SORTS[sort].column
    where = "closed_at IS NULL" + (" AND (order_number || ' ' || customer_name || ' ' || customer_code) ILIKE $1" if search else "")
    rows = await db.fetch(
        f"SELECT order_number FROM open_orders WHERE {where} ORDER BY {column} {direction} NULLS LAST, order_number {direction}",
        *([f"%{search}%"] if search else []))
    return [r["order_number"] for r in rows]


async def _walk(client: Any, query: dict[str, str], forwards: bool = True) -> tuple[list[list[str]], Any]:
    """Follow next_cursor (or, from the last page, prev_cursor) until there is none: each page's orders."""
    pages, body = [], await (await client.get("/api/open_orders", params=query)).json()
    if not forwards:  # first to the last page, then back
        while body["next_cursor"]:
            body = await (await client.get("/api/open_orders", params={**query, "after": body["next_cursor"]})).json()
    while True:
        pages.append([o["order_number"] for o in body["orders"]])
        cursor = body["next_cursor" if forwards else "prev_cursor"]
        if cursor is None:
            return (pages if forwards else pages[::-1]), body
        response = await client.get("/api/open_orders", params={**query, "after" if forwards else "before": cursor})
        assert response.status == 200, await response.text()
        body = await response.json()


@pytest.mark.parametrize("search", [None, "acme"])
async def test_paging_gives_every_open_order_once_and_in_order_in_every_sort_and_direction(client, db, search):
    await _orders(db)
    for sort in web_db.ORDER_SORTS:
        for direction in ("asc", "desc"):
            expected = await _expected(db, sort, direction, search)
            query = {"sort": sort, "dir": direction, **({"q": search} if search else {})}
            pages, last = await _walk(client, query)
            assert [n for page in pages for n in page] == expected, (sort, direction, search)
            assert all(len(page) == 50 for page in pages[:-1]) and 0 < len(pages[-1]) <= 50
            assert last["total"] == len(expected) and last["pages"] == len(pages)
            backwards, first = await _walk(client, query, forwards=False)
            assert backwards == pages, (sort, direction, search)  # Previous gives the same pages back
            assert first["page"] == 1 and first["prev_cursor"] is None


async def test_nulls_come_last_in_both_directions_and_ties_go_by_order_number(client, db):
    await _orders(db)
    for direction in ("asc", "desc"):
        pages, _ = await _walk(client, {"sort": "ship_date", "dir": direction})
        numbers = [n for page in pages for n in page]
        dates = dict(await db.fetch("SELECT order_number, requested_ship_date FROM open_orders WHERE closed_at IS NULL"))
        shown = [dates[n] for n in numbers]
        nulls = shown.index(None)
        assert all(d is None for d in shown[nulls:]) and None not in shown[:nulls]  # NULLs last, in one run
        assert shown[:nulls] == sorted(shown[:nulls], reverse=direction == "desc")
        tail = numbers[nulls:]
        assert tail == sorted(tail, reverse=direction == "desc")  # among equal values: by order number


async def test_old_clients_page_numbers_still_give_the_same_pages(client, db):
    await _orders(db)
    pages, _ = await _walk(client, {"sort": "customer", "dir": "desc"})
    for number, expected in enumerate(pages, start=1):
        body = await (await client.get("/api/open_orders", params={"sort": "customer", "dir": "desc", "page": str(number)})).json()
        assert [o["order_number"] for o in body["orders"]] == expected
        assert (body["page"], body["pages"], body["total"]) == (number, 3, ORDERS)
    beyond = await client.get("/api/open_orders", params={"page": "4"})
    assert beyond.status == 404


async def test_the_page_links_first_previous_and_next(client, db):
    await _orders(db)
    first = await (await client.get("/open_orders", params={"sort": "total", "dir": "asc"})).text()
    assert f"{ORDERS} open orders" in first and "Next →" in first and "Previous" not in first and "First" not in first
    next_href = unescape(re.search(r'<a class="button" rel="next" href="([^"]+)"', first)[1])  # type: ignore[index]
    second = await (await client.get(next_href)).text()
    assert "← Previous" in second and "⇤ First" in second and "Next →" in second and f"{ORDERS} open orders" in second
    prev_href = unescape(re.search(r'rel="prev" href="([^"]+)"', second)[1])  # type: ignore[index]
    again = await (await client.get(prev_href)).text()
    rows = re.findall(r'<td class="mono">([^<]+)</td>', first)
    assert re.findall(r'<td class="mono">([^<]+)</td>', again) == rows and len(rows) == 50


async def test_a_cursor_that_was_cut_changed_or_belongs_to_another_sort_is_a_400(client, db):
    await _orders(db)
    body = await (await client.get("/api/open_orders", params={"sort": "order_date", "dir": "desc"})).json()
    good = body["next_cursor"]
    changed = good[:12] + ("A" if good[12] != "A" else "B") + good[13:]
    for params in [
        {"after": "garbage!"},
        {"after": good[:-6]},                                             # cut
        {"after": changed},                                               # one character changed
        {"before": "x" * 2001},
        {"after": good, "sort": "total"},                                 # another sort's position
        {"after": good, "dir": "asc"},
        {"after": good, "before": good},
        {"after": good, "page": "2"},
        {"after": encode_order_cursor("order_date", "desc", "not a date", "SO-1")},  # well signed, wrong type
        {"after": encode_order_cursor("total", "asc", "NaN", "SO-1"), "sort": "total", "dir": "asc"},
    ]:
        query = {"sort": "order_date", "dir": "desc", **params}
        for path in ("/api/open_orders", "/open_orders"):
            response = await client.get(path, params=query)
            assert response.status == 400, (path, params, response.status)
        detail = (await (await client.get("/api/open_orders", params=query)).json())["detail"]
        assert "cursor" in detail or "give one of" in detail, detail
    assert (await client.get("/api/open_orders", params={"sort": "order_date", "dir": "desc", "after": good})).status == 200


async def test_a_cursor_past_the_last_open_order_offers_the_first_page(client, db):
    await _orders(db)
    body = await (await client.get("/api/open_orders", params={"sort": "order_number", "dir": "asc"})).json()
    await db.execute("UPDATE open_orders SET closed_at = now() WHERE order_number > $1", body["orders"][-1]["order_number"])
    later = await client.get("/open_orders", params={"sort": "order_number", "dir": "asc", "after": body["next_cursor"]})
    html = await later.text()
    assert later.status == 200 and "No more open orders here" in html and "⇤ First page" in html


async def test_the_longest_customer_names_page_by_cursor_too(client, db):
    """A customer name may have 200 characters (the sync's limit), in any script: its cursor still fits."""
    await db.execute(
        """INSERT INTO open_orders (order_number, customer_code, customer_name, status, order_date, currency,
                                    total_amount, line_count, row_hash, synced_at)
           SELECT 'SO-' || lpad(i::text, 37, '0'), 'C-1', repeat('𝔄', 199) || i % 2, 'open', DATE '2026-11-01', 'EUR', 1, 1, 'h', now()
           FROM generate_series(1, 60) AS i""")
    pages, _ = await _walk(client, {"sort": "customer", "dir": "desc"})
    assert [n for page in pages for n in page] == await _expected(db, "customer", "desc") and len(pages) == 2
