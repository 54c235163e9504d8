"""Cost curves: the same pages at growing sizes of the projection, in one run; the goal is flat.

    .venv/bin/python -m bench curves
    JOBLOG_BENCH_CURVE_SIZES=10000,100000,1000000 .venv/bin/python -m bench curves   # (the default: 10k,100k)

Each size is a cached web dataset (bench/web_data.py: 20 details per run, generate_series),
`python -m joblog web` on it, and wrk -t1 -c16 for a short while per page: the index (cached
per projection version), a run page over 2,000 random runs (mostly not cached), a job's runs
(`/?job=purge_closed_orders`, a tenth of the runs), the failed runs (`/?status=error`, a
fiftieth), the index's 100th page by keyset, a job's page with its charts, search for a rare and
a common text, and /metrics (runs per status from the projection's
counters, run_status_counts of migration 0013; a GROUP BY over every run until then). The slope is
log(p50 at the largest size / p50 at the smallest) / log(largest / smallest): 0 is flat, 1 grows
with the data.
"""
from __future__ import annotations

import asyncio
import math
import os
import tempfile
import uuid
from pathlib import Path

import asyncpg

from bench.common import Result, Servers, delete_streams, nats_server_version, service_env, service_process
from bench.web import CONNECTIONS, detail_script, wait_for_port, wrk
from bench.web_data import RUNS_AT_SCALE_1, ensure_dataset
from joblog.servers import free_port

SECONDS = 4
WARMUP = 1


def curve_sizes() -> list[int]:
    raw = os.environ.get("JOBLOG_BENCH_CURVE_SIZES", "10000,100000")
    return sorted({int(x) for x in raw.split(",") if x.strip()})


async def keyset_cursor(dsn: str, page: int, page_size: int = 50) -> str:
    """The `before` cursor of the index's page-th page, as the index's "older" link writes it."""
    from services.web.params import encode_cursor

    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT created_at, id FROM job_logs ORDER BY created_at DESC, id DESC OFFSET $1 LIMIT 1",
                                  page * page_size - 1)
    finally:
        await conn.close()
    return encode_cursor(row)  # type: ignore[arg-type]


async def measure(servers: Servers, runs: int) -> dict[str, dict[str, float]]:
    dsn, runs, details, built = await ensure_dataset(servers, at=runs / RUNS_AT_SCALE_1)
    tag = uuid.uuid4().hex[:8]
    stream, port = f"BENCH_CURVE_{tag}", free_port()
    env = service_env(servers.nats_url, dsn, stream, f"bench{tag}", JOBLOG_WEB_PORT=str(port))
    figures: dict[str, dict[str, float]] = {}
    try:
        cursor = await keyset_cursor(dsn, 100)
        with service_process("web", env), tempfile.TemporaryDirectory() as tmp:
            wait_for_port(port)
            base = f"http://127.0.0.1:{port}"
            script = detail_script(runs, Path(tmp))
            pages = {
                "index `/`": (base + "/", None),
                "run page `/runs/{name}` (random)": (base + "/runs/x", script),
                "a job's runs `/?job=purge_closed_orders`": (base + "/?job=purge_closed_orders", None),
                "failed runs `/?status=error`": (base + "/?status=error", None),
                "index page 100 (keyset)": (base + f"/?before={cursor}", None),
                "job page `/jobs/sync_open_orders` (charts)": (base + "/jobs/sync_open_orders", None),
                "search `/search?q=SO-104711` (rare)": (base + "/search?q=SO-104711", None),
                "search `/search?q=of+40000+orders` (common)": (base + "/search?q=of+40000+orders", None),
                "`/metrics`": (base + "/metrics", None),
            }
            for label, (url, lua) in pages.items():
                await asyncio.to_thread(wrk, url, WARMUP, lua)
                figures[label] = await asyncio.to_thread(wrk, url, SECONDS, lua)
    finally:
        await delete_streams(servers.nats_url, stream)
    figures["_"] = {"details": float(details), "built": built}
    return figures


async def curves(servers: Servers) -> tuple[list[Result], dict[str, float]]:
    sizes = curve_sizes()
    by_size = {n: await measure(servers, n) for n in sizes}
    server = await nats_server_version(servers.nats_url) + " (the web's live feed; pages read Postgres)"
    small, large = sizes[0], sizes[-1]
    results = []
    for label in [k for k in by_size[small] if k != "_"]:
        points = "; ".join(f"{n:,} runs: {by_size[n][label]['rps']:,.0f} req/s, p50 {by_size[n][label]['p50']:.1f} ms, "
                           f"p99 {by_size[n][label]['p99']:.1f} ms" for n in sizes)
        a, b = by_size[small][label]["p50"], by_size[large][label]["p50"]
        errors = sum(by_size[n][label]["errors"] for n in sizes)
        silent = [n for n in sizes if by_size[n][label]["requests"] == 0]  # nothing answered within wrk's timeout
        slope = math.log(b / a) / math.log(large / small) if a > 0 and b > 0 and large > small else math.inf
        results.append(Result(
            f"8. Cost curve: {label}", points, f"the same page at {small:,} runs",
            f"slope {slope:+.2f}" if not silent else f"no request answered at {', '.join(f'{n:,}' for n in silent)} runs",
            "flat (slope ~0)", abs(slope) < 0.2 and errors == 0 and not silent,
            f"JOBLOG_BENCH_CURVE_SIZES={','.join(map(str, sizes))} .venv/bin/python -m bench curves",
            [f"wrk -t1 -c{CONNECTIONS} -d{SECONDS}s after {WARMUP} s; 20 details per run; errors or non-2xx: {errors:.0f}"],
            {}, server,
        ))
    return results, {}
