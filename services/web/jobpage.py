"""A job's own page (/jobs/<job>: charts, statistics, schedule, recent runs) and the live Monitor's body.

The Monitor page subscribes to the index's live feed (/events/runs) and, on every run event and every
few seconds (heartbeats, the recorder's lag, alerts), replaces its body with /monitor/live: the same
template the page was rendered with, so the live page never shows anything the server would not.
"""
from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from services.web import charts, monitoring, pages, params, queries
from services.web.accounts import account_of
from services.web.errors import NotFound
from services.web.keys import SETTINGS


async def monitor_data(request: web.Request) -> dict[str, Any]:
    """Everything the Monitor shows: the read model's monitor and, per job, pause, last result and sparkline."""
    data = await queries.monitor(request.app)
    extras = await monitoring.monitor_extras(request.app, [job["name"] for job in data["jobs"]])
    for job in data["jobs"]:
        extra = extras[job["name"]]
        job.update(extra)
        job["sparkline"] = charts.sparkline(extra["spark"], f"Last {len(extra['spark'])} runs of {job['name']}")
    return {**data, "account": account_of(request)}


async def monitor(request: web.Request) -> web.Response:
    """The Jobs Monitor: jobs (with pause state, last result, last runs), workers, stalled runs, health, alerts."""
    data = await monitor_data(request)
    return aiohttp_jinja2.render_template("monitor.html", request, {**data, "notice": params.notice(request)})


async def monitor_live(request: web.Request) -> web.Response:
    """The Monitor's body alone, for the live page to swap in."""
    response = aiohttp_jinja2.render_template("_monitor_body.html", request, await monitor_data(request))
    response.headers["Cache-Control"] = "no-store"
    return response


async def job_page(request: web.Request) -> web.Response:
    """One job: runs per hour or day by outcome, durations with p50/p95, success rate, last runs; 24 h / 7 d / 30 d.

    Cached like the index (per projection version, which a pause moves too, for at most the cache's max age)."""
    job = params.path_job(request)
    range_key = params.choice(request, "range", monitoring.RANGES) or "24h"

    async def load() -> dict[str, Any]:
        known = {j["name"]: j for j in await queries.jobs(request.app)}
        if job not in known:
            raise NotFound(f"There is no job named {job}: no worker offers it and it has no runs.")
        data = await monitoring.job_page(request.app, job, range_key)
        zone = request.app[SETTINGS].zone
        per = "hour" if data["bucket"] == "hour" else "day"
        data["runs_chart"] = charts.runs_bars(
            data["bars"], data["bucket"], zone, f"Runs of {job} per {per}, last {data['range_label']}, by outcome")
        data["durations_chart"] = charts.durations(
            data["timed"], data["p50"], data["p95"], f"Duration of the last {len(data['timed'])} runs of {job}")
        data["sparkline"] = charts.sparkline(data["spark"], f"Last {len(data['spark'])} runs of {job}")
        return {**data, "info": known[job], "notice": params.notice(request)}

    return await pages.cached(request, "job.html", load)
