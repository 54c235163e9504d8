"""The web benchmark's dataset: 1,000,000 runs and 20,000,000 details (times JOBLOG_BENCH_SCALE).

Generated with generate_series straight into job_logs/job_log_details of a dedicated database,
joblog_bench_web2, which is kept between runs: rebuilding it takes minutes, and a bench_dataset
row (with a count check) says what is in it. Each run's details are written together, run after
run (as workers write them), so the newest ids hold the newest runs' messages. (Until 2 Dec 2026 the
dataset was written step-major, every run's step 1, then every run's step 2, ..., in
joblog_bench_web: a different dataset, hence the new database name, so a branch benchmarking
the old one never rebuilds this one or the reverse.) The indexes of job_log_details are dropped during the
load and rebuilt after, which is several times faster than maintaining them row by row.

    .venv/bin/python -m bench.web_data            # build (or confirm) the cached dataset
    JOBLOG_BENCH_WEB_SCALE=0.1 ...                # 100k runs / 2M details, in joblog_bench_web_0_1
"""
from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime, timezone

import asyncpg

from bench.common import Servers, scale
from joblog.migrate import migrate

DATABASE = "joblog_bench_web2"  # 2: run-major details (see above)
RUNS_AT_SCALE_1 = 1_000_000
DETAILS_PER_RUN = 20
BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)
CHUNK = 50_000  # runs per INSERT of details

# Run i (1-based) gets a deterministic uuid and the name of second i after BASE, so the details
# and the load generator can name it without a lookup.
RUN_ID = "('00000000-0000-4000-8000-' || lpad(to_hex({i}), 12, '0'))::uuid"
NAME = "to_char(($1::timestamptz + make_interval(secs => {i})) AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS')"

INSERT_RUNS = f"""
INSERT INTO job_logs (id, name, job, status, trigger, requested_by, worker_id, host, created_at, updated_at,
                      started_at, finished_at, duration_ms, stats, error_class, error_message, failed_step,
                      last_seq, terminal_seq)
SELECT {RUN_ID.format(i="i")}, {NAME.format(i="i")},
       CASE WHEN i % 10 = 0 THEN 'purge_closed_orders' ELSE 'sync_open_orders' END,
       CASE WHEN i % 50 = 0 THEN 'error' ELSE 'success' END,
       'schedule', NULL, 'bench-worker', 'bench-host',
       $1::timestamptz + make_interval(secs => i), $1::timestamptz + make_interval(secs => i + 0.9),
       $1::timestamptz + make_interval(secs => i + 0.01), $1::timestamptz + make_interval(secs => i + 0.9),
       890, jsonb_build_object('fetched', 40000, 'inserted', i % 97, 'updated', i % 1013, 'closed', i % 7),
       CASE WHEN i % 50 = 0 THEN 'SourceUnavailable' END,
       CASE WHEN i % 50 = 0 THEN 'the ERP did not answer within 30 s' END,
       CASE WHEN i % 50 = 0 THEN 'step-{DETAILS_PER_RUN}' END,
       $3::int + 3, $3::int + 3
FROM generate_series(1, $2::int) AS i
"""

INSERT_DETAILS = f"""
INSERT INTO job_log_details (job_log_id, key, message, level, data, first_seq, seq, created_at, updated_at)
SELECT {RUN_ID.format(i="i")}, 'step-' || k,
       'Upserted ' || (k * 2000) || ' of 40000 orders (' || (k * 5) || '%) from source sample, batch ' || k,
       CASE WHEN i % 50 = 0 AND k = $4 THEN 'error' ELSE 'info' END,
       CASE WHEN k % 5 = 0 THEN jsonb_build_object('done', k * 2000, 'total', 40000) END,
       k + 2, k + 2,
       $1::timestamptz + make_interval(secs => i + k * 0.04), $1::timestamptz + make_interval(secs => i + k * 0.04)
FROM generate_series($2::int, $3::int) AS i, generate_series(1, $4::int) AS k
ORDER BY i, k
"""

META = """
CREATE TABLE IF NOT EXISTS bench_dataset (runs integer NOT NULL, details bigint NOT NULL, built_at timestamptz NOT NULL DEFAULT now(), seconds real)
"""


def run_name(i: int) -> str:
    """The name run i got in the dataset."""
    from datetime import timedelta

    return (BASE + timedelta(seconds=i)).strftime("%Y%m%d%H%M%S")


def web_scale() -> float:
    """JOBLOG_BENCH_WEB_SCALE if set, else JOBLOG_BENCH_SCALE."""
    return float(os.environ.get("JOBLOG_BENCH_WEB_SCALE") or scale())


def database(at: float | None = None) -> str:
    """joblog_bench_web2 at full size; a quicker scale gets its own, so it never wipes the big one."""
    at = web_scale() if at is None else at
    return DATABASE if at == 1 else f"{DATABASE}_{str(at).replace('.', '_')}"


def sizes(at: float | None = None) -> tuple[int, int]:
    runs = max(1000, int(RUNS_AT_SCALE_1 * (web_scale() if at is None else at)))
    return runs, runs * DETAILS_PER_RUN


async def cached(conn: asyncpg.Connection, runs: int, details: int) -> bool:
    """True if the database already holds exactly this dataset (checked by count, not trusted blindly)."""
    if not await conn.fetchval("SELECT to_regclass('bench_dataset') IS NOT NULL"):
        return False
    meta = await conn.fetchrow("SELECT runs, details FROM bench_dataset ORDER BY built_at DESC LIMIT 1")
    if meta is None or (meta["runs"], meta["details"]) != (runs, details):
        return False
    if await conn.fetchval("SELECT count(*) FROM job_logs") != runs:
        return False
    # An exact count of 20M rows takes seconds; the planner's estimate catches a half-built table.
    estimate = await conn.fetchval("SELECT reltuples::bigint FROM pg_class WHERE relname = 'job_log_details'")
    return abs(estimate - details) <= details * 0.05


async def ensure_dataset(servers: Servers, progress=print, at: float | None = None) -> tuple[str, int, int, float]:  # type: ignore[no-untyped-def]
    """The DSN of the cached dataset (at this scale, else the web scale), building it if needed:
    (dsn, runs, details, build seconds or 0)."""
    runs, details = sizes(at)
    name = database(at)
    dsn = servers.dsn(name)
    admin = await asyncpg.connect(servers.admin_dsn)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn, command_timeout=None)
    try:
        await migrate(conn)  # brings a cached dataset up to later migrations too
        if await cached(conn, runs, details):
            return dsn, runs, details, 0.0
        started = time.monotonic()
        progress(f"building {name}: {runs:,} runs, {details:,} details (once; cached after)")
        await conn.execute("SET synchronous_commit = off; SET maintenance_work_mem = '1GB'; "
                           "SET max_parallel_maintenance_workers = 2")
        await conn.execute("DROP TABLE IF EXISTS bench_dataset; TRUNCATE job_logs CASCADE")
        await conn.execute(INSERT_RUNS, BASE, runs, DETAILS_PER_RUN)
        progress(f"  runs inserted ({time.monotonic() - started:.0f} s)")
        # Drop the details' secondary indexes and foreign key for the load; recreate them as they were.
        constraints = await conn.fetch(
            """SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
               WHERE conrelid = 'job_log_details'::regclass AND contype IN ('u', 'f')"""
        )
        indexes = await conn.fetch(
            """SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'job_log_details'
               AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = 'job_log_details'::regclass)"""
        )
        for c in constraints:
            await conn.execute(f'ALTER TABLE job_log_details DROP CONSTRAINT "{c["conname"]}"')
        for ix in indexes:
            await conn.execute(f'DROP INDEX "{ix["indexname"]}"')
        for first in range(1, runs + 1, CHUNK):
            last = min(runs, first + CHUNK - 1)
            await conn.execute(INSERT_DETAILS, BASE, first, last, DETAILS_PER_RUN)
            progress(f"  details of runs {first:,}..{last:,} ({time.monotonic() - started:.0f} s)")
        for c in constraints:
            await conn.execute(f'ALTER TABLE job_log_details ADD CONSTRAINT "{c["conname"]}" {c["def"]}')
            progress(f"  {c['conname']} rebuilt ({time.monotonic() - started:.0f} s)")
        for ix in indexes:
            await conn.execute(ix["indexdef"])
            progress(f"  {ix['indexname']} rebuilt ({time.monotonic() - started:.0f} s)")
        await conn.execute("VACUUM (ANALYZE) job_logs")
        await conn.execute("VACUUM (ANALYZE) job_log_details")
        seconds = time.monotonic() - started
        await conn.execute(META)
        await conn.execute("INSERT INTO bench_dataset (runs, details, seconds) VALUES ($1, $2, $3)", runs, details, seconds)
        progress(f"  done in {seconds:.0f} s")
        return dsn, runs, details, seconds
    finally:
        await conn.close()


if __name__ == "__main__":
    with Servers() as servers:
        print(asyncio.run(ensure_dataset(servers))[1:])
