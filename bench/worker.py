"""Worker overhead: a job that logs 100k step events, against the same job without logging.

Measured through the job API (create_run + execute_run, as the worker runs a job) until every event
is committed to the outbox; the relay to NATS is not part of the figure (it runs concurrently in a
real worker and does not block the job).

    .venv/bin/python -m bench worker_overhead
"""
from __future__ import annotations

import time
from typing import Any

import asyncpg

from bench.common import Result, Servers, median, scale, scratch
from services.sync_worker.jobs.api import JobSpec, RunContext, create_run, execute_run
from services.sync_worker.settings import WorkerSettings

REPEATS = 3


def jobs(events: int) -> tuple[JobSpec, JobSpec]:
    async def logging(ctx: RunContext) -> dict[str, Any]:
        for i in range(events):
            message = f"Processed order SO-{i:07d} ({i * 100 // events}%)"
            await ctx.log(message, key=f"step-{i % 1000}")
        return {"events": events}

    async def silent(ctx: RunContext) -> dict[str, Any]:
        kept = ""
        for i in range(events):
            message = f"Processed order SO-{i:07d} ({i * 100 // events}%)"
            kept = message  # the same work, minus the log call
        return {"events": events, "last": kept[:1]}

    return JobSpec("bench_logging", "Logs every step", logging), JobSpec("bench_silent", "Logs nothing", silent)


async def timed(spec: JobSpec, settings: WorkerSettings, pool: asyncpg.Pool) -> float:
    began = time.perf_counter()
    ctx = await create_run(spec, settings, pool, trigger="manual")
    if not await execute_run(spec, ctx):
        raise RuntimeError(f"{spec.name} failed")
    return time.perf_counter() - began


async def worker_overhead(servers: Servers) -> tuple[list[Result], dict[str, float]]:
    from services.sync_worker.outbox import StepEncoder

    events = max(1000, int(100_000 * scale()))
    logging, silent = jobs(events)
    encoder_row = StepEncoder.row
    async with scratch(servers, "wrk") as (dsn, stream, prefix):
        settings = WorkerSettings(database_url=dsn, nats_url=servers.nats_url, stream=stream, subject_prefix=prefix,
                                  worker_id="bench-worker")
        async with asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool:
            with_log, without, model = [], [], []
            for _ in range(REPEATS):
                without.append(await timed(silent, settings, pool))
                with_log.append(await timed(logging, settings, pool))
                # The same, each event through the contract model (the path before the encoder), same run.
                StepEncoder.row = lambda *_: None  # type: ignore[assignment,method-assign]
                try:
                    model.append(await timed(logging, settings, pool))
                finally:
                    StepEncoder.row = encoder_row  # type: ignore[method-assign]
                await pool.execute("TRUNCATE outbox")
    added_us = (median(with_log) - median(without)) / events * 1e6
    model_us = (median(model) - median(without)) / events * 1e6
    return [Result(
        "5. Worker logging overhead", f"{added_us:.1f} µs per event added ({events / median(with_log):,.0f} events/s)",
        f"same job without logging {median(without) * 1e3:.0f} ms", f"{median(with_log) / median(without):.0f}x the silent job",
        "< 15 µs per event", added_us < 15, "JOBLOG_BENCH_SCALE=1 .venv/bin/python -m bench worker_overhead",
        [f"{events:,} ctx.log calls; median of {REPEATS}; through the outbox commit (relay/NATS not included); "
         f"logging job {median(with_log):.2f} s; the same with every event built as a StepLogged model and dumped "
         f"(the path before the encoder) {model_us:.1f} µs per event, same run"], {}, "no NATS in this figure (the outbox commit in Postgres)",
    )], {}
