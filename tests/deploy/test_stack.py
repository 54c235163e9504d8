"""The compose deployment as separate OS processes (the real containers: test_day.py, `make deploy-test`).

The processes get exactly the environment deploy/docker-compose.yml gives each service, with
only the addresses swapped for this test's NATS, Postgres, names and a free web port.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio

from joblog.migrate import with_database
from joblog.servers import free_port
from services.contracts import Subjects
from tests.conftest import eventually
from tests.deploy import compose

JOB = "sync_open_orders"
PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"


def stack_environment(service: str, overrides: dict[str, str]) -> dict[str, str]:
    """The service's environment from the compose files, with the test's addresses swapped in."""
    nats = {f"NATS_{role}_PASSWORD": "unused" for role in ("ADMIN", "WORKER", "RECORDER", "WEB", "CONSUMER")}
    dotenv = {**compose.read_dotenv(compose.ENV_EXAMPLE), **nats, "POSTGRES_PASSWORD": "unused", "JOBLOG_ADMIN_PASSWORD": PASSWORD}
    cfg = compose.config(dotenv)
    env = compose.service_environment(cfg, service, dotenv)
    for key, value in overrides.items():
        if key in env:  # swap only what compose sets: the rest stays as deployed
            env[key] = value
    return env


class Stack:
    """Child processes of the deployment; their stderr (the logs) kept in files."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "joblog", command], env={**base, **env}, cwd=self.logs,
                                stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = proc
        return proc

    def log_lines(self, name: str) -> list[str]:
        return [line for line in (self.logs / f"{name}.log").read_text().splitlines() if line.strip()]

    def stop(self) -> dict[str, int]:
        """SIGTERM everything still running, then kill what did not stop; returns exit codes."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.processes.items():
            try:
                codes[name] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


@pytest_asyncio.fixture
async def stack_database(postgres_dsn: str) -> AsyncIterator[str]:
    """A database that does not exist yet: the migrate process creates it."""
    name = f"joblog_stack_{uuid.uuid4().hex[:10]}"
    yield with_database(postgres_dsn, name)
    admin = await asyncpg.connect(postgres_dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
def stack(tmp_path: Path) -> Any:
    running = Stack(tmp_path)
    yield running
    running.stop()


def worker_id_of(pid: int) -> str:
    """The default JOBLOG_WORKER_ID of a process on this host (compose sets none)."""
    host = socket.gethostname().split(".")[0][:40] or "worker"
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in f"{host}-{pid}")


async def test_the_compose_services_as_processes_run_jobs_and_serve_the_pages(
    stack: Stack, stack_database: str, nats_url: str, subjects: Subjects, js: Any,
):
    port = free_port()
    swap = {"JOBLOG_NATS_URL": nats_url, "JOBLOG_DATABASE_URL": stack_database, "JOBLOG_STREAM": subjects.stream,
            "JOBLOG_SUBJECT_PREFIX": subjects.prefix, "JOBLOG_WEB_HOST": "127.0.0.1", "JOBLOG_WEB_PORT": str(port)}
    # Compose leaves stream and prefix at their defaults; this test needs its own.
    names = {"JOBLOG_STREAM": subjects.stream, "JOBLOG_SUBJECT_PREFIX": subjects.prefix}

    def env(service: str) -> dict[str, str]:
        return {**stack_environment(service, swap), **names}

    assert env("web")["JOBLOG_LOG_FORMAT"] == "json" and env("web")["JOBLOG_ADMIN_PASSWORD"] == PASSWORD
    migrate = stack.start("migrate", "migrate", env("migrate"))
    assert await asyncio.to_thread(migrate.wait, 120) == 0, stack.log_lines("migrate")
    workers = [stack.start(f"sync_worker-{i}", "worker", env("sync_worker")) for i in (1, 2)]
    for i in (1, 2):
        stack.start(f"log_recorder-{i}", "recorder", env("log_recorder"))
    stack.start("web", "web", env("web"))

    base = f"http://127.0.0.1:{port}"
    auth = aiohttp.BasicAuth("admin", PASSWORD)
    async with aiohttp.ClientSession() as http:

        async def status(path: str, **kwargs: Any) -> int:
            try:
                async with http.get(base + path, **kwargs) as response:
                    return response.status
            except aiohttp.ClientError:
                return 0

        await eventually(lambda: _equals(status("/readyz"), 200), timeout=60)
        assert await status("/healthz") == 200
        assert await status("/") == 401, "the deployment's password protects the pages"

        async def job_available() -> bool:
            async with http.get(f"{base}/api/jobs", auth=auth) as response:
                return any(j["name"] == JOB and j["available"] for j in (await response.json())["jobs"])

        await eventually(job_available, timeout=60)

        # "Run now" as the browser sends it (same origin, confirmed) ...
        form = {"confirm": "yes"}
        async with http.post(f"{base}/jobs/{JOB}/run", data=form, auth=auth, headers={"Origin": base},
                             allow_redirects=False) as response:
            assert response.status == 303, await response.text()
        first = await _finished_runs(http, base, auth, 1)
        # ... and through the API.
        async with http.post(f"{base}/api/jobs/{JOB}/trigger", auth=auth, headers={"Origin": base}) as response:
            assert response.status == 202, await response.text()
        runs = await _finished_runs(http, base, auth, 2)

        assert [run["status"] for run in runs] == ["success", "success"]
        assert runs[1]["name"] == first[0]["name"]
        assert {run["worker_id"] for run in runs} <= {worker_id_of(w.pid) for w in workers}
        async with http.get(base + "/", auth=auth) as response:
            index = await response.text()
        assert all(run["name"] in index for run in runs)
        async with http.get(f"{base}/runs/{runs[0]['name']}", auth=auth) as response:
            assert response.status == 200
            page = await response.text()
        assert "Fetched 320 orders" in page and "Imported 318 orders" in page
        async with http.get(f"{base}/open_orders", auth=auth) as response:
            assert response.status == 200 and "SO-1" in await response.text()

        async def both_workers_online() -> bool:
            async with http.get(f"{base}/monitor", auth=auth) as response:
                page = await response.text()
            return all(worker_id_of(w.pid) in page for w in workers)

        await eventually(both_workers_online, timeout=30)

    codes = stack.stop()
    assert all(code == 0 for code in codes.values()), codes
    # JOBLOG_LOG_FORMAT=json (compose's): every line every service wrote is one JSON object, migrate's too.
    for name in stack.processes:
        records = [json.loads(line) for line in stack.log_lines(name)]
        assert records and all({"event", "level", "timestamp"} <= set(r) for r in records), name
    worker_records = [json.loads(line) for name in stack.processes if name.startswith("sync_worker") for line in stack.log_lines(name)]
    assert {r.get("run") for r in worker_records if r["event"] == "trigger accepted"} == {run["name"] for run in runs}


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


async def _finished_runs(http: aiohttp.ClientSession, base: str, auth: aiohttp.BasicAuth, count: int) -> list[dict[str, Any]]:
    """The newest runs, once `count` of them have finished."""

    async def finished() -> list[dict[str, Any]] | None:
        async with http.get(f"{base}/api/runs", auth=auth) as response:
            runs = (await response.json())["runs"]
        done = [run for run in runs if run["status"] in ("success", "error")]
        return done if len(done) >= count else None

    return await eventually(finished, timeout=60)


# The real compose stack on a Docker engine: tests/deploy/test_day.py (`make deploy-test`).
