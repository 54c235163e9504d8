"""JOBLOG_WEB_PROCESSES: several web processes on one port, under a supervisor (`python -m joblog web`).

Each test starts the real command as a subprocess over its own Postgres database and NATS names, and
talks to it over fresh connections (one per request), so the kernel spreads them over the processes.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio

from joblog.servers import free_port, port_open
from tests.conftest import eventually
from tests.factories import publish, run_events
from tests.web.test_accounts import VIEWER, basic, users_file
from tests.web.test_live import hello, sse_events

FAILURES_ALLOWED = 3


class Web:
    """`python -m joblog web` with two processes; its JSON log lines (every process's) in a file."""

    def __init__(self, env: dict[str, str], log: Path, port: int) -> None:
        self.port, self.log = port, log
        with log.open("wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "joblog", "web"], env=env, stdout=out, stderr=out)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    async def started(self) -> None:
        async def listening() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            return any(line["event"] == "web listening" for line in self.lines())

        await eventually(listening)

    async def exited(self) -> int:
        return await asyncio.to_thread(self.process.wait, 120)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def web_env(env: dict[str, str], port: int, **extra: str) -> dict[str, str]:
    return {**os.environ, **env, "JOBLOG_WEB_PORT": str(port), "JOBLOG_WEB_PROCESSES": "2", "JOBLOG_LOG_FORMAT": "json",
            "JOBLOG_WEB_LOGIN_FAILURES": str(FAILURES_ALLOWED), **extra}


@pytest_asyncio.fixture
async def start_web(env: dict[str, str], js: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Web]]]:
    """Start the web (two processes, a users file) over this test's servers; it is stopped at the end."""
    started: list[Web] = []

    async def start(**extra: str) -> Web:
        port = free_port()
        web = Web(web_env(env, port, JOBLOG_WEB_USERS_FILE=str(users_file(tmp_path)), **extra), tmp_path / f"web-{port}.log", port)
        started.append(web)
        await web.started()
        return web

    yield start
    for web in started:
        await asyncio.to_thread(web.stop)


@pytest_asyncio.fixture
async def fresh() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that opens a new connection for every request."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def answering(session: aiohttp.ClientSession, web: Web, requests: int = 40) -> set[int]:
    """The processes that answered /healthz over this many fresh connections."""
    pids = set()
    for _ in range(requests):
        async with session.get(web.url + "/healthz") as response:
            assert response.status == 200
            pids.add((await response.json())["process"])
    return pids


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_a_bad_number_of_web_processes_stops_the_web_with_one_line_naming_it(value):
    result = subprocess.run([sys.executable, "-m", "joblog", "web"], env={**os.environ, "JOBLOG_WEB_PROCESSES": value},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("joblog: invalid setting JOBLOG_WEB_PROCESSES:")


async def test_both_processes_serve_the_pages_and_the_live_feed(start_web, fresh, project, js, subjects):
    await project(run_events(name="20261129083000"))
    web = await start_web()

    async def both() -> set[int]:
        pids = await answering(fresh, web)
        return pids if len(pids) == 2 else set()

    pids = await eventually(both)
    assert {parent_of(pid) for pid in pids} == {web.process.pid}  # the supervisor's own processes

    for _ in range(10):
        async with fresh.get(web.url + "/runs/20261129083000", headers=VIEWER) as page:
            assert page.status == 200 and "20261129083000" in await page.text()

    # Several streams over fresh connections (on either process): each one carries the new run.
    feeds = [await fresh.get(web.url + "/events/runs", headers=VIEWER) for _ in range(6)]
    for feed in feeds:
        await hello(feed)
    await publish(js, subjects, run_events(name="20261129090000")[:1])
    for feed in feeds:
        [replayed, (kind, update)] = await sse_events(feed, 2)  # the run the page shows, then the new one
        assert replayed[1]["name"] == "20261129083000"
        assert kind == "run" and update["name"] == "20261129090000"
        feed.close()


def healthz_answers(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("joblog_web_requests_total{") and 'route="/healthz"' in line)


async def test_metrics_count_the_requests_of_every_process_whichever_answers_the_scrape(start_web, fresh, project):
    await project(run_events(name="20261129083000"))
    web = await start_web()
    answered = 0
    for _ in range(50):  # until both processes answered some of them
        answered += 20
        if len(await answering(fresh, web, 20)) == 2:
            break
    else:
        raise AssertionError("one process answered 1,000 fresh connections")

    for _ in range(10):  # each scrape on a fresh connection, so on either process
        async with fresh.get(web.url + "/metrics", headers=VIEWER) as response:
            assert response.status == 200
            metrics = await response.text()
        assert healthz_answers(metrics) >= answered
        assert 'joblog_runs{status="success"} 1.0' in metrics  # a gauge set from Postgres: once, not once per process


async def test_the_sign_in_failure_limit_holds_for_the_web_as_a_whole(start_web, fresh, db):
    web = await start_web()
    for i in range(FAILURES_ALLOWED):
        async with fresh.get(web.url + "/", headers=basic("vera", f"guess {i}")) as response:
            assert response.status == 401
    assert await db.fetchval("SELECT count(*) FROM sign_in_failures") == FAILURES_ALLOWED

    for i in range(10):  # over fresh connections: whichever process each lands on, it is refused unchecked
        async with fresh.get(web.url + "/", headers=basic("vera", f"more {i}")) as response:
            assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
    async with fresh.get(web.url + "/", headers=VIEWER) as response:
        assert response.status == 429  # the right password too, from this address, until the window passes
    assert await db.fetchval("SELECT count(*) FROM sign_in_failures") == FAILURES_ALLOWED


async def test_a_killed_process_is_replaced_and_the_web_goes_on_answering(start_web, fresh):
    web = await start_web()

    async def both() -> set[int]:
        pids = await answering(fresh, web)
        return pids if len(pids) == 2 else set()

    killed, kept = sorted(await eventually(both))
    os.kill(killed, signal.SIGKILL)

    async def replaced() -> set[int]:
        try:
            pids = await answering(fresh, web)
        except aiohttp.ClientError:
            return set()  # a connection the killed process had accepted
        return pids if len(pids) == 2 and killed not in pids else set()

    kept_and_new = await eventually(replaced)
    assert kept in kept_and_new
    [died] = [line for line in web.lines() if line["event"] == "web process died; starting another"]
    assert died["pid"] == killed and died["exit_code"] == -signal.SIGKILL and died["level"] == "warning"
    assert not alive(killed) or parent_of(killed) != web.process.pid


async def test_sigterm_stops_every_process_gracefully_and_the_supervisor_exits_0(start_web, fresh):
    web = await start_web()

    async def both() -> set[int]:
        pids = await answering(fresh, web)
        return pids if len(pids) == 2 else set()

    pids = await eventually(both)
    web.process.send_signal(signal.SIGTERM)
    assert await web.exited() == 0
    assert not any(alive(pid) for pid in pids)
    assert not port_open("127.0.0.1", web.port)
    events = [line["event"] for line in web.lines()]
    assert "web stopping" in events and events[-1] == "web stopped"
    assert not [line for line in web.lines() if line["level"] in ("error", "critical")]


@pytest.mark.parametrize("trouble", ["port taken", "postgres unreachable"])
async def test_processes_that_cannot_start_stop_the_web_with_one_line_saying_why(env, js, tmp_path, trouble):
    port = free_port()
    extra = {"JOBLOG_WEB_USERS_FILE": str(users_file(tmp_path))}
    taken = socket.socket()
    if trouble == "port taken":
        taken.bind(("127.0.0.1", port))
        taken.listen()
    else:
        extra["JOBLOG_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    try:
        web = Web(web_env(env, port, **extra), tmp_path / "web.log", port)
        code = await web.exited()
    finally:
        taken.close()
    assert code == 1
    [line] = web.lines()  # JSON lines only: no traceback
    assert line["level"] == "error" and line["event"] == "the web cannot start" and line["port"] == port
    assert ("address already in use" if trouble == "port taken" else "Connect call failed") in line["reason"]


async def test_replacements_that_keep_failing_at_start_stop_the_web_with_one_line(start_web, fresh, postgres_dsn, database_url):
    web = await start_web()

    async def both() -> set[int]:
        pids = await answering(fresh, web)
        return pids if len(pids) == 2 else set()

    killed, _ = sorted(await eventually(both))
    admin = await asyncpg.connect(postgres_dsn)
    await admin.execute(f'DROP DATABASE "{database_url.rsplit("/", 1)[1]}" WITH (FORCE)')  # no replacement can start
    await admin.close()
    os.kill(killed, signal.SIGKILL)

    assert await web.exited() == 1
    lines = web.lines()
    retried = [line for line in lines if line["event"] == "web process failed at start; starting another"]
    [gave_up] = [line for line in lines if line["level"] == "error"]
    assert len(retried) == 2 and all("does not exist" in line["reason"] for line in retried)
    assert gave_up["event"] == "web processes keep failing at start: stopping the web" and gave_up["failures_in_a_row"] == 3
    assert "does not exist" in gave_up["reason"] and not port_open("127.0.0.1", web.port)
