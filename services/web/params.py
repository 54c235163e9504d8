"""Request parameters: read from the query string, path or form, checked, or a 400/404 that says why.

The name and job-id patterns are the contract's (services.contracts.events), compiled here.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
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
    """The index's filters and cursor (also /api/runs'): status, job, search, same error, with a gap, before."""
    return {
        "status": choice(request, "status", STATUSES),
        "job": job(request),
        "search": search(request),
        "fingerprint": fingerprint(request),
        "gap": flag(request, "gap"),
        "before": decode_cursor(request.query.get("before")),
    }


def orders_filter(request: web.Request, sorts: tuple[str, ...] | dict[str, Any]) -> dict[str, Any]:
    """The open orders' sort, direction, search and place: a cursor (?after= the next page's, ?before= the
    previous page's), or an old client's ?page=N (still served, by offset), or the first page."""
    sort = choice(request, "sort", sorts) or "order_date"
    direction = choice(request, "dir", ORDER_DIRECTIONS) or ("desc" if sort == "order_date" else "asc")
    kind = getattr(sorts[sort], "kind", str) if isinstance(sorts, dict) else str
    given = [name for name in ("after", "before", "page") if request.query.get(name)]
    if len(given) > 1:
        raise BadRequest(f"give one of after, before or page, not {' and '.join(given)}")
    return {
        "sort": sort, "dir": direction, "search": search(request),
        "page": page(request) if "page" in given else None,
        "after": order_cursor(request, "after", sort, direction, kind),
        "before": order_cursor(request, "before", sort, direction, kind),
    }


# An Open Orders cursor holds the sort, the direction and the position (the sort value and order number of
# the order at the page's edge), with a keyed checksum: what it says is no secret (it is on the page), but a
# cursor that was cut or edited is refused with a 400 instead of reaching the database.
ORDER_CURSOR_KEY = b"joblog open orders cursor 1"
ORDER_CURSOR_MOST = 2000  # a 200-character customer name of 4-byte characters, and its order number, fit
_TAG = 8


def _order_tag(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, key=ORDER_CURSOR_KEY, digest_size=_TAG).digest()


def encode_order_cursor(sort: str, direction: str, value: Any, order_number: str) -> str:
    """The cursor of a position in Open Orders (value: the order's value of the sort column, None for NULL)."""
    payload = json.dumps([sort, direction, None if value is None else str(value), order_number],
                         separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(_order_tag(payload) + payload).decode().rstrip("=")


def order_cursor(request: web.Request, name: str, sort: str, direction: str, kind: type) -> tuple[Any, str] | None:
    """?after= / ?before=: an Open Orders cursor of this sort and direction, as (value, order_number); else 400."""
    raw = request.query.get(name) or ""
    if not raw:
        return None
    bad = BadRequest(f"{name} is not a valid Open Orders cursor (it may have been cut or changed); "
                     "start again from the first page")
    if len(raw) > ORDER_CURSOR_MOST:
        raise bad
    try:
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        tag, payload = data[:_TAG], data[_TAG:]
        if not hmac.compare_digest(tag, _order_tag(payload)):
            raise bad
        cursor_sort, cursor_direction, value, order_number = json.loads(payload)
    except (ValueError, TypeError):
        raise bad from None
    if not all(isinstance(x, str) for x in (cursor_sort, cursor_direction, order_number)) or not isinstance(value, (str, type(None))):
        raise bad
    if (cursor_sort, cursor_direction) != (sort, direction):
        raise BadRequest(f"{name} is a cursor of another order (sort={cursor_sort[:20]}, dir={cursor_direction[:4]}); "
                         "keep its sort and dir, or start again from the first page")
    if value is None:
        return None, order_number
    try:
        if kind is date:
            return date.fromisoformat(value), order_number
        if kind is Decimal:
            amount = Decimal(value)
            if not amount.is_finite():
                raise bad
            return amount, order_number
    except (ValueError, InvalidOperation):
        raise bad from None
    return value, order_number


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


# Search, failure groups, run tools (issue 17) ------------------------------------------------------

LEVELS = ("debug", "info", "warning", "error")
SEARCH_SHORTEST = 3  # a trigram index answers from three characters on
SEARCH_LONGEST = 200
FINGERPRINT_PATTERN = re.compile(r"^[0-9a-f]{16}$")


def fingerprint(request: web.Request) -> str | None:
    """?fingerprint=, an error's fingerprint (16 hex digits), for "the same error as this run"."""
    value = request.query.get("fingerprint") or None
    if value is not None and not FINGERPRINT_PATTERN.match(value):
        raise BadRequest("fingerprint must be 16 hexadecimal digits, as a failure group shows it")
    return value


def flag(request: web.Request, name: str) -> bool:
    """?<name>=yes (or 1, true, on): a checkbox."""
    value = (request.query.get(name) or "").lower()
    if value not in ("", "yes", "1", "true", "on", "no", "0", "false", "off"):
        raise BadRequest(f"{name} must be yes or no")
    return value in ("yes", "1", "true", "on")


def level(request: web.Request) -> str | None:
    """?level=: show messages of this level and above."""
    return choice(request, "level", LEVELS)


def levels_from(lowest: str | None) -> list[str] | None:
    """The levels shown from `lowest` up; None for all of them."""
    return list(LEVELS[LEVELS.index(lowest):]) if lowest and lowest != LEVELS[0] else None


def at(request: web.Request) -> int | None:
    """?at=, the seq of a message to show (a deep link): the page it is on is loaded."""
    raw = request.query.get("at") or ""
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 10 or int(raw) < 1:
        raise BadRequest("at must be the seq of a message (a whole number from 1)")
    return int(raw)


def moment(request: web.Request, name: str, zone: Any, *, end: bool = False) -> datetime | None:
    """?since= / ?until=: a date (YYYY-MM-DD) or a local time (YYYY-MM-DDTHH:MM[:SS]) in the configured zone.
    A date as `until` means the end of that day."""
    raw = (request.query.get(name) or "").strip()
    if not raw:
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            value = datetime.strptime(raw, "%Y-%m-%d") + (timedelta(days=1) if end else timedelta())
        else:
            value = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a date such as 2026-12-03 or a time such as 2026-12-03T08:30") from None
    return value.replace(tzinfo=zone) if value.tzinfo is None else value


def search_filter(request: web.Request, zone: Any) -> dict[str, Any]:
    """The search's text, filters and cursor (the search page and /api/search)."""
    text = (request.query.get("q") or "").strip()
    if len(text) < SEARCH_SHORTEST:
        raise BadRequest(f"search for at least {SEARCH_SHORTEST} characters (q=...)")
    if len(text) > SEARCH_LONGEST:
        raise BadRequest(f"search text is limited to {SEARCH_LONGEST} characters")
    if any(ord(char) < 32 for char in text):
        raise BadRequest("search text cannot contain control characters")
    since, until = moment(request, "since", zone), moment(request, "until", zone, end=True)
    if since and until and since >= until:
        raise BadRequest("since must be before until")
    raw_run = request.query.get("run") or None
    if raw_run is not None and not NAME_PATTERN.match(raw_run):
        raise BadRequest("run must be a run name such as 20261129215442")
    raw_before = request.query.get("before") or ""
    if raw_before and (not raw_before.isdigit() or len(raw_before) > 18):
        raise BadRequest("the page cursor is not valid; start again from the first page")
    return {
        "text": text, "job": job(request), "status": choice(request, "status", STATUSES), "since": since,
        "until": until, "run": raw_run, "before": int(raw_before) if raw_before else None,
    }


def other_run_name(request: web.Request) -> str:
    """The {other} in /runs/{name}/compare/{other}."""
    name = request.match_info["other"]
    if not NAME_PATTERN.match(name):
        raise NotFound(f"There is no run named {name[:40]!r}; run names look like 20261129215442.")
    return name
