"""Request handlers: parse and check parameters, query, render."""
from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from datetime import date, datetime, time, timezone
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import aiohttp_jinja2
import asyncpg
import jinja2
import nats.errors
import structlog
from aiohttp import web
from aiohttp_sse import sse_response
from croniter import croniter

from services.contracts import RunEvent, RunsDeleted, StepLogged, TriggerRequested
from services.web import commands, db
from services.web.directory import WorkerDirectory
from services.web.errors import BadRequest, NotFound
from services.web.keys import DIRECTORY, FEED, METRICS, NATS_CONNECTION, PAGE_CACHE, POOL, SETTINGS
from services.web.live import run_update
from services.web.settings import WebSettings

log = structlog.get_logger("joblog.web")

STATUSES = ("new", "processing", "success", "error")
JOB_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NAME_PATTERN = re.compile(r"^\d{14}(-\d+)?$")
ORDERS_PER_PAGE = 50
DETAILS_PER_PAGE = 500
SSE_PING_SECONDS = 15.0
# Schedules as the workers write them: 'every <n><s|m|h|d>' or a cron expression.
INTERVAL = re.compile(r"^every\s+(\d+)\s*(s|m|h|d)$", re.IGNORECASE)
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# label, icon, css class: distinguishable by colour and by text/icon
BADGES = {
    "new": ("New", "○", "new"),
    "processing": ("Processing", "◐", "processing"),
    "success": ("Success", "✓", "success"),
    "error": ("Error", "✕", "error"),
    "stalled": ("Stalled", "⚠", "stalled"),
}


def _app_parts(request: web.Request) -> tuple[WebSettings, asyncpg.Pool]:
    return request.app[SETTINGS], request.app[POOL]


def worker_directory(request: web.Request) -> WorkerDirectory:
    return request.app[DIRECTORY]


# Parameters ----------------------------------------------------------------------------------


def _choice(request: web.Request, name: str, allowed: tuple[str, ...] | dict[str, Any]) -> str | None:
    value = request.query.get(name) or None
    if value is not None and value not in allowed:
        raise BadRequest(f"{name} must be one of: {', '.join(allowed)}")
    return value


def _job_param(request: web.Request) -> str | None:
    value = request.query.get("job") or None
    if value is not None and not JOB_PATTERN.match(value):
        raise BadRequest("job must be a job id such as sync_open_orders")
    return value


def _search(request: web.Request, limit: int = 100) -> str | None:
    value = (request.query.get("q") or "").strip()
    if len(value) > limit:
        raise BadRequest(f"search text is limited to {limit} characters")
    if any(ord(char) < 32 for char in value):
        raise BadRequest("search text cannot contain control characters")
    return value or None


def _page(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
        raise BadRequest("page must be a whole number from 1")
    return int(raw)


def encode_cursor(row: asyncpg.Record) -> str:
    raw = f"{row['created_at'].timestamp():.6f}|{row['id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(value: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        stamp, run_id = raw.split("|")
        return datetime.fromtimestamp(float(stamp), timezone.utc), uuid.UUID(run_id)
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise BadRequest("the page cursor is not valid; start again from the first page") from None


# Presentation helpers ------------------------------------------------------------------------


class Row(dict):  # type: ignore[type-arg]
    """A dict whose keys templates read as attributes: Jinja2 tries getattr before [], and a
    plain dict made every `run.name` fail once first (the single largest cost of a page)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def run_state(run: asyncpg.Record | dict[str, Any], directory: Any) -> str:
    """The status to show: processing runs whose worker stopped heartbeating are stalled."""
    if run["status"] in ("new", "processing") and directory.is_alive(run["worker_id"]) is False:
        return "stalled"
    return run["status"]


def summary(run: asyncpg.Record | dict[str, Any]) -> str:
    """One line: what the run did, or why it failed."""
    stats = run["stats"] or {}
    if isinstance(stats, str):
        stats = json.loads(stats)
    if run["status"] == "error":
        first = (run["error_message"] or "failed").strip().splitlines()
        return first[0][:160] if first else "failed"
    if run["status"] == "success":
        if stats.get("skipped"):
            return "Skipped: already running"
        if "imported" in stats:
            parts = [f"{stats['imported']:,} imported"]
            for key in ("created", "updated", "closed", "invalid"):
                if stats.get(key):
                    parts.append(f"{stats[key]:,} {key}")
            return ", ".join(parts)
        return ", ".join(f"{v:,} {k}" if isinstance(v, int) else f"{k}: {v}" for k, v in list(stats.items())[:4]) or "Done"
    return "Running…" if run["status"] == "processing" else "Waiting to start"


def format_when(value: datetime | None, zone: ZoneInfo, millis: bool = False) -> str:
    """A timestamp in the configured zone, to the second or the millisecond."""
    if value is None:
        return "—"
    local = value.astimezone(zone)
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    if millis:
        text += f".{local.microsecond // 1000:03d}"
    return text


def format_clock(value: datetime, zone: ZoneInfo) -> str:
    """HH:MM:SS.mmm in the configured zone (a time on the same page as its date)."""
    return format_when(value, zone, millis=True).split(" ", 1)[1]


def format_duration(ms: int | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, whole = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {whole:02d} s"


def install_filters(env: jinja2.Environment, settings: WebSettings) -> None:
    zone = settings.zone

    def when(value: datetime | None, millis: bool = False) -> str:
        return format_when(value, zone, millis)

    def number(value: Any) -> str:
        return f"{value:,}" if isinstance(value, (int, float)) else str(value)

    env.filters.update(when=when, clock=lambda value: format_clock(value, zone), duration=format_duration, number=number)
    env.globals.update(badges=BADGES, zone_name=settings.timezone)


def _live_duration(run: asyncpg.Record) -> int | None:
    if run["duration_ms"] is not None:
        return run["duration_ms"]
    if run["started_at"] is not None and run["status"] == "processing":
        return int((datetime.now(timezone.utc) - run["started_at"]).total_seconds() * 1000)
    return None


def present_run(run: asyncpg.Record, directory: Any) -> dict[str, Any]:
    data = Row(run)
    if isinstance(data.get("stats"), str):
        data["stats"] = json.loads(data["stats"])
    data["state"] = run_state(run, directory)
    data["summary"] = summary(data)
    data["live_duration_ms"] = _live_duration(run)
    return data


# Pages ---------------------------------------------------------------------------------------


def index_query(request: web.Request) -> dict[str, Any]:
    """The index's filters and cursor, checked; shared with /api/runs."""
    return {
        "status": _choice(request, "status", STATUSES),
        "job": _job_param(request),
        "search": _search(request),
        "before": decode_cursor(request.query.get("before")),
    }


async def page_key(request: web.Request) -> tuple[Any, ...]:
    """This page's cache key as the projection stands now (read before the page's rows)."""
    _, pool = _app_parts(request)
    async with pool.acquire() as conn:
        version = await db.projection_version(conn)
    alive = tuple(beat.worker_id for beat in worker_directory(request).online())
    return (request.path_qs, version, alive)


async def cached(request: web.Request, template: str, load: Callable[[], Awaitable[dict[str, Any]]]) -> web.Response:
    """Render template with what load() returns, unless the page is cached for this projection."""
    key = await page_key(request)

    async def render() -> bytes:
        response = aiohttp_jinja2.render_template(template, request, await load())
        assert isinstance(response.body, bytes)
        return response.body

    body = await request.app[PAGE_CACHE].page(key, render)
    return web.Response(body=body, content_type="text/html", charset="utf-8")


async def index(request: web.Request) -> web.Response:
    """The JobLog index: most recent runs first, filterable, keyset-paginated."""
    settings, pool = _app_parts(request)
    query = index_query(request)

    async def load() -> dict[str, Any]:
        async with pool.acquire() as conn:
            rows = await db.list_runs(conn, limit=settings.page_size + 1, **query)
            jobs = await db.known_jobs(conn)
        more = len(rows) > settings.page_size
        rows = rows[: settings.page_size]
        directory = worker_directory(request)
        filters = {k: v for k, v in {"status": query["status"], "job": query["job"], "q": query["search"]}.items() if v}
        return {
            "runs": [present_run(r, directory) for r in rows],
            "jobs": jobs,
            "statuses": STATUSES,
            "filters": filters,
            "next_cursor": encode_cursor(rows[-1]) if more and rows else None,
            "paged": query["before"] is not None,
            # New runs are inserted live only where they belong: the first page, unfiltered.
            "live_insert": query["before"] is None and not filters,
            "notice": request.query.get("notice", "")[:200],
        }

    return await cached(request, "index.html", load)


def _run_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not NAME_PATTERN.match(name):
        raise NotFound(f"There is no run named {name[:40]!r}; run names look like 20261129215442.")
    return name


def after_param(request: web.Request) -> int:
    raw = request.query.get("after", "0") or "0"
    if not raw.isdigit() or len(raw) > 9:
        raise BadRequest("after must be the seq of the last message you have (a whole number from 0)")
    return int(raw)


def limit_param(request: web.Request, default: int, most: int) -> int:
    raw = request.query.get("limit") or str(default)
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise BadRequest(f"limit must be a whole number from 1 to {most}")
    return int(raw)


async def load_run(request: web.Request, after: int, limit: int) -> tuple[asyncpg.Record, list[asyncpg.Record], int | None, int]:
    """A run, one page of its details after a seq, the cursor of the next page, and the detail count."""
    _, pool = _app_parts(request)
    name = _run_name(request)
    async with pool.acquire() as conn:
        run = await db.get_run(conn, name)
        if run is None:
            raise NotFound(f"There is no run named {name}. It may have been deleted.")
        details = await db.list_details(conn, run["id"], after, limit + 1)
        more = len(details) > limit
        details = details[:limit]
        total = await db.count_details(conn, run["id"]) if more or after else len(details)
    return run, details, (details[-1]["first_seq"] if more and details else None), total


async def run_detail(request: web.Request) -> web.Response:
    """One run: header, final statistics, and its details in the order they happened, a page at a time."""
    after = after_param(request)
    _run_name(request)

    async def load() -> dict[str, Any]:
        run, details, next_after, total = await load_run(request, after, DETAILS_PER_PAGE)
        return {
            "run": present_run(run, worker_directory(request)),
            "details": [Row(d) for d in details],
            "total_details": total,
            "after": after,
            "next_after": next_after,
        }

    return await cached(request, "run.html", load)


def orders_query(request: web.Request) -> dict[str, Any]:
    sort = _choice(request, "sort", db.ORDER_SORTS) or "order_date"
    direction = _choice(request, "dir", ("asc", "desc")) or ("desc" if sort == "order_date" else "asc")
    return {"sort": sort, "dir": direction, "search": _search(request), "page": _page(request)}


async def load_open_orders(request: web.Request) -> dict[str, Any]:
    """One page of open orders, its place among the pages, and the last successful sync."""
    _, pool = _app_parts(request)
    query = orders_query(request)
    page = query["page"]
    async with pool.acquire() as conn:
        rows, total = await db.list_open_orders(
            conn, search=query["search"], sort=query["sort"], descending=query["dir"] == "desc",
            limit=ORDERS_PER_PAGE, offset=(page - 1) * ORDERS_PER_PAGE,
        )
        last_sync = await db.last_successful_sync(conn)
    pages = max(1, -(-total // ORDERS_PER_PAGE))
    if page > pages:
        raise NotFound(f"Page {page} does not exist; there are {pages} pages.")
    return {**query, "orders": rows, "total": total, "pages": pages, "last_sync": last_sync}


@aiohttp_jinja2.template("open_orders.html")
async def open_orders(request: web.Request) -> dict[str, Any]:
    """Open orders as the last sync left them."""
    data = await load_open_orders(request)
    return {**data, "q": data["search"] or "", "sorts": db.ORDER_SORTS}


def next_slot(schedule: str | None, zone: ZoneInfo, now: datetime | None = None) -> datetime | None:
    """When a schedule ('every 10m' or cron) fires next; None if unscheduled or unreadable."""
    if not schedule:
        return None
    now = now or datetime.now(timezone.utc)
    match = INTERVAL.match(schedule.strip())
    if match:
        step = int(match.group(1)) * UNIT_SECONDS[match.group(2).lower()]
        if step < 1:
            return None
        elapsed = now.timestamp()
        return datetime.fromtimestamp((elapsed // step + 1) * step, timezone.utc)
    try:
        return croniter(schedule.strip(), now.astimezone(zone)).get_next(datetime).astimezone(timezone.utc)
    except (ValueError, KeyError):
        return None


async def load_jobs(request: web.Request) -> list[dict[str, Any]]:
    """Every job the workers describe or that has runs, with its schedule, next slot and latest run."""
    settings, pool = _app_parts(request)
    directory = worker_directory(request)
    described = {job.name: job for job in directory.jobs()}
    async with pool.acquire() as conn:
        names = sorted(set(described) | set(await db.known_jobs(conn)))
        latest = await db.latest_runs(conn, names)
    jobs = []
    for name in names:
        description = described.get(name)
        schedule = description.schedule if description else None
        jobs.append({
            "name": name,
            "title": description.title if description else name,
            "description": description.description if description else "",
            "schedule": schedule,
            "next_run": next_slot(schedule, settings.zone),
            "available": name in described,
            "latest": present_run(latest[name], directory) if name in latest else None,
        })
    return jobs


async def recorder_health(request: web.Request) -> dict[str, Any]:
    """The projection's position, the recorder consumer's backlog, and the dead letters."""
    settings, pool = _app_parts(request)
    async with pool.acquire() as conn:
        health = await db.recorder_health(conn)
    health["consumer"] = None
    try:
        js = request.app[NATS_CONNECTION].jetstream(timeout=2)
        info = await js.consumer_info(settings.stream, settings.recorder_consumer)
        health["consumer"] = {
            "pending": info.num_pending or 0, "ack_pending": info.num_ack_pending or 0,
            "redelivered": info.num_redelivered or 0,
        }
    except Exception as error:  # no recorder yet, or NATS away: the page says "unknown"
        log.info("recorder consumer unavailable", error=repr(error))
    state = health["state"]
    lag = None
    if state is not None and health["consumer"] is not None:
        behind = health["consumer"]["pending"] + health["consumer"]["ack_pending"]
        if behind == 0:
            lag = 0.0
        elif state["last_event_at"] is not None:
            lag = max(0.0, (datetime.now(timezone.utc) - state["last_event_at"]).total_seconds())
    health["lag_seconds"] = lag
    return health


@aiohttp_jinja2.template("monitor.html")
async def monitor(request: web.Request) -> dict[str, Any]:
    """The Jobs Monitor: jobs, workers, stalled runs, recorder health."""
    _, pool = _app_parts(request)
    directory = worker_directory(request)
    jobs = await load_jobs(request)
    online = directory.online()
    running_ids = [run_id for beat in online for run_id in beat.running]
    async with pool.acquire() as conn:
        stalled_rows = await db.list_runs(conn, limit=50, status="processing")
        names = await db.run_names(conn, running_ids)
    stalled = [present_run(r, directory) for r in stalled_rows if run_state(r, directory) == "stalled"]
    workers = [{"beat": beat, "running": [names.get(run_id) for run_id in beat.running]} for beat in online]
    return {
        "jobs": jobs,
        "workers": workers,
        "lost": directory.lost(),
        "stalled": stalled,
        "health": await recorder_health(request),
        "notice": request.query.get("notice", "")[:200],
    }


# Actions: POSTs, confirmed in the UI (a JS dialog, or this confirmation page without JS) ---------


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
    return "admin" if request.app[SETTINGS].auth_enabled else "anonymous"


async def _confirmation(
    request: web.Request, form: Any, question: str, button: str, *, back: str = "/monitor", danger: bool = False,
) -> web.StreamResponse | None:
    """None when the form was confirmed; else the page that asks (the no-JS path)."""
    if form.get("confirm") == "yes":
        return None
    fields = {k: str(v) for k, v in form.items() if k != "confirm"}
    return aiohttp_jinja2.render_template(
        "confirm.html", request,
        {"question": question, "button": button, "action": request.path, "fields": fields, "danger": danger, "back": back},
    )


async def run_now(request: web.Request) -> web.StreamResponse:
    """"Run now" (or "Retry" of a failed run): send a trigger to the workers, then back to the monitor."""
    job = request.match_info["job"]
    if not JOB_PATTERN.match(job):
        raise NotFound("No such job.")
    form = await request.post()
    retry_of = str(form.get("retry") or "")
    if retry_of and not NAME_PATTERN.match(retry_of):
        raise BadRequest("retry must name the failed run")
    asking = await _confirmation(
        request, form, f"Retry {job} (run {retry_of})?" if retry_of else f"Run {job} now?", "Retry" if retry_of else "Run now",
        back=f"/runs/{retry_of}" if retry_of else "/monitor",
    )
    if asking is not None:
        return asking
    command_id = await trigger_job(request, job, retry_of or None)
    notice = f"Triggered {job}. The new run appears in the job logs in a moment."
    raise web.HTTPSeeOther(f"/monitor?{urlencode({'notice': notice, 'command': command_id})}")


async def trigger_job(request: web.Request, job: str, retry_of: str | None) -> str:
    """Publish the trigger and log who asked; returns the command id."""
    settings = request.app[SETTINGS]
    requested_by = f"web:{_actor(request)}" + (f" retry of {retry_of}" if retry_of else "")
    command = TriggerRequested(job=job, trigger="retry" if retry_of else "manual", requested_by=requested_by)
    await _send(commands.trigger(request.app[NATS_CONNECTION], settings.subjects, command))
    log.info("action", action="retry" if retry_of else "run_now", job=job, retry_of=retry_of,
             command_id=command.command_id, actor=_actor(request), remote=request.remote)
    return command.command_id


async def delete_run(request: web.Request) -> web.StreamResponse:
    """Delete one run (spec: manual retention), as a RunsDeleted event the recorder applies."""
    name = _run_name(request)
    form = await request.post()
    asking = await _confirmation(
        request, form, f"Delete run {name} and all its messages?", "Delete run", back=f"/runs/{name}", danger=True,
    )
    if asking is not None:
        return asking
    event = RunsDeleted(names=[name], requested_by=f"web:{_actor(request)}")
    await _send(commands.delete_runs(request.app[NATS_CONNECTION], request.app[SETTINGS].subjects, event))
    log.info("action", action="delete_run", run=name, event_id=str(event.event_id), actor=_actor(request), remote=request.remote)
    raise web.HTTPSeeOther(f"/?{urlencode({'notice': f'Run {name} is being deleted.'})}")


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
    asking = await _confirmation(request, form, f"Delete every run created before {day.isoformat()}?", "Delete runs", danger=True)
    if asking is not None:
        return asking
    event = RunsDeleted(created_before=cutoff, requested_by=f"web:{_actor(request)}")
    await _send(commands.delete_runs(request.app[NATS_CONNECTION], settings.subjects, event))
    log.info("action", action="delete_older", before=cutoff.isoformat(), event_id=str(event.event_id),
             actor=_actor(request), remote=request.remote)
    notice = f"Runs created before {day.isoformat()} are being deleted."
    raise web.HTTPSeeOther(f"/monitor?{urlencode({'notice': notice})}")


# Live updates (SSE) ------------------------------------------------------------------------------


def live_run(event: RunEvent, zone: ZoneInfo) -> dict[str, Any]:
    """A run-level event as the index row and run header show it."""
    update = run_update(event)
    status = update["status"]
    label, icon, css = BADGES[status]
    shown = {"status": status, "stats": update.get("stats") or {}, "error_message": update.get("error_message")}
    return {
        "name": event.name, "job": event.job, "status": status, "seq": event.seq,
        "badge": {"label": label, "icon": icon, "css": css},
        "started": format_when(update["started_at"], zone) if "started_at" in update else None,
        "started_iso": update["started_at"].isoformat() if "started_at" in update else None,
        "created": format_when(update["created_at"], zone) if "created_at" in update else None,
        "finished": format_when(update["finished_at"], zone, millis=True) if "finished_at" in update else None,
        "duration": format_duration(update["duration_ms"]) if update.get("duration_ms") is not None else None,
        "summary": summary(shown) if status in ("success", "error") else None,
        "url": f"/runs/{event.name}",
    }


def live_step(event: StepLogged, zone: ZoneInfo) -> dict[str, Any]:
    return {
        "key": event.key, "message": event.message, "level": event.level, "seq": event.seq,
        "at": format_when(event.occurred_at, zone, millis=True), "iso": event.occurred_at.isoformat(),
        "clock": format_clock(event.occurred_at, zone),
    }


async def _stream(request: web.Request, run_name: str | None) -> web.StreamResponse:
    zone = request.app[SETTINGS].zone
    feed = request.app[FEED]
    listener = feed.listen(run_name)
    response = web.StreamResponse()
    try:
        async with sse_response(request, ping_interval=SSE_PING_SECONDS) as response:
            await response.send(json.dumps({"run": run_name}), event="hello")
            while response.is_connected():
                try:
                    event = await asyncio.wait_for(listener.queue.get(), SSE_PING_SECONDS)
                except asyncio.TimeoutError:
                    continue
                if event is None:
                    break
                if isinstance(event, StepLogged):
                    await response.send(json.dumps(live_step(event, zone)), event="step")
                else:
                    await response.send(json.dumps(live_run(event, zone)), event="run")
    except ConnectionResetError:  # the browser went away; it reconnects if it wants more
        pass
    finally:
        feed.leave(listener)
    return response


async def runs_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of every run's status, for the index."""
    return await _stream(request, None)


async def run_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of one run: its status and its new or updated messages."""
    return await _stream(request, _run_name(request))


# Health ------------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    _, pool = _app_parts(request)
    checks = {"postgres": False, "nats": request.app[NATS_CONNECTION].is_connected}
    try:
        async with pool.acquire(timeout=2) as conn:
            checks["postgres"] = await conn.fetchval("SELECT true")
    except Exception:
        checks["postgres"] = False
    ok = all(checks.values())
    return web.json_response({"status": "ready" if ok else "unavailable", **checks}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; the gauges are read when scraped."""
    _, pool = _app_parts(request)
    registry = request.app[METRICS]
    async with pool.acquire() as conn:
        by_status = await db.runs_by_status(conn)
    for status in STATUSES:
        registry.runs.labels(status).set(by_status.get(status, 0))
    health = await recorder_health(request)
    registry.dead_letters.set(health["dead_total"])
    if health["consumer"] is not None:
        registry.pending.set(health["consumer"]["pending"])
        registry.ack_pending.set(health["consumer"]["ack_pending"])
        registry.redelivered.set(health["consumer"]["redelivered"])
    if health["lag_seconds"] is not None:
        registry.lag.set(health["lag_seconds"])
    registry.workers.set(len(worker_directory(request).online()))
    return registry.render()
