"""The read model for finding what went wrong: search across runs, a run page's tools (deep links,
level filter, step durations, timeline), failure groups, comparing two runs, downloads.

Like services.web.queries: takes the app and checked parameters, never a request; shared by the
pages and the JSON API.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from aiohttp import web

from services.contracts.statuses import TERMINAL
from services.web import db, investigate_db
from services.web.errors import BadRequest, NotFound
from services.web.keys import DIRECTORY, PAGE_CACHE, POOL, SETTINGS
from services.web.present import (
    Row, badge_html, detail_items, epoch_ms, highlight, message_link, present_run, stats_items, timeline_parts,
)

SEARCH_PER_PAGE = 50
ERRORS_ON_SEARCH = 10
TIMELINE_STEPS = 1000
GROUPS_SHOWN = 100
RUNS_PER_GROUP = 5
COMPARE_STEPS = 2000
EXPORT_CHUNK = 2000


async def search(app: web.Application, filters: dict[str, Any], limit: int = SEARCH_PER_PAGE) -> dict[str, Any]:
    """Messages (and, on the first page, failed runs' errors) that contain the text, newest first."""
    text = filters["text"]
    try:
        async with app[POOL].acquire() as conn, investigate_db.search_transaction(conn):
            errors = [] if filters.get("before") else await investigate_db.search_errors(conn, filters, ERRORS_ON_SEARCH)
            rows = await investigate_db.search_details(conn, filters, limit + 1)  # last: it changes settings
    except asyncpg.QueryCanceledError:
        raise BadRequest("this search matches too much to answer quickly: add a job, a status or a time range, "
                         "or search for a longer text") from None
    more = len(rows) > limit
    rows = rows[:limit]
    results = []
    for row in rows:
        message = row["message"]
        if text.lower() in message.lower():
            field, parts = "message", highlight(message, text)
        elif text.lower() in row["key"].lower():
            field, parts = "key", highlight(message, text)
        else:
            field, parts = "data", highlight(row["data_text"] or "", text)
        results.append(Row(
            id=row["id"], key=row["key"], level=row["level"], message=message, seq=row["first_seq"],
            created_at=row["created_at"], field=field, parts=parts, url=message_link(row["name"], row["first_seq"]),
            run=Row(name=row["name"], job=row["job"], status=row["status"], created_at=row["run_created_at"],
                    started_at=row["started_at"], url=f"/runs/{row['name']}"),
        ))
    failed = [Row(dict(r), parts=highlight(f"{r['error_class']}: {r['error_message']}" if r["error_class"] else r["error_message"], text),
                  url=f"/runs/{r['name']}") for r in errors]
    return {"results": results, "errors": failed, "next_cursor": str(rows[-1]["id"]) if more and rows else None}


async def run_page(
    app: web.Application, name: str, after: int, at: int | None, levels: list[str] | None, per_page: int
) -> dict[str, Any]:
    """Everything a run page shows: the run, the page of messages (the one holding seq `at`, if given), each
    message's time until the next, the timeline, how complete its events are, its error's group, and the
    run to compare it with. One round trip (two for `at`); the long parts of a run that has ended are reused
    while the run does not change (PageCache.run_parts), and then not even read."""
    held = app[PAGE_CACHE].run_parts
    async with app[POOL].acquire() as conn:
        if at is not None:
            after = await investigate_db.page_after(conn, name, at, per_page, levels)
        key = (name, after, tuple(levels) if levels else None)
        known = held.version(key)
        found = await investigate_db.run_page(conn, name, after, per_page, levels, known, TIMELINE_STEPS + 1)
    if found is None:
        raise NotFound(f"There is no run named {name}. It may have been deleted.")
    run = present_run(found, app[DIRECTORY])
    version = found["page_version"]
    parts = held.get(key, version) if known == version else None
    if parts is None:
        parts = run_parts(run, found, after, levels, per_page, app[SETTINGS].zone)
        if run["status"] in TERMINAL:  # an open run's parts show the time so far
            held.put(key, version, parts, parts["size"])
    group = found["error_group"]
    previous = found["previous_success"]
    return {
        **parts, "run": run, "after": after, "previous_success": previous if previous != name else None,
        "badge_html": badge_html(run["state"]), "stats_html": stats_items(run["stats"]) if run["stats"] else "",
        "group": Row(runs=group[0], first_seen=group[1]) if group else None,
    }


def run_parts(run: dict[str, Any], found: asyncpg.Record, after: int, levels: list[str] | None, per_page: int,
              zone: ZoneInfo) -> dict[str, Any]:
    """The long parts of a run page, as HTML (present.detail_items, present.timeline_parts), from RUN_PAGE's row."""
    rows = found["details"] or []
    more = len(rows) > per_page
    shown = rows[:per_page]
    end = run["finished_at"] or (datetime.now(timezone.utc) if run["status"] == "processing" else run["updated_at"])
    end_ms = epoch_ms(end)
    times = [epoch_ms(row[5]) for row in rows]
    # Each message's time until the next (the run's end after the last, when the page holds the run's end).
    took: list[int | None]
    if levels:
        took = [None] * len(shown)
    else:
        took = [max(0, b - a) for a, b in zip(times, times[1:] if more else [*times[1:], end_ms])]
    failed_step = run["failed_step"] if run["status"] == "error" else None
    items = detail_items(run["name"], shown, failed_step, took, zone)
    # The timeline: this page's rows when they are the whole run, else the run's first TIMELINE_STEPS steps.
    if found["steps"] is None:
        steps = [(row[0], row[2], row[3], at_ms, times[i + 1] if i + 1 < len(times) else None)
                 for i, (row, at_ms) in enumerate(zip(rows, times))]
    else:
        steps = [(key, level, seq, epoch_ms(created_at), None if next_at is None else epoch_ms(next_at))
                 for key, level, seq, created_at, next_at in found["steps"]]
    line = timeline(run, steps[:TIMELINE_STEPS], end_ms)
    rects, slowest = timeline_parts(run["name"], line["segments"], line["slowest"]) if line else ("", "")
    return {
        "details_html": items, "shown": len(shown), "total_details": found["total"] or 0,
        "next_after": shown[-1][3] if more else None,
        "timeline": {"span_ms": line["span_ms"], "count": len(line["segments"]), "rects": rects, "slowest": slowest} if line else None,
        "timeline_cut": len(steps) > TIMELINE_STEPS, "size": len(items) + len(rects) + len(slowest) + 200,
    }


def timeline(run: dict[str, Any], steps: list[tuple[str, str, int, int, int | None]], end_ms: int) -> dict[str, Any] | None:
    """The run's steps (key, level, first_seq, when it was logged and when the next one was, in ms since the
    epoch) as segments of a bar (key, level, seq, took_ms, x and width in per mille of the run) and the
    slowest five of them."""
    if not steps:
        return None
    origin = min(epoch_ms(run["started_at"] or run["created_at"]), steps[0][3])
    last = max(end_ms, steps[-1][3])
    span = max(1, last - origin)
    scale = 1000 / span
    segments = []
    for key, level, seq, at_ms, next_ms in steps:
        took = max(0, (last if next_ms is None else next_ms) - at_ms)
        segments.append((key, level, seq, took, round((at_ms - origin) * scale, 2), round(max(took * scale, 0.6), 2)))
    slowest = sorted(segments, key=lambda s: (-s[3], s[2]))[:5]
    return {"segments": segments, "slowest": slowest, "span_ms": span}


async def failure_groups(app: web.Application, since: datetime | None, job: str | None) -> list[Row]:
    """Failed runs grouped by the fingerprint of their error, with the newest runs of each group."""
    async with app[POOL].acquire() as conn:
        groups = await investigate_db.failure_groups(conn, since, job, GROUPS_SHOWN)
        runs = await investigate_db.runs_of_group(conn, [g["fingerprint"] for g in groups], RUNS_PER_GROUP)
    directory = app[DIRECTORY]
    by_group: dict[str, list[Row]] = {}
    for row in runs:
        by_group.setdefault(row["fingerprint"], []).append(present_run(row, directory))
    return [Row(dict(g), runs=by_group.get(g["fingerprint"], []), url=f"/?fingerprint={g['fingerprint']}") for g in groups]


async def compare(app: web.Application, name: str, other: str) -> dict[str, Any]:
    """Two runs step by step: steps only in one, changed messages, durations and statistics side by side."""
    async with app[POOL].acquire() as conn:
        runs = [await db.get_run(conn, n) for n in (name, other)]
        for n, found in zip((name, other), runs):
            if found is None:
                raise NotFound(f"There is no run named {n}. It may have been deleted.")
        steps = [await investigate_db.step_times(conn, r["id"], COMPARE_STEPS + 1) for r in runs]  # type: ignore[index]
    a, b = (present_run(r, app[DIRECTORY]) for r in runs)  # type: ignore[arg-type]
    ends = [r["finished_at"] or r["updated_at"] for r in (a, b)]
    timed = [{s["key"]: (s, max(0, epoch_ms(s["next_at"] or end) - epoch_ms(s["created_at"])))
              for s in found[:COMPARE_STEPS]} for found, end in zip(steps, ends)]
    keys = list(timed[0]) + [k for k in timed[1] if k not in timed[0]]
    rows = []
    for key in keys:
        left, right = timed[0].get(key), timed[1].get(key)
        if left and right:
            change = "same" if left[0]["message"] == right[0]["message"] and left[0]["level"] == right[0]["level"] else "changed"
        else:
            change = "only_a" if left else "only_b"
        rows.append(Row(
            key=key, change=change, a=Row(left[0], took_ms=left[1]) if left else None,
            b=Row(right[0], took_ms=right[1]) if right else None,
            delta_ms=(right[1] - left[1]) if left and right else None,
        ))
    stats_a, stats_b = a["stats"] or {}, b["stats"] or {}
    stats = []
    for key in list(stats_a) + [k for k in stats_b if k not in stats_a]:
        va, vb = stats_a.get(key), stats_b.get(key)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb))
        stats.append(Row(key=key, a=va, b=vb, delta=(vb - va) if numeric else None, same=va == vb))  # type: ignore[operator]
    counts = {c: sum(1 for r in rows if r["change"] == c) for c in ("same", "changed", "only_a", "only_b")}
    return {"a": a, "b": b, "steps": rows, "stats": stats, "counts": counts,
            "cut": any(len(s) > COMPARE_STEPS for s in steps),
            "duration_delta_ms": (b["live_duration_ms"] - a["live_duration_ms"])
            if a["live_duration_ms"] is not None and b["live_duration_ms"] is not None else None}


async def export(app: web.Application, name: str) -> tuple[Row, AsyncIterator[list[asyncpg.Record]]]:
    """A run and all its messages, read a chunk at a time (keyset on seq), for a download."""
    async with app[POOL].acquire() as conn:
        found = await db.get_run(conn, name)
    if found is None:
        raise NotFound(f"There is no run named {name}. It may have been deleted.")

    async def chunks() -> AsyncIterator[list[asyncpg.Record]]:
        after = 0
        while True:
            async with app[POOL].acquire() as conn:
                rows = await investigate_db.details_for_export(conn, found["id"], after, EXPORT_CHUNK)
            if not rows:
                return
            yield rows
            if len(rows) < EXPORT_CHUNK:
                return
            after = rows[-1]["first_seq"]

    return present_run(found, app[DIRECTORY]), chunks()


def as_json(value: Any) -> Any:
    """A detail's data column as a value (asyncpg gives jsonb as text)."""
    return json.loads(value) if isinstance(value, str) else value


def since_days(days: int | None) -> datetime | None:
    return datetime.now(timezone.utc) - timedelta(days=days) if days else None
