"""The live feed: server-sent events of run updates for the index and a run page.

services.web.live follows NATS and fans the events out (RunFeed); this module turns each into
the same badges and formats the server-rendered rows use, and streams them to the browser.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from aiohttp_sse import sse_response

from services.contracts import RunEvent, StepLogged
from services.web import params
from services.web.keys import FEED, SETTINGS
from services.web.live import run_update
from services.web.present import badge, format_clock, format_duration, format_when, summary

SSE_PING_SECONDS = 15.0


def live_run(event: RunEvent, zone: ZoneInfo) -> dict[str, Any]:
    """A run-level event as the index row and run header show it."""
    update = run_update(event)
    status = update["status"]
    shown = {"status": status, "stats": update.get("stats") or {}, "error_message": update.get("error_message")}
    return {
        "name": event.name, "job": event.job, "status": status, "seq": event.seq,
        "badge": badge(status),
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
    return await _stream(request, params.run_name(request))
