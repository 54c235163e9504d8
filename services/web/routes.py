"""URL map of the web service: which module answers which URL.

pages (HTML), actions (POSTs that publish), sse (the live feed), api (JSON), operations (probes, metrics).
"""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.web import actions, api, api_commands, downloads, jobpage, operate, operations, pages, sse


def setup_routes(app: web.Application, static: Path) -> None:
    app.router.add_get("/", pages.index, name="index")
    app.router.add_get("/runs/{name}", pages.run_detail, name="run")
    app.router.add_get("/open_orders", pages.open_orders, name="open_orders")
    app.router.add_get("/monitor", jobpage.monitor, name="monitor")
    app.router.add_get("/monitor/live", jobpage.monitor_live, name="monitor_live")
    app.router.add_get("/jobs/{job}", jobpage.job_page, name="job")
    app.router.add_get("/commands/{command_id}", operate.command_run, name="command")
    app.router.add_get("/retry_failed", operate.bulk_retry_page, name="bulk_retry_page")
    app.router.add_get("/search", pages.search, name="search")
    app.router.add_get("/failures", pages.failures, name="failures")
    app.router.add_get("/runs/{name}/compare/{other}", pages.compare, name="compare")
    app.router.add_get("/runs/{name}/download.txt", downloads.as_text, name="download_text")
    app.router.add_get("/runs/{name}/download.json", downloads.as_json, name="download_json")

    app.router.add_post("/runs/{name}/delete", actions.delete_run, name="delete_run")
    app.router.add_post("/retention", actions.delete_older, name="delete_older")
    app.router.add_post("/jobs/{job}/run", actions.run_now, name="run_now")
    app.router.add_post("/jobs/{job}/pause", operate.pause, name="pause")
    app.router.add_post("/jobs/{job}/resume", operate.resume, name="resume")
    app.router.add_post("/runs/{name}/cancel", operate.cancel, name="cancel_run")
    app.router.add_post("/retry_failed", operate.bulk_retry, name="bulk_retry")

    app.router.add_get("/events/runs", sse.runs_events, name="runs_events")
    app.router.add_get("/runs/{name}/events", sse.run_events, name="run_events")

    app.router.add_get("/api/runs", api.list_runs)
    app.router.add_get("/api/runs/{name}", api.get_run)
    app.router.add_get("/api/open_orders", api.list_open_orders)
    app.router.add_get("/api/jobs", api.list_jobs)
    app.router.add_get("/api/actions", api.list_actions)
    app.router.add_get("/api/search", api.search)
    app.router.add_post("/api/jobs/{job}/trigger", api.trigger)
    app.router.add_get("/api/commands/{command_id}", api_commands.command_status)
    app.router.add_get("/api/openapi.json", api.openapi)

    app.router.add_get("/healthz", operations.healthz)
    app.router.add_get("/readyz", operations.readyz)
    app.router.add_get("/metrics", operations.metrics)
    app.router.add_static("/static", static, name="static", append_version=True)
