"""Scheduled triggers: every worker schedules, JetStream de-duplication makes one run per slot."""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from services.contracts import WorkerHeartbeat
from services.log_recorder.main import run as run_recorder
from services.sync_worker.main import run as run_worker
from services.sync_worker.schedules import parse_schedule, slot_command
from tests.conftest import eventually

UTC = ZoneInfo("UTC")


def test_slots_are_the_same_on_every_worker_whatever_its_clock_reading():
    every_10m = parse_schedule("every 10m")
    a = every_10m.next_after(datetime(2026, 11, 29, 8, 31, 7, 120_000, tzinfo=timezone.utc), UTC)
    b = every_10m.next_after(datetime(2026, 11, 29, 8, 39, 59, 900_000, tzinfo=timezone.utc), UTC)
    assert a == b == datetime(2026, 11, 29, 8, 40, tzinfo=timezone.utc)
    assert slot_command("sync_open_orders", a).command_id == "schedule:sync_open_orders:2026-11-29T08:40:00+00:00"

    quarter = parse_schedule("*/15 * * * *")
    assert quarter.next_after(a, UTC) == datetime(2026, 11, 29, 8, 45, tzinfo=timezone.utc)
    # Cron runs in the configured time zone: @daily is midnight in Madrid, 23:00 UTC in winter.
    assert parse_schedule("@daily").next_after(a, ZoneInfo("Europe/Madrid")) == datetime(2026, 11, 29, 23, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("bad", ["every 0s", "every fortnight", "*/15 * *", "daily"])
def test_a_bad_schedule_is_refused(bad):
    with pytest.raises(ValueError):
        parse_schedule(bad)


async def test_two_workers_with_one_schedule_make_one_run_per_slot(services, make_worker_settings, recorder_settings, js, subjects, db):
    schedules = {"purge_closed_orders": "every 1s"}
    await services(run_recorder, recorder_settings)
    workers = [await services(run_worker, make_worker_settings(worker_id=w, schedules=schedules)) for w in ("sched-a", "sched-b")]

    await eventually(lambda: db.fetchval("SELECT count(*) >= 4 FROM job_logs WHERE status = 'success'"), timeout=30)
    for worker in workers:
        await worker.stop()

    created = await db.fetchval("SELECT count(*) FROM run_names")
    await eventually(lambda: db.fetchval("SELECT count(*) = $1 FROM job_logs WHERE status = 'success'", created))
    runs = await db.fetch("SELECT trigger, requested_by FROM job_logs")
    slots = [r["requested_by"] for r in runs]
    assert {r["trigger"] for r in runs} == {"schedule"}
    assert all(s.startswith("schedule 20") for s in slots)
    assert len(set(slots)) == len(slots), f"a slot ran twice: {sorted(slots)}"
    # Both schedulers published every slot; the stream stored each slot once.
    commands = (await js.stream_info(subjects.command_stream)).state
    assert commands.last_seq == len(runs) + commands.messages

    beat = await js.get_last_msg(subjects.heartbeat_stream, subjects.for_heartbeat("sched-a"))
    jobs = {j.name: j for j in WorkerHeartbeat.model_validate_json(beat.data).jobs}
    assert jobs["purge_closed_orders"].schedule == "every 1s"
    assert jobs["sync_open_orders"].schedule is None
