"""Prometheus metrics of the web: requests, runs by status, and how far the recorder is behind."""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# The routes of the server-sent event streams (services.web.routes), kept out of the latency histogram.
STREAMS = frozenset({"runs_events", "run_events"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "joblog_web_requests", "HTTP requests served.", ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "joblog_web_request_seconds", "Time to answer an HTTP request.", ["route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.runs = Gauge("joblog_runs", "Runs in the projection, by status.", ["status"], registry=self.registry)
        self.dead_letters = Gauge("joblog_dead_letters", "Messages the recorder could not apply.", registry=self.registry)
        self.pending = Gauge("joblog_recorder_pending_events", "Events not yet delivered to the recorder.", registry=self.registry)
        self.ack_pending = Gauge("joblog_recorder_ack_pending_events", "Events delivered to the recorder, not yet acknowledged.", registry=self.registry)
        self.redelivered = Gauge("joblog_recorder_redelivered_events", "Events being redelivered to the recorder.", registry=self.registry)
        self.lag = Gauge("joblog_recorder_lag_seconds", "Age of the oldest event the recorder has not applied yet; 0 when caught up.", registry=self.registry)
        self.workers = Gauge("joblog_workers_online", "Workers that sent a heartbeat recently.", registry=self.registry)

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as error:
                status = error.status
                raise
            finally:
                # Label by route pattern, never by raw path: run names would explode the series.
                route = request.match_info.route.resource
                label = route.canonical if route is not None else "unmatched"
                self.requests.labels(label, request.method, str(status)).inc()
                # A live stream lasts as long as its page is open: its time is no request latency.
                if request.match_info.route.name not in STREAMS:
                    self.latency.labels(label).observe(time.perf_counter() - started)

        return count

    def render(self) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response
