"""Prototype, not service code: what the flush policy of RunContext.log costs per event.

The same 100k-event job as bench/worker.py, with RunContext as it is and with two bench-local
variants: a larger buffer (flush at 2,000 events or 0.25 s), and that plus flushing in a
background task so the job does not wait for the outbox COPY.

    .venv/bin/python -m bench.prototype_worker [events]
"""
from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import asyncpg

from bench.common import Servers, median, scratch
from bench.worker import jobs, timed
from services.contracts import StepLogged
from services.sync_worker.jobs.api import JobSpec, RunContext
from services.sync_worker.settings import WorkerSettings


class BiggerBuffer(RunContext):
    """Flush at 2,000 buffered events or 0.25 s instead of 200 or 0.05 s."""

    async def log(self, message: str, *, key: str | None = None, level: Any = "info",
                  conn: asyncpg.Connection | None = None, **data: Any) -> None:
        seq = self.next_seq()
        key = key or f"step-{seq}"
        self.current_step = key
        self.emit(StepLogged(run_id=self.run_id, name=self.name, job=self.job, seq=seq, key=key, message=message,
                             level=level, data=data or None))
        if conn is not None:
            await self.flush(conn)
        elif len(self._buffer) >= 2000 or time.monotonic() - self._last_flush > 0.25:
            await self.flush()


class BackgroundFlush(BiggerBuffer):
    """BiggerBuffer, and the COPY runs in a task while the job goes on (one flush in flight at a time)."""

    _pending: asyncio.Task[None] | None = None

    async def flush(self, conn: asyncpg.Connection | None = None) -> None:
        if self._pending is not None:
            await self._pending
            self._pending = None
        if conn is not None:
            await RunContext.flush(self, conn)
            return
        events, self._buffer = self._buffer, []
        self._last_flush = time.monotonic()

        async def write() -> None:
            holder = RunContext(run_id=self.run_id, name=self.name, job=self.job, settings=self.settings,
                                pool=self.pool, on_flush=self.on_flush)
            holder._buffer = events
            await RunContext.flush(holder)

        self._pending = asyncio.create_task(write())
        if any(not isinstance(e, StepLogged) for e in events):  # a run's start or end: wait for it, as now
            await self._pending
            self._pending = None

    async def drain(self) -> None:
        await self.flush()
        if self._pending is not None:
            await self._pending


def variant(spec: JobSpec, cls: type[RunContext]) -> JobSpec:
    async def job(ctx: RunContext) -> dict[str, Any] | None:
        ctx.__class__ = cls  # bench-local only: the same context with another log/flush policy
        result = await spec.function(ctx)
        if isinstance(ctx, BackgroundFlush):
            await ctx.drain()
        return result

    return JobSpec(spec.name, spec.title, job)


async def main(events: int) -> None:
    logging, silent = jobs(events)
    with Servers() as servers:
        async with scratch(servers, "wproto") as (dsn, stream, prefix):
            settings = WorkerSettings(database_url=dsn, nats_url=servers.nats_url, stream=stream, subject_prefix=prefix,
                                      worker_id="bench-worker", log_level="WARNING")
            async with asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool:
                base = median([await timed(silent, settings, pool) for _ in range(3)])
                for label, spec in (("as it is", logging), ("buffer 2000/0.25 s", variant(logging, BiggerBuffer)),
                                    ("+ background flush", variant(logging, BackgroundFlush))):
                    times = []
                    for _ in range(3):
                        times.append(await timed(spec, settings, pool))
                        rows = await pool.fetchval("SELECT count(*) FROM outbox")
                        await pool.execute("TRUNCATE outbox")
                    print(f"{label:22} {(median(times) - base) / events * 1e6:6.1f} µs per event added "
                          f"({rows:,} outbox rows per run)", flush=True)


if __name__ == "__main__":
    import structlog, logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
