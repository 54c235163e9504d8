"""The projection is idempotent and order-independent: the stream is the truth."""
from __future__ import annotations

import itertools
import random

import asyncpg
from hypothesis import HealthCheck, given, settings, strategies as st

from services.contracts import RunsDeleted
from services.log_recorder import db as recorder_db
from services.log_recorder.main import run as run_recorder
from services.log_recorder.projection import Batch
from tests.conftest import eventually
from tests.factories import publish, run_events, snapshot
from tests.log_recorder.conftest import as_payloads, drained, in_order_tables, project_batches, publish_many


async def applied(conn: asyncpg.Connection, count: int) -> bool:
    return (await conn.fetchval("SELECT coalesce(sum(applied_events), 0) FROM projection_state")) >= count


async def test_events_delivered_twice_give_identical_tables(services, js, subjects, recorder_settings, db):
    good = run_events(name="20261129083000")
    failed = run_events(name="20261129083001", fail=True)
    await services(run_recorder, recorder_settings)

    await publish(js, subjects, good + failed)
    await eventually(lambda: applied(db, len(good + failed)))
    once = await snapshot(db)

    # The same events again, as a relay re-sending after a lost ack outside the duplicate window.
    await publish(js, subjects, good + failed, msg_ids=False)
    await eventually(lambda: applied(db, 2 * len(good + failed)))

    assert await snapshot(db) == once
    statuses = {r["name"]: r["status"] for r in once["job_logs"]}
    assert statuses == {"20261129083000": "success", "20261129083001": "error"}
    progress = [d for d in once["job_log_details"] if d["key"] == "progress"]
    assert [d["message"] for d in progress] == ["Imported 200 orders"] * 2


async def test_jetstream_drops_a_republished_event_with_the_same_msg_id(services, js, subjects, recorder_settings, db):
    events = run_events()
    await services(run_recorder, recorder_settings)
    await publish(js, subjects, events)
    await publish(js, subjects, events)
    await eventually(lambda: applied(db, len(events)))
    info = await js.stream_info(subjects.stream)
    assert info.state.messages == len(events)


async def test_any_single_event_creates_the_run_row(db):
    events = run_events()
    step = next(e for e in events if e.type == "run.step")
    batch = Batch()
    batch.add(step)
    async with db.transaction():
        await recorder_db.apply_batch(db, batch)
    row = await db.fetchrow("SELECT name, job, status FROM job_logs")
    assert dict(row) == {"name": step.name, "job": step.job, "status": "new"}


async def test_a_nul_character_in_a_failure_is_shown_as_a_replacement_character_and_the_run_still_fails(db):
    # e.g. an ERP's binary error body in the exception message: Postgres text and jsonb cannot hold NUL.
    events = run_events(fail=True)
    *head, error_step, failed = events
    error_step = error_step.model_copy(update={"message": "Failed: bad\x00body", "data": {"body": "bad\x00body"}})
    failed = failed.model_copy(update={"error_message": "bad\x00body", "traceback": "Traceback\x00"})
    batch = Batch()
    for event in [*head, error_step, failed]:
        batch.add(event)
    async with db.transaction():
        await recorder_db.apply_batch(db, batch)

    run = await db.fetchrow("SELECT status, error_message, error_traceback FROM job_logs")
    assert dict(run) == {"status": "error", "error_message": "bad\ufffdbody", "error_traceback": "Traceback\ufffd"}
    detail = await db.fetchrow("SELECT message, data FROM job_log_details WHERE key = 'error'")
    assert detail["message"] == "Failed: bad\ufffdbody" and detail["data"] == '{"body": "bad\ufffdbody"}'


async def test_status_never_moves_back(db):
    events = run_events()
    for event in reversed(events):  # succeeded first, created last
        batch = Batch()
        batch.add(event)
        async with db.transaction():
            await recorder_db.apply_batch(db, batch)
    assert await db.fetchval("SELECT status FROM job_logs") == "success"


def split(events: list, sizes: list[int]) -> list[list]:  # type: ignore[type-arg]
    """Consecutive batches of the given sizes, cycling through them."""
    batches, i = [], 0
    for size in itertools.cycle(sizes):
        if i >= len(events):
            return batches
        batches.append(events[i : i + size])
        i += size
    return batches


RUNS = [run_events(name="20261129083000", steps=3, updates=3), run_events(name="20261129083001", steps=2, fail=True)]
ALL_EVENTS = [e for run in RUNS for e in run]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order=st.permutations(range(len(ALL_EVENTS))),
    duplicates=st.lists(st.integers(0, len(ALL_EVENTS) - 1), max_size=10),
    cuts=st.lists(st.integers(1, 8), min_size=1, max_size=10),
)
async def test_any_order_with_duplicates_projects_like_in_order_delivery(db, order, duplicates, cuts):
    expected = await project_batches(db, [ALL_EVENTS])
    shuffled = [ALL_EVENTS[i] for i in order] + [ALL_EVENTS[i] for i in duplicates]
    assert await project_batches(db, split(shuffled, cuts)) == expected


async def test_every_event_twice_and_shuffled_end_to_end_gives_the_in_order_tables(services, js, subjects, recorder_settings, db):
    """Fault 5: each event published twice (no msg id, so both are in the stream), in shuffled order."""
    runs = [run_events(name=f"2026112908{i // 60:02d}{i % 60:02d}", steps=3, updates=3, fail=i % 4 == 0) for i in range(40)]
    events = [e for run in runs for e in run]
    doubled = events + events
    random.Random(7).shuffle(doubled)
    await services(run_recorder, recorder_settings.model_copy(update={"recorder_batch_size": 37}))

    await publish_many(js, subjects, as_payloads(subjects, doubled))
    info = await js.stream_info(subjects.stream)
    assert info.state.messages == 2 * len(events)
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: applied(db, len(doubled)))
    delivered = await snapshot(db)

    assert delivered == await in_order_tables(db, events)
    assert len(delivered["job_logs"]) == 40
    assert sum(1 for r in delivered["job_logs"] if r["status"] == "error") == 10


DELETION = RunsDeleted(names=["20261129083001"], requested_by="admin")


async def _project_with_deletions(conn: asyncpg.Connection, batches: list[list]) -> dict:  # type: ignore[type-arg]
    await conn.execute("DELETE FROM deleted_runs; DELETE FROM run_deletions")
    return await project_batches(conn, batches)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order=st.permutations(range(len(ALL_EVENTS) + 1)),
    duplicates=st.lists(st.integers(0, len(ALL_EVENTS)), max_size=6),
    cuts=st.lists(st.integers(1, 8), min_size=1, max_size=10),
)
async def test_a_deletion_anywhere_among_the_events_deletes_the_same_runs(db, order, duplicates, cuts):
    events = [*ALL_EVENTS, DELETION]
    expected = await _project_with_deletions(db, [ALL_EVENTS, [DELETION]])
    assert [r["name"] for r in expected["job_logs"]] == ["20261129083000"]
    shuffled = [events[i] for i in order] + [events[i] for i in duplicates]
    assert await _project_with_deletions(db, split(shuffled, cuts)) == expected
