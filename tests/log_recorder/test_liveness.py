"""Liveness per run: a run is held by the worker process that created it, for as long as its heartbeats list it."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from services.contracts import RunCreated, RunStarted, TriggerRequested, WorkerHeartbeat, WorkerStopped
from services.contracts.subjects import publish_trigger
from services.log_recorder.main import run as run_recorder
from services.sync_worker.main import run as run_worker
from tests.conftest import eventually
from tests.factories import publish

TIMEOUT = 1.5


@asynccontextmanager
async def hanging_orders_api() -> AsyncIterator[str]:
    """An orders API whose every request hangs: a run of it stays processing until its worker dies."""
    release = asyncio.Event()

    async def orders(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"orders": []})

    api = web.Application()
    api.router.add_get("/orders", orders)
    server = TestServer(api, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/orders"))
    finally:
        release.set()
        await server.close()


def start_worker(env: dict[str, str], worker_id: str, url: str, log: Any) -> subprocess.Popen[bytes]:
    worker_env = {
        **os.environ, **env, "JOBLOG_WORKER_ID": worker_id, "JOBLOG_HEARTBEAT_INTERVAL": "0.3",
        "JOBLOG_ORDERS_SOURCE": "http", "JOBLOG_ORDERS_URL": url, "JOBLOG_ORDERS_HTTP_TIMEOUT": "600",
        "JOBLOG_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([sys.executable, "-m", "joblog", "worker"], env=worker_env, stdout=log, stderr=log)


async def test_a_worker_restarted_under_the_same_id_closes_its_previous_process_s_run_as_error(
    services, js, subjects, recorder_settings, db, env, tmp_path
):
    """The container case: SIGKILL mid-run, then the same worker id starts again and beats."""
    # A long timeout: the run is closed by the restart rule, not by the lease running out.
    await services(run_recorder, recorder_settings.model_copy(update={"worker_timeout": 12}))
    log = (tmp_path / "worker.log").open("wb")
    async with hanging_orders_api() as url:
        first = start_worker(env, "w-fixed", url, log)
        second = None
        try:
            await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM worker_incarnations WHERE worker_id = 'w-fixed'"))
            await publish_trigger(js, subjects, TriggerRequested(job="sync_open_orders", trigger="cli"))
            run = await eventually(lambda: db.fetchrow(
                "SELECT name, incarnation FROM job_logs WHERE worker_id = 'w-fixed' AND status = 'processing'"))
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            second = start_worker(env, "w-fixed", url, log)  # same id, new process

            closed = await eventually(lambda: db.fetchrow(
                "SELECT error_class, error_message FROM job_logs WHERE name = $1 AND status = 'error'", run["name"]), timeout=60)
            assert closed["error_class"] == "WorkerLost" and "restarted" in closed["error_message"]
            incarnations = await db.fetch("SELECT incarnation FROM worker_incarnations WHERE worker_id = 'w-fixed'")
            assert len(incarnations) == 2 and run["incarnation"] in {r["incarnation"] for r in incarnations}
            # The new process is alive and well: it takes the next trigger.
            await publish_trigger(js, subjects, TriggerRequested(job="sync_open_orders", trigger="cli"))
            await eventually(lambda: db.fetchval(
                "SELECT count(*) FROM job_logs WHERE status = 'processing' AND incarnation <> $1", run["incarnation"]))
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
            log.close()


async def test_a_run_its_process_stops_listing_is_closed_after_the_timeout_while_the_process_beats_on(
    services, js, subjects, recorder_settings, db
):
    """A process that beats without the run no longer holds it (a run lost inside a live worker)."""
    incarnation = uuid.uuid4()
    run_id = uuid.uuid4()
    common = {"run_id": run_id, "name": "20261201120000", "job": "sync_open_orders"}
    events = [
        RunCreated(**common, seq=1, worker_id="w-live", incarnation=incarnation),  # type: ignore[arg-type]
        RunStarted(**common, seq=2, worker_id="w-live", host="h", pid=7, incarnation=incarnation),  # type: ignore[arg-type]
    ]
    await services(run_recorder, recorder_settings.model_copy(update={"worker_timeout": TIMEOUT}))
    stop = asyncio.Event()

    async def beats(listing: list[uuid.UUID]) -> None:
        started = datetime.now(timezone.utc)
        while not stop.is_set():
            beat = WorkerHeartbeat(worker_id="w-live", incarnation=incarnation, host="h", pid=7, started_at=started, running=listing)
            await js.publish(subjects.for_heartbeat("w-live"), beat.model_dump_json().encode())
            await asyncio.sleep(0.2)

    beating = asyncio.create_task(beats([]))
    try:
        await publish(js, subjects, events)
        closed = await eventually(lambda: db.fetchrow(
            "SELECT error_class FROM job_logs WHERE name = '20261201120000' AND status = 'error'"), timeout=30)
        assert closed["error_class"] == "WorkerLost"
        # The process itself is alive: only its unlisted run was lost, the worker is not marked lost.
        assert await db.fetchval("SELECT lost_at IS NULL FROM workers WHERE worker_id = 'w-live'") is True
    finally:
        stop.set()
        await beating


async def test_a_cleanly_stopped_worker_is_stopped_not_lost_and_causes_no_verdict(
    services, js, subjects, recorder_settings, make_worker_settings, db
):
    """SIGTERM (here: the service's stop) ends with worker.stopped; its runs are never given up for lost."""
    await services(run_recorder, recorder_settings.model_copy(update={"worker_timeout": TIMEOUT}))
    worker = await services(run_worker, make_worker_settings(worker_id="w-deploy", heartbeat_interval=0.2))
    await publish_trigger(js, subjects, TriggerRequested(job="sync_open_orders", trigger="cli"))
    await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM job_logs WHERE status = 'success'"))
    await worker.stop()

    stopped = await eventually(lambda: db.fetchrow(
        "SELECT stopped_at FROM worker_incarnations WHERE worker_id = 'w-deploy' AND stopped_at IS NOT NULL"))
    assert stopped["stopped_at"] is not None
    assert await db.fetchval("SELECT stopped_at IS NOT NULL FROM workers WHERE worker_id = 'w-deploy'")

    # A run of a stopped process whose result is still in an outbox: held, never judged lost.
    incarnation = uuid.uuid4()
    run_id = uuid.uuid4()
    common = {"run_id": run_id, "name": "20261201130000", "job": "sync_open_orders"}
    await publish(js, subjects, [
        RunCreated(**common, seq=1, worker_id="w-gone", incarnation=incarnation),  # type: ignore[arg-type]
        RunStarted(**common, seq=2, worker_id="w-gone", host="h", pid=9, incarnation=incarnation),  # type: ignore[arg-type]
    ])
    goodbye = WorkerStopped(worker_id="w-gone", incarnation=incarnation, host="h", pid=9, pending_runs=[run_id])
    await js.publish(subjects.for_worker_stop("w-gone"), goodbye.model_dump_json().encode())
    await eventually(lambda: db.fetchval("SELECT stopped_at FROM worker_incarnations WHERE worker_id = 'w-gone'"))
    await asyncio.sleep(TIMEOUT * 3)  # several timeouts pass: still no verdict
    assert await db.fetchval("SELECT status FROM job_logs WHERE name = '20261201130000'") == "processing"
    # No verdict was published for either process (a verdict would be projected as a worker-lost detail).
    assert await db.fetchval("SELECT count(*) FROM job_log_details WHERE key = 'worker-lost'") == 0
    assert await db.fetchval("SELECT count(*) FROM job_logs WHERE error_class = 'WorkerLost'") == 0
