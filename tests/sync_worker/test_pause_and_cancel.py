"""Operating the workers: a paused schedule publishes no slots (across restarts) until resumed; a run is
cancelled by a request to its worker, cooperatively or, when its job hangs, by cancelling its task."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from services.contracts import CancelReply, CancelRequested, SchedulePaused, ScheduleResumed, TriggerRequested
from services.contracts.subjects import publish_schedule_event, publish_trigger
from services.log_recorder.main import run as run_recorder
from services.sync_worker.jobs.api import RunContext, registry
from services.sync_worker.main import run as run_worker
from tests.conftest import eventually

SLOT = "every 1s"


@pytest.fixture
def test_jobs() -> Iterator[None]:
    """Two jobs of this test's own: one that logs a step every 50 ms, one that awaits forever."""

    async def steady(ctx: RunContext) -> dict[str, Any]:
        for i in range(100_000):
            await ctx.log(f"Step {i}", key="progress")
            await asyncio.sleep(0.05)
        return {}

    async def hang(ctx: RunContext) -> dict[str, Any]:
        await ctx.log("Waiting for something that never comes", key="waiting")
        await asyncio.Event().wait()
        return {}

    registry.job("test_steady", title="SteadyJob")(steady)
    registry.job("test_hang", title="HangJob")(hang)
    yield
    for name in ("test_steady", "test_hang"):
        registry._jobs.pop(name, None)


async def scheduled_runs(db: Any) -> int:
    return await db.fetchval("SELECT count(*) FROM run_names WHERE job = 'purge_closed_orders'")


async def test_a_paused_schedule_runs_no_slot_across_a_restart_until_it_is_resumed(
    services, make_worker_settings, recorder_settings, js, subjects, db,
):
    settings = make_worker_settings(worker_id="pauser", schedules={"purge_closed_orders": SLOT}, shutdown_grace=1)
    await services(run_recorder, recorder_settings)
    worker = await services(run_worker, settings)
    await eventually(lambda: scheduled_runs(db))

    await publish_schedule_event(js, subjects, SchedulePaused(job="purge_closed_orders", requested_by="alice"))
    await asyncio.sleep(1.5)  # a slot already being published when the pause came may still run
    held = await scheduled_runs(db)
    await worker.stop()
    worker = await services(run_worker, settings)  # a restart reads the pause from the stream
    await asyncio.sleep(3.5)  # three slots pass
    assert await scheduled_runs(db) == held

    await publish_schedule_event(js, subjects, ScheduleResumed(job="purge_closed_orders", requested_by="bob"))
    await eventually(lambda: _more(db, held))
    await worker.stop()


async def _more(db: Any, than: int) -> bool:
    return await scheduled_runs(db) > than


async def run_of(db: Any, job: str) -> Any:
    return await db.fetchrow("SELECT id, name, status, worker_id FROM job_logs WHERE job = $1", job)


async def cancel(nc: Any, subjects: Any, run: Any, actor: str = "alice") -> CancelReply:
    request = CancelRequested(run_id=run["id"], name=run["name"], job="x", requested_by=actor)
    reply = await nc.request(subjects.for_cancel(run["worker_id"]), request.model_dump_json().encode(), timeout=5)
    return CancelReply.model_validate_json(reply.data)


@pytest.mark.parametrize("job", ["test_steady", "test_hang"])
async def test_a_cancelled_run_ends_as_error_with_a_last_step_saying_who_cancelled_it(
    job, test_jobs, services, make_worker_settings, recorder_settings, js, subjects, db,
):
    await services(run_recorder, recorder_settings)
    # A long grace for the steady job proves it stops cooperatively, at its next step.
    grace = 60.0 if job == "test_steady" else 0.2
    await services(run_worker, make_worker_settings(worker_id="canceller", cancel_grace=grace, shutdown_grace=1))
    await publish_trigger(js, subjects, TriggerRequested(job=job, requested_by="test"))
    run = await eventually(lambda: _processing(db, job))

    reply = await cancel(js._nc, subjects, run)
    assert reply.accepted, reply.reason
    await eventually(lambda: db.fetchval("SELECT status = 'error' FROM job_logs WHERE id = $1", run["id"]))
    ended = await db.fetchrow("SELECT error_class, error_message FROM job_logs WHERE id = $1", run["id"])
    assert dict(ended) == {"error_class": "RunCancelled", "error_message": "cancelled by alice"}
    last = await db.fetchrow(
        "SELECT key, level, message, data FROM job_log_details WHERE job_log_id = $1 ORDER BY first_seq DESC LIMIT 1", run["id"])
    assert (last["key"], last["level"]) == ("cancelled", "error")
    assert last["message"].startswith("Cancelled by alice") and json.loads(last["data"])["cancelled_by"] == "alice"

    again = await cancel(js._nc, subjects, run)  # the run has ended: nothing to cancel
    assert not again.accepted and "not running" in again.reason


async def _processing(db: Any, job: str) -> Any:
    run = await run_of(db, job)
    return run if run is not None and run["status"] == "processing" else None
