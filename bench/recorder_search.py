"""The projection's throughput with the search indexes (migration 0009's trigram GIN indexes) against without.

The same events, twice each way in alternation (the best of each kept: the machine is shared), through
the recorder as its own process into a fresh database; "without" drops job_log_details_search and
job_logs_error_search first.

    JOBLOG_BENCH_SCALE=0.1 .venv/bin/python -m bench --no-write recorder_search_index
"""
from __future__ import annotations

import time

import asyncpg
import nats

from bench.common import Result, Servers, peak_rss_mb, scale, scratch, service_env, service_process, wait_until
from bench.recorder import _positive, _reached, applied, build_events, publish_all
from services.contracts import Subjects
from services.contracts.subjects import ensure_streams
from services.log_recorder.settings import RecorderSettings

SEARCH_INDEXES = ("job_log_details_search", "job_logs_error_search")


async def one_pass(servers: Servers, with_index: bool) -> tuple[float, bool, float]:
    """(events/s from the first committed batch, projection exact, the recorder's peak RSS)."""
    total = int(200_000 * scale())
    batch = RecorderSettings.model_fields["recorder_batch_size"].default
    async with scratch(servers, "recsearch") as (dsn, stream, prefix):
        subjects = Subjects(prefix=prefix, stream=stream)
        messages, runs, details = build_events(subjects, total)
        nc = await nats.connect(servers.nats_url)
        conn = await asyncpg.connect(dsn)
        try:
            if not with_index:
                await conn.execute("DROP INDEX " + ", ".join(SEARCH_INDEXES))
            js = nc.jetstream(timeout=30)
            await ensure_streams(js, subjects)
            await publish_all(js, messages)
            env = service_env(servers.nats_url, dsn, stream, prefix, JOBLOG_RECORDER_BATCH_SIZE=str(batch))
            with service_process("recorder", env) as process:
                await wait_until(lambda: _positive(conn), timeout=60, interval=0.01)
                first_at, first = time.perf_counter(), await applied(conn)
                done = await wait_until(lambda: _reached(conn, len(messages)), timeout=600, interval=0.02)
                elapsed = time.perf_counter() - first_at
                rss = peak_rss_mb(process.pid)
                final = await applied(conn)
            counts = await conn.fetchrow("SELECT (SELECT count(*) FROM job_logs) AS runs, (SELECT count(*) FROM job_log_details) AS details")
        finally:
            await conn.close()
            await nc.close()
    exact = bool(done) and counts["runs"] == runs and counts["details"] == details
    return ((final - first) / elapsed if elapsed > 0 else 0.0), exact, rss


async def recorder_search_index(servers: Servers) -> tuple[list[Result], dict[str, float]]:
    rates: dict[bool, list[float]] = {True: [], False: []}
    exact, peak = True, 0.0
    for with_index in (False, True, False, True):
        rate, ok, rss = await one_pass(servers, with_index)
        rates[with_index].append(rate)
        exact, peak = exact and ok, max(peak, rss)
    indexed, plain = max(rates[True]), max(rates[False])
    ratio = indexed / plain if plain else 0.0
    total = int(200_000 * scale())
    return [Result(
        "1b. Recorder throughput with the search indexes", f"{indexed:,.0f} events/s",
        f"{plain:,.0f} events/s without them", f"{ratio:.2f}", ">= 0.7", ratio >= 0.7 and exact,
        f"JOBLOG_BENCH_SCALE={scale():g} .venv/bin/python -m bench recorder_search_index",
        [f"about {total:,} events a pass, two passes each way in alternation, the best of each "
         f"(with: {', '.join(f'{r:,.0f}' for r in rates[True])}; without: {', '.join(f'{r:,.0f}' for r in rates[False])}); "
         f"the indexes: {', '.join(SEARCH_INDEXES)} (pg_trgm GIN); projection exact every pass: {exact}"],
        {"ratio": ratio >= 0.7, "exact": exact},
    )], {"recorder (search index)": peak}
