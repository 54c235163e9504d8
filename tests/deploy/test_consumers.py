"""Other programs following the events: `joblog tail` and the example consumer of docs/examples/."""
from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from services.contracts import Subjects
from tests.conftest import eventually
from tests.factories import publish, run_events

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "failures_to_stdout.py"


class Process:
    """A child process whose stdout we read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert raw, f"process ended (code {await self.proc.wait()})"
        return raw.decode().rstrip("\n")

    async def lines(self, count: int) -> list[str]:
        return [await self.line() for _ in range(count)]


@pytest_asyncio.fixture
async def spawn() -> AsyncIterator[Any]:
    """Start child processes; all are terminated at the end of the test."""
    started: list[asyncio.subprocess.Process] = []

    async def start(*args: str, env: dict[str, str]) -> Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, env={"PATH": os.environ["PATH"], **env}, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        started.append(proc)
        return Process(proc)

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


def tail_env(nats_url: str, subjects: Subjects) -> dict[str, str]:
    return {"JOBLOG_NATS_URL": nats_url, "JOBLOG_STREAM": subjects.stream, "JOBLOG_SUBJECT_PREFIX": subjects.prefix,
            "JOBLOG_TIMEZONE": "UTC"}


async def test_tail_prints_one_readable_line_per_event_of_the_chosen_job(js, subjects, nats_url, spawn):
    wanted = run_events(job="sync_open_orders", steps=1, updates=1)
    await publish(js, subjects, run_events(job="other_job", fail=True))
    await publish(js, subjects, wanted)

    tail = await spawn("-m", "joblog", "tail", "sync_open_orders", "--all", "--count", str(len(wanted)),
                       env=tail_env(nats_url, subjects))
    lines = await tail.lines(len(wanted))

    assert lines == [
        "08:30:00.150 sync_open_orders 20261129083000 #1 created on w1 (manual)",
        "08:30:00.300 sync_open_orders 20261129083000 #2 started on host-a pid 101 (worker w1)",
        "08:30:00.450 sync_open_orders 20261129083000 #3 step [info] Step 0 done",
        "08:30:00.600 sync_open_orders 20261129083000 #4 step [info] Imported 100 orders",
        "08:30:00.750 sync_open_orders 20261129083000 #5 succeeded in 0.900 s (imported=100, created=3)",
    ]
    assert await asyncio.wait_for(tail.proc.wait(), 30) == 0


async def test_tail_json_follows_a_subject_wildcard_from_now_on(js, subjects, nats_url, spawn):
    await publish(js, subjects, run_events(name="20261129080000", fail=True))  # before tail started: not shown
    tail = await spawn("-m", "joblog", "tail", "--json", f"{subjects.prefix}.run.*.*.failed",
                       env=tail_env(nats_url, subjects))
    # The ordered consumer exists once tail is listening.
    await eventually(lambda: _consumers(js, subjects.stream))

    later = run_events(name="20261129090000", fail=True)
    await publish(js, subjects, later)

    assert json.loads(await tail.line()) == json.loads(later[-1].model_dump_json())


async def _consumers(js: Any, stream: str) -> int:
    return (await js.stream_info(stream)).state.consumer_count


async def test_the_example_consumer_prints_each_failure_once(js, subjects, nats_url, spawn):
    first = run_events(name="20261129080000", fail=True)
    await publish(js, subjects, first)
    await publish(js, subjects, first[-1:], msg_ids=False)  # a duplicate got into the stream
    await js.publish(f"{subjects.prefix}.run.sync_open_orders.20261129080000.failed", b'{"type": "run.exploded"}')

    consumer = await spawn(str(EXAMPLE), env={"NATS_URL": nats_url, "JOBLOG_STREAM": subjects.stream,
                                              "JOBLOG_SUBJECT_PREFIX": subjects.prefix, "CONSUMER": "example"})
    assert "20261129080000 failed at step progress: SourceError: ERP unreachable" in await consumer.line()

    second = run_events(name="20261129090000", fail=True)
    await publish(js, subjects, second)
    # The duplicate and the unknown type were skipped: the next line is the next failure.
    assert "run 20261129090000 failed" in await consumer.line()
