"""Deletion that deletes: rows in chunks outside the batches, the runs' messages purged from the stream."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.contracts import RunsDeleted
from services.log_recorder.main import run as run_recorder
from services.log_recorder.rebuild import rebuild
from tests.conftest import eventually
from tests.factories import T0, publish, run_events, snapshot
from tests.log_recorder.conftest import as_payloads, deletions_done, drained, in_order_tables, publish_many


async def delete(js: Any, subjects: Any, **what: Any) -> RunsDeleted:
    event = RunsDeleted(requested_by="admin", **what)
    await js.publish(subjects.retention, event.model_dump_json().encode(),
                     headers={"Nats-Msg-Id": str(event.event_id)})
    return event


async def everything_in_the_stream(js: Any, subjects: Any) -> list[Any]:
    """What a fresh consumer reading from the first message receives (as `joblog tail --all` would)."""
    sub = await js.pull_subscribe(f"{subjects.prefix}.>", stream=subjects.stream, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0))
    seen: list[Any] = []
    try:
        while True:
            try:
                seen += await sub.fetch(500, timeout=1)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                if (await sub.consumer_info()).num_pending == 0:
                    return seen
    finally:
        await sub.unsubscribe()


def names_in(messages: list[Any], subjects: Any) -> set[str]:
    runs = f"{subjects.prefix}.run."
    return {m.subject.split(".")[3] for m in messages if m.subject.startswith(runs)}


async def test_deleted_runs_leave_the_stream_and_postgres_and_a_rebuild_still_gives_equal_tables(
    services, js, subjects, recorder_settings, db
):
    runs = {f"2026112908{i:02d}00": run_events(name=f"2026112908{i:02d}00", start=T0 + timedelta(hours=i), fail=i == 1)
            for i in range(6)}
    a, b, c, d, e, f = runs
    await services(run_recorder, recorder_settings.model_copy(update={"delete_chunk": 1}))
    await publish(js, subjects, [ev for events in runs.values() for ev in events])
    await eventually(lambda: drained(js, subjects.stream))

    await delete(js, subjects, names=[b, e])
    await delete(js, subjects, created_before=T0 + timedelta(hours=2, minutes=30))  # a and c (b already)
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))

    assert {r["name"] for r in await db.fetch("SELECT name FROM job_logs")} == {d, f}
    gone = [runs[n][0].run_id for n in (a, b, c, e)]
    assert await db.fetchval("SELECT count(*) FROM job_log_details WHERE job_log_id = ANY($1::uuid[])", gone) == 0
    seen = await everything_in_the_stream(js, subjects)
    assert names_in(seen, subjects) == {d, f}, "a fresh consumer still reads deleted runs' messages"
    assert not any(a in m.data.decode() or c in m.data.decode() for m in seen
                   if m.subject.startswith(f"{subjects.prefix}.run.")), "a deleted run's text is still in the stream"
    # The deletions themselves stay: they are what makes a rebuild honour them.
    assert sum(m.subject == subjects.retention for m in seen) == 2
    purged = await db.fetchval("SELECT purged_messages FROM stream_purges WHERE stream = $1", subjects.stream)
    assert purged == sum(len(runs[n]) for n in (a, b, c, e))
    info = (await js.stream_info(subjects.stream)).state
    assert info.first_seq > 1  # the oldest runs went: the stream no longer starts at message 1 ...
    kept = await snapshot(db)
    assert kept == await in_order_tables(db, runs[d] + runs[f])
    await db.execute("UPDATE job_logs SET status = 'new'")  # ... yet a rebuild runs, and repairs the projection

    report = await rebuild(recorder_settings, progress=False)
    assert report.runs == 2
    assert await snapshot(db) == kept

    # A purge is idempotent: deleting the same runs again changes nothing and purges nothing more.
    await delete(js, subjects, names=[b, e])
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))
    assert await snapshot(db) == kept
    assert await db.fetchval("SELECT purged_messages FROM stream_purges WHERE stream = $1", subjects.stream) == purged


async def test_a_late_event_of_a_deleted_run_is_skipped_and_purged_too(services, js, subjects, recorder_settings, db):
    """An outbox that relays an old event again after the deletion: the run stays deleted and leaves the stream again."""
    events = run_events(name="20261201090000")
    await services(run_recorder, recorder_settings)
    await publish(js, subjects, events)
    await eventually(lambda: drained(js, subjects.stream))
    await delete(js, subjects, names=["20261201090000"])
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))
    await publish(js, subjects, events[-2:], msg_ids=False)  # the relay again
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))
    assert await db.fetchval("SELECT count(*) FROM job_logs") == 0
    assert names_in(await everything_in_the_stream(js, subjects), subjects) == set()


async def test_a_large_deletion_does_not_stall_the_projection(services, js, subjects, recorder_settings, db, database_url):
    """Events published while a deletion proceeds are projected: the deletion is not in the batches' transactions.

    One of the runs to delete is locked by another session, so the deletion cannot finish until it lets
    go; when the deletion was part of a batch's transaction, that batch (and the projection) waited too."""
    old = [e for i in range(300) for e in run_events(name=f"20261127{i // 60:02d}{i % 60:02d}00",
                                                      start=T0 - timedelta(days=2, minutes=i), steps=2)]
    assert len({e.name for e in old}) == 300
    await services(run_recorder, recorder_settings.model_copy(update={"delete_chunk": 25}))
    await publish_many(js, subjects, as_payloads(subjects, old))
    await eventually(lambda: db.fetchval("SELECT count(*) = 300 FROM job_logs WHERE status = 'success'"))

    blocker = await asyncpg.connect(database_url)
    locked = blocker.transaction()
    await locked.start()
    await blocker.execute("SELECT 1 FROM job_logs WHERE name = $1 FOR UPDATE", old[0].name)
    try:
        deletion = await delete(js, subjects, created_before=T0 - timedelta(days=1))
        await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM run_deletions WHERE event_id = $1", deletion.event_id))
        new = run_events(name="20261201120000", start=T0 + timedelta(days=2))
        await publish(js, subjects, new)
        # Projected while the deletion still waits for the locked run.
        await eventually(lambda: db.fetchval("SELECT status = 'success' FROM job_logs WHERE name = '20261201120000'"))
        assert await db.fetchval("SELECT finished_at IS NULL FROM run_deletions WHERE event_id = $1", deletion.event_id)
        assert await db.fetchval("SELECT count(*) FROM job_logs WHERE name = $1", old[0].name) == 1
    finally:
        await locked.rollback()
        await blocker.close()
    await eventually(lambda: deletions_done(db))
    assert [r["name"] for r in await db.fetch("SELECT name FROM job_logs")] == ["20261201120000"]
    assert await db.fetchval("SELECT deleted_runs FROM run_deletions WHERE event_id = $1", deletion.event_id) == 300
    assert names_in(await everything_in_the_stream(js, subjects), subjects) == {"20261201120000"}
