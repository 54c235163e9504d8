"""URL map of the web service."""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.web import views


def setup_routes(app: web.Application, static: Path) -> None:
    app.router.add_get("/", views.index, name="index")
    app.router.add_get("/runs/{name}", views.run_detail, name="run")
    app.router.add_get("/open_orders", views.open_orders, name="open_orders")
    app.router.add_get("/monitor", views.monitor, name="monitor")
    app.router.add_post("/jobs/{job}/run", views.run_now, name="run_now")
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_static("/static", static, name="static", append_version=True)
