"""Prometheus metrics of the web: requests, runs by status, and how far the recorder is behind.

With one web process, each app has a registry of its own (tests build several apps in one process).
With several (JOBLOG_WEB_PROCESSES), prometheus_client's multiprocess mode: the supervisor gives the
processes one directory (PROMETHEUS_MULTIPROC_DIR, set before they import prometheus_client), each
process writes its values there, and a scrape, whichever process answers it, adds up every process's
counters and histograms (those of processes that died included, so totals never go back) and takes
each gauge's most recent value (they are set from Postgres and NATS at scrape time).
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# The routes of the server-sent event streams (services.web.routes), kept out of the latency histogram.
STREAMS = frozenset({"runs_events", "run_events"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Metrics:
    """One registry per app, so several apps (tests) never share counters; or, given the multiprocess
    directory of several web processes, the sum of them all."""

    def __init__(self, shared_dir: str | None = None) -> None:
        self.shared_dir = shared_dir
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "joblog_web_requests", "HTTP requests served.", ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "joblog_web_request_seconds", "Time to answer an HTTP request.", ["route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        # Set at scrape time from Postgres and NATS: with several processes, the last one set is the truth.
        gauge: dict[str, Any] = {"registry": self.registry, "multiprocess_mode": "mostrecent"}
        self.runs = Gauge("joblog_runs", "Runs in the projection, by status.", ["status"], **gauge)
        self.dead_letters = Gauge("joblog_dead_letters", "Messages the recorder could not apply.", **gauge)
        self.pending = Gauge("joblog_recorder_pending_events", "Events not yet delivered to the recorder.", **gauge)
        self.ack_pending = Gauge("joblog_recorder_ack_pending_events", "Events delivered to the recorder, not yet acknowledged.", **gauge)
        self.redelivered = Gauge("joblog_recorder_redelivered_events", "Events being redelivered to the recorder.", **gauge)
        self.lag = Gauge("joblog_recorder_lag_seconds", "Age of the oldest event the recorder has not applied yet; 0 when caught up.", **gauge)
        self.workers = Gauge("joblog_workers_online", "Workers that sent a heartbeat recently.", **gauge)

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
        registry = self.registry
        if self.shared_dir is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.shared_dir)
        response = web.Response(body=generate_latest(registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response
