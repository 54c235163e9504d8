"""Actions: run a job now, retry a failed run, delete runs; POSTs that publish a message to NATS.

Each is confirmed in the UI (a JS dialog, or the confirmation page without JS), publishes one
command or event, puts an ActionTaken on the audit trail (who, what, on what, from where), and
redirects with a notice key from present.NOTICES. Only operators get here (the authentication
middleware refuses every POST of a viewer). The JSON API's trigger shares trigger_job.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import date, datetime, time
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
import nats.errors
import structlog
from aiohttp import web

from services.contracts import ActionTaken, RunsDeleted, TriggerRequested
from services.contracts.events import ActionKind
from services.web import commands, params
from services.web.accounts import ANONYMOUS, account_of
from services.web.errors import BadRequest
from services.web.keys import NATS_CONNECTION, SETTINGS

log = structlog.get_logger("joblog.web")


async def _send(command: Awaitable[None]) -> None:
    """Publish an action's message; NATS or JetStream not taking it is a 503, not a 500."""
    try:
        await command
    except (nats.errors.Error, asyncio.TimeoutError) as error:
        log.warning("could not publish an action", error=repr(error))
        raise web.HTTPServiceUnavailable(
            text="NATS JetStream did not accept the request, so nothing was sent. Try again in a moment.",
        ) from None


def _actor(request: web.Request) -> str:
    return (account_of(request) or ANONYMOUS).name


async def _audit(
    request: web.Request, action: ActionKind, *, job: str | None = None, target: str | None = None, **detail: Any,
) -> None:
    """Record who did what on the audit trail. The action itself is already sent, so a failure here is
    logged (with everything the event would have said) rather than reported as nothing sent."""
    event = ActionTaken(actor=_actor(request), action=action, job=job, target=target, detail=detail,
                        source=(request.remote or "")[:200] or None)
    try:
        await commands.record(request.app[NATS_CONNECTION], request.app[SETTINGS].subjects, event)
    except (nats.errors.Error, asyncio.TimeoutError) as error:
        log.error("could not put an action on the audit trail", error=repr(error), **event.model_dump(mode="json"))
    log.info("action", action=action, job=job, target=target, actor=event.actor, remote=request.remote, **detail)


def _confirmation(
    request: web.Request, form: Any, question: str, button: str, *, back: str = "/monitor", danger: bool = False,
) -> web.StreamResponse | None:
    """None when the form was confirmed; else the page that asks (the no-JS path)."""
    if form.get("confirm") == "yes":
        return None
    fields = {k: str(v) for k, v in form.items() if k != "confirm"}
    return aiohttp_jinja2.render_template(
        "confirm.html", request,
        {"question": question, "button": button, "action": request.path, "fields": fields, "danger": danger, "back": back,
         "account": account_of(request)},
    )


async def run_now(request: web.Request) -> web.StreamResponse:
    """"Run now" (or "Retry" of a failed run): send a trigger to the workers, then to the run it starts."""
    job = params.path_job(request)
    form = await request.post()
    retry_of = str(form.get("retry") or "")
    if retry_of and not params.NAME_PATTERN.match(retry_of):
        raise BadRequest("retry must name the failed run")
    asking = _confirmation(
        request, form, f"Retry {job} (run {retry_of})?" if retry_of else f"Run {job} now?", "Retry" if retry_of else "Run now",
        back=f"/runs/{retry_of}" if retry_of else "/monitor",
    )
    if asking is not None:
        return asking
    command_id = await trigger_job(request, job, retry_of or None)
    # Lands on the new run as soon as a worker has created it (services.web.operate.command_run).
    raise web.HTTPSeeOther(f"/commands/{command_id}?{urlencode({'job': job})}")


async def trigger_job(request: web.Request, job: str, retry_of: str | None, *, via: str = "page") -> str:
    """Publish the trigger and record who asked; returns the command id."""
    settings = request.app[SETTINGS]
    requested_by = f"web:{_actor(request)}" + (f" retry of {retry_of}" if retry_of else "")
    command = TriggerRequested(job=job, trigger="retry" if retry_of else "manual", requested_by=requested_by)
    await _send(commands.trigger(request.app[NATS_CONNECTION], settings.subjects, command))
    if retry_of:
        await _audit(request, "retry", job=job, target=retry_of, command_id=command.command_id, via=via)
    else:
        await _audit(request, "trigger", job=job, target=command.command_id, via=via)
    return command.command_id


async def delete_run(request: web.Request) -> web.StreamResponse:
    """Delete one run (spec: manual retention), as a RunsDeleted event the recorder applies."""
    name = params.run_name(request)
    form = await request.post()
    asking = _confirmation(
        request, form, f"Delete run {name} and all its messages?", "Delete run", back=f"/runs/{name}", danger=True,
    )
    if asking is not None:
        return asking
    event = RunsDeleted(names=[name], requested_by=f"web:{_actor(request)}")
    await _send(commands.delete_runs(request.app[NATS_CONNECTION], request.app[SETTINGS].subjects, event))
    await _audit(request, "delete_runs", target=name, event_id=str(event.event_id))
    raise web.HTTPSeeOther(f"/?{urlencode({'notice': 'run_deleted', 'run': name})}")


async def delete_older(request: web.Request) -> web.StreamResponse:
    """Delete every run created before a date (start of that day in the configured zone)."""
    settings = request.app[SETTINGS]
    form = await request.post()
    raw = str(form.get("before") or "")
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise BadRequest("before must be a date such as 2026-01-31") from None
    if day > datetime.now(settings.zone).date():
        raise BadRequest("before must not be in the future")
    cutoff = datetime.combine(day, time.min, settings.zone)
    asking = _confirmation(request, form, f"Delete every run created before {day.isoformat()}?", "Delete runs", danger=True)
    if asking is not None:
        return asking
    event = RunsDeleted(created_before=cutoff, requested_by=f"web:{_actor(request)}")
    await _send(commands.delete_runs(request.app[NATS_CONNECTION], settings.subjects, event))
    await _audit(request, "delete_before", target=cutoff.isoformat(), event_id=str(event.event_id))
    raise web.HTTPSeeOther(f"/monitor?{urlencode({'notice': 'runs_deleted', 'before': day.isoformat()})}")
