"""No single message, however valid by the contract, can stop the projection or hide later runs."""
from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone

from services.contracts import RunCreated, RunsDeleted, WorkerHeartbeat
from services.log_recorder.main import run as run_recorder
from services.log_recorder.rebuild import rebuild
from tests.conftest import eventually
from tests.factories import publish, run_events, snapshot
from tests.log_recorder.conftest import deletions_done, drained
from tests.log_recorder.test_lost_workers import beat, open_run


async def test_a_run_created_that_reuses_a_name_under_a_new_run_id_is_a_dead_letter_and_the_run_behind_it_projects(
    services, js, subjects, recorder_settings, db
):
    first = run_events(name="20261201100000")
    impostor = RunCreated(run_id=uuid.uuid4(), name="20261201100000", job="sync_open_orders", seq=1, worker_id="evil")
    behind = run_events(name="20261201100001", steps=3)
    await services(run_recorder, recorder_settings)

    await publish(js, subjects, first)
    await eventually(lambda: db.fetchval("SELECT status = 'success' FROM job_logs WHERE name = '20261201100000'"))
    await publish(js, subjects, [impostor, *behind])
    await eventually(lambda: drained(js, subjects.stream))

    assert await db.fetchval("SELECT status FROM job_logs WHERE name = '20261201100001'") == "success"
    letter = await db.fetchrow("SELECT subject, reason, payload FROM dead_letters")
    assert "UniqueViolation" in letter["reason"] and json.loads(letter["payload"])["run_id"] == str(impostor.run_id)
    assert await db.fetchval("SELECT id FROM job_logs WHERE name = '20261201100000'") == first[0].run_id

    # A rebuild meets the same message and gives the same tables.
    before = await snapshot(db)
    report = await rebuild(recorder_settings, progress=False)
    assert report.runs == 2 and await snapshot(db) == before


async def test_a_deletion_whose_cutoff_lies_in_the_future_is_refused_and_hides_no_later_run(
    services, js, subjects, recorder_settings, db
):
    old = run_events(name="20261201090000", start=datetime.now(timezone.utc) - timedelta(days=3))
    ahead = RunsDeleted(created_before=datetime.now(timezone.utc) + timedelta(days=1), requested_by="skewed-clock")
    await services(run_recorder, recorder_settings)
    await publish(js, subjects, old)
    await js.publish(subjects.retention, ahead.model_dump_json().encode())
    later = run_events(name="20261201100002", start=datetime.now(timezone.utc))
    await publish(js, subjects, later)
    await eventually(lambda: drained(js, subjects.stream))

    assert await db.fetchval("SELECT count(*) FROM job_logs") == 2, "the refused deletion deleted nothing and hid nothing"
    reason = await db.fetchval("SELECT reason FROM dead_letters")
    assert "is later than the deletion itself" in reason
    assert await db.fetchval("SELECT count(*) FROM run_deletions") == 0

    # An honest cutoff deletes the runs created before it, once, and runs created afterwards appear.
    cutoff = RunsDeleted(created_before=datetime.now(timezone.utc) - timedelta(days=1), requested_by="admin")
    await js.publish(subjects.retention, cutoff.model_dump_json().encode())
    newest = run_events(name="20261201100003", start=datetime.now(timezone.utc) - timedelta(days=2))
    await publish(js, subjects, newest)  # created before the cutoff, but sent after the deletion: a new run
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))  # the reaper carries deletions out after the batch that read them
    names = [r["name"] for r in await db.fetch("SELECT name FROM job_logs ORDER BY name")]
    assert names == ["20261201100002", "20261201100003"]

    before = await snapshot(db)
    await rebuild(recorder_settings, progress=False)
    assert await snapshot(db) == before, "a rebuild applies the deletion at the same place in the stream"


async def test_heartbeats_postgres_cannot_store_never_switch_off_lost_worker_detection(
    services, js, subjects, recorder_settings, db
):
    settings = recorder_settings.model_copy(update={"worker_timeout": 1.5})
    doomed = open_run("w-doomed", "20261201110000")
    await services(run_recorder, settings)
    stop = asyncio.Event()
    beating = asyncio.create_task(beat(js, subjects, "w-doomed", [doomed[0].run_id], stop))
    started = datetime.now(timezone.utc).isoformat()
    hostile = [
        # Beyond int4: the contract now bounds pid, so this one is ignored as invalid.
        {"type": "worker.heartbeat", "schema_version": 1, "worker_id": "w-huge", "host": "h", "pid": 2**40,
         "started_at": started},
        # A NUL in the host: stored as U+FFFD.
        {"type": "worker.heartbeat", "schema_version": 1, "worker_id": "w-nul", "host": "bad\u0000host", "pid": 1,
         "started_at": started, "incarnation": str(uuid.uuid4())},
    ]
    try:
        await publish(js, subjects, doomed)
        await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM job_logs WHERE status = 'processing'"))
        for payload in hostile:
            await js.publish(subjects.for_heartbeat(payload["worker_id"]), json.dumps(payload).encode())
        await eventually(lambda: db.fetchval("SELECT host FROM workers WHERE worker_id = 'w-nul'"))
        assert await db.fetchval("SELECT host FROM workers WHERE worker_id = 'w-nul'") == "bad\ufffdhost"
        stop.set()
        row = await eventually(lambda: db.fetchrow(
            "SELECT error_class FROM job_logs WHERE name = '20261201110000' AND status = 'error'"))
        assert row["error_class"] == "WorkerLost"
        assert not await db.fetchval("SELECT count(*) FROM workers WHERE worker_id = 'w-huge'")
    finally:
        stop.set()
        await beating


def test_the_contract_bounds_pid_to_what_postgres_stores():
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError):
        WorkerHeartbeat(worker_id="w", host="h", pid=2**40, started_at=datetime.now(timezone.utc))
