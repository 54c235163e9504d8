"""Operations endpoints: /healthz (the process answers), /readyz (Postgres and NATS reachable), /metrics."""
from __future__ import annotations

import os

from aiohttp import web

from services.contracts.statuses import STATUSES
from services.web import queries
from services.web.keys import DIRECTORY, METRICS, NATS_CONNECTION, POOL


async def healthz(request: web.Request) -> web.Response:
    # Which process answered: with several web processes (JOBLOG_WEB_PROCESSES), for operators and tests.
    return web.json_response({"status": "ok", "process": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    checks = {"postgres": False, "nats": request.app[NATS_CONNECTION].is_connected}
    try:
        async with request.app[POOL].acquire(timeout=2) as conn:
            checks["postgres"] = await conn.fetchval("SELECT true")
    except Exception:
        checks["postgres"] = False
    ok = all(checks.values())
    return web.json_response({"status": "ready" if ok else "unavailable", **checks}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; the gauges are read when scraped."""
    registry = request.app[METRICS]
    by_status = await queries.runs_by_status(request.app)
    for status in STATUSES:
        registry.runs.labels(status).set(by_status.get(status, 0))
    health = await queries.recorder_health(request.app)
    registry.dead_letters.set(health["dead_total"])
    if health["consumer"] is not None:
        registry.pending.set(health["consumer"]["pending"])
        registry.ack_pending.set(health["consumer"]["ack_pending"])
        registry.redelivered.set(health["consumer"]["redelivered"])
    if health["lag_seconds"] is not None:
        registry.lag.set(health["lag_seconds"])
    registry.workers.set(len(request.app[DIRECTORY].online()))
    return registry.render()
