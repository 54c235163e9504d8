"""A paused schedule misses nothing: the notifier raises no missed_schedule alert for its slots."""
from __future__ import annotations

import asyncio

from services.contracts import SchedulePaused
from services.contracts.subjects import publish_schedule_event
from services.log_recorder.main import run as run_recorder
from services.notifier.main import run as run_notifier
from services.sync_worker.main import run as run_worker
from tests.conftest import eventually


async def test_no_missed_schedule_alert_for_a_paused_schedule(
    services, js, subjects, db, receiver, make_notifier_settings, make_worker_settings, recorder_settings,
):
    grace = 2.0
    await services(run_recorder, recorder_settings)
    await services(run_notifier, make_notifier_settings(notify_webhooks=receiver.url, notify_schedule_grace=grace))
    await services(run_worker, make_worker_settings(
        worker_id="w-paused", heartbeat_interval=0.3, schedules={"sync_open_orders": "every 2s"}))
    await eventually(lambda: db.fetchval("SELECT expression FROM notifier_schedules WHERE job = 'sync_open_orders'"))
    await eventually(lambda: db.fetchval("SELECT count(*) >= 1 FROM notifier_runs WHERE job = 'sync_open_orders'"))

    await publish_schedule_event(js, subjects, SchedulePaused(job="sync_open_orders", requested_by="alice"))
    await eventually(lambda: db.fetchval("SELECT paused FROM schedule_states WHERE job = 'sync_open_orders'"))
    runs = await db.fetchval("SELECT count(*) FROM notifier_runs WHERE job = 'sync_open_orders'")
    await asyncio.sleep(3 * 2 + grace + 1)  # three slots and their grace go by without a run
    assert [a for a in receiver.alerts() if a["kind"] == "missed_schedule"] == []
    assert await db.fetchval("SELECT count(*) FROM notifier_runs WHERE job = 'sync_open_orders'") <= runs + 1
