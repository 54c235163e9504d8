"""Secrets never leave the process: a source URL full of them, failing in a real worker, shows them nowhere."""
from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from joblog.logs import configure
from services.log_recorder.main import run as run_recorder
from joblog.trigger import send_trigger
from services.sync_worker.main import run as run_worker
from tests.sync_worker.conftest import finished_runs

PASSWORD, API_KEY = "s3cret-pw-7141", "K3y-0f-th3-API-2209"


@pytest.fixture
def service_logs() -> Iterator[Callable[[], str]]:
    """The services' log lines exactly as a deployment renders them (joblog.logs.configure, JSON), captured."""
    root = logging.getLogger()
    level = root.level
    configure("INFO", "json")
    structlog.configure(cache_logger_on_first_use=False)  # so the setup can be undone after the test
    ours = root.handlers[0]
    assert isinstance(ours, logging.StreamHandler)
    lines = io.StringIO()
    ours.setStream(lines)  # the same handler and formatter (redaction included), into a buffer instead of stderr
    yield lines.getvalue
    structlog.reset_defaults()
    root.removeHandler(ours)
    root.setLevel(level)


async def test_a_source_url_with_credentials_failing_in_a_worker_shows_them_nowhere(
    client, services, make_worker_settings, recorder_settings, js, subjects, db, service_logs,
):
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="the orders API is down")

    app = web.Application()
    app.router.add_get("/api", broken)
    orders_api = TestServer(app)
    await orders_api.start_server()
    port = orders_api.port
    url = f"http://svc:{PASSWORD}@127.0.0.1:{port}/api?api_key={API_KEY}&page=1"
    settings = make_worker_settings(orders_source="http", orders_url=url, orders_http_retries=1, orders_http_backoff=0.01)
    await services(run_recorder, recorder_settings)
    await services(run_worker, settings)
    try:
        await send_trigger(settings, "sync_open_orders")
        [run] = await finished_runs(db, 1)
    finally:
        await orders_api.close()

    assert run["status"] == "error" and run["error_class"] == "SourceError"
    # The message still says where it failed: the host and the harmless parameters, the secrets masked.
    assert f"http://***@127.0.0.1:{port}/api?api_key=***&page=1" in run["error_message"], run["error_message"]

    info = await js.stream_info(subjects.stream)
    stream = [(await js.get_msg(subjects.stream, seq)).data.decode() for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    assert any("run.failed" in message for message in stream)
    shown = {
        "the stream": "\n".join(stream),
        "the run page": await (await client.get(f"/runs/{run['name']}")).text(),
        "the index": await (await client.get("/")).text(),
        "/api/runs": await (await client.get("/api/runs")).text(),
        "/api/runs/<name>": await (await client.get(f"/api/runs/{run['name']}")).text(),
        "the tables": repr(await db.fetch("SELECT * FROM job_logs")) + repr(await db.fetch("SELECT * FROM job_log_details")),
        "the service logs": service_logs(),
    }
    assert "orders API request failed; retrying" in shown["the service logs"]  # the worker did log the URL's request
    for where, text in shown.items():
        assert PASSWORD not in text and API_KEY not in text, where
