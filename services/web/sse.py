"""The live feed: server-sent events of run updates for the index and a run page.

services.web.live follows NATS and fans the events out (RunFeed); this module turns each into
the same badges and formats the server-rendered rows use, and streams them to the browser.

Nothing is missed across a reconnection. Every event has an id: on a run's stream the run's event
seq, on the index's the projection version the stream started from. A stream resumes from the
browser's Last-Event-ID, or on its first connection from what the page rendered (?after= the run's
last seq, ?since= the projection version): it subscribes first, then replays from the database what
came after that point, then goes live, dropping live events the replay already covered (by seq).
Replayed and live updates are idempotent in the page (a status never moves back; a message is
keyed), so an overlap shows nothing twice.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from services.contracts import RunEvent, StepLogged
from services.contracts.statuses import TERMINAL
from services.web import params, queries
from services.web.directory import WorkerDirectory
from services.web.keys import DIRECTORY, FEED, SETTINGS
from services.web.live import Listener, run_update
from services.web.present import Row, badge, format_clock, format_duration, format_when, run_state, summary

SSE_PING_SECONDS = 15.0
# How often a stream looks for workers that were lost or came back (their runs' "stalled" state).
TICK_SECONDS = 1.0


def live_run(event: RunEvent, zone: ZoneInfo, directory: WorkerDirectory) -> dict[str, Any]:
    """A run-level event as the index row and run header show it."""
    update = run_update(event)
    status = update["status"]
    shown = {"status": status, "stats": update.get("stats") or {}, "error_message": update.get("error_message")}
    state = run_state({"status": status, "worker_id": update.get("worker_id"), "stats": update.get("stats")}, directory)
    return {
        "name": event.name, "job": event.job, "status": status, "state": state, "seq": event.seq,
        "badge": badge(state),
        "started": format_when(update["started_at"], zone) if "started_at" in update else None,
        "started_iso": update["started_at"].isoformat() if "started_at" in update else None,
        "created": format_when(update["created_at"], zone) if "created_at" in update else None,
        "finished": format_when(update["finished_at"], zone, millis=True) if "finished_at" in update else None,
        "finished_iso": update["finished_at"].isoformat() if "finished_at" in update else None,
        "duration": format_duration(update["duration_ms"]) if update.get("duration_ms") is not None else None,
        "summary": summary(shown) if status in TERMINAL else None,
        "url": f"/runs/{event.name}",
    }


def row_run(run: Row, zone: ZoneInfo) -> dict[str, Any]:
    """A run as the database has it now, in the same shape as live_run."""
    status, started, finished = run["status"], run["started_at"], run["finished_at"]
    final = status in TERMINAL and run["live_duration_ms"] is not None
    return {
        "name": run["name"], "job": run["job"], "status": status, "state": run["state"], "seq": run["last_seq"],
        "badge": badge(run["state"]),
        "started": format_when(started, zone) if started else None,
        "started_iso": started.isoformat() if started else None,
        "created": format_when(run["created_at"], zone),
        "finished": format_when(finished, zone, millis=True) if finished else None,
        "finished_iso": finished.isoformat() if finished else None,
        "duration": format_duration(run["live_duration_ms"]) if final else None,
        "summary": run["summary"] if status in TERMINAL else None,
        "url": f"/runs/{run['name']}",
        "insert": run.get("insert", True),
    }


def live_step(event: StepLogged, zone: ZoneInfo) -> dict[str, Any]:
    return {
        "key": event.key, "message": event.message, "level": event.level, "seq": event.seq, "first_seq": event.seq,
        "at": format_when(event.occurred_at, zone, millis=True), "iso": event.occurred_at.isoformat(),
        "clock": format_clock(event.occurred_at, zone), "updated_iso": event.occurred_at.isoformat(),
    }


def row_step(detail: Row, zone: ZoneInfo) -> dict[str, Any]:
    """A detail as the database has it now: first logged at first_seq, last changed at seq."""
    return {
        "key": detail["key"], "message": detail["message"], "level": detail["level"],
        "seq": detail["seq"], "first_seq": detail["first_seq"],
        "at": format_when(detail["created_at"], zone, millis=True), "iso": detail["created_at"].isoformat(),
        "clock": format_clock(detail["updated_at"], zone), "updated_iso": detail["updated_at"].isoformat(),
    }


async def _next(listener: Listener) -> RunEvent | str | None:
    """The next live event, None at the end of the stream, "tick" when a tick passed without one."""
    try:
        return await asyncio.wait_for(listener.queue.get(), TICK_SECONDS)
    except asyncio.TimeoutError:
        return "tick"


def _lost(directory: WorkerDirectory) -> set[str]:
    return {beat.worker_id for beat in directory.lost()}


async def _send(response: EventSourceResponse, data: dict[str, Any], event: str, id: int) -> None:
    await response.send(json.dumps(data), event=event, id=str(id))


async def runs_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of every run's status, for the index."""
    app, since = request.app, params.resume_point(request, "since")
    zone, directory, feed = app[SETTINGS].zone, app[DIRECTORY], app[FEED]
    listener = feed.listen(None)  # before the replay's read: nothing falls between the two
    response = web.StreamResponse()
    try:
        version, rows = await queries.index_replay(app, since)
        lost = _lost(directory)
        async with sse_response(request, ping_interval=SSE_PING_SECONDS) as response:
            await _send(response, {"run": None, "since": version}, "hello", version)
            for row in rows:
                await _send(response, row_run(row, zone), "run", version)
            while response.is_connected():
                event = await _next(listener)
                if event is None:
                    break
                if isinstance(event, str):
                    now_lost = _lost(directory)
                    if now_lost != lost:  # their runs turn stalled, or back to processing
                        for row in await queries.runs_of_workers(app, sorted(now_lost ^ lost)):
                            await _send(response, {**row_run(row, zone), "insert": False}, "run", version)
                        lost = now_lost
                elif not isinstance(event, StepLogged):
                    await _send(response, live_run(event, zone, directory), "run", version)
    except ConnectionResetError:  # the browser went away; it reconnects if it wants more
        pass
    finally:
        feed.leave(listener)
    return response


async def run_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of one run: its status and its new or updated messages."""
    app, name = request.app, params.run_name(request)
    after = params.resume_point(request, "after") or 0
    zone, directory, feed = app[SETTINGS].zone, app[DIRECTORY], app[FEED]
    listener = feed.listen(name)  # before the replay's read: nothing falls between the two
    response = web.StreamResponse()
    try:
        run, details = await queries.run_replay(app, name, after)
        high = after  # every event up to this seq is in the replay (or was already on the page)
        async with sse_response(request, ping_interval=SSE_PING_SECONDS) as response:
            await _send(response, {"run": name, "after": after}, "hello", after)
            for detail in details:
                high = max(high, detail["seq"])
                await _send(response, row_step(detail, zone), "step", detail["seq"])
            if run is not None and run["last_seq"] > after:
                high = max(high, run["last_seq"])
                await _send(response, row_run(run, zone), "run", high)
            worker = run["worker_id"] if run is not None else None
            alive = directory.is_alive(worker)
            while response.is_connected():
                event = await _next(listener)
                if event is None:
                    break
                if isinstance(event, str):
                    if directory.is_alive(worker) != alive:  # its worker was lost, or is back: stalled or not
                        alive = directory.is_alive(worker)
                        now, _ = await queries.run_replay(app, name, 1 << 62)
                        if now is not None:
                            await _send(response, row_run(now, zone), "run", high)
                elif event.seq > high:
                    if isinstance(event, StepLogged):
                        await _send(response, live_step(event, zone), "step", event.seq)
                    else:
                        await _send(response, live_run(event, zone, directory), "run", event.seq)
    except ConnectionResetError:  # the browser went away; it reconnects if it wants more
        pass
    finally:
        feed.leave(listener)
    return response
