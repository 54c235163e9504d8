"""Operating jobs from the Monitor over HTTP: skipped runs shown apart, the job page's charts (counts read back
from the SVG), pause and resume, cancel, bulk retry, and "Run now" landing on the run it started."""
from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from services.contracts import ActionTaken, RunCreated, RunSucceeded, SchedulePaused, TriggerRequested
from services.contracts.subjects import schedule_paused
from services.log_recorder.main import run as run_recorder
from tests.conftest import eventually
from tests.factories import T0, publish, run_events
from tests.web.test_actions import queued_trigger

NOW = datetime.now(timezone.utc)


def skipped(name: str, start: datetime) -> list[Any]:
    events = run_events(name=name, start=start, steps=0, updates=0)
    last = events[-1]
    return [*events[:-1], RunSucceeded(run_id=last.run_id, name=name, job=last.job, seq=last.seq,
                                       occurred_at=last.occurred_at, stats={"skipped": True}, duration_ms=2)]


def name_at(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S")


def svg_counts(html: str) -> dict[str, int]:
    """Runs per outcome, as the stacked bars draw them (their data-count)."""
    chart = html[html.index('class="chart chart-runs"'):]
    chart = chart[:chart.index("</svg>")]
    counts = {"success": 0, "error": 0, "skipped": 0}
    for outcome, count in re.findall(r'data-outcome="(\w+)" data-count="(\d+)"', chart):
        counts[outcome] += int(count)
    return counts


async def test_a_skipped_run_gets_its_own_badge_and_is_not_the_jobs_last_result(client, project):
    ok = NOW - timedelta(hours=2)
    await project(run_events(name=name_at(ok), start=ok))
    await project(skipped(name_at(ok + timedelta(hours=1)), ok + timedelta(hours=1)))

    index = await (await client.get("/")).text()
    row = index[index.index(f'data-run="{name_at(ok + timedelta(hours=1))}"'):]
    assert "badge-skipped" in row[:row.index("</tr>")] and "Skipped: already running" in row[:row.index("</tr>")]
    monitor = await (await client.get("/monitor")).text()
    job = monitor[monitor.index('<tr data-job="sync_open_orders"'):]
    job = job[:job.index("</tr>")]
    last_run = job[job.index('data-field="last-run"'):job.index('data-field="last-result"')]
    last_result = job[job.index('data-field="last-result"'):job.index('data-field="spark"')]
    assert name_at(ok + timedelta(hours=1)) in last_run and "badge-skipped" in last_run
    assert "badge-success" in last_result and "badge-skipped" not in last_result
    assert f'href="/runs/{name_at(ok)}"' in last_result  # the last success is the real one
    api = await (await client.get("/api/runs")).json()
    assert [(r["status"], r["state"]) for r in api["runs"]] == [("success", "skipped"), ("success", "success")]


async def test_the_job_page_charts_show_the_counts_of_each_range(client, project):
    runs = []
    for hours, fail in ((1, False), (2, True), (3, False), (30, False), (30.5, True), (24 * 10, False)):
        start = NOW - timedelta(hours=hours)
        runs.append(start)
        await project(run_events(name=name_at(start), start=start, fail=fail))
    await project(skipped(name_at(NOW - timedelta(minutes=30)), NOW - timedelta(minutes=30)))

    day = await client.get("/jobs/sync_open_orders")
    assert day.status == 200
    html = await day.text()
    assert svg_counts(html) == {"success": 2, "error": 1, "skipped": 1}
    assert html.count('<g class="bar"') == 24 and "<script" not in html.split("</main>")[0]
    assert re.search(r'data-field="success-rate">66\.7 %', html)
    assert 'class="chart chart-durations"' in html and html.count("data-ms=") >= 6
    assert html.count('<circle class="mark-') == 7  # every run as a dot, the skipped one too

    week = await (await client.get("/jobs/sync_open_orders?range=7d")).text()
    assert svg_counts(week) == {"success": 3, "error": 2, "skipped": 1} and week.count('<g class="bar"') == 7
    month = await (await client.get("/jobs/sync_open_orders?range=30d")).text()
    assert svg_counts(month) == {"success": 4, "error": 2, "skipped": 1}
    assert (await client.get("/jobs/sync_open_orders?range=1y")).status == 400
    assert (await client.get("/jobs/no_such_job")).status == 404


async def test_pause_and_resume_put_the_state_on_the_stream_the_monitor_shows_who_and_it_is_audited(
    client, services, recorder_settings, js, subjects, db,
):
    await services(run_recorder, recorder_settings)
    await publish(js, subjects, run_events(name=name_at(NOW - timedelta(hours=1)), start=NOW - timedelta(hours=1)))
    asked = await client.post("/jobs/sync_open_orders/pause", data={})
    assert asked.status == 200 and "Pause the schedule of sync_open_orders?" in await asked.text()
    assert await schedule_paused(js, subjects, "sync_open_orders") is None  # nothing sent before the confirmation

    done = await client.post("/jobs/sync_open_orders/pause", data={"confirm": "yes"}, allow_redirects=False)
    assert done.status == 303 and done.headers["Location"] == "/monitor?notice=paused&job=sync_open_orders"
    paused = await schedule_paused(js, subjects, "sync_open_orders")
    assert isinstance(paused, SchedulePaused) and paused.requested_by == "anonymous"
    await eventually(lambda: db.fetchval("SELECT paused FROM schedule_states WHERE job = 'sync_open_orders'"))
    # The Monitor shows it only for a scheduled job; the job page shows who paused it for any.
    page = await (await client.get("/jobs/sync_open_orders")).text()
    assert "paused by anonymous" in page
    [job] = (await (await client.get("/api/jobs")).json())["jobs"]
    assert (job["paused"], job["paused_by"]) == (True, "anonymous")

    back = await client.post("/jobs/sync_open_orders/resume", data={"confirm": "yes", "back": "job"}, allow_redirects=False)
    assert back.headers["Location"] == "/jobs/sync_open_orders?notice=resumed&job=sync_open_orders"
    assert await schedule_paused(js, subjects, "sync_open_orders") is None
    await eventually(lambda: db.fetchval("SELECT NOT paused FROM schedule_states WHERE job = 'sync_open_orders'"))
    audit = await eventually(lambda: _actions(db, 2))
    assert [(a["action"], a["job"], a["actor"]) for a in audit] == [
        ("pause", "sync_open_orders", "anonymous"), ("resume", "sync_open_orders", "anonymous")]


async def _actions(db: Any, count: int) -> list[Any] | None:
    rows = await db.fetch("SELECT action, job, actor, target, detail FROM actions ORDER BY occurred_at")
    return rows if len(rows) >= count else None


async def test_run_now_lands_on_the_run_its_command_started(client, js, subjects, project, db):
    await project(run_events(name="20261129083000"))
    posted = await client.post("/jobs/sync_open_orders/run", data={"confirm": "yes"}, allow_redirects=False)
    landing = posted.headers["Location"]
    command = await queued_trigger(js, subjects)
    assert landing == f"/commands/{command.command_id}?job=sync_open_orders"

    waiting = await client.get(f"/commands/{command.command_id}?wait=no&job=sync_open_orders", allow_redirects=False)
    assert waiting.status == 200 and "Waiting for a worker" in await waiting.text()
    status = await (await client.get(f"/api/commands/{command.command_id}")).json()
    assert status == {"command_id": command.command_id, "run": None, "url": None}

    # The web waits on its live feed for the run.created that carries the command id.
    waiter = client.get(landing, allow_redirects=False)
    created = RunCreated(run_id=uuid.uuid4(), name="20261129090000", job="sync_open_orders", seq=1, worker_id="w1",
                         command_id=command.command_id)
    pending = asyncio.ensure_future(waiter)
    await asyncio.sleep(0.3)
    await js.publish(subjects.for_event(created), created.model_dump_json().encode())
    await asyncio.sleep(0.3)
    assert not pending.done()  # the feed has the name, the recorder not yet the run: its page would be a 404
    await project([created])
    found = await pending
    assert found.status == 303 and found.headers["Location"] == "/runs/20261129090000"
    status = await (await client.get(f"/api/commands/{command.command_id}")).json()
    assert status["run"] == "20261129090000" and status["url"] == "/runs/20261129090000"

    # Another command, found in the projection (a web replica that did not see the event).
    other = TriggerRequested(job="sync_open_orders")
    events = run_events(name="20261129100000")
    first = events[0]
    await project([RunCreated(**{**first.model_dump(), "command_id": other.command_id}), *events[1:]])
    found = await client.get(f"/commands/{other.command_id}", allow_redirects=False)
    assert found.headers["Location"] == "/runs/20261129100000"

    accepted = await client.post("/api/jobs/sync_open_orders/trigger", json={})
    body = await accepted.json()
    assert body["run_url"] == f"/commands/{body['command_id']}" and accepted.headers["Location"] == body["run_url"]
    assert body["status_url"] == f"/api/commands/{body['command_id']}"
    assert (await client.get("/commands/not a command!")).status == 404


async def test_cancelling_a_run_without_a_worker_that_answers_says_so_and_is_audited(client, project, js, subjects):
    open_run = run_events(name="20261129083000")[:3]
    await project(open_run)
    await project(run_events(name="20261129090000"))
    page = await (await client.get("/runs/20261129083000")).text()
    assert 'action="/runs/20261129083000/cancel"' in page
    assert 'action="/runs/20261129090000/cancel"' not in await (await client.get("/runs/20261129090000")).text()

    asked = await client.post("/runs/20261129083000/cancel", data={})
    assert "Cancel run 20261129083000?" in await asked.text()
    gone = await client.post("/runs/20261129083000/cancel", data={"confirm": "yes"}, allow_redirects=False)
    assert gone.headers["Location"] == "/runs/20261129083000?notice=cancel_unreachable&run=20261129083000"
    shown = await (await client.get(gone.headers["Location"])).text()
    assert "could not be cancelled: its worker did not answer" in shown
    ended = await client.post("/runs/20261129090000/cancel", data={"confirm": "yes"}, allow_redirects=False)
    assert ended.headers["Location"] == "/runs/20261129090000?notice=cancel_ended&run=20261129090000"
    stored = await js.get_last_msg(subjects.stream, subjects.for_action("cancel"))
    action = ActionTaken.model_validate_json(stored.data)
    assert action.target == "20261129083000" and action.detail["accepted"] is False
    assert (await client.post("/runs/20261129999999/cancel", data={"confirm": "yes"})).status == 404


async def test_bulk_retry_counts_the_failed_runs_of_the_filter_and_starts_one_run_per_job(client, project, js, subjects):
    for i in range(3):
        await project(run_events(name=f"202611290{i}0000", fail=True, start=T0 + timedelta(hours=i)))
    await project(run_events(name="20261129050000", fail=True, job="purge_closed_orders"))
    await project(run_events(name="20261129060000"))

    page = await (await client.get("/retry_failed")).text()
    assert "Retry 4 failed runs?" in page
    assert 'data-job="sync_open_orders" data-runs="3"' in page and 'data-job="purge_closed_orders" data-runs="1"' in page
    one_job = await (await client.get("/retry_failed?job=purge_closed_orders")).text()
    assert "Retry 1 failed run?" in one_job
    assert "No failed runs match" in await (await client.get("/retry_failed?q=2025")).text()
    assert 'href="/retry_failed?job=sync_open_orders&amp;"' in await (await client.get("/?job=sync_open_orders")).text()

    done = await client.post("/retry_failed", data={"confirm": "yes"}, allow_redirects=False)
    assert done.headers["Location"] == "/?notice=bulk_retried&runs=4&count=2"
    sub = await js.pull_subscribe(subjects.triggers, durable="bulk", stream=subjects.command_stream)
    messages = await sub.fetch(10, timeout=2)
    commands = sorted((TriggerRequested.model_validate_json(m.data) for m in messages), key=lambda c: c.job)
    assert [(c.job, c.trigger) for c in commands] == [("purge_closed_orders", "retry"), ("sync_open_orders", "retry")]
    assert commands[1].requested_by == "web:anonymous retry of 20261129020000"  # the newest failed run of the job
    stored = await js.get_last_msg(subjects.stream, subjects.for_action("bulk_retry"))
    action = ActionTaken.model_validate_json(stored.data)
    assert action.detail["jobs"]["sync_open_orders"]["runs"] == 3 and action.target == "4 failed runs"
    assert json.loads(stored.data)["actor"] == "anonymous"
    nothing = await client.post("/retry_failed", data={"confirm": "yes", "q": "2025"}, allow_redirects=False)
    assert nothing.headers["Location"] == "/?notice=nothing_to_retry"
