"""Where an event's projection lag goes: the recorder's phases timed at a steady 2,000 events/s.

The real Recorder, in-process, with each phase timed by a bench-local subclass: each fetch (waiting
for the first message, then the rest JetStream says are waiting) and its size, how long the oldest
message of a batch waited for the batch in flight, writing + committing + acking, the batch size.

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

PHASES: dict[str, list[float]] = {
    "fetch call": [], "gather call (a batch in flight)": [], "messages per fetch": [], "waited for batch in flight": [], "write+commit+ack": [], "batch size": [],
}


class TimedRecorder(Recorder):
    """The real recorder; each fetch and each batch timed."""

    fetched_at: dict[int, float] = {}

    async def fetch(self, sub: Any, room: int | None = None) -> list:  # type: ignore[type-arg]
        began = time.perf_counter()
        return self._timed(began, await super().fetch(sub, room), "fetch call")

    async def gather(self, sub: Any, room: int) -> list:  # type: ignore[type-arg]
        began = time.perf_counter()
        return self._timed(began, await super().gather(sub, room), "gather call (a batch in flight)")

    def _timed(self, began: float, messages: list, phase: str) -> list:  # type: ignore[type-arg]
        now = time.perf_counter()
        if messages:
            PHASES[phase].append((now - began) * 1000)
            PHASES["messages per fetch"].append(len(messages))
            for message in messages:
                self.fetched_at[id(message)] = now
        return messages

    async def apply(self, messages: list, stopping: asyncio.Event, reduced: Any = None) -> None:  # type: ignore[type-arg]
        began = time.perf_counter()
        first = min((self.fetched_at.pop(id(m), began) for m in messages), default=began)
        PHASES["waited for batch in flight"].append((began - first) * 1000)
        PHASES["batch size"].append(len(messages))
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
            unit = "" if phase in ("batch size", "messages per fetch") else " ms"
            print(f"{phase:32} n={len(values):5}  p50 {percentile(values, 50):7.2f}{unit}  p99 {percentile(values, 99):7.2f}{unit}  max {max(values):7.2f}{unit}")


if __name__ == "__main__":
    asyncio.run(main())
