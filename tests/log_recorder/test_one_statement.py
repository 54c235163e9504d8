"""A common batch is written by one statement: atomic on its own, and safe beside other recorders."""
from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from services.log_recorder import db as recorder_db
from services.log_recorder.errors import is_refused
from services.log_recorder.projection import Batch
from tests.factories import run_events, snapshot
from tests.log_recorder.conftest import in_order_tables


def batch_of(events: list) -> Batch:  # type: ignore[type-arg]
    batch = Batch()
    for event in events:
        batch.add(event)
    return batch


async def version(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT version FROM projection_version")


async def test_a_batch_its_dead_letters_and_the_consumers_position_commit_together_without_a_transaction(db):
    events = run_events(name="20261201100000")
    before = await version(db)
    letter = ("joblog.run.x.y.step", b"{not json", "not valid JSON: message: expected value", 17)
    position = recorder_db.Position("log_recorder", 42, events[-1].occurred_at, len(events) + 1)

    await recorder_db.apply_batch(db, batch_of(events), position=position, letters=[letter])

    assert await db.fetchval("SELECT status FROM job_logs") == "success"
    assert await db.fetchval("SELECT count(*) FROM job_log_details") > 0
    assert await db.fetchval("SELECT reason FROM dead_letters WHERE stream_seq = 17") == letter[2]
    state = await db.fetchrow("SELECT last_stream_seq, applied_events FROM projection_state WHERE consumer = 'log_recorder'")
    assert dict(state) == {"last_stream_seq": 42, "applied_events": len(events) + 1}
    assert await version(db) == before + 1


async def test_a_batch_postgres_refuses_leaves_nothing_of_itself_behind(db):
    events = run_events(name="20261201100001")
    *head, last = events
    beyond_int4 = last.model_copy(update={"seq": 2**31})  # the contract allows it, Postgres' int4 does not
    before = await version(db)
    position = recorder_db.Position("log_recorder", 7, last.occurred_at, len(events))

    with pytest.raises(Exception) as refused:
        await recorder_db.apply_batch(db, batch_of([*head, beyond_int4]), position=position)

    assert is_refused(refused.value)
    assert await db.fetchval("SELECT count(*) FROM job_logs") == 0
    assert await db.fetchval("SELECT count(*) FROM job_log_details") == 0
    assert await db.fetchval("SELECT count(*) FROM projection_state") == 0
    assert await version(db) == before


async def test_recorders_writing_overlapping_batches_at_the_same_time_never_deadlock_and_give_the_in_order_tables(
    db, database_url
):
    runs = [run_events(name=f"202612011100{i:02d}", steps=6, updates=4, fail=i % 3 == 0) for i in range(12)]
    events = [e for run in runs for e in run]
    expected = await in_order_tables(db, events)
    await db.execute("DELETE FROM job_logs; DELETE FROM job_stats; DELETE FROM projection_state")

    shuffled = events + events  # redelivered too
    random.Random(15).shuffle(shuffled)
    recorders = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        # Each round, every recorder writes its own batch of the same runs at once, on the shared consumer's row.
        for first in range(0, len(shuffled), 3 * 9):
            chunk = shuffled[first:first + 3 * 9]
            await asyncio.gather(*(
                recorder_db.apply_batch(conn, batch_of(chunk[i::3]),
                                        position=recorder_db.Position("log_recorder", first + i, None, len(chunk[i::3])))
                for i, conn in enumerate(recorders) if chunk[i::3]
            ))
    finally:
        for conn in recorders:
            await conn.close()

    assert await snapshot(db) == expected
    assert await db.fetchval("SELECT applied_events FROM projection_state") == len(shuffled)
    stats = "SELECT job, bucket, outcome, runs FROM job_stats WHERE runs <> 0 ORDER BY 1, 2, 3"
    aggregate = ("SELECT job, joblog_hour(created_at) AS bucket, joblog_outcome(status, stats) AS outcome, count(*) AS runs "
                 "FROM job_logs WHERE terminal_seq IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
    assert [dict(r) for r in await db.fetch(stats)] == [dict(r) for r in await db.fetch(aggregate)]
