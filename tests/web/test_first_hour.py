"""Honest numbers and small things a new user meets (issue 13): recorder lag, latency, statistics, favicon."""
from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from services.contracts import RunSucceeded
from services.log_recorder.main import run as run_recorder
from tests.conftest import eventually
from tests.factories import publish, run_events


def histogram_count(text: str, route: str) -> float:
    found = re.search(rf'joblog_web_request_seconds_count{{route="{re.escape(route)}"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


async def test_the_live_streams_are_not_in_the_request_latency_histogram(client):
    for path in ("/events/runs", "/runs/20261129083000/events"):
        response = await client.get(path)
        await response.content.readline()  # the stream is open
        response.close()
    await client.get("/")
    await eventually(lambda: _counted(client, "/"))
    text = await (await client.get("/metrics")).text()
    assert histogram_count(text, "/events/runs") == 0
    assert histogram_count(text, "/runs/{name}/events") == 0
    assert 'joblog_web_requests_total{method="GET",route="/events/runs"' in text  # still counted as requests


async def _counted(client: Any, route: str) -> bool:
    return histogram_count(await (await client.get("/metrics")).text(), route) >= 1


async def test_recorder_lag_is_the_age_of_the_oldest_pending_event_not_the_idle_time(client, services, recorder_settings, js, subjects, db):
    # Applied long ago (the events say 2026-11-29): an idle spell of days since the newest applied event.
    old = run_events(name="20261129083000")
    recorder = await services(run_recorder, recorder_settings)
    await publish(js, subjects, old)
    await eventually(lambda: db.fetchval("SELECT status = 'success' FROM job_logs WHERE name = '20261129083000'"))
    text = await (await client.get("/metrics")).text()
    assert "joblog_recorder_lag_seconds 0.0" in text  # caught up
    await recorder.stop()

    before = time.time()
    await publish(js, subjects, run_events(name="20261129093000")[:1])
    await asyncio.sleep(0.5)
    text = await (await client.get("/metrics")).text()
    waited = time.time() - before
    lag = float(re.search(r"^joblog_recorder_lag_seconds (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert 0.4 <= lag <= waited + 1.0  # this event's own age (clocks of one machine), not days
    page = await (await client.get("/monitor")).text()
    shown = float(re.search(r"<dt>Recorder lag</dt><dd>([\d.]+) s</dd>", page).group(1))  # type: ignore[union-attr]
    assert shown < 3600


async def test_statistics_read_in_the_documented_order_and_a_favicon_is_served(client, project):
    events = run_events(name="20261129083000")
    last = events[-1]
    assert isinstance(last, RunSucceeded)
    events[-1] = last.model_copy(update={"stats": {"invalid": 1, "zeta": 2, "fetched": 10, "closed": 3, "imported": 9, "alpha": 4}})
    await project(events)
    html = await (await client.get("/runs/20261129083000")).text()
    stats = html[html.index('<dl class="stats">'):]
    keys = re.findall(r"<dt>(\w+)</dt>", stats[: stats.index("</dl>")])
    assert keys == ["fetched", "imported", "closed", "invalid", "alpha", "zeta"]
    assert 'rel="icon"' in html and "/static/favicon.svg" in html
    icon = await client.get("/static/favicon.svg")
    assert icon.status == 200 and icon.content_type == "image/svg+xml"


async def test_a_worker_lost_run_shows_the_same_duration_after_a_reload_as_live(client, project):
    events = run_events(name="20261129083000", fail=True)
    failed = events[-1]
    events[-1] = failed.model_copy(update={"duration_ms": None})  # the watchdog's verdict has no duration
    await project(events)
    html = await (await client.get("/runs/20261129083000")).text()
    started, finished = events[1].occurred_at, failed.occurred_at
    expected_ms = int((finished - started).total_seconds() * 1000)
    assert f'data-field="duration">{expected_ms / 1000:.1f} s<' in html or f'data-field="duration">{expected_ms} ms<' in html
