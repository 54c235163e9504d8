"""Peers of the sync worker: an ERP database, an orders API, worker processes."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from joblog.migrate import with_database
from tests.conftest import eventually

ERP_SCHEMA = """
CREATE TABLE sales_orders (
    so_number     text PRIMARY KEY,
    cust_code     text NOT NULL,
    cust_name     text,
    state         text NOT NULL,
    ordered_on    date NOT NULL,
    ship_by       date,
    site          text,
    currency_code text NOT NULL,
    amount        numeric(14, 2) NOT NULL,
    lines         integer NOT NULL,
    modified_at   timestamptz
)
"""

# An ERP names things its own way: the configurable query maps them onto our fields.
ERP_QUERY = """
SELECT so_number AS order_number, cust_code AS customer_code, cust_name AS customer_name,
       state AS status, ordered_on AS order_date, ship_by AS requested_ship_date, site AS warehouse,
       currency_code AS currency, amount AS total_amount, lines AS line_count, modified_at AS updated_at
FROM sales_orders WHERE state <> 'closed' ORDER BY so_number
"""


@pytest_asyncio.fixture
async def erp_dsn(postgres_dsn: str, database_url: str) -> AsyncIterator[str]:
    """A second, empty database on the same server, standing in for the ERP (dropped afterwards)."""
    name = f"{database_url.rsplit('/', 1)[1].split('?')[0]}_erp"
    admin = await asyncpg.connect(postgres_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(postgres_dsn, name)
    conn = await asyncpg.connect(dsn)
    await conn.execute(ERP_SCHEMA)
    await conn.close()
    yield dsn
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@dataclass
class OrdersApi:
    """A real HTTP server serving orders in pages linked by "next", with faults on request."""

    pages: list[list[dict[str, Any]]] = field(default_factory=list)
    fail_once: set[int] = field(default_factory=set)  # page numbers answering 503 the first time
    gates: dict[int, asyncio.Event] = field(default_factory=dict)  # a page waits for its event
    hits: list[int] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/api/open_orders?page=1"))

    async def handle(self, request: web.Request) -> web.Response:
        page = int(request.query.get("page", "1"))
        self.hits.append(page)
        if page in self.fail_once:
            self.fail_once.discard(page)
            return web.Response(status=503, text="ERP is busy")
        if page in self.gates:
            await self.gates[page].wait()
        if not 1 <= page <= len(self.pages):
            return web.json_response({"error": "no such page"}, status=404)
        following = f"open_orders?page={page + 1}" if page < len(self.pages) else None
        return web.json_response({"orders": self.pages[page - 1], "next": following})


@pytest_asyncio.fixture
async def orders_api() -> AsyncIterator[OrdersApi]:
    """The orders API on a free local port."""
    api = OrdersApi()
    app = web.Application()
    app.router.add_get("/api/open_orders", api.handle)
    api.server = TestServer(app, host="127.0.0.1")
    await api.server.start_server()
    yield api
    for gate in api.gates.values():
        gate.set()
    await api.server.close()


def paged(rows: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


class WorkerProcess:
    """`python -m joblog worker` as a separate OS process, its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.log = log_path.open("wb")
        full = {**os.environ, **env, "JOBLOG_LOG_FORMAT": "json"}
        self.process = subprocess.Popen([sys.executable, "-m", "joblog", "worker"], env=full, stdout=self.log, stderr=self.log)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def ready(self) -> None:
        async def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.output()}")
            return "worker ready" in self.output()

        await eventually(up, timeout=60)

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    async def exited(self, timeout: float = 60) -> int:
        async def gone() -> bool:
            return self.process.poll() is not None

        await eventually(gone, timeout=timeout)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def worker_processes(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes on this test's servers; whatever is left is killed at the end."""
    started: list[WorkerProcess] = []

    def start(**extra: str) -> WorkerProcess:
        worker = WorkerProcess({**env, **extra}, tmp_path / f"worker-{len(started) + 1}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


async def finished_runs(db: asyncpg.Connection, count: int, job: str | None = None) -> list[asyncpg.Record]:
    """Wait until count runs (of job) are finished in the projection; returns them oldest first."""

    async def done() -> list[asyncpg.Record] | None:
        rows = await db.fetch(
            "SELECT * FROM job_logs WHERE status IN ('success', 'error') AND ($1::text IS NULL OR job = $1) ORDER BY created_at, name",
            job,
        )
        return rows if len(rows) >= count else None

    return await eventually(done, timeout=60)


async def details_of(db: asyncpg.Connection, run_id: Any) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT key, message, level, data, first_seq, seq FROM job_log_details WHERE job_log_id = $1 ORDER BY first_seq", run_id
    )
