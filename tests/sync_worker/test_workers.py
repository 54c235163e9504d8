"""Several worker processes: one run per trigger, distinct names, clean shutdown on SIGTERM."""
from __future__ import annotations

import asyncio
import json
import re

from services.contracts import TriggerRequested, WorkerHeartbeat
from services.contracts.events import utcnow
from services.contracts.subjects import publish_trigger
from services.log_recorder.main import run as run_recorder
from services.sync_worker.sources.sample import generate_orders
from tests.conftest import eventually
from tests.sync_worker.conftest import OrdersApi, details_of, finished_runs, paged


async def test_fifty_concurrent_runs_from_three_worker_processes_get_fifty_names_and_logs(
    services, worker_processes, js, subjects, recorder_settings, db
):
    workers = [
        worker_processes(JOBLOG_WORKER_ID=f"w{i}", JOBLOG_JOB_CONCURRENCY='{"purge_closed_orders": 50}', JOBLOG_WORKER_MAX_RUNS="6")
        for i in (1, 2, 3)
    ]
    await services(run_recorder, recorder_settings)
    await asyncio.gather(*(w.ready() for w in workers))

    await asyncio.gather(*(
        publish_trigger(js, subjects, TriggerRequested(job="purge_closed_orders", requested_by=f"t{i}")) for i in range(50)
    ))
    runs = await finished_runs(db, 50)

    assert len(runs) == 50
    assert len({r["name"] for r in runs}) == 50
    assert all(re.fullmatch(r"\d{14}(-\d+)?", r["name"]) for r in runs)
    assert any("-" in r["name"] for r in runs), "runs started in the same second share a base name"
    assert {r["requested_by"] for r in runs} == {f"t{i}" for i in range(50)}
    assert {r["status"] for r in runs} == {"success"}
    for run in runs:
        # Complete: created, started, the steps and the final event, nothing missing.
        assert run["terminal_seq"] == run["last_seq"] and run["started_at"] and run["finished_at"]
        assert [d["key"] for d in await details_of(db, run["id"])] == ["purge"]
    print("runs per worker:", {w: sum(r["worker_id"] == w for r in runs) for w in ("w1", "w2", "w3")})


async def test_sigterm_lets_a_running_sync_finish_within_the_grace_and_takes_no_new_trigger(
    services, worker_processes, orders_api: OrdersApi, js, subjects, recorder_settings, db
):
    orders_api.pages = paged(list(generate_orders(30)), 10)
    orders_api.gates = {2: asyncio.Event()}
    worker = worker_processes(
        JOBLOG_ORDERS_SOURCE="http", JOBLOG_ORDERS_URL=orders_api.url, JOBLOG_SHUTDOWN_GRACE="30",
        JOBLOG_WORKER_ID="draining", JOBLOG_HEARTBEAT_INTERVAL="0.2",
    )
    await services(run_recorder, recorder_settings)
    await worker.ready()
    await publish_trigger(js, subjects, TriggerRequested(job="sync_open_orders"))
    await eventually(lambda: _asked_for(orders_api, 2))

    worker.terminate()
    terminated_at = utcnow()
    await asyncio.sleep(0.5)
    await publish_trigger(js, subjects, TriggerRequested(job="purge_closed_orders"))
    # Still alive while it drains: heartbeats go on, naming the run it finishes.
    beat = WorkerHeartbeat.model_validate_json(
        (await js.get_last_msg(subjects.heartbeat_stream, subjects.for_heartbeat("draining"))).data
    )
    assert beat.occurred_at > terminated_at and len(beat.running) == 1
    orders_api.gates[2].set()
    assert await worker.exited() == 0

    [run] = await finished_runs(db, 1)
    assert run["status"] == "success" and json.loads(run["stats"])["created"] == 30
    # The trigger sent after SIGTERM waits in the queue for another worker.
    assert (await js.stream_info(subjects.command_stream)).state.messages == 1


async def test_sigterm_fails_a_run_that_outlives_the_grace_saying_why(
    services, worker_processes, orders_api: OrdersApi, js, subjects, recorder_settings, db
):
    orders_api.pages = paged(list(generate_orders(30)), 10)
    orders_api.gates = {2: asyncio.Event()}  # never set: the ERP hangs
    worker = worker_processes(
        JOBLOG_ORDERS_SOURCE="http", JOBLOG_ORDERS_URL=orders_api.url, JOBLOG_SHUTDOWN_GRACE="1",
    )
    await services(run_recorder, recorder_settings)
    await worker.ready()
    await publish_trigger(js, subjects, TriggerRequested(job="sync_open_orders"))
    await eventually(lambda: _asked_for(orders_api, 2))

    worker.terminate()
    assert await worker.exited() == 0

    [run] = await finished_runs(db, 1)
    assert run["status"] == "error"
    assert "shut down" in run["error_message"] and "1 s shutdown grace" in run["error_message"]
    assert run["failed_step"] == "import"
    last = (await details_of(db, run["id"]))[-1]
    assert last["level"] == "error" and "JOBLOG_SHUTDOWN_GRACE" in last["message"]


async def _asked_for(api: OrdersApi, page: int) -> bool:
    return page in api.hits


async def test_a_trigger_while_the_sync_is_running_is_logged_as_skipped_not_dropped(
    services, orders_api: OrdersApi, make_worker_settings, recorder_settings, js, subjects, db
):
    from services.sync_worker.main import run as run_worker

    orders_api.pages = paged(list(generate_orders(20)), 10)
    orders_api.gates = {2: asyncio.Event()}
    await services(run_recorder, recorder_settings)
    await services(run_worker, make_worker_settings(orders_source="http", orders_url=orders_api.url))
    await publish_trigger(js, subjects, TriggerRequested(job="sync_open_orders", requested_by="first"))
    await eventually(lambda: _asked_for(orders_api, 2))

    await publish_trigger(js, subjects, TriggerRequested(job="sync_open_orders", requested_by="second"))
    [skipped] = await finished_runs(db, 1)
    orders_api.gates[2].set()
    runs = await finished_runs(db, 2)

    assert skipped["requested_by"] == "second" and skipped["status"] == "success"
    assert json.loads(skipped["stats"]) == {"skipped": True}
    [detail] = await details_of(db, skipped["id"])
    assert detail["level"] == "warning"
    assert detail["message"] == "Skipped: SyncOpenOrdersJob is already running (at most 1 at a time)"
    first = next(r for r in runs if r["requested_by"] == "first")
    assert first["status"] == "success" and json.loads(first["stats"])["created"] == 20
