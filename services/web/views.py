"""Request handlers: parse and check parameters, query, render."""
from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import datetime, timezone
from typing import Any

import aiohttp_jinja2
import asyncpg
import jinja2
from aiohttp import web

from services.contracts import TriggerRequested
from services.contracts.subjects import publish_trigger
from services.web import db
from services.web.directory import WorkerDirectory
from services.web.errors import BadRequest, NotFound
from services.web.keys import DIRECTORY, NATS_CONNECTION, POOL, SETTINGS
from services.web.settings import WebSettings

STATUSES = ("new", "processing", "success", "error")
JOB_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NAME_PATTERN = re.compile(r"^\d{14}(-\d+)?$")
ORDERS_PER_PAGE = 50

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


def _directory(request: web.Request) -> WorkerDirectory:
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


def install_filters(env: jinja2.Environment, settings: WebSettings) -> None:
    zone = settings.zone

    def when(value: datetime | None, millis: bool = False) -> str:
        if value is None:
            return "—"
        local = value.astimezone(zone)
        text = local.strftime("%Y-%m-%d %H:%M:%S")
        if millis:
            text += f".{local.microsecond // 1000:03d}"
        return text

    def duration(ms: int | None) -> str:
        if ms is None:
            return "—"
        if ms < 1000:
            return f"{ms} ms"
        seconds = ms / 1000
        if seconds < 60:
            return f"{seconds:.1f} s"
        minutes, seconds = divmod(int(seconds), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"

    def number(value: Any) -> str:
        return f"{value:,}" if isinstance(value, (int, float)) else str(value)

    env.filters.update(when=when, duration=duration, number=number)
    env.globals.update(badges=BADGES, zone_name=settings.timezone)


def _live_duration(run: asyncpg.Record) -> int | None:
    if run["duration_ms"] is not None:
        return run["duration_ms"]
    if run["started_at"] is not None and run["status"] == "processing":
        return int((datetime.now(timezone.utc) - run["started_at"]).total_seconds() * 1000)
    return None


def present_run(run: asyncpg.Record, directory: Any) -> dict[str, Any]:
    data = dict(run)
    if isinstance(data.get("stats"), str):
        data["stats"] = json.loads(data["stats"])
    data["state"] = run_state(run, directory)
    data["summary"] = summary(data)
    data["live_duration_ms"] = _live_duration(run)
    return data


# Pages ---------------------------------------------------------------------------------------


@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict[str, Any]:
    """The JobLog index: most recent runs first, filterable, keyset-paginated."""
    settings, pool = _app_parts(request)
    status = _choice(request, "status", STATUSES)
    job = _job_param(request)
    search = _search(request)
    before = decode_cursor(request.query.get("before"))
    async with pool.acquire() as conn:
        rows = await db.list_runs(conn, limit=settings.page_size + 1, status=status, job=job, search=search, before=before)
        jobs = await db.known_jobs(conn)
    more = len(rows) > settings.page_size
    rows = rows[: settings.page_size]
    directory = _directory(request)
    filters = {k: v for k, v in {"status": status, "job": job, "q": search}.items() if v}
    return {
        "runs": [present_run(r, directory) for r in rows],
        "jobs": jobs,
        "statuses": STATUSES,
        "filters": filters,
        "next_cursor": encode_cursor(rows[-1]) if more and rows else None,
        "paged": before is not None,
    }


@aiohttp_jinja2.template("run.html")
async def run_detail(request: web.Request) -> dict[str, Any]:
    """One run: header, final statistics, and its details in the order they happened."""
    settings, pool = _app_parts(request)
    name = request.match_info["name"]
    if not NAME_PATTERN.match(name):
        raise NotFound(f"There is no run named {name[:40]!r}; run names look like 20261129215442.")
    async with pool.acquire() as conn:
        run = await db.get_run(conn, name)
        if run is None:
            raise NotFound(f"There is no run named {name}. It may have been deleted.")
        details = await db.list_details(conn, run["id"], 0, 1000)
        total = await db.count_details(conn, run["id"]) if len(details) == 1000 else len(details)
    return {
        "run": present_run(run, _directory(request)),
        "details": [dict(d) for d in details],
        "total_details": total,
    }


@aiohttp_jinja2.template("open_orders.html")
async def open_orders(request: web.Request) -> dict[str, Any]:
    """Open orders as the last sync left them."""
    _, pool = _app_parts(request)
    sort = _choice(request, "sort", db.ORDER_SORTS) or "order_date"
    direction = _choice(request, "dir", ("asc", "desc")) or ("desc" if sort == "order_date" else "asc")
    search = _search(request)
    page = _page(request)
    async with pool.acquire() as conn:
        rows, total = await db.list_open_orders(
            conn, search=search, sort=sort, descending=direction == "desc",
            limit=ORDERS_PER_PAGE, offset=(page - 1) * ORDERS_PER_PAGE,
        )
        last_sync = await db.last_successful_sync(conn)
    pages = max(1, -(-total // ORDERS_PER_PAGE))
    if page > pages and total:
        raise NotFound(f"Page {page} does not exist; there are {pages} pages.")
    return {
        "orders": rows, "total": total, "page": page, "pages": pages, "sort": sort, "dir": direction,
        "q": search or "", "last_sync": last_sync, "sorts": db.ORDER_SORTS,
    }


@aiohttp_jinja2.template("monitor.html")
async def monitor(request: web.Request) -> dict[str, Any]:
    """The Jobs Monitor: jobs, workers, stalled runs, recorder health."""
    _, pool = _app_parts(request)
    directory = _directory(request)
    described = {job.name: job for job in directory.jobs()}
    async with pool.acquire() as conn:
        names = sorted(set(described) | set(await db.known_jobs(conn)))
        latest = await db.latest_runs(conn, names)
        stalled_rows = await db.list_runs(conn, limit=50, status="processing")
        health = await db.recorder_health(conn)
    jobs = [
        {"name": n, "description": described.get(n), "latest": present_run(latest[n], directory) if n in latest else None}
        for n in names
    ]
    stalled = [present_run(r, directory) for r in stalled_rows if run_state(r, directory) == "stalled"]
    return {
        "jobs": jobs,
        "online": directory.online(),
        "lost": directory.lost(),
        "stalled": stalled,
        "health": health,
        "triggered": request.query.get("triggered", "")[:64],
    }


async def run_now(request: web.Request) -> web.StreamResponse:
    """"Run now": send a trigger to the workers, then back to the monitor."""
    settings, _ = _app_parts(request)
    job = request.match_info["job"]
    if not JOB_PATTERN.match(job):
        raise NotFound("No such job.")
    form = await request.post()
    trigger = "retry" if form.get("retry") else "manual"
    command = TriggerRequested(job=job, trigger=trigger, requested_by="web")
    js = request.app[NATS_CONNECTION].jetstream(timeout=5)
    await publish_trigger(js, settings.subjects, command)
    raise web.HTTPSeeOther(f"/monitor?triggered={job}")


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
