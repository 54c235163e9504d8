"""job_stats, the Monitor's pre-aggregated statistics: the same numbers whatever the delivery, and after a rebuild.

The invariant: job_stats equals the aggregate of job_logs' finished runs per job, UTC hour and outcome
(skipped apart), so a replaced result (a lost worker's verdict overruled by the real result), a
deletion, redelivery in any order and `joblog rebuild` all agree. Schedule pauses project too.
"""
from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import asyncpg

from services.contracts import RunFailed, RunsDeleted, RunSucceeded, SchedulePaused, ScheduleResumed, StepLogged
from services.contracts.subjects import publish_schedule_event
from services.log_recorder import db as recorder_db
from services.log_recorder.main import run as run_recorder
from services.log_recorder.projection import Batch
from services.log_recorder.rebuild import rebuild
from tests.conftest import eventually
from tests.factories import T0, publish, run_events
from tests.log_recorder.conftest import drained

STATS = "SELECT job, bucket, outcome, runs, duration_runs, duration_ms FROM job_stats WHERE runs <> 0 ORDER BY 1, 2, 3"
AGGREGATE = """
SELECT job, date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,
       CASE WHEN status = 'success' AND stats @> '{"skipped": true}' THEN 'skipped' ELSE status END AS outcome,
       count(*) AS runs, count(duration_ms) AS duration_runs, COALESCE(sum(duration_ms), 0) AS duration_ms
FROM job_logs WHERE terminal_seq IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


def skipped_run(name: str, start: Any) -> list[Any]:
    """A run the worker skipped (its job was already running): success with stats {"skipped": true}."""
    events = run_events(name=name, start=start, steps=0, updates=0)
    last = events[-1]
    return [*events[:-1], RunSucceeded(run_id=last.run_id, name=name, job=last.job, seq=last.seq,
                                       occurred_at=last.occurred_at, stats={"skipped": True}, duration_ms=3)]


def verdict(events: list[Any]) -> list[Any]:
    """The recorder's lost-worker verdict for a run (seq 2000000000+), which its real result overrules."""
    first = events[0]
    common = {"run_id": first.run_id, "name": first.name, "job": first.job, "occurred_at": T0 + timedelta(days=1)}
    return [StepLogged(**common, seq=2_000_000_000, key="worker-lost", level="error", message="lost"),
            RunFailed(**common, seq=2_000_000_001, error_class="WorkerLost", error_message="lost")]


def workload() -> tuple[list[Any], dict[str, list[Any]]]:
    runs = {}
    for i in range(12):
        name = f"2026112908{i:02d}00"
        runs[name] = run_events(name=name, start=T0 + timedelta(minutes=20 * i), fail=i % 4 == 1,
                                job="sync_open_orders" if i % 3 else "purge_closed_orders")
    runs["20261129120000"] = skipped_run("20261129120000", T0 + timedelta(hours=4))
    overruled = run_events(name="20261129130000", start=T0 + timedelta(hours=5))
    runs["20261129130000"] = verdict(overruled) + overruled  # the verdict arrives first, the real result later
    return [event for events in runs.values() for event in events], runs


async def apply(conn: asyncpg.Connection, events: list[Any]) -> None:
    batch = Batch()
    for event in events:
        batch.add(event)
    async with conn.transaction():
        await recorder_db.apply_batch(conn, batch)


async def test_job_stats_equal_the_aggregate_of_the_runs_in_any_order_with_redelivery(db):
    events, runs = workload()
    await apply(db, events)
    expected = [dict(r) for r in await db.fetch(STATS)]
    assert expected == [dict(r) for r in await db.fetch(AGGREGATE)]
    by_outcome = {o: sum(r["runs"] for r in expected if r["outcome"] == o) for o in ("success", "error", "skipped")}
    assert by_outcome == {"success": 10, "error": 3, "skipped": 1}  # the overruled verdict counts as its real success

    await db.execute("DELETE FROM job_logs")
    assert await db.fetch(STATS) == []
    shuffled = events + random.Random(7).sample(events, len(events) // 2)  # half of them delivered twice
    random.Random(3).shuffle(shuffled)
    for start in range(0, len(shuffled), 7):  # in small batches
        await apply(db, shuffled[start:start + 7])
    assert [dict(r) for r in await db.fetch(STATS)] == expected


async def test_job_stats_follow_a_deletion_and_a_rebuild_gives_the_same_numbers(services, js, subjects, recorder_settings, db):
    events, runs = workload()
    await services(run_recorder, recorder_settings)
    await publish(js, subjects, events)
    await eventually(lambda: drained(js, subjects.stream))
    gone = RunsDeleted(names=["20261129080000", "20261129080100"], requested_by="admin")
    await js.publish(subjects.retention, gone.model_dump_json().encode(), headers={"Nats-Msg-Id": str(gone.event_id)})
    paused = SchedulePaused(job="sync_open_orders", requested_by="alice", reason="ERP maintenance")
    await publish_schedule_event(js, subjects, paused)
    await eventually(lambda: drained(js, subjects.stream))

    live = [dict(r) for r in await db.fetch(STATS)]
    assert live == [dict(r) for r in await db.fetch(AGGREGATE)]
    assert sum(r["runs"] for r in live) == len(runs) - 2
    state = await db.fetchrow("SELECT paused, requested_by, reason FROM schedule_states WHERE job = 'sync_open_orders'")
    assert dict(state) == {"paused": True, "requested_by": "alice", "reason": "ERP maintenance"}

    await rebuild(recorder_settings, progress=False)
    assert [dict(r) for r in await db.fetch(STATS)] == live
    # The rebuilt job_logs keeps the statistics up to date: its triggers are installed again.
    late = run_events(name="20261129140000", start=T0 + timedelta(hours=6), fail=True)
    await publish(js, subjects, late)
    await publish_schedule_event(js, subjects, ScheduleResumed(job="sync_open_orders", requested_by="bob"))
    await eventually(lambda: drained(js, subjects.stream))
    after = [dict(r) for r in await db.fetch(STATS)]
    assert after == [dict(r) for r in await db.fetch(AGGREGATE)] and sum(r["runs"] for r in after) == len(runs) - 1
    state = await db.fetchrow("SELECT paused, requested_by FROM schedule_states WHERE job = 'sync_open_orders'")
    assert dict(state) == {"paused": False, "requested_by": "bob"}


async def test_the_newest_schedule_event_wins_whatever_order_they_are_applied_in(db):
    job = "sync_open_orders"
    first = SchedulePaused(job=job, requested_by="alice")
    second = ScheduleResumed(job=job, requested_by="bob")
    for order in ([(first, 5), (second, 9)], [(second, 9), (first, 5)]):
        await db.execute("DELETE FROM schedule_states")
        for event, seq in order:
            batch = Batch()
            batch.add(event, seq)
            async with db.transaction():
                await recorder_db.apply_batch(db, batch)
        state = await db.fetchrow("SELECT paused, requested_by, event_id FROM schedule_states")
        assert dict(state) == {"paused": False, "requested_by": "bob", "event_id": second.event_id}
