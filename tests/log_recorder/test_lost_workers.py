"""A worker that stops heartbeating has its open runs closed as error; a slow one that returns wins back its run."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from services.contracts import RunCreated, RunStarted, RunSucceeded, TriggerRequested, WorkerHeartbeat
from services.contracts.subjects import publish_trigger
from services.log_recorder.main import run as run_recorder
from services.log_recorder.watchdog import VERDICT_SEQ
from tests.conftest import eventually
from tests.factories import publish

TIMEOUT = 1.5


def open_run(worker_id: str, name: str) -> list[Any]:
    run_id = uuid.uuid4()
    common = {"run_id": run_id, "name": name, "job": "sync_open_orders"}
    return [
        RunCreated(**common, seq=1, worker_id=worker_id),  # type: ignore[arg-type]
        RunStarted(**common, seq=2, worker_id=worker_id, host="host-a", pid=4242),  # type: ignore[arg-type]
    ]


async def beat(js: Any, subjects: Any, worker_id: str, running: list[uuid.UUID], stop: asyncio.Event) -> None:
    """Heartbeats every 0.2 s until stop, as a worker's loop sends them."""
    started = datetime.now(timezone.utc)
    while not stop.is_set():
        heartbeat = WorkerHeartbeat(worker_id=worker_id, host="host-a", pid=4242, started_at=started, running=running)
        await js.publish(subjects.for_heartbeat(worker_id), heartbeat.model_dump_json().encode())
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass


async def test_a_silent_worker_s_run_is_closed_once_as_worker_lost_and_the_slow_worker_s_own_result_wins_back(
    services, js, subjects, recorder_settings, db
):
    """Fault 4 (simulated worker) and the slow-worker rule, with two recorders reaching the same verdict."""
    settings = recorder_settings.model_copy(update={"worker_timeout": TIMEOUT})
    doomed, alive = open_run("w-doomed", "20261129110000"), open_run("w-alive", "20261129110001")
    await services(run_recorder, settings)
    await services(run_recorder, settings)
    stop_doomed, stop_alive = asyncio.Event(), asyncio.Event()
    beats = [
        asyncio.create_task(beat(js, subjects, "w-doomed", [doomed[0].run_id], stop_doomed)),
        asyncio.create_task(beat(js, subjects, "w-alive", [alive[0].run_id], stop_alive)),
    ]
    try:
        await publish(js, subjects, doomed + alive)
        await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM job_logs WHERE status = 'processing'"))
        await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM workers"))

        stop_doomed.set()  # the worker dies: no more heartbeats
        lost = await eventually(lambda: db.fetchrow(
            "SELECT status, error_class, error_message, failed_step FROM job_logs WHERE name = '20261129110000' AND status = 'error'"
        ), timeout=30)
        assert lost["error_class"] == "WorkerLost"
        assert "w-doomed" in lost["error_message"] and "last seen" in lost["error_message"]
        # The two verdict events may land in different batches, on either recorder.
        detail = await eventually(lambda: db.fetchrow("SELECT level, message, seq FROM job_log_details WHERE key = 'worker-lost'"))
        assert detail["level"] == "error" and detail["seq"] == VERDICT_SEQ
        assert "Worker w-doomed was lost: no heartbeat since" in detail["message"]
        assert await db.fetchval("SELECT status FROM job_logs WHERE name = '20261129110001'") == "processing"
        assert await db.fetchval("SELECT lost_at IS NOT NULL FROM workers WHERE worker_id = 'w-doomed'")
        assert await db.fetchval("SELECT lost_at IS NULL FROM workers WHERE worker_id = 'w-alive'")

        # Both recorders judged; JetStream kept one verdict (its msg ids depend only on the run).
        await asyncio.sleep(TIMEOUT)
        info = await js.stream_info(subjects.stream, subjects_filter=f"{subjects.prefix}.run.*.20261129110000.>")
        assert info.state.subjects == {
            f"{subjects.prefix}.run.sync_open_orders.20261129110000.{kind}": 1
            for kind in ("created", "started", "step", "failed")
        }

        # The worker was only slow: its own result (seq 3, below the verdict's) replaces the verdict.
        comeback = RunSucceeded(run_id=doomed[0].run_id, name=doomed[0].name, job=doomed[0].job, seq=3,
                                stats={"imported": 5}, duration_ms=9000)
        await publish(js, subjects, [comeback])
        row = await eventually(lambda: db.fetchrow(
            "SELECT status, error_class, stats, terminal_seq FROM job_logs WHERE name = '20261129110000' AND status = 'success'"
        ))
        assert row["error_class"] is None and row["terminal_seq"] == 3
        assert await db.fetchval("SELECT count(*) FROM job_log_details WHERE key = 'worker-lost'") == 1
    finally:
        stop_doomed.set()
        stop_alive.set()
        await asyncio.gather(*beats)


async def test_a_worker_process_killed_mid_run_leaves_a_run_closed_as_worker_lost(services, js, subjects, recorder_settings, db, env, tmp_path):
    """Fault 4: a real `joblog worker` process, stuck in a slow sync, is SIGKILLed."""
    hanging = asyncio.Event()

    async def slow_orders(request: web.Request) -> web.Response:
        await hanging.wait()  # the ERP's API takes forever: the run stays processing
        return web.json_response({"orders": []})

    api = web.Application()
    api.router.add_get("/orders", slow_orders)
    server = TestServer(api, host="127.0.0.1")
    await server.start_server()
    await services(run_recorder, recorder_settings.model_copy(update={"worker_timeout": TIMEOUT}))
    worker_env = {
        **os.environ, **env, "JOBLOG_WORKER_ID": "w-killed", "JOBLOG_HEARTBEAT_INTERVAL": "0.3",
        "JOBLOG_ORDERS_SOURCE": "http", "JOBLOG_ORDERS_URL": str(server.make_url("/orders")),
        "JOBLOG_ORDERS_HTTP_TIMEOUT": "600", "JOBLOG_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "joblog", "worker"], env=worker_env, stdout=log, stderr=log)
    try:
        await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM workers WHERE worker_id = 'w-killed'"))
        await publish_trigger(js, subjects, TriggerRequested(job="sync_open_orders", trigger="cli"))
        name = await eventually(lambda: db.fetchval(
            "SELECT name FROM job_logs WHERE worker_id = 'w-killed' AND status = 'processing'"))

        worker.send_signal(signal.SIGKILL)
        worker.wait(10)

        row = await eventually(lambda: db.fetchrow(
            "SELECT status, error_class FROM job_logs WHERE name = $1 AND status = 'error'", name), timeout=30)
        assert row["error_class"] == "WorkerLost"
        assert await db.fetchval(
            "SELECT message FROM job_log_details d JOIN job_logs j ON j.id = d.job_log_id "
            "WHERE j.name = $1 AND d.key = 'worker-lost'", name
        ) is not None
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
        hanging.set()
        await server.close()
