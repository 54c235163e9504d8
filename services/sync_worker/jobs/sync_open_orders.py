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
from services.sync_worker.sources import RawOrder, open_source

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
    warnings = 0

    async def read_and_validate(batches: AsyncIterator[list[RawOrder]], ready: asyncio.Queue[list[tuple[Any, ...]] | None]) -> None:
        nonlocal warnings
        # Order numbers seen this run, to report duplicates: the one structure that grows with
        # the source (about 100 bytes per order), unlike the orders themselves.
        seen: set[str] = set()
        try:
            async for raw_batch in batches:
                stats["fetched"] += len(raw_batch)
                records = []
                for raw, (problem, record) in zip(raw_batch, _validate_batch(raw_batch, seen)):
                    if record is not None:
                        records.append(record)
                        continue
                    stats["invalid"] += 1
                    warnings += 1
                    if warnings <= MAX_WARNINGS:
                        number = str(raw.get("order_number") or "?").replace("\x00", "\\x00")
                        await ctx.log(
                            f"Skipped order {number}: {problem}", level="warning",
                            order_number=number, reason=problem,
                        )
                await ready.put(records)
        except asyncio.CancelledError:
            raise  # the importer is gone: nobody would take an end marker from a full queue
        except BaseException:
            await ready.put(None)
            raise
        await ready.put(None)

    await ctx.log(f"Connecting to {source.description}", key="connect", source=source.description)
    async with source.connect() as batches:
        await ctx.log(f"Connection established to {source.description}", key="connected")
        async with ctx.pool.acquire() as conn:
            await db.prepare_staging(conn)
            ready: asyncio.Queue[list[tuple[Any, ...]] | None] = asyncio.Queue(maxsize=PIPELINE_DEPTH)
            reader = asyncio.create_task(read_and_validate(batches, ready), name=f"read-{ctx.name}")
            try:
                await _import(ctx, conn, ready, stats)
                await reader  # the source's error, if it failed
            finally:
                if not reader.done():
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
            async with conn.transaction():
                await ctx.log(f"Fetched {stats['fetched']:,} orders", key="fetched", fetched=stats["fetched"])
                stats["closed"] = await db.close_missing_orders(conn, utcnow())
                await ctx.log(
                    f"Closed {stats['closed']:,} orders no longer open in the source",
                    key="closed", closed=stats["closed"], conn=conn,
                )
    if warnings > MAX_WARNINGS:
        await ctx.log(
            f"{warnings - MAX_WARNINGS:,} more invalid orders were skipped (only the first {MAX_WARNINGS} are listed)",
            key="invalid-more", level="warning", invalid=stats["invalid"],
        )
    await ctx.log(_progress(stats, done=True), key="import", **stats)
    duration = time.monotonic() - began
    await ctx.log(f"Finished in {duration:.2f} s", key="duration", duration_s=round(duration, 3))
    return {**stats, "imported": stats["created"] + stats["updated"] + stats["unchanged"]}


async def _import(
    ctx: RunContext, conn: asyncpg.Connection, ready: asyncio.Queue[list[tuple[Any, ...]] | None], stats: dict[str, Any]
) -> None:
    """Upsert each validated batch in its own transaction, with the progress events it implies."""
    last_progress = float("-inf")
    while (records := await ready.get()) is not None:
        async with conn.transaction():
            if records:
                counts = await db.upsert_orders(conn, records, ctx.run_id, utcnow())
                for name, value in counts.items():
                    stats[name] += value
            # Progress is one detail updated in place, at most every sync_progress_interval.
            if time.monotonic() - last_progress >= ctx.settings.sync_progress_interval:
                last_progress = time.monotonic()
                await ctx.log(f"Fetched {stats['fetched']:,} orders so far", key="fetched", fetched=stats["fetched"], conn=conn)
                await ctx.log(_progress(stats), key="import", conn=conn, **stats)


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
