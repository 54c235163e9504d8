"""`joblog dev`: the whole stack on one machine, with nothing but Python installed.

NATS and Postgres come from pip wheels (data under .joblog/) unless JOBLOG_NATS_URL and
JOBLOG_DATABASE_URL name servers to use. The recorder, worker and web run as child
processes, exactly as in a deployment. Ctrl-C stops everything this command started, also
while it is still starting.

Where the servers are is written to .joblog/stack.env while the stack runs, so every other
`joblog` command run in this checkout (trigger, tail, rebuild ...) reaches this stack unless
JOBLOG_* variables say otherwise (services/contracts/settings.py, load_settings).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from joblog.servers import EmbeddedPostgres, NatsServer, ServerError, child_process_options, free_port, port_open
from joblog.migrate import with_database

SERVICES = ("recorder", "worker", "notifier", "web")
STACK_FILE = "stack.env"


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) while the stack was starting."""


def _preferred(port: int) -> int:
    return port if not port_open("127.0.0.1", port) else free_port()


def start_service(name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "joblog", name], env=env, **child_process_options())  # type: ignore[call-overload]


async def _wait_for_postgres(dsn: str, timeout: float = 60) -> None:
    import asyncpg

    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(dsn)
            await conn.close()
            return
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _prepare(database_url: str) -> None:
    import asyncpg

    from joblog.migrate import ensure_database, migrate

    await _wait_for_postgres(with_database(database_url, "postgres"))
    await ensure_database(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


def _wait_http(url: str, procs: list[subprocess.Popen[bytes]], stop: threading.Event, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop.is_set():
            raise Interrupted
        if any(p.poll() is not None for p in procs):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def _web_port(args: argparse.Namespace, env: dict[str, str]) -> int:
    """The port asked for, or 8080, or (8080 being taken and nothing asked) a free one."""
    asked = args.port or (int(env["JOBLOG_WEB_PORT"]) if env.get("JOBLOG_WEB_PORT", "").isdigit() else None)
    port = asked or 8080
    if port_open("127.0.0.1", port):
        if asked:
            raise SystemExit(f"joblog dev: port {port} is already in use; choose another with --port or JOBLOG_WEB_PORT")
        port = free_port()
        print(f"joblog dev: port 8080 is in use; the web takes {port} (choose with --port or JOBLOG_WEB_PORT)",
              file=sys.stderr, flush=True)
    return port


def write_stack_file(data: Path, env: dict[str, str]) -> Path:
    """Tell the other joblog commands of this checkout where this stack's servers are."""
    path = data / STACK_FILE
    path.write_text(
        f"# Written by `joblog dev` (pid {os.getpid()}) while it runs; removed when it stops.\n"
        f"JOBLOG_DEV_PID={os.getpid()}\n"
        f"JOBLOG_NATS_URL={env['JOBLOG_NATS_URL']}\n"
        f"JOBLOG_DATABASE_URL={env['JOBLOG_DATABASE_URL']}\n"
    )
    return path


def main(args: argparse.Namespace) -> int:
    data = Path(args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    servers: list[NatsServer | EmbeddedPostgres] = []
    children: list[subprocess.Popen[bytes]] = []
    stack_file: Path | None = None
    # Ctrl-C reaches the whole process group; we stop things in order ourselves, also mid-start.
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def check() -> None:
        if stop.is_set():
            raise Interrupted

    print("joblog dev: starting NATS, Postgres and the services (Ctrl-C stops them)", file=sys.stderr, flush=True)
    try:
        port = _web_port(args, env)
        if not env.get("JOBLOG_NATS_URL"):
            nats = NatsServer(data / "nats", _preferred(4322)).start()
            servers.append(nats)
            env["JOBLOG_NATS_URL"] = nats.url
        if not env.get("JOBLOG_DATABASE_URL"):
            pg = EmbeddedPostgres(data / "postgres", _preferred(54329)).start()
            servers.append(pg)
            env["JOBLOG_DATABASE_URL"] = with_database(pg.dsn, "joblog")
        check()
        env["JOBLOG_WEB_PORT"] = str(port)
        env["JOBLOG_WEB_HOST"] = "127.0.0.1"
        env.setdefault("JOBLOG_WORKER_ID", "dev-worker")
        os.environ.update({k: env[k] for k in ("JOBLOG_NATS_URL", "JOBLOG_DATABASE_URL")})
        asyncio.run(_prepare(env["JOBLOG_DATABASE_URL"]))
        check()
        for name in SERVICES:
            children.append(start_service(name, env))
        web_url = f"http://127.0.0.1:{port}"
        if not _wait_http(f"{web_url}/healthz", children, stop):
            print("joblog dev: a service failed to start; see the messages above", file=sys.stderr)
            return 1
        stack_file = write_stack_file(data, env)
        if not args.no_sync:
            from joblog.trigger import send_trigger
            from services.sync_worker.settings import WorkerSettings

            asyncio.run(send_trigger(WorkerSettings(), "sync_open_orders", "startup", requested_by="joblog dev"))
        open_note = "" if env.get("JOBLOG_ADMIN_PASSWORD") else " (open: no password, listening on 127.0.0.1 only)"
        print(
            f"\n  joblog is running{open_note}\n\n"
            f"  Web        {web_url}\n"
            f"  NATS       {env['JOBLOG_NATS_URL']}\n"
            f"  Postgres   {env['JOBLOG_DATABASE_URL']}\n\n"
            f"  In another terminal of this checkout, the CLI finds this stack:\n"
            f"    .venv/bin/joblog trigger sync_open_orders --wait\n"
            f"    .venv/bin/joblog tail\n\n"
            f"  Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stop.is_set() and all(p.poll() is None for p in children):
            stop.wait(0.5)
        return 0
    except Interrupted:
        return 130
    except ServerError as error:
        print(f"joblog dev: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        if stack_file is not None:
            stack_file.unlink(missing_ok=True)
        print("joblog dev: stopping…", file=sys.stderr, flush=True)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(40)
            except subprocess.TimeoutExpired:
                child.kill()
        for server in reversed(servers):
            server.stop()
        print("joblog dev: stopped", file=sys.stderr, flush=True)

