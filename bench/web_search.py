"""The search row of the web benchmark: `/search?q=` p99 over the same dataset, against the index page's p99.

A mix of what administrators ask: a text no message has (an order number: the trigram index says so
at once), a text a few runs' errors hold, a text one message in twenty holds, and one every message
holds (newest first, the first page is found at once), some with a job filter.

`python -m bench.web_search` times each query alone (and the ADVERSARIAL ones, whose matches all lie far
back, too slow to put under wrk's load), through services.web.investigate_db.search_details (newest-first
windows) and through the plain query it replaced, on the cached dataset (and on the old step-major one,
joblog_bench_web, if that database is there):

    JOBLOG_BENCH_WEB_SCALE=0.1 .venv/bin/python -m bench.web_search
"""
from __future__ import annotations

import asyncio
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg

from bench.common import Result, Servers

QUERIES = [
    {"q": "SO-104711"},
    {"q": "did not answer"},
    {"q": "batch 17", "job": "sync_open_orders"},
    {"q": "of 40000 orders"},
    {"q": "purge", "job": "purge_closed_orders"},
    {"q": "SourceUnavailable", "status": "error"},
]

# Texts common in the dataset whose matches are all far back from the newest ids: a time range of the
# first hours (a common text must be skipped in every newer run), and, on the step-major dataset,
# `batch 17` alone (all step-17 messages lie 150,000 ids back).
ADVERSARIAL = [
    {"q": "batch 17", "until": "2024-01-01T03:00:00+00:00"},
    {"q": "batch 17"},
]

PLAIN = """
SELECT d.id FROM job_log_details d JOIN job_logs j ON j.id = d.job_log_id
WHERE joblog_detail_text(d.key, d.message, d.data) ILIKE $1 AND ($2::text IS NULL OR j.job = $2)
  AND ($3::text IS NULL OR j.status = $3) AND ($4::timestamptz IS NULL OR j.created_at < $4)
ORDER BY d.id DESC LIMIT $5
"""


async def single_times(dsn: str, repeat: int = 3) -> list[tuple[dict[str, str], float, float, int]]:
    """(query, median ms windowed, median ms plain, matches on the first page) of every query, one at a time."""
    from services.web import investigate_db
    from services.web.db import _like_escape

    conn = await asyncpg.connect(dsn)
    out = []
    try:
        for query in QUERIES + ADVERSARIAL:
            until = datetime.fromisoformat(query["until"]) if "until" in query else None
            filters: dict[str, Any] = {"text": query["q"], "job": query.get("job"), "status": query.get("status"), "until": until}
            took: dict[str, list[float]] = {"windowed": [], "plain": []}
            for _ in range(repeat):
                started = time.perf_counter()
                rows = await investigate_db.search_details(conn, filters, 51)
                took["windowed"].append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                async with conn.transaction():
                    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                    plain = await conn.fetch(PLAIN, f"%{_like_escape(query['q'])}%", filters["job"], filters["status"], until, 51)
                took["plain"].append((time.perf_counter() - started) * 1000)
                assert [r["id"] for r in rows] == [r["id"] for r in plain], query
            out.append((query, statistics.median(took["windowed"]), statistics.median(took["plain"]), len(rows)))
    finally:
        await conn.close()
    return out


async def main() -> None:
    from bench.web_data import DATABASE, database, ensure_dataset

    with Servers() as servers:
        dsn, runs, details, _ = await ensure_dataset(servers)
        datasets = [(f"{database()} (run by run)", dsn)]
        old = database().replace(DATABASE, "joblog_bench_web")
        admin = await asyncpg.connect(servers.admin_dsn)
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", old):
            datasets.append((f"{old} (step-major, the old dataset)", servers.dsn(old)))
        await admin.close()
        for name, url in datasets:
            print(f"{name}: {runs:,} runs; median of 3 single requests, windowed / plain, ms")
            for query, windowed, plain, found in await single_times(url):
                print(f"  {urlencode(query):60} {windowed:8.1f} {plain:8.1f}  ({found} on the first page)")


def search_script(directory: Path) -> str:
    """A wrk script asking for the search page with these queries, at random."""
    paths = [f"/search?{urlencode(q)}" for q in QUERIES]
    path = directory / "search.lua"
    path.write_text(
        "paths = {" + ",".join(f'"{p}"' for p in paths) + "}\n"
        "request = function()\n  return wrk.format(nil, paths[math.random(#paths)])\nend\n"
    )
    return str(path)


def search_result(search: dict[str, float], index: dict[str, float], runs: int, details: int, note: str, command: str) -> Result:
    """Search p99 within 4 times the index page's p99 (the index is cached; a search never is)."""
    ratio = search["p99"] / index["p99"] if index["p99"] else float("inf")
    ok = ratio <= 4 and search["errors"] == 0
    return Result(
        "3e. Web search `/search?q=` over every run's messages",
        f"{search['rps']:,.0f} req/s, p50 {search['p50']:.1f} ms, p99 {search['p99']:.1f} ms",
        f"index page p99 {index['p99']:.1f} ms", f"{ratio:.2f}", "p99 ratio <= 4", ok, command,
        [f"{runs:,} runs, {details:,} details; {len(QUERIES)} queries at random (no match, a few errors, 1 in 20 "
         f"messages, every message; some with a job or status filter), never cached; details written run by run "
         f"(bench.web_data); {note}; "
         f"{search['requests']:,.0f} requests, {search['errors']:.0f} errors or non-2xx"],
        {"ratio": ratio <= 4, "errors": search["errors"] == 0},
    )


if __name__ == "__main__":
    asyncio.run(main())
