"""The read model of the Jobs Monitor's operations: per-job statistics, schedule pauses, the run a
command started, and the failed runs a bulk retry would retry.

Statistics come from job_stats (finished runs per job, UTC hour and outcome, kept by the projection's
triggers), never from a GROUP BY over every run; the last runs of a job are read by index.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
from aiohttp import web

from services.web.keys import DIRECTORY, FEED, POOL, SETTINGS
from services.web.present import Row, present_run

# The ranges a job page offers: (label, span, bucket size).
RANGES: dict[str, tuple[str, timedelta, str]] = {
    "24h": ("24 hours", timedelta(hours=24), "hour"),
    "7d": ("7 days", timedelta(days=7), "day"),
    "30d": ("30 days", timedelta(days=30), "day"),
}
OUTCOMES = ("success", "error", "skipped")
RECENT_RUNS = 50
SPARK_RUNS = 20

_NOT_SKIPPED = """NOT (status = 'success' AND stats @> '{"skipped": true}')"""
_COLUMNS = """name, job, status, stats, worker_id, trigger, requested_by, created_at, started_at, finished_at,
              duration_ms, error_message, error_class, failed_step, last_seq"""

LAST_RESULTS = f"""
SELECT k.job, r.name, r.status, r.stats, r.worker_id, r.finished_at, r.error_message, r.created_at, r.started_at,
       r.duration_ms, s.name AS success_name, s.finished_at AS success_at
FROM unnest($1::text[]) AS k(job)
LEFT JOIN LATERAL (
    SELECT name, status, stats, worker_id, finished_at, error_message, created_at, started_at, duration_ms FROM job_logs
    WHERE job = k.job AND {_NOT_SKIPPED} AND status IN ('success', 'error')
    ORDER BY created_at DESC, id DESC LIMIT 1
) r ON true
LEFT JOIN LATERAL (
    SELECT name, finished_at FROM job_logs WHERE job = k.job AND {_NOT_SKIPPED} AND status = 'success'
    ORDER BY created_at DESC, id DESC LIMIT 1
) s ON true
"""

RECENT = f"SELECT {_COLUMNS} FROM job_logs WHERE job = $1 ORDER BY created_at DESC, id DESC LIMIT $2"

BUCKETS = """
SELECT bucket, outcome, runs, duration_runs, duration_ms FROM job_stats
WHERE job = $1 AND bucket >= $2 AND runs <> 0 ORDER BY bucket
"""

SPARKS = f"""
SELECT k.job AS for_job, r.* FROM unnest($1::text[]) AS k(job)
CROSS JOIN LATERAL (
    SELECT {_COLUMNS} FROM job_logs WHERE job = k.job
    ORDER BY created_at DESC, id DESC LIMIT {SPARK_RUNS}
) r ORDER BY k.job, r.created_at, r.name
"""

TOTALS_SINCE = """
SELECT job, outcome, sum(runs)::bigint AS runs FROM job_stats
WHERE job = ANY($1::text[]) AND bucket >= $2 GROUP BY job, outcome
"""


async def last_results(conn: asyncpg.Connection, jobs: list[str]) -> dict[str, asyncpg.Record]:
    """Per job: its newest finished run that was not skipped, and its newest success."""
    return {row["job"]: row for row in await conn.fetch(LAST_RESULTS, jobs)}


async def schedule_states(conn: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    """Per job: paused or not, by whom and when (the recorder's schedule_states)."""
    rows = await conn.fetch("SELECT job, paused, requested_by, reason, changed_at FROM schedule_states")
    return {row["job"]: row for row in rows}


async def pauses(app: web.Application) -> dict[str, dict[str, Any]]:
    """The paused schedules, as the API's job fields: paused, paused_by, paused_at."""
    async with app[POOL].acquire() as conn:
        states = await schedule_states(conn)
    return {job: {"paused": True, "paused_by": s["requested_by"], "paused_at": s["changed_at"]}
            for job, s in states.items() if s["paused"]}


async def monitor_extras(app: web.Application, jobs: list[str]) -> dict[str, dict[str, Any]]:
    """What the Monitor shows per job beyond its latest run: last result, pause, sparkline, 24 h rate."""
    directory = app[DIRECTORY]
    since = _hour(datetime.now(timezone.utc)) - timedelta(hours=23)
    async with app[POOL].acquire() as conn:
        results = await last_results(conn, jobs)
        states = await schedule_states(conn)
        sparks = await conn.fetch(SPARKS, jobs)
        totals = await conn.fetch(TOTALS_SINCE, jobs, since)
    found: dict[str, dict[str, Any]] = {}
    for job in jobs:
        result = results.get(job)
        counts = {row["outcome"]: row["runs"] for row in totals if row["job"] == job}
        found[job] = {
            "result": present_run(result, directory) if result is not None and result["name"] else None,
            "last_success": (result["success_name"], result["success_at"]) if result is not None and result["success_name"] else None,
            "pause": states.get(job),
            "spark": [present_run(row, directory) for row in sparks if row["for_job"] == job],
            "day": {**{o: 0 for o in OUTCOMES}, **counts},
        }
    return found


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def percentile(values: Sequence[int], share: float) -> int | None:
    """The nearest-rank percentile of values (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def job_page(app: web.Application, job: str, range_key: str) -> dict[str, Any]:
    """A job's statistics over a range (bars per hour or day by outcome, totals, success rate) and its recent runs."""
    label, span, size = RANGES[range_key]
    zone, directory = app[SETTINGS].zone, app[DIRECTORY]
    now = datetime.now(timezone.utc)
    if size == "hour":
        first = _hour(now) - span + timedelta(hours=1)
        starts = [first + timedelta(hours=i) for i in range(int(span / timedelta(hours=1)))]
    else:
        today = datetime.now(zone).replace(hour=0, minute=0, second=0, microsecond=0)
        days = span.days
        starts = [(today - timedelta(days=days - 1 - i)) for i in range(days)]
        first = starts[0].astimezone(timezone.utc)
    async with app[POOL].acquire() as conn:
        rows = await conn.fetch(BUCKETS, job, _hour(first))
        recent = await conn.fetch(RECENT, job, RECENT_RUNS)
        states = await schedule_states(conn)
        results = await last_results(conn, [job])
    bars: list[dict[str, Any]] = [{"start": start, "counts": {o: 0 for o in OUTCOMES}} for start in starts]
    totals = {o: 0 for o in OUTCOMES}
    duration_runs = duration_ms = 0
    for row in rows:
        at = row["bucket"]
        if size == "hour":
            index = int((at - starts[0]) / timedelta(hours=1))
        else:
            local = at.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
            index = (local.date() - starts[0].date()).days
        if not 0 <= index < len(bars):
            continue
        outcome = row["outcome"] if row["outcome"] in OUTCOMES else "error"
        bars[index]["counts"][outcome] += row["runs"]
        totals[outcome] += row["runs"]
        duration_runs += row["duration_runs"]
        duration_ms += row["duration_ms"]
    runs = [present_run(row, directory) for row in recent]
    timed = [r for r in reversed(runs) if r["status"] in ("success", "error") and r["state"] != "skipped"
             and r["duration_ms"] is not None]
    durations = [int(r["duration_ms"]) for r in timed]
    judged = totals["success"] + totals["error"]
    result = results.get(job)
    return {
        "job": job, "range": range_key, "range_label": label, "ranges": RANGES, "bucket": size,
        "bars": bars, "totals": totals, "total": sum(totals.values()),
        "success_rate": (totals["success"] / judged) if judged else None,
        "mean_ms": (duration_ms // duration_runs) if duration_runs else None,
        "timed": timed, "p50": percentile(durations, 0.5), "p95": percentile(durations, 0.95),
        "recent": runs, "spark": list(reversed(runs[:SPARK_RUNS])),
        "pause": states.get(job),
        "result": present_run(result, directory) if result is not None and result["name"] else None,
        "last_success": (result["success_name"], result["success_at"]) if result is not None and result["success_name"] else None,
    }


async def run_of_command(app: web.Application, command_id: str) -> str | None:
    """The name of the run a trigger command started, once it exists (the live feed knows first)."""
    name = app[FEED].run_of_command(command_id)
    if name is not None:
        return name
    async with app[POOL].acquire() as conn:
        return await conn.fetchval(
            "SELECT name FROM job_logs WHERE command_id = $1 ORDER BY created_at LIMIT 1", command_id)


def _filter_sql(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """The index's filters (job, name prefix) over failed runs."""
    where, args = ["status = 'error'"], []  # type: list[str], list[Any]
    if filters.get("job"):
        args.append(filters["job"])
        where.append(f"job = ${len(args)}")
    if filters.get("search"):
        text = filters["search"].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        args.append(text + "%")
        where.append(f"name LIKE ${len(args)}")
    return " AND ".join(where), args


async def failed_runs_by_job(app: web.Application, filters: dict[str, Any]) -> list[Row]:
    """The failed runs matching the index's filter, per job: how many, and the newest (a retry names it)."""
    where, args = _filter_sql(filters)
    async with app[POOL].acquire() as conn:
        rows = await conn.fetch(
            f"""SELECT job, count(*) AS runs, (array_agg(name ORDER BY created_at DESC, id DESC))[1] AS newest
                FROM job_logs WHERE {where} GROUP BY job ORDER BY job""",
            *args,
        )
    return [Row(row) for row in rows]
