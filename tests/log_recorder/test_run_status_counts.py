"""run_status_counts, the counters /metrics reads: always the runs per status of job_logs, however they got there.

The invariant: the sum of a status's shards equals SELECT status, count(*) FROM job_logs GROUP BY status,
through redelivery, a lost worker's verdict (and its overrule by the real result), deletions by the UI's
event and by retention (in chunks), `joblog rebuild`, and several recorders committing at once, which
never wait on each other's counter rows, so never deadlock on them.
"""
from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg

from services.contracts import RunsDeleted
from services.log_recorder.main import run as run_recorder
from services.log_recorder.rebuild import rebuild
from tests.conftest import eventually
from tests.factories import T0, publish, run_events
from tests.log_recorder.conftest import as_payloads, deletions_done, drained, publish_many
from tests.log_recorder.test_job_stats import verdict
from tests.test_cli_delete import joblog

COUNTS = "SELECT status, sum(runs)::bigint AS runs FROM run_status_counts GROUP BY status HAVING sum(runs) <> 0 ORDER BY 1"
AGGREGATE = "SELECT status, count(*) AS runs FROM job_logs GROUP BY status ORDER BY 1"


async def counts(db: asyncpg.Connection) -> dict[str, int]:
    return {r["status"]: r["runs"] for r in await db.fetch(COUNTS)}


async def aggregate(db: asyncpg.Connection) -> dict[str, int]:
    return {r["status"]: r["runs"] for r in await db.fetch(AGGREGATE)}


def workload() -> dict[str, list[Any]]:
    """Runs in every status: finished ones, open ones (new, processing), a lost worker's run judged failed,
    and one whose verdict arrives first and is overruled by its real success."""
    runs: dict[str, list[Any]] = {}
    for i in range(16):
        name = f"2026112908{i:02d}00"
        runs[name] = run_events(name=name, start=T0 + timedelta(minutes=20 * i), fail=i % 4 == 1)
    runs["20261129100000"] = run_events(name="20261129100000", start=T0 + timedelta(hours=6))[:1]  # new
    runs["20261129100100"] = run_events(name="20261129100100", start=T0 + timedelta(hours=6))[:3]  # processing
    lost = run_events(name="20261129100200", start=T0 + timedelta(hours=6))[:4]
    runs["20261129100200"] = lost + verdict(lost)  # its worker was lost: the watchdog's verdict stands
    overruled = run_events(name="20261129100300", start=T0 + timedelta(hours=6))
    runs["20261129100300"] = verdict(overruled) + overruled  # the verdict first, the real result later
    return runs


async def test_the_counters_equal_the_runs_per_status_through_redelivery_verdicts_deletions_and_a_rebuild(
    services, js, subjects, recorder_settings, db
):
    runs = workload()
    events = [e for run in runs.values() for e in run]
    delivered = events + random.Random(5).sample(events, len(events) // 3)  # a third of them twice
    random.Random(9).shuffle(delivered)
    settings = recorder_settings.model_copy(update={"recorder_batch_size": 7, "delete_chunk": 2})
    await services(run_recorder, settings)
    await publish(js, subjects, delivered, msg_ids=False)
    await eventually(lambda: drained(js, subjects.stream))

    assert await counts(db) == await aggregate(db) == {"new": 1, "processing": 1, "success": 13, "error": 5}

    # Deleted by the UI's event (by name), then by retention (created before a time, finished ones only), in chunks.
    by_name = RunsDeleted(names=["20261129080000", "20261129080100", "20261129100000"], requested_by="admin")
    by_age = RunsDeleted(created_before=T0 + timedelta(hours=2), statuses=["success", "error"], requested_by="retention:30d")
    for deletion in (by_name, by_age):
        await js.publish(subjects.retention, deletion.model_dump_json().encode(), headers={"Nats-Msg-Id": str(deletion.event_id)})
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))
    left = await aggregate(db)
    assert await counts(db) == left and sum(left.values()) == len(runs) - 3 - 4  # 3 by name, 4 more by age

    await rebuild(settings, progress=False)
    assert await counts(db) == left == await aggregate(db)
    # The rebuilt job_logs keeps the counters up to date: its triggers are installed again.
    await publish(js, subjects, run_events(name="20261129140000", start=T0 + timedelta(hours=8), fail=True))
    await eventually(lambda: drained(js, subjects.stream))
    assert await counts(db) == await aggregate(db) == {**left, "error": left["error"] + 1}


async def test_truncating_the_runs_empties_the_counters(db):
    await db.execute("""INSERT INTO job_logs (id, name, job, status, created_at, updated_at)
                        VALUES (gen_random_uuid(), '20261129080000', 'sync_open_orders', 'success', now(), now())""")
    assert await counts(db) == {"success": 1}
    await db.execute("TRUNCATE job_logs CASCADE")
    assert await counts(db) == {}


async def _pair_on_one_shard(database_url: str) -> tuple[list[asyncpg.Connection], list[asyncpg.Connection]]:
    """Two connections whose backend pids give the same first shard (pigeonhole: 17 connections suffice)."""
    opened: list[asyncpg.Connection] = []
    by_shard: dict[int, asyncpg.Connection] = {}
    while True:
        conn = await asyncpg.connect(database_url)
        opened.append(conn)
        shard = await conn.fetchval("SELECT pg_backend_pid() % 16")
        if shard in by_shard:
            return [by_shard[shard], conn], opened
        by_shard[shard] = conn


async def test_two_writers_on_the_same_first_shard_never_wait_on_each_other_nor_deadlock(database_url, db):
    """Each transaction claims a shard of its own: two recorders' batches that change statuses in opposite
    orders, statement after statement, would deadlock on one shared row per status."""
    (one, other), opened = await _pair_on_one_shard(database_url)
    insert = """INSERT INTO job_logs (id, name, job, status, created_at, updated_at)
                VALUES (gen_random_uuid(), $1, 'sync_open_orders', $2, now(), now())"""
    try:
        first, second = one.transaction(), other.transaction()
        await first.start()
        await second.start()
        await one.execute(insert, "20261129080000", "success")
        await other.execute(insert, "20261129080100", "error")
        # Each now needs the status the other one touched: with shared counter rows, a deadlock.
        await asyncio.gather(one.execute(insert, "20261129080200", "error"), other.execute(insert, "20261129080300", "success"))
        shards = await asyncio.gather(*(c.fetchval("SELECT current_setting('joblog.run_counts_shard')") for c in (one, other)))
        assert shards[0] != shards[1]
        await first.commit()
        await second.commit()
    finally:
        for conn in opened:
            await conn.close()
    assert await counts(db) == await aggregate(db) == {"error": 2, "success": 2}
    assert await db.fetchval("SELECT count(*) FROM run_status_counts") <= 4 * 16  # what a scrape reads, at most


async def test_two_recorders_on_one_durable_keep_the_counters_right(services, js, subjects, recorder_settings, db):
    events = [e for i in range(60) for e in run_events(
        name=f"20261129{14 + i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}", steps=2, updates=1, fail=i % 5 == 0)]
    random.Random(13).shuffle(events)
    settings = recorder_settings.model_copy(update={"recorder_batch_size": 10})
    await services(run_recorder, settings)
    await services(run_recorder, settings)
    await publish_many(js, subjects, as_payloads(subjects, events))
    await eventually(lambda: drained(js, subjects.stream))

    assert await counts(db) == await aggregate(db) == {"success": 48, "error": 12}
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_the_retention_policy_and_joblog_delete_keep_the_counters_right(services, js, subjects, recorder_settings, db, env):
    now = datetime.now(timezone.utc)
    runs = [run_events(name=f"202611010000{i:02d}", start=now - timedelta(days=3), fail=i % 3 == 0) for i in range(9)]
    runs += [run_events(name=f"202611020000{i:02d}", start=now - timedelta(hours=1), fail=i % 2 == 0) for i in range(6)]
    runs.append(run_events(name="20261103000000", start=now - timedelta(days=3))[:3])  # open: retention keeps it
    await publish(js, subjects, [e for run in runs for e in run])
    policy = recorder_settings.model_copy(update={"retention_days": 1, "retention_interval": 3600, "delete_chunk": 2})
    await services(run_recorder, policy)
    await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM run_deletions"))
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))
    assert await counts(db) == await aggregate(db) == {"processing": 1, "success": 3, "error": 3}

    done = joblog(env, "20261102000000", "20261102000001")  # an error and a success
    assert done.returncode == 0, done.stderr
    await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM run_deletions"))
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))
    assert await counts(db) == await aggregate(db) == {"processing": 1, "success": 2, "error": 2}
