"""What the recorder's tests share: fast publishing, and the tables in-order delivery would give."""
from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from services.contracts import RunEvent
from services.log_recorder import db as recorder_db
from services.log_recorder.projection import Batch
from services.log_recorder.retention import carry_out_deletions
from tests.factories import snapshot


async def publish_many(js: Any, subject_of: Any, payloads: list[tuple[str, bytes]], *, chunk: int = 250) -> None:
    """Publish (subject, payload) pairs, a chunk of them in flight at a time, with no msg id."""
    for start in range(0, len(payloads), chunk):
        await asyncio.gather(*(js.publish(subject, data) for subject, data in payloads[start : start + chunk]))


def as_payloads(subjects: Any, events: list[RunEvent]) -> list[tuple[str, bytes]]:
    return [(subjects.for_event(e), e.model_dump_json().encode()) for e in events]


async def project_batches(conn: asyncpg.Connection, batches: list[list[RunEvent]]) -> dict[str, list[dict[str, object]]]:
    """The tables these batches give, applied in order to emptied tables, as the recorder applies them."""
    await conn.execute("DELETE FROM job_logs")  # small tables: cheaper than TRUNCATE; details go by cascade
    for events in batches:
        batch = Batch()
        for event in events:
            batch.add(event)
        async with conn.transaction():
            await recorder_db.apply_batch(conn, batch)
    await carry_out_deletions(conn, chunk=2)  # as the reaper does, outside the batches' transactions
    return await snapshot(conn)


async def in_order_tables(conn: asyncpg.Connection, events: list[RunEvent]) -> dict[str, list[dict[str, object]]]:
    """The tables that delivering these events once, in order, in one batch gives (the test's tables are replaced)."""
    return await project_batches(conn, [events])


async def projected(conn: asyncpg.Connection, runs: int, *, status: str | None = None) -> bool:
    """Every one of `runs` runs has reached a final status (or the given one)."""
    if status:
        done = await conn.fetchval("SELECT count(*) FROM job_logs WHERE status = $1", status)
    else:
        done = await conn.fetchval("SELECT count(*) FROM job_logs WHERE status IN ('success', 'error')")
    return done >= runs


async def drained(js: Any, stream: str, consumer: str = "log_recorder") -> bool:
    """The durable consumer has nothing left to deliver and nothing unacknowledged (acks follow commits)."""
    try:
        info = await js.consumer_info(stream, consumer)
    except Exception:
        return False
    return info.num_pending == 0 and info.num_ack_pending == 0


async def deletions_done(conn: asyncpg.Connection) -> bool:
    """Every deletion recorded has been carried out (rows gone) and every deleted run purged from the stream."""
    return await conn.fetchval(
        "SELECT NOT EXISTS (SELECT 1 FROM run_deletions WHERE finished_at IS NULL)"
        " AND NOT EXISTS (SELECT 1 FROM deleted_runs WHERE purged_at IS NULL)")
