"""The shipped NATS configuration (deploy/nats/nats.conf): each role can do its job, and nothing else.

A real nats-server runs with the file as compose ships it; the whole system runs through it (migrate
as admin, recorder, worker, a trigger and the web each as their own user), then each role tries what
it must not do.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio

from joblog.servers import NatsServer, free_port
from services.contracts import CancelReply, CancelRequested, RunsDeleted, Subjects, TriggerRequested
from services.contracts.subjects import close_nats, schedule_paused
from services.log_recorder.main import run as run_recorder
from services.log_recorder.settings import RecorderSettings
from services.notifier.main import run as run_notifier
from services.notifier.settings import NotifierSettings
from services.sync_worker.main import run as run_worker
from services.sync_worker.settings import WorkerSettings
from services.web.app import create_app
from services.web.settings import WebSettings
from tests.conftest import eventually
from tests.factories import run_events

CONFIG = Path(__file__).parents[2] / "deploy" / "nats" / "nats.conf"
ROLES = ("admin", "worker", "recorder", "web", "consumer", "notifier")
USERS = {"admin": "admin", "worker": "joblog_worker", "recorder": "joblog_recorder", "web": "joblog_web",
         "consumer": "consumer", "notifier": "joblog_notifier"}
SUBJECTS = Subjects()  # the names the shipped file is written for: joblog.* and JOBS


@pytest.fixture
def passwords() -> dict[str, str]:
    return {role: uuid.uuid4().hex for role in ROLES}


@pytest_asyncio.fixture
async def secured_nats(tmp_path: Path, passwords: dict[str, str]) -> AsyncIterator[NatsServer]:
    """nats-server with the shipped configuration (its monitoring port moved to a free one)."""
    config = tmp_path / "nats.conf"
    config.write_text(CONFIG.read_text().replace("http_port: 8222", f"http_port: {free_port()}"))
    env = {f"NATS_{role.upper()}_PASSWORD": password for role, password in passwords.items()}
    server = NatsServer(tmp_path / "nats", config=config, env=env).start()
    yield server
    server.stop()


def credentials(role: str, passwords: dict[str, str]) -> dict[str, Any]:
    return {"nats_user": USERS[role], "nats_password": passwords[role]}


async def connect_as(server: NatsServer, role: str, passwords: dict[str, str]) -> Any:
    errors: list[Exception] = []

    async def remember(error: Exception) -> None:
        errors.append(error)

    nc = await nats.connect(server.url, user=USERS[role], password=passwords[role], error_cb=remember,
                            allow_reconnect=False)
    nc.permission_errors = errors  # type: ignore[attr-defined]
    return nc


async def refused(attempt: Any) -> bool:
    """The server refuses it: a permissions violation shows as no answer (timeout / no responders) or an error."""
    try:
        await attempt
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.Error, asyncio.TimeoutError):
        return True
    return False


async def test_every_role_does_its_job_through_the_shipped_configuration(
    secured_nats: NatsServer, passwords, database_url, services, tmp_path
):
    common = {"nats_url": secured_nats.url, "database_url": database_url}
    admin_env = {**os.environ, "JOBLOG_NATS_URL": secured_nats.url, "JOBLOG_DATABASE_URL": database_url,
                 "JOBLOG_NATS_USER": "admin", "JOBLOG_NATS_PASSWORD": passwords["admin"]}
    migrated = subprocess.run([sys.executable, "-m", "joblog", "migrate"], env=admin_env, capture_output=True, text=True,
                              timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    said = migrated.stdout + migrated.stderr
    assert "streams ready" in said and "JOBS_HEARTBEATS" in said and "JOBS_COMMANDS" in said

    await services(run_recorder, RecorderSettings(**common, **credentials("recorder", passwords), worker_timeout=3))
    await services(run_worker, WorkerSettings(**common, **credentials("worker", passwords), heartbeat_interval=0.3,
                                              worker_id="w-secure"))
    await services(run_notifier, NotifierSettings(**common, **credentials("notifier", passwords)))
    web_env = {**admin_env, "JOBLOG_NATS_USER": "joblog_web", "JOBLOG_NATS_PASSWORD": passwords["web"]}
    # In a process of its own, while this event loop runs the worker and the recorder.
    triggered = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "joblog", "trigger", "sync_open_orders", "--wait", env=web_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(triggered.communicate(), 180)
    assert triggered.returncode == 0, err.decode()
    assert "succeeded" in out.decode()
    # The notifier, as its own user, follows the run stream with its consumer.
    await eventually(lambda: _notifier_saw_a_run(database_url))

    # The web, as its own user: its live feed and worker directory work, and so does Run now.
    from aiohttp.test_utils import TestClient, TestServer

    web = TestClient(TestServer(create_app(WebSettings(**common, **credentials("web", passwords)))))
    await web.start_server()
    try:
        page = await web.get("/")
        assert page.status == 200 and "sync_open_orders" in await page.text()
        async def worker_shown() -> bool:
            monitor = await web.get("/monitor")
            return monitor.status == 200 and "w-secure" in await monitor.text()

        await eventually(worker_shown)  # heartbeats followed as the web user
        # Pause as the web user; the worker, as its own, reads the pause from the stream.
        paused = await web.post("/jobs/sync_open_orders/pause", data={"confirm": "yes"}, allow_redirects=False)
        assert paused.status == 303 and "notice=paused" in paused.headers["Location"]
        worker_nc = await connect_as(secured_nats, "worker", passwords)
        try:
            state = await schedule_paused(worker_nc.jetstream(timeout=5), SUBJECTS, "sync_open_orders")
            assert state is not None and state.requested_by == "anonymous"
        finally:
            await close_nats(worker_nc)
        # A cancel request as the web user reaches the worker, which answers it.
        web_nc = await connect_as(secured_nats, "web", passwords)
        try:
            request = CancelRequested(run_id=uuid.uuid4(), name="20261129083000", job="sync_open_orders", requested_by="alice")
            reply = await web_nc.request(SUBJECTS.for_cancel("w-secure"), request.model_dump_json().encode(), timeout=5)
            answer = CancelReply.model_validate_json(reply.data)
            assert not answer.accepted and "not running on worker w-secure" in answer.reason
        finally:
            await close_nats(web_nc)
        ready = await web.get("/readyz")  # asks JetStream for the recorder's consumer
        assert ready.status == 200, await ready.text()
    finally:
        await web.close()

    # A program with the consumer role follows every run with a durable consumer of its own.
    nc = await connect_as(secured_nats, "consumer", passwords)
    try:
        js = nc.jetstream(timeout=5)
        sub = await js.pull_subscribe("joblog.run.>", durable="my_dashboard", stream="JOBS")
        messages = await sub.fetch(5, timeout=5)
        assert messages and all(m.subject.startswith("joblog.run.sync_open_orders.") for m in messages)
        for message in messages:
            await message.ack()
    finally:
        await close_nats(nc)


async def _notifier_saw_a_run(database_url: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM notifier_runs"))
    finally:
        await conn.close()


async def test_no_role_can_do_another_s_job(secured_nats: NatsServer, passwords, database_url):
    admin = await connect_as(secured_nats, "admin", passwords)
    from services.contracts.subjects import ensure_streams

    await ensure_streams(admin.jetstream(timeout=5), SUBJECTS)
    await admin.jetstream(timeout=5).add_consumer("JOBS", durable_name="log_recorder")
    await close_nats(admin)
    event = run_events()[0]
    run_event = (SUBJECTS.for_event(event), event.model_dump_json().encode())
    deletion = RunsDeleted(names=["20261129083000"]).model_dump_json().encode()
    trigger = TriggerRequested(job="sync_open_orders").model_dump_json().encode()

    consumer = await connect_as(secured_nats, "consumer", passwords)
    worker = await connect_as(secured_nats, "worker", passwords)
    recorder = await connect_as(secured_nats, "recorder", passwords)
    web = await connect_as(secured_nats, "web", passwords)
    try:
        cjs = consumer.jetstream(timeout=2)
        assert await refused(cjs.publish(*run_event)), "a consumer published a run event"
        assert await refused(cjs.publish(SUBJECTS.retention, deletion)), "a consumer deleted runs"
        assert await refused(cjs.delete_stream("JOBS")), "a consumer deleted the stream"
        assert await refused(cjs.purge_stream("JOBS")), "a consumer purged the stream"
        assert await refused(cjs.delete_consumer("JOBS", "log_recorder")), "a consumer deleted the recorder's consumer"
        assert await refused(cjs.publish(SUBJECTS.for_schedule("sync_open_orders"), b"{}")), "a consumer paused a schedule"

        wjs = worker.jetstream(timeout=2)
        assert not await refused(wjs.publish(*run_event)), "a worker must publish run events"
        assert await refused(wjs.publish(SUBJECTS.retention, deletion)), "a worker deleted runs"
        assert await refused(wjs.delete_stream("JOBS")), "a worker deleted the stream"
        assert await refused(wjs.publish(SUBJECTS.for_schedule("sync_open_orders"), b"{}")), "a worker paused a schedule"

        rjs = recorder.jetstream(timeout=2)
        assert await refused(rjs.publish(f"{SUBJECTS.prefix}.run.sync_open_orders.20261129083000.succeeded", b"{}")), \
            "a recorder published a run result"
        assert await refused(rjs.publish(SUBJECTS.for_trigger("sync_open_orders"), trigger)), "a recorder triggered a job"
        assert await refused(rjs.delete_stream("JOBS_COMMANDS")), "a recorder deleted a stream"
        assert not await refused(rjs.purge_stream("JOBS", subject=f"{SUBJECTS.prefix}.run.*.20261129083000.*")), \
            "a recorder must purge deleted runs' messages"
        assert await refused(wjs.purge_stream("JOBS", subject=f"{SUBJECTS.prefix}.run.>")), "a worker purged the stream"

        webjs = web.jetstream(timeout=2)
        assert not await refused(webjs.publish(SUBJECTS.for_trigger("sync_open_orders"), trigger)), "the web must trigger"
        assert not await refused(webjs.publish(SUBJECTS.retention, deletion)), "the web must delete runs"
        assert await refused(webjs.publish(*run_event)), "the web published a run event"
        assert await refused(webjs.delete_consumer("JOBS", "log_recorder")), "the web deleted the recorder's consumer"
        assert await refused(webjs.purge_stream("JOBS")), "the web purged the stream"
    finally:
        for nc in (consumer, worker, recorder, web):
            await close_nats(nc)

    # No user, or a wrong password: not in at all.
    with pytest.raises(Exception):
        await nats.connect(secured_nats.url, allow_reconnect=False, max_reconnect_attempts=1)
    with pytest.raises(Exception):
        await nats.connect(secured_nats.url, user="consumer", password="guess", allow_reconnect=False,
                           max_reconnect_attempts=1)
