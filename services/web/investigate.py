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

import asyncpg
from aiohttp import web

from services.web import db, investigate_db
from services.web.errors import BadRequest, NotFound
from services.web.keys import DIRECTORY, POOL
from services.web.present import Row, epoch_ms, highlight, message_link, present_run

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
        async with app[POOL].acquire() as conn:
            rows = await investigate_db.search_details(conn, filters, limit + 1)
            errors = [] if filters.get("before") else await investigate_db.search_errors(conn, filters, ERRORS_ON_SEARCH)
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
    run to compare it with."""
    async with app[POOL].acquire() as conn:
        found = await db.get_run(conn, name)
        if found is None:
            raise NotFound(f"There is no run named {name}. It may have been deleted.")
        if at is not None:
            after = await investigate_db.page_after(conn, found["id"], at, per_page, levels)
        rows = await db.list_details(conn, found["id"], after, per_page + 1, levels)
        more = len(rows) > per_page
        total = await db.count_details(conn, found["id"], levels) if more or after or levels else min(len(rows), per_page)
        if after == 0 and not levels and not more:  # the page holds every message: the timeline is these
            steps = [Row(row, next_at=rows[i + 1]["created_at"] if i + 1 < len(rows) else None) for i, row in enumerate(rows)]
        else:
            steps = await investigate_db.step_times(conn, found["id"], TIMELINE_STEPS + 1)
        group = await investigate_db.error_group(conn, found["error_fingerprint"]) if found["error_fingerprint"] else None
        previous = await investigate_db.previous_success(conn, found["job"], found["created_at"], found["id"])
    run = present_run(found, app[DIRECTORY])
    end = run["finished_at"] or (datetime.now(timezone.utc) if run["status"] == "processing" else run["updated_at"])
    details = []
    for i, row in enumerate(rows[:per_page]):
        following = rows[i + 1]["created_at"] if i + 1 < len(rows) else (end if not more and not levels else None)
        took = max(0, epoch_ms(following) - epoch_ms(row["created_at"])) if following and not levels else None
        details.append(Row(row, took_ms=took, url=message_link(name, row["first_seq"])))
    return {
        "run": run, "details": details, "total_details": total, "after": after,
        "next_after": rows[per_page - 1]["first_seq"] if more else None,
        "timeline": timeline(run, steps[:TIMELINE_STEPS], end), "timeline_cut": len(steps) > TIMELINE_STEPS,
        "group": group, "previous_success": previous if previous != name else None,
    }


def timeline(run: dict[str, Any], steps: list[Any], end: datetime) -> dict[str, Any] | None:
    """The run's steps as segments of a bar (x and width in per mille of the run) and the slowest of them."""
    if not steps:
        return None
    start = run["started_at"] or run["created_at"]
    begin, finish = min(start, steps[0]["created_at"]), max(end, steps[-1]["created_at"])
    span = max(1, epoch_ms(finish) - epoch_ms(begin))
    segments = []
    for step in steps:
        until = step["next_at"] or finish
        took = max(0, epoch_ms(until) - epoch_ms(step["created_at"]))
        x = (epoch_ms(step["created_at"]) - epoch_ms(begin)) * 1000 / span
        segments.append(Row(key=step["key"], level=step["level"], seq=step["first_seq"], took_ms=took,
                            x=round(x, 2), width=round(max(took * 1000 / span, 0.6), 2)))
    slowest = sorted(segments, key=lambda s: (-s["took_ms"], s["seq"]))[:5]
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
