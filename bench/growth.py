"""The projection's throughput as its tables grow: the recorder projecting the same new runs into
the cost curves' datasets (10k, 100k, 1M runs; 20 details each), against raw pull+ack of the same
stream in the same run. The goal is flat: an event costs the same whatever the tables already hold.

    .venv/bin/python -m bench growth
    JOBLOG_BENCH_CURVE_SIZES=10000,100000,1000000 .venv/bin/python -m bench growth

Each size: a fresh stream of ~30,000 events (JOBLOG_BENCH_SCALE scales it) of realistic runs named
in 2031 (never a dataset's name), the raw consumer and then `python -m joblog recorder` as their
own processes on it (a durable consumer of its own), the tables checked exact, and the added runs
deleted again so the cached dataset keeps its size.
"""
from __future__ import annotations

import asyncio
import math
import subprocess
import time
import uuid
from datetime import datetime, timezone

import asyncpg
import nats

from bench.common import PYTHON, ROOT, Result, Servers, delete_streams, scale, server_of, service_env, service_process, wait_until
from bench.curves import curve_sizes
from bench.recorder import STEPS_PER_RUN, publish_all, run_events
from bench.web_data import RUNS_AT_SCALE_1, ensure_dataset
from services.contracts.subjects import Subjects, ensure_streams
from services.log_recorder.settings import RecorderSettings

START = datetime(2031, 1, 1, tzinfo=timezone.utc)  # after every dataset's runs (2024)
COMMAND = "JOBLOG_BENCH_CURVE_SIZES=10000,100000,1000000 .venv/bin/python -m bench growth"


async def applied(conn: asyncpg.Connection, consumer: str) -> int:
    return await conn.fetchval("SELECT COALESCE(sum(applied_events), 0)::bigint FROM projection_state WHERE consumer = $1",
                               consumer) or 0


async def measure(servers: Servers, size: int, total: int) -> dict[str, float]:
    dsn, runs, details, _ = await ensure_dataset(servers, at=size / RUNS_AT_SCALE_1)
    tag = uuid.uuid4().hex[:8]
    stream, prefix, consumer = f"BENCH_GROWTH_{tag}", f"bench{tag}", f"growth_{tag}"
    subjects = Subjects(prefix=prefix, stream=stream)
    count = max(1, total // (STEPS_PER_RUN + 3))
    messages = [m for i in range(count) for m in run_events(subjects, i, START)]
    nc = await nats.connect(servers.nats_url)
    conn = await asyncpg.connect(dsn)
    try:
        js = nc.jetstream(timeout=30)
        await ensure_streams(js, subjects)
        await publish_all(js, messages)
        batch = RecorderSettings.model_fields["recorder_batch_size"].default
        plain, ahead = map(float, (await asyncio.to_thread(
            subprocess.run, [PYTHON, "-m", "bench.raw_consumer", servers.nats_url, stream, str(len(messages)), str(batch)],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=900)).stdout.split())
        env = service_env(servers.nats_url, dsn, stream, prefix, JOBLOG_RECORDER_CONSUMER=consumer)
        with service_process("recorder", env):
            await wait_until(lambda: _more(conn, consumer, 0), timeout=60, interval=0.01)
            first_at, first = time.perf_counter(), await applied(conn, consumer)
            done = await wait_until(lambda: _more(conn, consumer, len(messages) - 1), timeout=900, interval=0.02)
            elapsed = time.perf_counter() - first_at
            final = await applied(conn, consumer)
        added = await conn.fetchval("SELECT count(*) FROM job_logs WHERE name >= '2031' AND status = 'success'")
        return {"rate": (final - first) / elapsed if elapsed > 0 else 0.0, "limit": max(plain, ahead),
                "exact": float(done and added == count), "runs": float(runs), "details": float(details),
                "events": float(len(messages)), "server": 0.0}
    finally:
        # Give the dataset back its exact size (its row counts are its cache check).
        await conn.execute("DELETE FROM job_logs WHERE name >= '2031'")
        await conn.execute("DELETE FROM projection_state WHERE consumer = $1", consumer)
        await conn.close()
        await nc.close()
        await delete_streams(servers.nats_url, stream)


async def _more(conn: asyncpg.Connection, consumer: str, than: int) -> bool:
    return await applied(conn, consumer) > than


async def growth(servers: Servers) -> tuple[list[Result], dict[str, float]]:
    sizes = curve_sizes()
    total = max(3_000, int(30_000 * scale()))
    by_size = {n: await measure(servers, n, total) for n in sizes}
    nc = await nats.connect(servers.nats_url)
    server = server_of(nc)
    await nc.close()
    small, large = sizes[0], sizes[-1]
    points = "; ".join(f"{n:,} runs ({by_size[n]['details']:,.0f} details): {by_size[n]['rate']:,.0f} events/s, "
                       f"{by_size[n]['rate'] / by_size[n]['limit']:.2f} of raw pull+ack" for n in sizes)
    # Flat means the same share of the raw rate at every size (the raw rate itself is the machine's mood).
    a = by_size[small]["rate"] / by_size[small]["limit"]
    b = by_size[large]["rate"] / by_size[large]["limit"]
    slope = -math.log(b / a) / math.log(large / small) if a > 0 and b > 0 and large > small else math.inf
    exact = all(by_size[n]["exact"] for n in sizes)
    return [Result(
        "10. Projection throughput as the tables grow", points, f"raw pull+ack of the same stream at each size; "
        f"the share at {small:,} runs", f"slope {slope:+.2f}", "flat (slope ~0)", abs(slope) < 0.2 and exact, COMMAND,
        [f"{int(by_size[small]['events']):,} events of realistic runs per size into the cached datasets; every run "
         f"projected exactly: {exact}; positive slope = slower per event as the tables grow"],
        {"flat": abs(slope) < 0.2, "exact": exact}, server,
    )], {}
