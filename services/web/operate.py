"""Operating jobs from the Monitor: pause and resume a schedule, cancel a run, retry the failed runs of a
filter at once, and land on the run a trigger started.

Like services.web.actions: operators only (the middleware refuses a viewer's POST), confirmed in the UI
or on a confirmation page, one message each, audited (ActionTaken), redirected with a notice key.
"""
from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
import nats.errors
import structlog
from aiohttp import web
from pydantic import ValidationError

from services.contracts import CancelRequested, SchedulePaused, ScheduleResumed
from services.web import commands, db, monitoring, params
from services.web.accounts import account_of
from services.web.actions import _actor, _audit, _confirmation, _send, trigger_job
from services.web.errors import BadRequest, NotFound
from services.web.keys import FEED, NATS_CONNECTION, SETTINGS, POOL

log = structlog.get_logger("joblog.web")

# How long "Run now" waits for its run to exist before showing a page that keeps looking.
LANDING_WAIT = 5.0


def _back(form: Any, job: str) -> str:
    """Where a pause or resume returns: the job's page or the Monitor (never a URL from the form)."""
    return f"/jobs/{job}" if form.get("back") == "job" else "/monitor"


async def pause(request: web.Request) -> web.StreamResponse:
    """Pause a job's schedule: every worker skips its slots until it is resumed (across restarts)."""
    job = params.path_job(request)
    form = await request.post()
    reason = str(form.get("reason") or "").strip()[:500] or None
    asking = _confirmation(request, form, f"Pause the schedule of {job}?", "Pause schedule", back=_back(form, job))
    if asking is not None:
        return asking
    event = SchedulePaused(job=job, requested_by=_actor(request), reason=reason)
    await _send(commands.schedule_event(request.app[NATS_CONNECTION], request.app[SETTINGS].subjects, event))
    await _audit(request, "pause", job=job, target=job, event_id=str(event.event_id), reason=reason)
    raise web.HTTPSeeOther(f"{_back(form, job)}?{urlencode({'notice': 'paused', 'job': job})}")


async def resume(request: web.Request) -> web.StreamResponse:
    """Resume a paused schedule: its next slot runs again (slots missed meanwhile are not caught up)."""
    job = params.path_job(request)
    form = await request.post()
    asking = _confirmation(request, form, f"Resume the schedule of {job}?", "Resume schedule", back=_back(form, job))
    if asking is not None:
        return asking
    event = ScheduleResumed(job=job, requested_by=_actor(request))
    await _send(commands.schedule_event(request.app[NATS_CONNECTION], request.app[SETTINGS].subjects, event))
    await _audit(request, "resume", job=job, target=job, event_id=str(event.event_id))
    raise web.HTTPSeeOther(f"{_back(form, job)}?{urlencode({'notice': 'resumed', 'job': job})}")


async def cancel(request: web.Request) -> web.StreamResponse:
    """Cancel a running run: a request to the worker holding it, which ends it as error "cancelled by <you>"."""
    name = params.run_name(request)
    form = await request.post()
    asking = _confirmation(request, form, f"Cancel run {name}?", "Cancel run", back=f"/runs/{name}", danger=True)
    if asking is not None:
        return asking
    async with request.app[POOL].acquire() as conn:
        run = await db.get_run(conn, name)
    if run is None:
        raise NotFound(f"There is no run named {name}. It may have been deleted.")
    back = f"/runs/{name}"
    if run["status"] in ("success", "error") or not run["worker_id"]:
        raise web.HTTPSeeOther(f"{back}?{urlencode({'notice': 'cancel_ended', 'run': name})}")
    command = CancelRequested(run_id=run["id"], name=name, job=run["job"], requested_by=_actor(request))
    settings = request.app[SETTINGS]
    try:
        reply = await commands.cancel(request.app[NATS_CONNECTION], settings.subjects, run["worker_id"], command)
        accepted, reason = reply.accepted, reply.reason
        notice = "cancelling" if accepted else "cancel_refused"
    except (nats.errors.Error, asyncio.TimeoutError, ValidationError) as error:
        log.warning("the worker did not answer a cancel", run=name, worker_id=run["worker_id"], error=repr(error))
        accepted, reason, notice = False, f"no answer from worker {run['worker_id']}", "cancel_unreachable"
    await _audit(request, "cancel", job=run["job"], target=name, command_id=command.command_id,
                 worker_id=run["worker_id"], accepted=accepted, reason=reason)
    raise web.HTTPSeeOther(f"{back}?{urlencode({'notice': notice, 'run': name})}")


def _retry_filters(request: web.Request, form: Any | None = None) -> dict[str, Any]:
    """The index's filter (job, name prefix), from the query (the page) or the form (the POST)."""
    source = form if form is not None else request.query
    job = str(source.get("job") or "") or None
    search = str(source.get("q") or "").strip() or None
    if job is not None and not params.JOB_PATTERN.match(job):
        raise BadRequest("job must be a job id")
    if search is not None and len(search) > 100:
        raise BadRequest("q must be at most 100 characters")
    status = str(source.get("status") or "") or None
    if status not in (None, "new", "processing", "success", "error"):
        raise BadRequest("status must be one of new, processing, success, error")
    return {"job": job, "search": search, "status": status}


async def bulk_retry_page(request: web.Request) -> web.StreamResponse:
    """How many failed runs match the index's filter, per job, and the button that retries them."""
    filters = _retry_filters(request)
    groups = [] if filters["status"] not in (None, "error") else await monitoring.failed_runs_by_job(request.app, filters)
    return aiohttp_jinja2.render_template("bulk_retry.html", request, {
        "groups": groups, "runs": sum(g["runs"] for g in groups), "filters": filters, "account": account_of(request),
    })


async def bulk_retry(request: web.Request) -> web.StreamResponse:
    """Retry every failed run matching the filter: one new run per job (a sync catches up in one run)."""
    form = await request.post()
    filters = _retry_filters(request, form)
    if form.get("confirm") != "yes":
        raise web.HTTPSeeOther(f"/retry_failed?{urlencode({k: v for k, v in (('job', filters['job']), ('q', filters['search'])) if v})}")
    groups = [] if filters["status"] not in (None, "error") else await monitoring.failed_runs_by_job(request.app, filters)
    if not groups:
        raise web.HTTPSeeOther(f"/?{urlencode({'notice': 'nothing_to_retry'})}")
    started: dict[str, dict[str, Any]] = {}
    for group in groups:
        command_id = await trigger_job(request, group["job"], group["newest"], via="bulk")
        started[group["job"]] = {"runs": group["runs"], "retry_of": group["newest"], "command_id": command_id}
    runs = sum(g["runs"] for g in groups)
    await _audit(request, "bulk_retry", target=f"{runs} failed runs", jobs=started,
                 filter={k: v for k, v in filters.items() if v})
    shown = {"notice": "bulk_retried", "runs": str(runs), "count": str(len(groups))}
    if filters["job"]:
        shown["job"] = filters["job"]
    raise web.HTTPSeeOther(f"/?{urlencode(shown)}")


async def _projected(app: web.Application, name: str, wait: float) -> bool:
    """The run is in the projection (its page exists), waiting up to `wait` s for the recorder."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        async with app[POOL].acquire() as conn:
            if await conn.fetchval("SELECT 1 FROM job_logs WHERE name = $1", name):
                return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)


async def command_run(request: web.Request) -> web.StreamResponse:
    """/commands/<id>: the run a trigger started, as soon as it exists (303 to its page); until then a page that
    keeps looking. "Run now" and "Retry" land here."""
    command_id = request.match_info["command_id"]
    if not params.COMMAND_PATTERN.match(command_id):
        raise NotFound("No such command.")
    name = await monitoring.run_of_command(request.app, command_id)
    if name is None and request.query.get("wait") != "no":
        waited = request.app[FEED].wait_for_command(command_id, LANDING_WAIT)
        name = await waited or await monitoring.run_of_command(request.app, command_id)
    if name is not None and await _projected(request.app, name, LANDING_WAIT):
        raise web.HTTPSeeOther(f"/runs/{name}")
    job = request.query.get("job", "")
    return aiohttp_jinja2.render_template("waiting.html", request, {
        "command_id": command_id, "job": job if params.JOB_PATTERN.match(job) else None, "account": account_of(request),
    })
