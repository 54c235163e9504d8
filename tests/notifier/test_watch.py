"""Alerts on what did not happen: a schedule slot with no run (no worker at all), a run far slower than usual."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

from services.contracts import RunCreated, RunStarted, WorkerHeartbeat
from services.notifier.main import run as run_notifier
from services.sync_worker.main import run as run_worker
from tests.conftest import eventually
from tests.factories import T0, publish, run_events


async def test_stopping_every_worker_of_a_scheduled_job_raises_missed_schedule_within_the_grace(
    services, js, subjects, db, receiver, make_notifier_settings, make_worker_settings
):
    """The dead man's switch: the schedule is known from the heartbeats, and no worker is left to fire it."""
    grace = 3.0
    await services(run_notifier, make_notifier_settings(notify_webhooks=receiver.url, notify_schedule_grace=grace))
    worker = await services(run_worker, make_worker_settings(
        worker_id="w-sched", heartbeat_interval=0.3, schedules={"sync_open_orders": "every 2s"}))
    await eventually(lambda: db.fetchval("SELECT expression FROM notifier_schedules WHERE job = 'sync_open_orders'"))
    await eventually(lambda: db.fetchval("SELECT count(*) >= 2 FROM notifier_runs WHERE job = 'sync_open_orders'"))
    await worker.stop()
    stopped_at = datetime.now(timezone.utc)

    missed = await eventually(lambda: asyncio.sleep(0, [a for a in receiver.alerts() if a["kind"] == "missed_schedule"]),
                              timeout=60)
    assert missed[0]["job"] == "sync_open_orders" and "every 2s" in missed[0]["message"]
    slot = datetime.fromisoformat(missed[0]["details"]["slots"][0])
    # The slot missed is one after the last worker stopped, reported once its grace had passed.
    assert slot >= stopped_at - timedelta(seconds=2.5)
    assert datetime.fromisoformat(missed[0]["time"].replace("Z", "+00:00")) >= slot + timedelta(seconds=grace)
    await asyncio.sleep(grace + 2)  # more slots go by: still one open alert, no storm
    assert len([a for a in receiver.alerts() if a["kind"] == "missed_schedule"]) == 1


async def test_a_run_slower_than_k_times_its_median_raises_too_slow_while_it_is_still_running(
    services, js, subjects, db, receiver, make_notifier_settings
):
    await services(run_notifier, make_notifier_settings(
        notify_webhooks=receiver.url, notify_slow_factor=3, notify_slow_runs=5, notify_slow_min_runs=3))
    for i in range(3):  # three successes of 300 ms each: the median is 300 ms
        events = run_events(name=f"2026112908{i:02d}00", job="nightly", start=T0 + timedelta(minutes=i))
        events[-1] = events[-1].model_copy(update={"duration_ms": 300})
        await publish(js, subjects, events)
    await eventually(lambda: db.fetchval("SELECT count(*) = 3 FROM notifier_runs WHERE job = 'nightly' AND status = 'success'"))
    assert receiver.alerts() == []

    incarnation, run_id = uuid.uuid4(), uuid.uuid4()
    common = {"run_id": run_id, "name": "20261129090000", "job": "nightly"}
    await publish(js, subjects, [
        RunCreated(**common, seq=1, worker_id="w-slow", incarnation=incarnation),  # type: ignore[arg-type]
        RunStarted(**common, seq=2, worker_id="w-slow", host="h", pid=1, incarnation=incarnation),  # type: ignore[arg-type]
    ])
    stop = asyncio.Event()

    async def beats() -> None:  # its worker is alive and holds it: slow, not stalled
        started = datetime.now(timezone.utc)
        while not stop.is_set():
            beat = WorkerHeartbeat(worker_id="w-slow", incarnation=incarnation, host="h", pid=1, started_at=started,
                                   running=[run_id])
            await js.publish(subjects.for_heartbeat("w-slow"), beat.model_dump_json().encode())
            await asyncio.sleep(0.2)

    beating = asyncio.create_task(beats())
    try:
        slow = await eventually(lambda: asyncio.sleep(0, [a for a in receiver.alerts() if a["kind"] == "too_slow"]))
        assert slow[0]["run"] == "20261129090000" and "has been running for" in slow[0]["message"]
        assert slow[0]["details"]["finished"] is False and slow[0]["details"]["elapsed_ms"] > 900
        assert await db.fetchval("SELECT status FROM notifier_runs WHERE run_id = $1", run_id) == "processing"
        assert not [a for a in receiver.alerts() if a["kind"] == "stalled"]
    finally:
        stop.set()
        await beating


async def test_a_processing_run_no_live_worker_holds_is_stalled(
    services, js, subjects, db, receiver, make_notifier_settings
):
    await services(run_notifier, make_notifier_settings(notify_webhooks=receiver.url, worker_timeout=1.0))
    incarnation, run_id = uuid.uuid4(), uuid.uuid4()
    common = {"run_id": run_id, "name": "20261129100000", "job": "sync_open_orders"}
    await publish(js, subjects, [
        RunCreated(**common, seq=1, worker_id="w-dead", incarnation=incarnation),  # type: ignore[arg-type]
        RunStarted(**common, seq=2, worker_id="w-dead", host="h", pid=1, incarnation=incarnation),  # type: ignore[arg-type]
    ])
    stalled = await eventually(lambda: asyncio.sleep(0, [a for a in receiver.alerts() if a["kind"] == "stalled"]))
    assert stalled[0]["run"] == "20261129100000" and "no live worker" in stalled[0]["message"]
