"""Sync benchmark: SyncOpenOrdersJob on 100k orders against a raw COPY of the same rows.

It runs the worker helper's bench/sync_100k.py as its own process (so its peak RSS is the worker's
alone) against a scratch database on the same Postgres, and reads its figures.

    .venv/bin/python -m bench sync
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess

from bench.common import PYTHON, ROOT, Result, Servers, scale


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
    rss = float(re.search(r"peak RSS: ([\d.]+) MB", out)[1])  # type: ignore[index]
    ratio = first / copy
    return [Result(
        "4. Sync of 100k orders", f"{first:.2f} s ({orders / first:,.0f} orders/s); unchanged re-sync {second:.2f} s",
        f"raw COPY of the same rows {copy:.2f} s", f"{ratio:.1f}x (re-sync {second / copy:.1f}x)", "<= 3x the COPY time",
        ratio <= 3, f".venv/bin/python bench/sync_100k.py --orders {orders}  (JOBLOG_DATABASE_URL=<admin DSN>)",
        [f"{orders:,} orders from CSV, the real job (validate, stage, upsert, close, events to the outbox); NATS not involved"],
    )], {"worker (sync)": rss}
