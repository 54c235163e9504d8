"""SyncOpenOrdersJob: bring open_orders in step with the ERP's open orders."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

import asyncpg
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from services.contracts.events import utcnow
from services.sync_worker import db
from services.sync_worker.jobs.api import RunContext, registry
from services.sync_worker.sources import BulkRows, BulkSource, NotBulk, OrderSource, RawOrder, open_source

# Individual warnings per run; past this, invalid rows are only counted.
MAX_WARNINGS = 50


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character, which the database cannot store")
    return value


# Postgres text cannot hold NUL: such a value makes its row invalid instead of failing the batch.
Text = Annotated[str, AfterValidator(_no_nul)]


class SourceOrder(BaseModel):
    """One order as the source must provide it (a missing value is None: the CSV source maps empty fields)."""

    model_config = ConfigDict(str_strip_whitespace=True, extra="ignore")

    order_number: Text = Field(min_length=1, max_length=40)
    customer_code: Text = Field(min_length=1, max_length=40)
    customer_name: Text = Field(min_length=1, max_length=200)
    status: Text = Field(min_length=1, max_length=40)
    order_date: date
    requested_ship_date: date | None = None
    warehouse: Text | None = Field(default=None, max_length=40)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    total_amount: Decimal = Field(ge=0, max_digits=14, decimal_places=2)
    line_count: int = Field(ge=1, le=2_147_483_647)  # the column is a Postgres integer
    updated_at: datetime | None = None

    def record(self) -> tuple[Any, ...]:
        """The row for db.ORDER_COLUMNS (fields are declared in that order)."""
        return tuple(self.__dict__.values())


def explain(error: ValidationError) -> str:
    """'customer_name: String should have at least 1 character' for the first problem."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "row"
    return f"{where}: {first['msg']}"


# Validated batches waiting for the database: reading the next batch overlaps the upsert of
# this one, and at most this many (plus the one being written) are in memory.
PIPELINE_DEPTH = 2


@registry.job("sync_open_orders", title="SyncOpenOrdersJob", description="Pull open orders from the ERP into open_orders.")
async def sync_open_orders(ctx: RunContext) -> dict[str, Any]:
    """Upsert every valid source order, close the ones that left the source, report the counts."""
    began = time.monotonic()

    async def retrying(notice: str) -> None:
        await ctx.log(notice, key="source-retry", level="warning")

    source = open_source(ctx.settings, on_retry=retrying)
    # Any, not int: the counts are also passed to ctx.log as its **data.
    stats: dict[str, Any] = {"fetched": 0, "created": 0, "updated": 0, "unchanged": 0, "closed": 0, "invalid": 0}
    report = _Report(ctx, stats)

    await ctx.log(f"Connecting to {source.description}", key="connect", source=source.description)
    imported = connected = False
    if isinstance(source, BulkSource):
        async with source.bulk() as rows:
            await ctx.log(f"Connection established to {source.description}", key="connected")
            connected = True
            if rows is not None:
                imported = await _import_bulk(ctx, rows, report)
    if not imported:
        await _import_rows(ctx, source, report, connected=connected)
    if report.warnings > MAX_WARNINGS:
        await ctx.log(
            f"{report.warnings - MAX_WARNINGS:,} more invalid orders were skipped (only the first {MAX_WARNINGS} are listed)",
            key="invalid-more", level="warning", invalid=stats["invalid"],
        )
    await ctx.log(_progress(stats, done=True), key="import", **stats)
    duration = time.monotonic() - began
    await ctx.log(f"Finished in {duration:.2f} s", key="duration", duration_s=round(duration, 3))
    return {**stats, "imported": stats["created"] + stats["updated"] + stats["unchanged"]}


class _Report:
    """The run's counts, its warnings about skipped orders, and its progress updates."""

    def __init__(self, ctx: RunContext, stats: dict[str, Any]) -> None:
        self.ctx = ctx
        self.stats = stats
        self.warnings = 0
        self.last_progress = float("-inf")
        # Order numbers Python validated this run, to report duplicates: the one structure that
        # grows with the source (about 100 bytes per order), unlike the orders themselves.
        self.seen: set[str] = set()

    async def skipped(self, raw: RawOrder, problem: str) -> None:
        self.stats["invalid"] += 1
        self.warnings += 1
        if self.warnings <= MAX_WARNINGS:
            number = str(raw.get("order_number") or "?").replace("\x00", "\\x00")
            await self.ctx.log(f"Skipped order {number}: {problem}", level="warning", order_number=number, reason=problem)

    async def validated(self, raw_batch: list[RawOrder]) -> list[tuple[Any, ...]]:
        """The batch's valid records; every invalid row counted and reported."""
        records = []
        for raw, (problem, record) in zip(raw_batch, _validate_batch(raw_batch, self.seen)):
            if record is not None:
                records.append(record)
            else:
                await self.skipped(raw, problem or "invalid")
        return records

    def add(self, counts: dict[str, Any]) -> None:
        for name in ("created", "updated", "unchanged"):
            self.stats[name] += counts[name]

    async def progress(self, conn: asyncpg.Connection) -> None:
        """Progress is one detail updated in place, at most every sync_progress_interval."""
        if time.monotonic() - self.last_progress >= self.ctx.settings.sync_progress_interval:
            self.last_progress = time.monotonic()
            stats = self.stats
            await self.ctx.log(f"Fetched {stats['fetched']:,} orders so far", key="fetched", fetched=stats["fetched"], conn=conn)
            await self.ctx.log(_progress(stats), key="import", conn=conn, **stats)

    async def close_missing(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            stats = self.stats
            await self.ctx.log(f"Fetched {stats['fetched']:,} orders", key="fetched", fetched=stats["fetched"])
            stats["closed"] = await db.close_missing_orders(conn, utcnow())
            await self.ctx.log(
                f"Closed {stats['closed']:,} orders no longer open in the source",
                key="closed", closed=stats["closed"], conn=conn,
            )


async def _import_bulk(ctx: RunContext, rows: BulkRows, report: _Report) -> bool:
    """COPY the rows into order_raw and upsert them chunk by chunk; False if they must be read row by row.

    A chunk is the pages of order_raw holding about sync_batch_size rows, in its own transaction
    like a batch of the per-row path; the rows SQL leaves to Python (db.bulk_checked) are
    validated by SourceOrder there, in file order, so warnings and counts are the per-row path's."""
    stats = report.stats
    async with ctx.pool.acquire() as conn:
        await db.prepare_staging(conn)
        try:
            loaded = await db.load_raw(conn, len(rows.columns), rows.data)
        except (NotBulk, asyncpg.DataError):
            # Nothing is written yet: the per-row path reads the file again and reports as always.
            await conn.execute("DROP TABLE IF EXISTS order_raw")
            return False
        stats["fetched"] = loaded
        fields = {name: i for i, name in enumerate(rows.columns)}  # a repeated name: the last wins, as in a dict
        known = {name: fields[name] for name in db.SOURCE_FIELDS if name in fields}
        duplicates = await db.count_duplicates(conn, known, rows.empty_is_null)
        statement = db.upsert_statement(db.bulk_checked(known, rows.empty_is_null, duplicates > 0))
        pages = await db.raw_pages(conn)
        step = max(1, ctx.settings.sync_batch_size * pages // max(loaded, 1))
        # The casts' text output is compared with the input: it must not depend on the session.
        await conn.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'")
        for first in range(0, pages, step):
            async with conn.transaction():
                try:
                    async with conn.transaction():  # a savepoint: a failed cast fails only its chunk
                        counts = await db.upsert_raw_pages(conn, statement, ctx.run_id, utcnow(), first, first + step)
                except asyncpg.DataError:
                    counts = {"staged": 0, "created": 0, "updated": 0,
                              "rejected": await db.raw_positions(conn, first, first + step)}
                counts["unchanged"] = counts["staged"] - counts["created"] - counts["updated"]
                report.add(counts)
                if counts["rejected"]:
                    raw_batch = [_raw_order(rows, record, rows.empty_is_null) for record in await db.raw_rows(conn, counts["rejected"])]
                    records = await report.validated(raw_batch)
                    if records:
                        report.add(await db.upsert_orders(conn, records, ctx.run_id, utcnow()))
                await report.progress(conn)
        await conn.execute("RESET TimeZone; RESET DateStyle; DROP TABLE order_raw")
        await report.close_missing(conn)
    return True


def _raw_order(rows: BulkRows, record: asyncpg.Record, empty_is_null: bool) -> RawOrder:
    """The row as the source's per-row path gives it to SourceOrder."""
    values = [record[f"f{i}"] for i in range(len(rows.columns))]
    if empty_is_null:
        return {name: value or None for name, value in zip(rows.columns, values)}
    return dict(zip(rows.columns, values))


async def _import_rows(ctx: RunContext, source: OrderSource, report: _Report, *, connected: bool) -> None:
    """The per-row path: read batches of RawOrders, validate each with SourceOrder, upsert per batch."""
    stats = report.stats

    async def read_and_validate(batches: AsyncIterator[list[RawOrder]], ready: asyncio.Queue[list[tuple[Any, ...]] | None]) -> None:
        try:
            async for raw_batch in batches:
                stats["fetched"] += len(raw_batch)
                await ready.put(await report.validated(raw_batch))
        except asyncio.CancelledError:
            raise  # the importer is gone: nobody would take an end marker from a full queue
        except BaseException:
            await ready.put(None)
            raise
        await ready.put(None)

    async with source.connect() as batches:
        if not connected:
            await ctx.log(f"Connection established to {source.description}", key="connected")
        async with ctx.pool.acquire() as conn:
            await db.prepare_staging(conn)
            ready: asyncio.Queue[list[tuple[Any, ...]] | None] = asyncio.Queue(maxsize=PIPELINE_DEPTH)
            reader = asyncio.create_task(read_and_validate(batches, ready), name=f"read-{ctx.name}")
            try:
                await _import(ctx, conn, ready, report)
                await reader  # the source's error, if it failed
            finally:
                if not reader.done():
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
            await report.close_missing(conn)


async def _import(ctx: RunContext, conn: asyncpg.Connection, ready: asyncio.Queue[list[tuple[Any, ...]] | None], report: _Report) -> None:
    """Upsert each validated batch in its own transaction, with the progress events it implies."""
    while (records := await ready.get()) is not None:
        async with conn.transaction():
            if records:
                report.add(await db.upsert_orders(conn, records, ctx.run_id, utcnow()))
            await report.progress(conn)


BATCH = TypeAdapter(list[SourceOrder])


def _validate_batch(raw_batch: list[RawOrder], seen: set[str]) -> list[tuple[str | None, tuple[Any, ...] | None]]:
    """(problem, record) per row: one call into pydantic-core for a clean batch, row by row otherwise."""
    try:
        orders = BATCH.validate_python(raw_batch)
    except ValidationError:
        return [_validate(raw, seen) for raw in raw_batch]
    results: list[tuple[str | None, tuple[Any, ...] | None]] = []
    for order in orders:
        if order.order_number in seen:
            results.append(("order number appears twice in the source", None))
        else:
            seen.add(order.order_number)
            results.append((None, order.record()))
    return results


def _validate(raw: RawOrder, seen: set[str]) -> tuple[str | None, tuple[Any, ...] | None]:
    try:
        order = SourceOrder.model_validate(raw)
    except ValidationError as error:
        return explain(error), None
    if order.order_number in seen:
        return "order number appears twice in the source", None
    seen.add(order.order_number)
    return None, order.record()


def _progress(stats: dict[str, int], done: bool = False) -> str:
    imported = stats["created"] + stats["updated"] + stats["unchanged"]
    head = "Imported" if done else "Importing:"
    return (
        f"{head} {imported:,} orders ({stats['created']:,} created, {stats['updated']:,} updated, "
        f"{stats['unchanged']:,} unchanged), {stats['closed']:,} closed, {stats['invalid']:,} invalid"
    )
