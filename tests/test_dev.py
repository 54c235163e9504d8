"""`joblog dev` (what `make run` starts): the CLI of the same checkout reaches it, a taken port is no
traceback, and Ctrl-C stops it even while it starts."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from joblog.servers import port_open

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("JOBLOG_")}


@pytest.fixture
def checkout() -> Iterator[Path]:
    """A folder standing in for a checkout, outside pytest's tmp (which a concurrent pytest resets to 0700,
    locking out the unprivileged user the embedded Postgres runs as when we are root)."""
    path = Path(tempfile.mkdtemp(prefix="joblog-dev-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def start_dev(checkout: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "joblog", "dev", "--no-sync", *args, cwd=checkout, env=CLEAN_ENV,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )


async def read_until(process: asyncio.subprocess.Process, text: str, timeout: float = 180) -> str:
    seen = ""
    async def read() -> str:
        nonlocal seen
        assert process.stdout is not None
        while text not in seen:
            line = await process.stdout.readline()
            if not line:
                raise AssertionError(f"joblog dev ended before {text!r}:\n{seen}")
            seen += line.decode(errors="replace")
        return seen
    return await asyncio.wait_for(read(), timeout)


async def stop(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
    return await asyncio.wait_for(process.wait(), 120)


async def test_the_cli_of_the_checkout_reaches_the_stack_joblog_dev_started_and_a_taken_port_is_no_traceback(checkout):
    taken = None
    if not port_open("127.0.0.1", 8080):
        taken = socket.socket()
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 8080))
        taken.listen()
    dev = await start_dev(checkout)
    try:
        output = await read_until(dev, "Ctrl-C stops everything")
        assert "port 8080 is in use; the web takes" in output and "Traceback" not in output
        assert (checkout / ".joblog" / "stack.env").exists()

        # No JOBLOG_* variable: the command finds the stack from the checkout it runs in.
        trigger = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "joblog", "trigger", "sync_open_orders", "--wait", cwd=checkout, env=CLEAN_ENV,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(trigger.communicate(), 120)
        assert trigger.returncode == 0, err.decode()
        assert "succeeded" in out.decode()
    finally:
        assert await stop(dev) == 0
        if taken is not None:
            taken.close()
    assert not (checkout / ".joblog" / "stack.env").exists(), "a stopped stack leaves no stack file behind"


async def test_ctrl_c_while_joblog_dev_starts_stops_everything_it_started(checkout):
    dev = await start_dev(checkout)
    output = await read_until(dev, "joblog dev: starting")
    await asyncio.sleep(0.5)  # mid-start: the servers are coming up
    dev.send_signal(signal.SIGINT)
    code = await asyncio.wait_for(dev.wait(), 120)
    assert dev.stdout is not None
    output += (await dev.stdout.read()).decode(errors="replace")
    assert code == 130, output
    assert "joblog is running" not in output and "stopped" in output
    assert not (checkout / ".joblog" / "stack.env").exists()
    assert not (checkout / ".joblog" / "postgres" / "postmaster.pid").exists(), "Postgres left running"
