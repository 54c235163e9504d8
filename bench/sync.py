"""Sync benchmark: SyncOpenOrdersJob on 100k orders against a raw COPY of the same rows.

The time comes from the worker helper's bench/sync_100k.py, run as its own process against a
scratch database on the same Postgres. The memory figure comes from a real `python -m joblog worker`
process that runs the same 100k-order sync from a trigger, with its relay publishing to NATS.

    .venv/bin/python -m bench sync
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import tempfile
from pathlib import Path

import nats

from bench.common import PYTHON, ROOT, Result, Servers, peak_rss_mb, scale, scratch, server_of, service_env, service_process


def _seconds(pattern: str, out: str) -> float:
    match = re.search(pattern + r"\s+([\d.]+) s", out)
    if not match:
        raise RuntimeError(f"bench/sync_100k.py printed no {pattern!r}:\n{out[-2000:]}")
    return float(match[1])


async def sync(servers: Servers) -> tuple[list[Result], dict[str, float]]:
    orders = max(1000, int(100_000 * scale()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBLOG_")}
    env["JOBLOG_DATABASE_URL"] = servers.admin_dsn
    command = [PYTHON, "bench/sync_100k.py", "--orders", str(orders)]
    done = await asyncio.to_thread(subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    if done.returncode:
        raise RuntimeError(f"bench/sync_100k.py failed ({done.returncode}):\n{out[-2000:]}")
    first, second = _seconds(r"sync, all created:", out), _seconds(r"sync, all unchanged:", out)
    copy = _seconds(r"raw COPY of the file:", out)
    shaped = _seconds(r"COPY into a table like open_orders:", out)
    ratio = first / shaped
    rss, worker_seconds, server = await worker_process_rss(servers, orders)
    return [Result(
        f"4. Sync ({orders:,} orders)", f"{first:.2f} s ({orders / first:,.0f} orders/s); unchanged re-sync {second:.2f} s",
        f"COPY of the same rows into a table shaped and indexed like open_orders {shaped:.2f} s (into an unindexed table {copy:.2f} s)",
        f"{ratio:.1f}x (re-sync {second / shaped:.1f}x; {first / copy:.1f}x the unindexed COPY)", "<= 1.5x the open_orders-like COPY",
        ratio <= 1.5, f".venv/bin/python bench/sync_100k.py --orders {orders}  (JOBLOG_DATABASE_URL=<admin DSN>)",
        [f"{orders:,} orders from CSV, the real job (validate, stage, upsert, close, events to the outbox); NATS not involved",
         f"the same sync in a `python -m joblog worker` process, from trigger to run.succeeded in NATS ({server}): {worker_seconds:.1f} s"],
        {}, f"no NATS in the figure; the worker-process note: {server}",
    )], {"worker (sync)": rss}


async def worker_process_rss(servers: Servers, orders: int) -> tuple[float, float, str]:
    """Peak RSS of a worker process that syncs the orders (trigger -> run.succeeded on the stream), and its seconds."""
    import time

    from joblog.trigger import send_trigger
    from services.sync_worker.settings import WorkerSettings
    from services.sync_worker.sources.sample import generate_orders, write_csv

    with tempfile.TemporaryDirectory(prefix="joblog-bench-sync-") as tmp:
        csv_path = Path(tmp) / "orders.csv"
        write_csv(csv_path, generate_orders(orders))
        async with scratch(servers, "wsync") as (dsn, stream, prefix):
            env = service_env(servers.nats_url, dsn, stream, prefix, JOBLOG_ORDERS_SOURCE="csv",
                              JOBLOG_ORDERS_CSV_PATH=str(csv_path), JOBLOG_WORKER_ID="bench-worker")
            settings = WorkerSettings(nats_url=servers.nats_url, database_url=dsn, stream=stream, subject_prefix=prefix)
            nc = await nats.connect(servers.nats_url)
            server = server_of(nc)
            try:
                ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

                async def on_end(message) -> None:  # type: ignore[no-untyped-def]
                    if not ended.done():
                        ended.set_result(message.subject)

                # The run's end as it reaches NATS, so the relay's work is part of the load.
                sub = await nc.subscribe(f"{prefix}.run.sync_open_orders.*.succeeded", cb=on_end)
                failed = await nc.subscribe(f"{prefix}.run.sync_open_orders.*.failed", cb=on_end)
                with service_process("worker", env) as process:
                    began = time.perf_counter()
                    await send_trigger(settings, "sync_open_orders", "cli", requested_by="bench")  # creates the streams
                    subject = await asyncio.wait_for(ended, timeout=600)
                    seconds = time.perf_counter() - began
                    rss = peak_rss_mb(process.pid)
                    await sub.unsubscribe()
                    await failed.unsubscribe()
                if not subject.endswith(".succeeded"):
                    raise RuntimeError(f"the worker's sync ended with {subject}")
            finally:
                await nc.close()
    return rss, seconds, server
