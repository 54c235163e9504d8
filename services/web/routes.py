"""URL map of the web service."""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.web import api, views


def setup_routes(app: web.Application, static: Path) -> None:
    app.router.add_get("/", views.index, name="index")
    app.router.add_get("/runs/{name}", views.run_detail, name="run")
    app.router.add_post("/runs/{name}/delete", views.delete_run, name="delete_run")
    app.router.add_post("/retention", views.delete_older, name="delete_older")
    app.router.add_get("/open_orders", views.open_orders, name="open_orders")
    app.router.add_get("/monitor", views.monitor, name="monitor")
    app.router.add_post("/jobs/{job}/run", views.run_now, name="run_now")
    app.router.add_get("/events/runs", views.runs_events, name="runs_events")
    app.router.add_get("/runs/{name}/events", views.run_events, name="run_events")

    app.router.add_get("/api/runs", api.list_runs)
    app.router.add_get("/api/runs/{name}", api.get_run)
    app.router.add_get("/api/open_orders", api.list_open_orders)
    app.router.add_get("/api/jobs", api.list_jobs)
    app.router.add_post("/api/jobs/{job}/trigger", api.trigger)
    app.router.add_get("/api/openapi.json", api.openapi)

    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/metrics", views.metrics)
    app.router.add_static("/static", static, name="static", append_version=True)
