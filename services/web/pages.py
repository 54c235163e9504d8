"""The HTML pages: the index, a run and the open orders, rendered from the read model (the Monitor: jobpage).

The index and the run page are cached per projection version (services.web.cache): a page is
rendered once per change of the projection, whoever asks.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from services.contracts.statuses import STATUSES
from services.web import db, investigate, params, queries
from services.web.accounts import account_of
from services.web.cache import Page
from services.web.keys import DIRECTORY, PAGE_CACHE, SETTINGS
from services.web.present import level_options


async def page_key(request: web.Request) -> tuple[Any, ...]:
    """This page's cache key as the projection stands now (read before the page's rows)."""
    version = await queries.projection_version(request.app)
    directory = request.app[DIRECTORY]
    alive = tuple(beat.worker_id for beat in directory.online())
    stopped = tuple(stop.worker_id for stop in directory.stopped())
    account = account_of(request)
    # The header names the account and only operators see the action buttons: a page per account.
    who = (account.name, account.role) if account else None
    return (request.path_qs, version, alive, stopped, who)


async def cached(request: web.Request, template: str, load: Callable[[], Awaitable[dict[str, Any]]]) -> web.Response:
    """Render template with what load() returns, unless the page is cached for this projection."""
    key = await page_key(request)

    async def render() -> bytes:
        response = aiohttp_jinja2.render_template(template, request, {**await load(), "account": account_of(request)})
        assert isinstance(response.body, bytes)
        return response.body

    return page_response(request, await request.app[PAGE_CACHE].tagged(key, render))


async def index(request: web.Request) -> web.Response:
    """The JobLog index: most recent runs first, filterable, keyset-paginated."""
    filters = params.runs_filter(request)
    notice = params.notice(request)

    async def load() -> dict[str, Any]:
        version = await queries.projection_version(request.app)  # before the rows: the live feed resumes here
        runs, next_cursor, jobs = await queries.index(request.app, filters, request.app[SETTINGS].page_size)
        shown = {k: v for k, v in {
            "status": filters["status"], "job": filters["job"], "q": filters["search"],
            "fingerprint": filters["fingerprint"], "gap": "yes" if filters["gap"] else None,
        }.items() if v}
        return {
            "runs": runs,
            "jobs": jobs,
            "statuses": STATUSES,
            "filters": shown,
            "next_cursor": next_cursor,
            "paged": filters["before"] is not None,
            # New runs are inserted live only where they belong: the first page, unfiltered.
            "live_insert": filters["before"] is None and not shown,
            "notice": notice,
            "version": version,
        }

    return await cached(request, "index.html", load)


async def run_detail(request: web.Request) -> web.Response:
    """One run: header, final statistics, and its details in the order they happened, a page at a time.

    Cached like the index (per projection version); a miss reuses the long parts of a run that has ended
    while the run does not change (investigate.run_page). Every answer carries its ETag: a browser that
    sends it back (If-None-Match) gets a 304 while the page it has is the page it would get."""
    after = params.after(request)
    name = params.run_name(request)
    at, level = params.at(request), params.level(request)

    async def render() -> bytes:
        page = await investigate.run_page(
            request.app, name, after, at, params.levels_from(level), queries.DETAILS_PER_PAGE)
        context = {**page, "level": level, "level_options": level_options(params.LEVELS, level),
                   "notice": params.notice(request), "account": account_of(request)}
        return aiohttp_jinja2.render_string("run.html", request, context).encode()

    page = await request.app[PAGE_CACHE].tagged(await page_key(request), render)
    return page_response(request, page, revalidate=True)


def page_response(request: web.Request, page: Page, *, revalidate: bool = False) -> web.Response:
    """A cached page as the browser asked for it: gzip-encoded (made once per page) when it accepts that.

    revalidate: the answer carries its ETag, and a browser that sends it back (If-None-Match) gets a 304
    while the page is the same. The page depends on who asks (the header, the action buttons): only the
    browser keeps it (private), and asks again (no-cache)."""
    gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    headers = {"Vary": "Accept-Encoding"}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    if revalidate:
        etag = page.gzip_etag if gzipped else page.etag
        headers.update({"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Authorization, Accept-Encoding"})
        sent = _entity_tags(request.headers.get("If-None-Match", ""))
        if etag in sent or "*" in sent:
            headers.pop("Content-Encoding", None)
            return web.Response(status=304, headers=headers)
    body = page.gzipped() if gzipped else page.body
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers=headers)


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header admits gzip: named (or x-gzip), else by *, with a q above 0."""
    qualities: dict[str, float] = {}
    for part in header.split(","):
        coding, *parameters = part.split(";")
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        qualities[coding.strip().lower()] = quality
    return qualities.get("gzip", qualities.get("x-gzip", qualities.get("*", 0.0))) > 0


def _entity_tags(header: str) -> tuple[str, ...]:
    """The tags of an If-None-Match header ("*" matches any; a weak W/ tag compares as its strong one)."""
    if not header:
        return ()
    return tuple(t.strip().removeprefix("W/") for t in header.split(","))


@aiohttp_jinja2.template("open_orders.html")
async def open_orders(request: web.Request) -> dict[str, Any]:
    """Open orders as the last sync left them."""
    data = await queries.open_orders(request.app, params.orders_filter(request, db.ORDER_SORTS))
    return {**data, "q": data["search"] or "", "sorts": db.ORDER_SORTS, "account": account_of(request)}


async def search(request: web.Request) -> web.Response:
    """Search every run's messages and errors (not cached: searches rarely repeat); no text shows the form."""
    shown = {k: v for k in ("q", "job", "status", "since", "until", "run") if (v := (request.query.get(k) or "").strip())}
    filters = params.search_filter(request, request.app[SETTINGS].zone) if "q" in shown else None
    found = await investigate.search(request.app, filters) if filters else None
    return aiohttp_jinja2.render_template("search.html", request, {
        "shown": shown, "filters": filters, "found": found, "statuses": STATUSES, "shortest": params.SEARCH_SHORTEST,
        "jobs": await queries.job_names(request.app), "account": account_of(request),
    })


async def failures(request: web.Request) -> web.Response:
    """Failed runs grouped by the fingerprint of their error."""
    job = params.job(request)
    days = params.choice(request, "days", FAILURE_WINDOWS)

    async def load() -> dict[str, Any]:
        groups = await investigate.failure_groups(request.app, investigate.since_days(int(days) if days else None), job)
        return {"groups": groups, "job": job, "days": days, "windows": FAILURE_WINDOWS,
                "jobs": await queries.job_names(request.app)}

    return await cached(request, "failures.html", load)


FAILURE_WINDOWS = {"1": "Last 24 hours", "7": "Last 7 days", "30": "Last 30 days"}


async def compare(request: web.Request) -> web.Response:
    """Two runs side by side."""
    name, other = params.run_name(request), params.other_run_name(request)

    async def load() -> dict[str, Any]:
        return await investigate.compare(request.app, name, other)

    return await cached(request, "compare.html", load)
