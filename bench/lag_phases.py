"""Where an event's projection lag goes: the recorder's phases timed at a steady 2,000 events/s.

The real Recorder, in-process, with each phase timed by a bench-local subclass: waiting for the
first message of a batch, fetching the rest, reducing, writing and committing, acking.

    .venv/bin/python -m bench.lag_phases

(A --compare mode against a pipelined prototype recorder lived here; the prototype was a finished
experiment and is in git history, see docs/performance.md.)
"""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import nats

from bench.common import Servers, percentile, scratch
from bench.recorder import steady_publish
from services.contracts import Subjects
from services.contracts.subjects import ensure_streams
from services.log_recorder.main import Recorder
from services.log_recorder.settings import RecorderSettings

PHASES: dict[str, list[float]] = {"first message": [], "rest of batch": [], "reduce": [], "write+commit+ack": [], "batch size": []}


class TimedRecorder(Recorder):
    async def fetch(self, sub: Any) -> list:  # type: ignore[type-arg]
        began = time.perf_counter()
        try:
            messages = await sub.fetch(1, timeout=1)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            return []
        got = time.perf_counter()
        PHASES["first message"].append((got - began) * 1000)
        try:
            messages += await sub.fetch(self.settings.recorder_batch_size - 1, timeout=0.01)
        except Exception:
            pass
        PHASES["rest of batch"].append((time.perf_counter() - got) * 1000)
        PHASES["batch size"].append(len(messages))
        return messages

    async def apply(self, messages: list, stopping: asyncio.Event, reduced: Any = None) -> None:  # type: ignore[type-arg]
        began = time.perf_counter()
        if reduced is None:
            from services.log_recorder.main import reduce

            reduced = reduce(messages, self.settings)
            PHASES["reduce"].append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
        await super().apply(messages, stopping, reduced)
        PHASES["write+commit+ack"].append((time.perf_counter() - began) * 1000)


async def main() -> None:
    with Servers() as servers:
        async with scratch(servers, "phases") as (dsn, stream, prefix):
            subjects = Subjects(prefix=prefix, stream=stream)
            settings = RecorderSettings(database_url=dsn, nats_url=servers.nats_url, stream=stream, subject_prefix=prefix,
                                        log_level="WARNING")
            nc = await nats.connect(servers.nats_url)
            js = nc.jetstream(timeout=30)
            await ensure_streams(js, subjects)
            async with asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool:
                recorder = TimedRecorder(settings, pool, nc)
                stopping = asyncio.Event()
                task = asyncio.create_task(recorder.consume(stopping))
                run_ids = [uuid.uuid4() for _ in range(20)]
                await steady_publish(js, subjects, run_ids, 2000, 8.0, {}, 0)
                await asyncio.sleep(1)
                stopping.set()
                await task
            await nc.close()
    for phase, values in PHASES.items():
        if values:
            unit = "" if phase == "batch size" else " ms"
            print(f"{phase:18} n={len(values):5}  p50 {percentile(values, 50):7.2f}{unit}  p99 {percentile(values, 99):7.2f}{unit}  max {max(values):7.2f}{unit}")


if __name__ == "__main__":
    asyncio.run(main())
