"""The read model: what the pages and the JSON API show, from Postgres and the worker directory.

One layer for both: services.web.pages renders these results as HTML, services.web.api as JSON.
Functions take the app (its pool, settings and directory) and checked parameters, never a request.
"""
from __future__ import annotations

import contextlib
import json

from datetime import datetime, timezone
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from services.contracts.schedules import next_slot
from services.web import db
from services.web.errors import NotFound
from services.web.keys import DIRECTORY, NATS_CONNECTION, PAGE_CACHE, POOL, SETTINGS
from services.web.params import encode_cursor, encode_order_cursor
from services.web.present import Row, present_action, present_run, run_state

log = structlog.get_logger("joblog.web")

ORDERS_PER_PAGE = 50
DETAILS_PER_PAGE = 500
# The most rows one live stream replays at (re)connection; a page further behind reloads.
REPLAY_LIMIT = 2000
ACTIONS_ON_MONITOR = 20


async def list_runs(app: web.Application, filters: dict[str, Any], limit: int) -> tuple[list[Row], str | None]:
    """One page of runs, newest first, with the cursor of the next (older) page."""
    async with app[POOL].acquire() as conn:
        rows = await db.list_runs(conn, limit=limit + 1, **filters)
    return _page_of_runs(app, rows, limit)


async def index(app: web.Application, filters: dict[str, Any], limit: int) -> tuple[list[Row], str | None, list[str]]:
    """The index: a page of runs, its next cursor, and every job that has runs (for the filter)."""
    async with app[POOL].acquire() as conn:
        rows = await db.list_runs(conn, limit=limit + 1, **filters)
        jobs = await db.known_jobs(conn)
    runs, cursor = _page_of_runs(app, rows, limit)
    return runs, cursor, jobs


def _page_of_runs(app: web.Application, rows: list[asyncpg.Record], limit: int) -> tuple[list[Row], str | None]:
    more = len(rows) > limit
    rows = rows[:limit]
    directory = app[DIRECTORY]
    return [present_run(r, directory) for r in rows], (encode_cursor(rows[-1]) if more and rows else None)


async def run(
    app: web.Application, name: str, after: int, limit: int, levels: list[str] | None = None
) -> tuple[Row, list[Row], int | None, int]:
    """A run, one page of its details after a seq (of these levels), the cursor of the next page, and the detail count."""
    async with app[POOL].acquire() as conn:
        found = await db.get_run(conn, name)
        if found is None:
            raise NotFound(f"There is no run named {name}. It may have been deleted.")
        details = await db.list_details(conn, found["id"], after, limit + 1, levels)
        more = len(details) > limit
        details = details[:limit]
        total = await db.count_details(conn, found["id"], levels) if more or after else len(details)
    next_after = details[-1]["first_seq"] if more and details else None
    return present_run(found, app[DIRECTORY]), [Row(d) for d in details], next_after, total


async def open_orders(app: web.Application, filters: dict[str, Any]) -> dict[str, Any]:
    """One page of open orders (by keyset; an old client's ?page=N by offset), the cursors of the pages
    next to it, how many open orders there are (match), and the last successful sync."""
    page, sort, descending = filters["page"], filters["sort"], filters["dir"] == "desc"
    after = db.OrderKey(*filters["after"]) if filters["after"] else None
    before = db.OrderKey(*filters["before"]) if filters["before"] else None
    listing = {"search": filters["search"], "sort": sort, "descending": descending, "limit": ORDERS_PER_PAGE}
    total = await open_orders_total(app, filters["search"])
    async with app[POOL].acquire() as conn:
        pages = max(1, -(-total // ORDERS_PER_PAGE))
        if page is not None and page > pages:
            raise NotFound(f"Page {page} does not exist; there are {pages} pages.")
        offset = (page - 1) * ORDERS_PER_PAGE if page else 0
        rows, more = await db.list_open_orders(conn, **listing, after=after, before=before, offset=offset)
        if before is not None and len(rows) < ORDERS_PER_PAGE:
            # Fewer than a page before it (orders closed since): the first page, full.
            before, page = None, 1
            rows, more = await db.list_open_orders(conn, **listing)
        last_sync = await db.last_successful_sync(conn)
    earlier = more if before is not None else bool(after or offset)
    later = True if before is not None else more
    column = db.ORDER_SORTS[sort].column

    def cursor(row: asyncpg.Record) -> str:
        return encode_order_cursor(sort, filters["dir"], row[column], row["order_number"])

    return {
        **filters, "orders": rows, "total": total, "pages": pages, "last_sync": last_sync,
        # The page's number when it is known: an old client's ?page=N, or the first page.
        "page": page if page else (1 if not earlier else None),
        "next_cursor": cursor(rows[-1]) if later and rows else None,
        "prev_cursor": cursor(rows[0]) if earlier and rows else None,
        "first": earlier,  # a link to the first page helps
    }


async def open_orders_total(app: web.Application, search: str | None) -> int:
    """How many open orders (match the search). Counting 100,000 costs ~50 times a page's rows (every entry of
    the partial index or the table is visited), so it is counted once per projection version (each change to
    open_orders is a worker's run, whose events move it) and search, kept as the pages are (at most max_age)."""
    version = await projection_version(app)

    async def count() -> bytes:
        async with app[POOL].acquire() as conn:
            return str(await db.count_open_orders(conn, search)).encode()

    return int(await app[PAGE_CACHE].page(("open_orders_total", version, search), count))


async def jobs(app: web.Application) -> list[dict[str, Any]]:
    """Every job the workers describe or that has runs, with its schedule, next slot and latest run."""
    directory = app[DIRECTORY]
    described = {job.name: job for job in directory.jobs()}
    async with app[POOL].acquire() as conn:
        names = sorted(set(described) | set(await db.known_jobs(conn)))
        latest = await db.latest_runs(conn, names)
    found = []
    for name in names:
        description = described.get(name)
        schedule = description.schedule if description else None
        found.append({
            "name": name,
            "title": description.title if description else name,
            "description": description.description if description else "",
            "schedule": schedule,
            "next_run": next_slot(schedule, app[SETTINGS].zone),
            "available": name in described,
            "latest": present_run(latest[name], directory) if name in latest else None,
        })
    return found


async def recorder_health(app: web.Application) -> dict[str, Any]:
    """The projection's position, the recorder consumer's backlog (asked of NATS), and the dead letters."""
    settings = app[SETTINGS]
    async with app[POOL].acquire() as conn:
        health = await db.recorder_health(conn)
    health["consumer"] = None
    try:
        js = app[NATS_CONNECTION].jetstream(timeout=2)
        info = await js.consumer_info(settings.stream, settings.recorder_consumer)
        health["consumer"] = {
            "pending": info.num_pending or 0, "ack_pending": info.num_ack_pending or 0,
            "redelivered": info.num_redelivered or 0,
        }
    except Exception as error:  # no recorder yet, or NATS away: the page says "unknown"
        log.info("recorder consumer unavailable", error=repr(error))
    lag = None
    if health["consumer"] is not None:
        behind = health["consumer"]["pending"] + health["consumer"]["ack_pending"]
        lag = 0.0 if behind == 0 else await _oldest_pending_age(app)
    health["lag_seconds"] = lag
    return health


async def _oldest_pending_age(app: web.Application) -> float | None:
    """Seconds since JetStream stored the oldest event the recorder has not acknowledged yet.

    That event is the first after the recorder consumer's ack floor (or the next one still in the
    stream, when retention removed it); None when NATS cannot say.
    """
    settings = app[SETTINGS]
    try:
        js = app[NATS_CONNECTION].jetstream(timeout=2)
        info = await js.consumer_info(settings.stream, settings.recorder_consumer)
        floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
        subject = (info.config.filter_subject if info.config else None) or ">"
        message = await js.get_msg(settings.stream, seq=floor + 1, subject=subject, next=True)
    except Exception as error:
        log.info("oldest pending event unavailable", error=repr(error))
        return None
    if message.time is None:
        return None
    return max(0.0, (datetime.now(timezone.utc) - message.time).total_seconds())


async def run_replay(app: web.Application, name: str, after: int) -> tuple[Row | None, list[Row]]:
    """A run as it stands and its details logged or updated after seq `after`, for a live page resuming there."""
    async with app[POOL].acquire() as conn:
        found = await db.get_run(conn, name)
        if found is None or found["last_seq"] <= after:
            return (present_run(found, app[DIRECTORY]) if found else None), []
        details = await db.details_changed_after(conn, found["id"], after, REPLAY_LIMIT)
    return present_run(found, app[DIRECTORY]), [Row(d) for d in details]


async def index_replay(app: web.Application, since: int | None) -> tuple[int, list[Row]]:
    """The projection's version now and, unless it is still `since`, the rows an index page may show:
    the newest page of runs and every processing run (their current state, applied idempotently)."""
    directory = app[DIRECTORY]
    async with app[POOL].acquire() as conn:
        version = await db.projection_version(conn)
        if since == version:
            return version, []
        newest = await db.list_runs(conn, limit=app[SETTINGS].page_size)
        processing = await db.list_runs(conn, limit=REPLAY_LIMIT, status="processing")
    # Oldest first, so rows inserted on top end newest first; only the newest page's runs may be inserted.
    found = {row["name"]: Row(present_run(row, directory), insert=False) for row in reversed(processing)}
    for row in reversed(newest):
        found.pop(row["name"], None)
        found[row["name"]] = Row(present_run(row, directory), insert=True)
    return version, list(found.values())


async def runs_of_workers(app: web.Application, worker_ids: list[str]) -> list[Row]:
    """Processing runs of these workers, as the index shows them now (stalled or not)."""
    async with app[POOL].acquire() as conn:
        rows = await db.runs_of_workers(conn, worker_ids, REPLAY_LIMIT)
    return [present_run(row, app[DIRECTORY]) for row in rows]


async def monitor(app: web.Application) -> dict[str, Any]:
    """The Jobs Monitor: jobs, workers online with their runs, lost and stopped workers, stalled runs, health."""
    directory = app[DIRECTORY]
    found_jobs = await jobs(app)
    online = directory.online()
    running_ids = [run_id for beat in online for run_id in beat.running]
    async with app[POOL].acquire() as conn:
        processing = await db.list_runs(conn, limit=50, status="processing")
        names = await db.run_names(conn, running_ids)
    return {
        "jobs": found_jobs,
        "workers": [{"beat": beat, "running": [names.get(run_id) for run_id in beat.running]} for beat in online],
        "lost": directory.lost(),
        "stopped": directory.stopped(),
        "stalled": [present_run(r, directory) for r in processing if run_state(r, directory) == "stalled"],
        "health": await recorder_health(app),
        "actions": await recent_actions(app, ACTIONS_ON_MONITOR),
        "alerts": await recent_alerts(app, ACTIONS_ON_MONITOR),
        "sizes": await retention_sizes(app),
    }


RETENTION_SIZES = """
SELECT pg_total_relation_size('job_logs') AS runs_bytes, pg_total_relation_size('job_log_details') AS details_bytes,
       (SELECT reltuples::bigint FROM pg_class WHERE oid = 'job_logs'::regclass) AS runs_estimate,
       pg_total_relation_size('deleted_runs') + pg_total_relation_size('run_deletions')
         + pg_total_relation_size('dead_letters') AS bookkeeping_bytes,
       (SELECT count(*) FROM run_deletions WHERE finished_at IS NULL) AS deletions_pending,
       (SELECT count(*) FROM deleted_runs WHERE purged_at IS NULL) AS purges_pending,
       (SELECT COALESCE(sum(purged_messages), 0) FROM stream_purges) AS purged_messages,
       (SELECT max(taken_at) FROM projection_snapshots) AS snapshot_at
"""


def _size(count: float | None) -> str:
    if count is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


async def retention_sizes(app: web.Application) -> dict[str, Any]:
    """How big the run stream and the projection are, how old the stream's oldest message is, its limits,
    and the retention work still to do (docs/retention.md)."""
    settings = app[SETTINGS]
    async with app[POOL].acquire() as conn:
        found = dict(await conn.fetchrow(RETENTION_SIZES))
    sizes: dict[str, Any] = {
        "projection": _size(found["runs_bytes"] + found["details_bytes"]), "runs": found["runs_estimate"] if found["runs_estimate"] > 0 else None,  # the planner's estimate
        "bookkeeping": _size(found["bookkeeping_bytes"]), "deletions_pending": found["deletions_pending"],
        "purges_pending": found["purges_pending"], "purged_messages": found["purged_messages"],
        "snapshot_at": found["snapshot_at"], "stream": None,
    }
    try:
        js = app[NATS_CONNECTION].jetstream(timeout=2)
        # The raw answer: nats-py's StreamState leaves out first_ts, the oldest message's time.
        info = await js._api_request(f"{js._prefix}.STREAM.INFO.{settings.stream}", b"", timeout=2)
    except Exception as error:  # NATS away: the page says "unknown"
        log.info("stream info unavailable", error=repr(error))
        return sizes
    state, config = info.get("state", {}), info.get("config", {})
    messages, stored = int(state.get("messages") or 0), int(state.get("bytes") or 0)
    oldest = None
    if messages and state.get("first_ts"):
        with contextlib.suppress(ValueError, TypeError):
            oldest = datetime.fromisoformat(str(state["first_ts"])[:26].rstrip("Z") + "+00:00")
    max_age = int(config.get("max_age") or 0) / 1e9  # nanoseconds
    sizes["stream"] = {
        "bytes": _size(stored), "messages": messages, "oldest": oldest,
        "per_message": _size(stored / messages) if messages else "—",
        "max_age_days": max_age / 86400 if max_age else None,
        "max_bytes": _size(config["max_bytes"]) if (config.get("max_bytes") or 0) > 0 else None,
        "compression": config.get("compression") or "none",
    }
    return sizes
    state, config = info.state, info.config
    oldest = None
    if state.messages and getattr(state, "first_ts", None):
        with contextlib.suppress(ValueError, TypeError):
            oldest = datetime.fromisoformat(str(state.first_ts).replace("Z", "+00:00"))
    sizes["stream"] = {
        "bytes": _size(state.bytes), "messages": state.messages, "oldest": oldest,
        "per_message": _size(state.bytes / state.messages) if state.messages else "—",
        "max_age_days": (config.max_age / 86400) if config.max_age else None,
        "max_bytes": _size(config.max_bytes) if config.max_bytes and config.max_bytes > 0 else None,
        "compression": str(getattr(config.compression, "value", config.compression) or "none"),
    }
    return sizes


async def recent_alerts(app: web.Application, limit: int) -> list[dict[str, Any]]:
    """The notifier's newest alerts and each channel's delivery state."""
    async with app[POOL].acquire() as conn:
        rows = await db.recent_alerts(conn, limit)
    return [{**dict(row), "deliveries": json.loads(row["deliveries"]) if isinstance(row["deliveries"], str)
             else row["deliveries"]} for row in rows]


async def recent_actions(app: web.Application, limit: int) -> list[Row]:
    """The audit trail: who did what, newest first."""
    async with app[POOL].acquire() as conn:
        return [present_action(row) for row in await db.recent_actions(conn, limit)]


async def runs_by_status(app: web.Application) -> dict[str, int]:
    async with app[POOL].acquire() as conn:
        return await db.runs_by_status(conn)


async def projection_version(app: web.Application) -> int:
    """Where the projection stands: a page rendered at one version is valid until the next.

    As Postgres last announced it (services.web.cache.ProjectionVersion), else read."""
    known = app[PAGE_CACHE].known_version()
    if known is not None:
        return known
    async with app[POOL].acquire() as conn:
        return await db.projection_version(conn)


async def job_names(app: web.Application) -> list[str]:
    """Every job that has runs (a filter's choices)."""
    async with app[POOL].acquire() as conn:
        return await db.known_jobs(conn)
