"""`joblog rebuild` reproduces the tables from the stream while they are read; deleted runs stay deleted."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import asyncpg

from services.contracts import RunsDeleted
from services.log_recorder.main import run as run_recorder
from services.log_recorder.rebuild import rebuild
from tests.conftest import eventually
from tests.factories import T0, publish, run_events, snapshot
from tests.log_recorder.conftest import as_payloads, deletions_done, drained, in_order_tables, publish_many


async def delete_runs(js: Any, subjects: Any, **what: Any) -> RunsDeleted:
    """What the web's retention action publishes."""
    event = RunsDeleted(requested_by="admin", **what)
    await js.publish(subjects.retention, event.model_dump_json().encode(), headers={"Nats-Msg-Id": str(event.event_id)})
    return event


async def names(conn: asyncpg.Connection) -> set[str]:
    return {r["name"] for r in await conn.fetch("SELECT name FROM job_logs")}


async def test_deleted_runs_stay_deleted_after_redelivery_and_after_a_rebuild(services, js, subjects, recorder_settings, db):
    runs = {f"2026112908{i:02d}00": run_events(name=f"2026112908{i:02d}00", start=T0 + timedelta(hours=i)) for i in range(6)}
    a, b, c, d, e, f = runs
    await services(run_recorder, recorder_settings)
    await publish(js, subjects, [ev for events in runs.values() for ev in events])
    await eventually(lambda: drained(js, subjects.stream))
    assert await names(db) == set(runs)

    await delete_runs(js, subjects, names=[b])
    await delete_runs(js, subjects, created_before=T0 + timedelta(hours=2, minutes=30))  # a and c
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))  # carried out in chunks after the batch that read them
    assert await names(db) == {d, e, f}
    assert await db.fetchval("SELECT count(*) FROM job_log_details d JOIN job_logs j ON j.id = d.job_log_id") == \
        await db.fetchval("SELECT count(*) FROM job_log_details")
    assert {r["name"] for r in await db.fetch("SELECT name FROM deleted_runs")} == {a, b, c}
    kept = await snapshot(db)

    # A relay re-sends old events of deleted runs: they must not bring them back.
    await publish(js, subjects, runs[a] + runs[b] + runs[c], msg_ids=False)
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))  # ... and their messages are purged again
    assert await snapshot(db) == kept

    report = await rebuild(recorder_settings, progress=False)
    assert report.runs == 3
    assert await snapshot(db) == kept


async def test_rebuild_replays_the_stream_into_fresh_tables_and_swaps_them_in_while_the_web_reads(
    services, js, subjects, recorder_settings, db, env, database_url
):
    events = [e for i in range(40) for e in run_events(name=f"2026112912{i // 60:02d}{i % 60:02d}", steps=3, fail=i % 5 == 0)]
    await services(run_recorder, recorder_settings)
    await publish_many(js, subjects, as_payloads(subjects, events))
    await eventually(lambda: drained(js, subjects.stream))
    # Damage the projection: a rebuild must not care what is in the tables.
    await db.execute("UPDATE job_logs SET status = 'new', stats = NULL WHERE name LIKE '%05'")
    await db.execute("DELETE FROM job_log_details WHERE key = 'progress'")
    indexes_before = {r["indexname"] for r in await db.fetch("SELECT indexname FROM pg_indexes WHERE tablename LIKE 'job_log%'")}

    reading, seen, failures = asyncio.Event(), [], []

    async def web_reads() -> None:
        reader = await asyncpg.connect(database_url)
        try:
            while not reading.is_set():
                try:
                    seen.append(await reader.fetchval(
                        "SELECT count(*) FROM job_logs j JOIN job_log_details d ON d.job_log_id = j.id"))
                except Exception as error:  # noqa: BLE001 - any failure is what this test is about
                    failures.append(repr(error))
                await asyncio.sleep(0.005)
        finally:
            await reader.close()

    later = run_events(name="20261129130000")
    reader_task = asyncio.create_task(web_reads())
    rebuilding = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "joblog", "rebuild", env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    await publish(js, subjects, later)  # events keep arriving during the rebuild
    out, err = await rebuilding.communicate()
    assert rebuilding.returncode == 0, err.decode()
    assert "rebuilt from" in out.decode() and "event" in err.decode()  # the summary, and tqdm's bar on stderr
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: db.fetchval("SELECT count(*) = 41 FROM job_logs WHERE status IN ('success', 'error')"))
    reading.set()
    await reader_task

    assert failures == []
    assert min(seen) >= 40 * 3  # never an empty or half-built table: the swap is atomic
    indexes_after = {r["indexname"] for r in await db.fetch("SELECT indexname FROM pg_indexes WHERE tablename LIKE 'job_log%'")}
    assert indexes_after == indexes_before
    rebuilt = await snapshot(db)
    # A second rebuild, now from canonical names again, changes nothing.
    await rebuild(recorder_settings, progress=False)
    assert await snapshot(db) == rebuilt
    # The live recorder goes on writing into the swapped-in tables.
    after = run_events(name="20261129130001")
    await publish(js, subjects, after)
    await eventually(lambda: db.fetchval("SELECT status = 'success' FROM job_logs WHERE name = '20261129130001'"))
    await eventually(lambda: drained(js, subjects.stream))
    assert await db.fetchval("SELECT count(*) FROM pg_tables WHERE tablename LIKE '%rebuild%'") == 0
    assert await snapshot(db) == await in_order_tables(db, events + later + after)


async def test_a_second_rebuild_while_one_runs_refuses_with_one_line_and_touches_nothing(
    services, js, subjects, recorder_settings, db, env
):
    from services.log_recorder.rebuild import REBUILD_LOCK

    await services(run_recorder, recorder_settings)
    await publish(js, subjects, run_events(name="20261201150000"))
    await eventually(lambda: drained(js, subjects.stream))
    before = await snapshot(db)
    holder = await asyncpg.connect(recorder_settings.database_url)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", REBUILD_LOCK)  # as a running rebuild holds it
        done = subprocess.run([sys.executable, "-m", "joblog", "rebuild", "--no-progress"], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=120)
    finally:
        await holder.close()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["joblog: another rebuild of this database is running; wait for it to finish"]
    assert await snapshot(db) == before


async def test_a_rebuild_refuses_when_the_stream_no_longer_starts_at_its_first_message(services, js, subjects, recorder_settings, db):
    """Messages lost to limits or a purge: a rebuild would delete the runs they held, so it keeps the projection."""
    from services.log_recorder.errors import RebuildFailed

    await services(run_recorder, recorder_settings)
    await publish(js, subjects, run_events(name="20261201150001") + run_events(name="20261201150002"))
    await eventually(lambda: drained(js, subjects.stream))
    before = await snapshot(db)
    await js.purge_stream(subjects.stream, seq=3)  # messages 1 and 2 are gone
    try:
        await rebuild(recorder_settings, progress=False)
    except RebuildFailed as error:
        assert "now starts at message 3" in str(error)
    else:
        raise AssertionError("the rebuild ran over a stream that lost its first messages")
    assert await snapshot(db) == before


async def test_a_rebuild_from_a_stream_that_lacks_runs_of_the_projection_refuses_and_keeps_them(
    services, js, subjects, recorder_settings, db
):
    """E.g. a NATS cluster switched to a fresh volume: the stream starts at 1 again but holds fewer runs."""
    from services.log_recorder.errors import RebuildFailed

    await services(run_recorder, recorder_settings)
    await publish(js, subjects, run_events(name="20261201160000") + run_events(name="20261201160001"))
    await eventually(lambda: drained(js, subjects.stream))
    before = await snapshot(db)
    await js.purge_stream(subjects.stream)  # every message gone ...
    await publish(js, subjects, run_events(name="20261201160002"))  # ... and one new run
    await eventually(lambda: drained(js, subjects.stream))
    await js.delete_stream(subjects.stream)  # the stream starts from 1 again (a new volume)
    from services.contracts.subjects import ensure_streams

    await ensure_streams(js, subjects)
    await publish(js, subjects, run_events(name="20261201160003"))
    # The recorder notices its consumer is gone, creates it again and reads the new stream.
    await eventually(lambda: db.fetchval("SELECT count(*) = 4 FROM job_logs"))
    try:
        await rebuild(recorder_settings, progress=False)
    except RebuildFailed as error:
        assert "runs of the projection are not in the stream" in str(error) and "20261201160000" in str(error)
    else:
        raise AssertionError("the rebuild deleted runs it could not see")
    assert await db.fetchval("SELECT count(*) FROM job_logs") == 4
    assert {r["name"] for r in before["job_logs"]} <= {r["name"] for r in await db.fetch("SELECT name FROM job_logs")}
