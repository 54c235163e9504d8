"""The bulk path of SyncOpenOrdersJob (a CSV file COPYed and checked in SQL) against the per-row path.

The per-row path is the orders API serving the very dicts the CSV source's csv module reads from the
same file, so both runs see the same orders; everything the job reports and writes must be equal.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from pydantic import BaseModel, ConfigDict

from services.contracts.events import StepLogged, RunSucceeded, parse_event
from services.sync_worker import db
from services.sync_worker.jobs import registry
from services.sync_worker.jobs.api import create_run, execute_run
from services.sync_worker.sources import NotBulk
from services.sync_worker.sources.csv_file import CsvSource
from services.sync_worker.sources.sample import COLUMNS, generate_orders
from tests.sync_worker.conftest import OrdersApi, paged

# Every kind of row SourceOrder refuses, next to rows it accepts only in a form SQL leaves to it.
ODD_VALUES: list[dict[str, str]] = [
    {"customer_name": ""},                              # required, empty
    {"customer_name": "   "},                           # stripped to nothing
    {"customer_name": "x" * 201},                       # too long
    {"customer_name": "é" * 200},                       # 200 characters (400 bytes): fine
    {"customer_name": "\u00a0Acme\u2003"},              # Unicode whitespace stripped
    {"customer_name": 'Acme, "the" Company\nLtd'},      # quoted in the file: comma, quotes, newline
    {"order_number": "x" * 41},
    {"status": ""},
    {"order_date": "2026-02-30"},                       # a date that does not exist: the cast fails
    {"order_date": "27/11/2026"},
    {"order_date": " 2026-11-27"},                      # pydantic does not strip dates
    {"order_date": "2026-11-27T00:00:00"},              # a datetime at midnight is a date to pydantic
    {"order_date": "today"},                            # Postgres knows it; pydantic does not
    {"requested_ship_date": ""},                        # optional
    {"requested_ship_date": "2024-02-29"},              # a leap day
    {"requested_ship_date": "2026-13-01"},
    {"warehouse": ""},                                  # optional: None
    {"warehouse": "  "},                                # stripped: '' (not None)
    {"warehouse": "W" * 41},
    {"currency": "eur"},
    {"currency": "EURO"},
    {"currency": " USD "},                              # stripped, then matched
    {"currency": ""},
    {"total_amount": "-1.00"},
    {"total_amount": "-0"},                             # zero to pydantic
    {"total_amount": "1.234"},                          # three decimals
    {"total_amount": "1.230"},                          # ... that pydantic normalises
    {"total_amount": "123456789012345.00"},             # more digits than numeric(14, 2)
    {"total_amount": "999999999999.99"},                # the largest
    {"total_amount": "12.5"},
    {"total_amount": "100"},
    {"total_amount": "007.50"},
    {"total_amount": "1_000"},
    {"total_amount": "1e3"},
    {"total_amount": "NaN"},
    {"total_amount": "abc"},                            # not a number: the cast fails
    {"line_count": "0"},
    {"line_count": "2147483648"},
    {"line_count": "99999999999"},
    {"line_count": "5.0"},
    {"line_count": "+5"},
    {"line_count": "05"},
    {"line_count": "seven"},
    {"updated_at": ""},
    {"updated_at": "2026-11-26T16:47:00Z"},
    {"updated_at": "2026-11-26 16:47:00+00:00"},
    {"updated_at": "2026-11-26T16:47:00"},              # no zone
    {"updated_at": "2026-11-26T16:47:00+05:30"},
    {"updated_at": "2026-11-26T16:47:00.250+00:00"},
    {"updated_at": "2026-11-26T24:00:00+00:00"},
    {"updated_at": "2026-11-26T16:47:00+00"},
    {"updated_at": "yesterday"},
    {"order_number": " SO-WS "},                        # stripped
]


def mixed_rows() -> list[dict[str, str]]:
    """Good orders, one odd value per row, and duplicates of every kind."""
    rows = list(generate_orders(120))
    for row, values in zip(rows[5:], ODD_VALUES):
        row.update(values)
    rows[90]["order_number"] = rows[91]["order_number"]             # twice, both valid: the second is skipped
    rows[93]["order_number"] = rows[94]["order_number"]
    rows[93]["currency"] = "xx"                                     # the first is invalid: the second counts
    rows[96]["order_number"] = " " + rows[97]["order_number"]       # the same once stripped
    rows[99]["order_number"] = rows[2]["order_number"]              # much later
    rows[100]["order_number"] = "SO-WS"                             # the stripped one above
    return rows


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def as_read_per_row(path: Path) -> list[dict[str, Any]]:
    """The dicts CsvSource's per-row path gives SourceOrder for this file."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        return [{name: value or None for name, value in zip(header, row)} for row in reader]


async def bulk_eligible(path: Path) -> bool:
    """Whether the job's bulk path takes this file (its bytes pass the checks and COPY reads them)."""
    async with CsvSource(path, 100).bulk() as rows:
        if rows is None:
            return False
        try:
            async for _ in rows.data:
                pass
        except NotBulk:
            return False
    return True


@pytest_asyncio.fixture
async def pool(database_url: str) -> Any:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=3) as pool:
        yield pool


async def sync(pool: asyncpg.Pool, settings: Any) -> dict[str, Any]:
    """Run the job as the worker does; its stats, its warnings in order, and open_orders after it."""
    spec = registry.get("sync_open_orders")
    ctx = await create_run(spec, settings, pool, trigger="cli", requested_by="test")
    assert await execute_run(spec, ctx)
    events = [parse_event(bytes(r["payload"])) for r in await pool.fetch(
        "SELECT payload FROM outbox WHERE subject LIKE $1 ORDER BY id", f"%.{ctx.name}.%")]
    steps = [e for e in events if isinstance(e, StepLogged)]
    [succeeded] = [e for e in events if isinstance(e, RunSucceeded)]
    orders = await pool.fetch(
        f"SELECT {', '.join(db.ORDER_COLUMNS)}, row_hash, closed_at IS NULL AS open FROM open_orders ORDER BY order_number")
    return {
        "stats": succeeded.stats,
        "warnings": [(s.message, s.data) for s in steps if s.level == "warning"],
        # A warning's key is step-<seq>: where it falls among the progress updates is not part of the result.
        "keys": list(dict.fromkeys(s.key for s in steps if not s.key.startswith("step-"))),
        "final": {s.key: s.message for s in steps if s.key in ("fetched", "import", "closed")},
        "orders": [dict(r) for r in orders],
    }


async def both_paths(pool: asyncpg.Pool, make_worker_settings: Any, orders_api: OrdersApi, path: Path, batch: int) -> tuple[Any, Any]:
    orders_api.pages = paged(as_read_per_row(path), batch)
    per_row = await sync(pool, make_worker_settings(orders_source="http", orders_url=orders_api.url, sync_batch_size=batch))
    await pool.execute("TRUNCATE open_orders")
    bulk = await sync(pool, make_worker_settings(orders_csv_path=path, sync_batch_size=batch, sync_progress_interval=0))
    return per_row, bulk


@pytest.mark.parametrize("batch", [7, 2000])
async def test_sql_validation_reports_and_writes_exactly_what_pydantic_does(
    batch: int, pool, make_worker_settings, orders_api: OrdersApi, tmp_path: Path,
):
    path = tmp_path / "orders.csv"
    write(path, mixed_rows())
    assert await bulk_eligible(path)

    per_row, bulk = await both_paths(pool, make_worker_settings, orders_api, path, batch)

    assert bulk["stats"] == per_row["stats"]
    assert bulk["stats"]["invalid"] > 30 and bulk["stats"]["created"] > 60
    assert bulk["warnings"] == per_row["warnings"]  # the same messages and data, in the file's order
    assert any("appears twice" in message for message, _ in bulk["warnings"])
    assert bulk["orders"] == per_row["orders"]  # values and hashes alike
    assert bulk["final"] == per_row["final"]
    assert bulk["keys"] == per_row["keys"] == ["connect", "connected", "fetched", "import", "closed", "invalid-more", "duration"][:len(bulk["keys"])] or bulk["keys"] == per_row["keys"]


async def test_past_max_warnings_the_same_orders_are_listed_and_the_rest_counted(
    pool, make_worker_settings, orders_api: OrdersApi, tmp_path: Path,
):
    rows = list(generate_orders(300))
    for i in range(0, 300, 3):
        rows[i]["currency"] = "??" if i % 2 else "toolong"
    path = tmp_path / "orders.csv"
    write(path, rows)

    per_row, bulk = await both_paths(pool, make_worker_settings, orders_api, path, 40)

    assert bulk["stats"] == per_row["stats"] and bulk["stats"]["invalid"] == 100
    assert bulk["warnings"] == per_row["warnings"] and len(bulk["warnings"]) == 51  # 50, then "50 more"


async def test_an_unchanged_resync_writes_no_row_whichever_path_wrote_them(
    pool, make_worker_settings, orders_api: OrdersApi, tmp_path: Path,
):
    path = tmp_path / "orders.csv"
    write(path, mixed_rows())
    orders_api.pages = paged(as_read_per_row(path), 50)
    first = await sync(pool, make_worker_settings(orders_source="http", orders_url=orders_api.url))
    versions = await pool.fetch("SELECT order_number, ctid, xmin, xmax FROM open_orders ORDER BY 1")

    again = await sync(pool, make_worker_settings(orders_csv_path=path))  # the bulk path over the per-row path's rows
    assert again["stats"] == {**first["stats"], "created": 0, "unchanged": first["stats"]["created"]}
    # Not rewritten, and not even locked (a lock would set xmax).
    assert await pool.fetch("SELECT order_number, ctid, xmin, xmax FROM open_orders ORDER BY 1") == versions

    back = await sync(pool, make_worker_settings(orders_source="http", orders_url=orders_api.url))
    assert back["stats"] == again["stats"]
    assert await pool.fetch("SELECT order_number, ctid, xmin, xmax FROM open_orders ORDER BY 1") == versions


async def test_a_changed_or_reopened_order_is_updated_by_the_bulk_path(pool, make_worker_settings, tmp_path: Path):
    path = tmp_path / "orders.csv"
    rows = list(generate_orders(30))
    write(path, rows)
    settings = make_worker_settings(orders_csv_path=path)
    await sync(pool, settings)
    write(path, rows[:20])
    assert (await sync(pool, settings))["stats"]["closed"] == 10

    rows[3]["status"] = "on_hold" if rows[3]["status"] != "on_hold" else "open"
    write(path, rows)
    result = await sync(pool, settings)

    assert result["stats"] == {"fetched": 30, "created": 0, "updated": 11, "unchanged": 19, "closed": 0, "invalid": 0, "imported": 30}
    assert all(order["open"] for order in result["orders"])


# What Postgres' COPY would read differently from the csv module: the file takes the per-row path.
ODD_FILES: dict[str, bytes] = {
    "a quote inside a field": b'SO-1,C-1,Acme "Best" Co,open,2026-11-27,,W,EUR,1.00,1,\r\n',
    "text after a closing quote": b'SO-1,C-1,"Acme" Co,open,2026-11-27,,W,EUR,1.00,1,\r\n',
    "a row with a field too few": b"SO-1,C-1,Acme,open,2026-11-27,,W,EUR,1.00,1\r\n",
    "a row with a field too many": b"SO-1,C-1,Acme,open,2026-11-27,,W,EUR,1.00,1,,extra\r\n",
    "a blank line": b"\r\n",
    "COPY's end-of-data line": b"\\.\r\n",
    "a bare newline in a CRLF file": b"SO-1,C-1,Acme,open,2026-11-27,,W,EUR,1.00,1,\n",
}


@pytest.mark.parametrize("odd", list(ODD_FILES))
async def test_a_file_copy_would_read_differently_is_read_row_by_row_with_the_same_result(
    odd: str, pool, make_worker_settings, orders_api: OrdersApi, tmp_path: Path,
):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)  # CRLF line ends, as csv writes them
    writer.writeheader()
    writer.writerows(generate_orders(5))
    text = buffer.getvalue().encode()
    path = tmp_path / "orders.csv"
    path.write_bytes(text + ODD_FILES[odd] + b"SO-200,C-2,Beta,open,2026-11-27,,W,USD,2.00,2,\r\n")

    per_row, bulk = await both_paths(pool, make_worker_settings, orders_api, path, 3)

    assert bulk["stats"] == per_row["stats"] and bulk["stats"]["fetched"] >= 6
    assert bulk["warnings"] == per_row["warnings"]
    assert bulk["orders"] == per_row["orders"]


async def test_a_file_that_is_not_utf8_still_fails_the_run_with_a_source_error(pool, make_worker_settings, tmp_path: Path):
    path = tmp_path / "orders.csv"
    write(path, list(generate_orders(4)))
    path.write_bytes(path.read_bytes() + b"SO-9,C-9,Caf\xe9,open,2026-11-27,,W,EUR,1.00,1,\r\n")
    spec = registry.get("sync_open_orders")
    ctx = await create_run(spec, make_worker_settings(orders_csv_path=path), pool, trigger="cli")

    assert not await execute_run(spec, ctx)
    failed = json.loads(await pool.fetchval("SELECT convert_from(payload, 'UTF8') FROM outbox WHERE subject LIKE '%.failed'"))
    assert failed["error_class"] == "SourceError"
    assert failed["error_message"].startswith("orders.csv line ")
    assert "'utf-8' codec can't decode byte 0xe9" in failed["error_message"]


def test_the_whitespace_sql_strips_is_what_pydantic_strips():
    class Stripped(BaseModel):
        model_config = ConfigDict(str_strip_whitespace=True)
        value: str

    stripped = {c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and Stripped(value=chr(c) + "a").value == "a"}

    assert stripped == set(map(ord, db.PYDANTIC_WHITESPACE))


async def test_a_bulk_sync_cancelled_midway_stops_at_its_next_chunk(pool, make_worker_settings, tmp_path: Path):
    import asyncio

    from tests.conftest import eventually

    path = tmp_path / "orders.csv"
    write(path, list(generate_orders(20_000)))
    spec = registry.get("sync_open_orders")
    ctx = await create_run(spec, make_worker_settings(orders_csv_path=path, sync_batch_size=50, sync_progress_interval=0),
                           pool, trigger="cli")
    run = asyncio.create_task(execute_run(spec, ctx))
    await eventually(lambda: pool.fetchval("SELECT count(*) > 0 FROM open_orders"), interval=0.01)

    assert ctx.cancel("alice")
    assert not await run

    failed = json.loads(await pool.fetchval("SELECT convert_from(payload, 'UTF8') FROM outbox WHERE subject LIKE '%.failed'"))
    assert (failed["error_class"], failed["error_message"]) == ("RunCancelled", "cancelled by alice")
    assert 0 < await pool.fetchval("SELECT count(*) FROM open_orders") < 20_000
