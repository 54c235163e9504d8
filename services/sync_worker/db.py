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


def upsert_statement(checked: str) -> str:
    """The one upsert of both paths: `checked` yields ORDER_COLUMNS typed like order_staging, row_hash, `ok` and `pos`.

    Remember the numbers, insert new orders, rewrite only the changed or reopened ones, and count
    which was which. Unchanged rows are filtered out before the INSERT, so they are neither
    written nor locked (ON CONFLICT DO UPDATE would lock each one before testing its WHERE).
    Rows that are not ok are left alone and their positions returned (the bulk path's rows that
    Python must look at)."""
    return f"""
WITH checked AS MATERIALIZED ({checked}), seen AS (
    INSERT INTO order_seen SELECT order_number FROM checked WHERE ok
), fresh AS (
    SELECT s.* FROM checked s
    WHERE s.ok AND s.row_hash IS DISTINCT FROM (  -- a primary key lookup (closed_at in the WHERE picks another index)
        SELECT CASE WHEN o.closed_at IS NULL THEN o.row_hash END FROM open_orders o WHERE o.order_number = s.order_number
    )
), written AS (
    INSERT INTO open_orders ({", ".join(ORDER_COLUMNS)}, row_hash, first_seen_run, last_seen_run, synced_at, closed_at)
    SELECT {", ".join(ORDER_COLUMNS)}, row_hash, $1::uuid, $1::uuid, $2::timestamptz, NULL FROM fresh
    ON CONFLICT (order_number) DO UPDATE SET
        {", ".join(f"{c} = EXCLUDED.{c}" for c in ORDER_COLUMNS[1:])},
        row_hash = EXCLUDED.row_hash,
        last_seen_run = EXCLUDED.last_seen_run,
        synced_at = EXCLUDED.synced_at,
        closed_at = NULL
    WHERE open_orders.row_hash IS DISTINCT FROM EXCLUDED.row_hash OR open_orders.closed_at IS NOT NULL
    RETURNING (xmax = 0) AS created
)
SELECT count(*) FILTER (WHERE ok) AS staged, array_agg(pos ORDER BY pos) FILTER (WHERE NOT ok) AS rejected,
       (SELECT count(*) FILTER (WHERE created) FROM written) AS created,
       (SELECT count(*) FILTER (WHERE NOT created) FROM written) AS updated
FROM checked
"""


# The per-row path: rows Python validated, COPYed into order_staging.
UPSERT_ORDERS = upsert_statement(f"SELECT s.*, {ROW_HASH} AS row_hash, true AS ok, NULL::tid AS pos FROM order_staging s")

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
    await conn.execute("TRUNCATE order_staging")  # a caller may upsert twice in one transaction
    return {"created": written["created"], "updated": written["updated"],
            "unchanged": len(rows) - written["created"] - written["updated"]}


async def close_missing_orders(conn: asyncpg.Connection, now: datetime) -> int:
    """Close the open orders this run did not see in the source; returns how many."""
    await conn.execute("ANALYZE order_seen")  # a temp table has no statistics: let the planner hash it
    status = await conn.execute(CLOSE_MISSING, now)
    await conn.execute(CLEAR_SEEN)
    return int(status.split()[-1])


# The bulk path -------------------------------------------------------------------------------
#
# A source that can hand Postgres its rows as CSV (the CSV file itself) is COPYed, in C, into
# order_raw: one text column per header field, in the file's order. Each chunk of it (a range of
# pages) is then checked, cast and upserted by one statement (upsert_statement). A row passes in
# SQL only when every value is in the one canonical form for which pydantic's SourceOrder gives
# the same value: the cast's own text output equals the input (dates YYYY-MM-DD, amounts as
# written with at most 2 decimals, whole numbers without sign or leading zero, timestamps at UTC
# ending +00:00 or Z), strings stripped of the same whitespace pydantic strips. Every other row
# (invalid, or valid in a form only pydantic knows, such as "1_000" or a naive timestamp), and
# every row whose order number occurs twice in the file, is returned by position and validated
# by SourceOrder in Python, so its warning and its value are exactly the per-row path's. A value
# that makes a cast fail (a date that does not exist, an amount that is not a number) fails the
# chunk's statement: the chunk is rolled back to its savepoint and all its rows go to Python.

# What str_strip_whitespace strips (Unicode White_Space; tests/sync_worker/test_sync_bulk.py checks
# it against pydantic): btrim with exactly these keeps stripped values equal to pydantic's.
PYDANTIC_WHITESPACE = "".join(map(chr, [
    0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
]))

# The source's names for ORDER_COLUMNS (source_updated_at is updated_at there).
SOURCE_FIELDS = ORDER_COLUMNS[:-1] + ("updated_at",)
UPPERCASE = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def create_raw(width: int) -> str:
    columns = ", ".join(f"f{i} text" for i in range(width))
    return f"DROP TABLE IF EXISTS order_raw; CREATE TEMP TABLE order_raw ({columns})"


def _raw(fields: dict[str, int], name: str, empty_is_null: bool) -> str:
    if name not in fields:
        return "NULL::text"
    return f"nullif(r.f{fields[name]}, '')" if empty_is_null else f"r.f{fields[name]}"


def bulk_checked(fields: dict[str, int], empty_is_null: bool, duplicates: bool) -> str:
    """The `checked` query of upsert_statement over the pages [$3, $4) of order_raw.

    fields maps a source field to its column (f<i>) in order_raw; $5 is PYDANTIC_WHITESPACE."""
    def raw(name: str) -> str:
        return _raw(fields, name, empty_is_null)

    def text(name: str) -> str:
        return f"btrim({raw(name)}, $5)"

    cast = f"""
        SELECT r.ctid AS pos,
               {text("order_number")} AS order_number, {text("customer_code")} AS customer_code,
               {text("customer_name")} AS customer_name, {text("status")} AS status,
               {raw("order_date")}::date AS order_date, {raw("order_date")} AS order_date_in,
               {raw("requested_ship_date")}::date AS requested_ship_date, {raw("requested_ship_date")} AS requested_ship_date_in,
               {text("warehouse")} AS warehouse, {text("currency")} AS currency,
               {raw("total_amount")}::numeric AS total_amount, {raw("total_amount")} AS total_amount_in,
               CASE WHEN octet_length({raw("line_count")}) <= 10 THEN {raw("line_count")}::bigint END AS line_count,
               {raw("line_count")} AS line_count_in,
               {raw("updated_at")}::timestamptz AS updated_at, {raw("updated_at")} AS updated_at_in
        FROM order_raw r WHERE r.ctid >= $3::tid AND r.ctid < $4::tid
        OFFSET 0"""  # OFFSET 0: each cast once per row, not once per use below
    ok = f"""
        char_length(c.order_number) BETWEEN 1 AND 40 AND char_length(c.customer_code) BETWEEN 1 AND 40
        AND char_length(c.customer_name) BETWEEN 1 AND 200 AND char_length(c.status) BETWEEN 1 AND 40
        AND c.order_date::text = c.order_date_in AND c.order_date BETWEEN '0001-01-01' AND '9999-12-31'
        AND (c.requested_ship_date_in IS NULL OR c.requested_ship_date::text = c.requested_ship_date_in
             AND c.requested_ship_date BETWEEN '0001-01-01' AND '9999-12-31')
        AND (c.warehouse IS NULL OR char_length(c.warehouse) <= 40)
        AND octet_length(c.currency) = 3 AND ltrim(c.currency, '{UPPERCASE}') = ''
        AND c.total_amount >= 0 AND c.total_amount < 1e12 AND scale(c.total_amount) <= 2
        AND c.total_amount::text = c.total_amount_in
        AND c.line_count BETWEEN 1 AND 2147483647 AND c.line_count::text = c.line_count_in
        AND (c.updated_at_in IS NULL OR c.updated_at BETWEEN '1000-01-01' AND '9999-01-01'
             AND (octet_length(c.updated_at_in) = 25 AND right(c.updated_at_in, 6) = '+00:00'
                  OR octet_length(c.updated_at_in) = 20 AND right(c.updated_at_in, 1) = 'Z')
             AND c.updated_at::text = translate(left(c.updated_at_in, 19), 'T', ' ') || '+00')"""
    if duplicates:
        ok += "\n        AND NOT EXISTS (SELECT 1 FROM order_duplicates d WHERE d.order_number = c.order_number)"
    # ROW_HASH of the typed values, from their input text: for a row that passes, each typed value's
    # output is its input (that is the check), and a row's text quotes a value by its output alone.
    # Only the amount is printed with its 2 decimals (ok allows fewer) and the time without its zone.
    row_hash = """md5(ROW(k.customer_code, k.customer_name, k.status, k.order_date_in, k.requested_ship_date_in,
                  k.warehouse, k.currency, CASE WHEN scale(k.total_amount) = 2 THEN k.total_amount_in
                  ELSE k.total_amount::numeric(14, 2)::text END, k.line_count_in,
                  translate(left(k.updated_at_in, 19), 'T', ' '))::text)"""
    # Each level OFFSET 0: the planner would otherwise copy every expression into each of its uses.
    return f"""
        SELECT k.order_number, k.customer_code, k.customer_name, k.status, k.order_date, k.requested_ship_date,
               k.warehouse, k.currency::char(3) AS currency,
               CASE WHEN k.ok THEN k.total_amount::numeric(14, 2) END AS total_amount,
               CASE WHEN k.ok THEN k.line_count::integer END AS line_count,
               k.updated_at AS source_updated_at, CASE WHEN k.ok THEN {row_hash} END AS row_hash, k.ok, k.pos
        FROM (SELECT c.*, ({ok}) IS TRUE AS ok FROM ({cast}) c OFFSET 0) k"""


def find_duplicates(fields: dict[str, int], empty_is_null: bool) -> str:
    """Order numbers (stripped) that occur more than once in order_raw: their rows all go to Python."""
    number = f"btrim({_raw(fields, 'order_number', empty_is_null)}, $1)"
    return f"""
        DROP TABLE IF EXISTS order_duplicates;
        CREATE TEMP TABLE order_duplicates AS
        SELECT {number} AS order_number FROM order_raw r WHERE {number} IS NOT NULL GROUP BY 1 HAVING count(*) > 1"""


async def load_raw(conn: asyncpg.Connection, width: int, data: Any) -> int:
    """COPY the CSV bytes (header line first) into a fresh order_raw; returns the rows loaded."""
    async with conn.transaction():  # created in the COPY's transaction, so its rows can be written frozen
        await conn.execute(create_raw(width))
        # FREEZE: no hint bits to set (and pages to write back) when the chunks first read the rows.
        status = await conn.copy_to_table("order_raw", source=data, format="csv", header=True, freeze=True)
    return int(status.split()[-1])


async def raw_pages(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT pg_relation_size('order_raw') / current_setting('block_size')::int")


async def count_duplicates(conn: asyncpg.Connection, fields: dict[str, int], empty_is_null: bool) -> int:
    """Fill order_duplicates; returns how many numbers it holds."""
    await conn.execute(find_duplicates(fields, empty_is_null).replace("$1", _literal(PYDANTIC_WHITESPACE)))
    return await conn.fetchval("SELECT count(*) FROM order_duplicates")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def upsert_raw_pages(
    conn: asyncpg.Connection, statement: str, run_id: uuid.UUID, now: datetime, first_page: int, end_page: int,
) -> dict[str, Any]:
    """Check and upsert the rows of pages [first_page, end_page) of order_raw (in the caller's transaction).

    Returns the counts and the positions of the rows left for Python ("rejected")."""
    written = await conn.fetchrow(
        statement, run_id, now, (first_page, 0), (end_page, 0), PYDANTIC_WHITESPACE,
    )
    return {"staged": written["staged"], "created": written["created"], "updated": written["updated"],
            "rejected": list(written["rejected"] or [])}


async def raw_positions(conn: asyncpg.Connection, first_page: int, end_page: int) -> list[Any]:
    return [r[0] for r in await conn.fetch(
        "SELECT ctid FROM order_raw WHERE ctid >= $1::tid AND ctid < $2::tid ORDER BY ctid", (first_page, 0), (end_page, 0),
    )]


async def raw_rows(conn: asyncpg.Connection, positions: list[Any]) -> list[asyncpg.Record]:
    """The raw rows at these positions, in file order."""
    return await conn.fetch("SELECT * FROM order_raw WHERE ctid = ANY($1::tid[]) ORDER BY ctid", positions)
