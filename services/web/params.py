"""Request parameters: read from the query string, path or form, checked, or a 400/404 that says why.

The name and job-id patterns are the contract's (services.contracts.events), compiled here.
"""
from __future__ import annotations

import base64
import re
import uuid
from datetime import datetime, timezone
from typing import Any

import asyncpg
from aiohttp import web

from services.contracts.events import RUN_NAME_PATTERN, TOKEN_PATTERN
from services.contracts.statuses import STATUSES
from services.web.errors import BadRequest, NotFound
from services.web.present import NOTICES

JOB_PATTERN = re.compile(TOKEN_PATTERN)
NAME_PATTERN = re.compile(RUN_NAME_PATTERN)
ORDER_DIRECTIONS = ("asc", "desc")


def choice(request: web.Request, name: str, allowed: tuple[str, ...] | dict[str, Any]) -> str | None:
    value = request.query.get(name) or None
    if value is not None and value not in allowed:
        raise BadRequest(f"{name} must be one of: {', '.join(allowed)}")
    return value


def job(request: web.Request) -> str | None:
    """?job=, a job id."""
    value = request.query.get("job") or None
    if value is not None and not JOB_PATTERN.match(value):
        raise BadRequest("job must be a job id such as sync_open_orders")
    return value


def search(request: web.Request, limit: int = 100) -> str | None:
    """?q=, free text."""
    value = (request.query.get("q") or "").strip()
    if len(value) > limit:
        raise BadRequest(f"search text is limited to {limit} characters")
    if any(ord(char) < 32 for char in value):
        raise BadRequest("search text cannot contain control characters")
    return value or None


def page(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
        raise BadRequest("page must be a whole number from 1")
    return int(raw)


def after(request: web.Request) -> int:
    """?after=, the seq of the last detail the client has."""
    raw = request.query.get("after", "0") or "0"
    if not raw.isdigit() or len(raw) > 9:
        raise BadRequest("after must be the seq of the last message you have (a whole number from 0)")
    return int(raw)


def resume_point(request: web.Request, name: str) -> int | None:
    """Where a live stream resumes: the browser's Last-Event-ID on a reconnection, else ?<name>= from
    the page (the last seq, or projection version, it rendered); None for the start."""
    raw = request.headers.get("Last-Event-ID") or request.query.get(name) or ""
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"Last-Event-ID and {name} must be the id of the last event you have (a whole number from 0)")
    return int(raw)


def limit(request: web.Request, default: int, most: int) -> int:
    raw = request.query.get("limit") or str(default)
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise BadRequest(f"limit must be a whole number from 1 to {most}")
    return int(raw)


def run_name(request: web.Request) -> str:
    """The {name} in the path: a run name, else 404."""
    name = request.match_info["name"]
    if not NAME_PATTERN.match(name):
        raise NotFound(f"There is no run named {name[:40]!r}; run names look like 20261129215442.")
    return name


def path_job(request: web.Request) -> str:
    """The {job} in the path: a job id, else 404."""
    value = request.match_info["job"]
    if not JOB_PATTERN.match(value):
        raise NotFound("No such job.")
    return value


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


def runs_filter(request: web.Request) -> dict[str, Any]:
    """The index's filters and cursor (also /api/runs'): status, job, search, before."""
    return {
        "status": choice(request, "status", STATUSES),
        "job": job(request),
        "search": search(request),
        "before": decode_cursor(request.query.get("before")),
    }


def orders_filter(request: web.Request, sorts: tuple[str, ...] | dict[str, Any]) -> dict[str, Any]:
    """The open orders' sort, direction, search and page."""
    sort = choice(request, "sort", sorts) or "order_date"
    direction = choice(request, "dir", ORDER_DIRECTIONS) or ("desc" if sort == "order_date" else "asc")
    return {"sort": sort, "dir": direction, "search": search(request), "page": page(request)}


NOTICE_VALUES = {"job": JOB_PATTERN, "run": NAME_PATTERN, "before": re.compile(r"^\d{4}-\d{2}-\d{2}$"),
                 "runs": re.compile(r"^\d{1,9}$"), "count": re.compile(r"^\d{1,6}$")}
# A trigger's command id (the web's are UUIDs; schedules' are schedule:<job>:<slot>).
COMMAND_PATTERN = re.compile(r"^[A-Za-z0-9:_.+-]{1,200}$")


def notice(request: web.Request) -> str:
    """?notice=<key>: one of the fixed messages (present.NOTICES) a redirect after an action names, with its
    checked values; an unknown key or a value that does not fit shows nothing (never text from the URL)."""
    found = NOTICES.get(request.query.get("notice", ""))
    if found is None:
        return ""
    text, names = found
    values = {name: request.query.get(name, "") for name in names}
    if not all(NOTICE_VALUES[name].fullmatch(value) for name, value in values.items()):
        return ""
    return text.format(**values)
