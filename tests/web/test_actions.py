"""Actions from the UI: triggers and deletions are confirmed POSTs that become NATS messages."""
from __future__ import annotations

import asyncio
import json

import nats

from services.contracts import RunsDeleted, TriggerRequested
from tests.factories import run_events


async def retention_messages(nats_url, subjects):  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_url)
    sub = await nc.subscribe(subjects.retention)
    await nc.flush()
    return nc, sub


async def queued_trigger(js, subjects) -> TriggerRequested:  # type: ignore[no-untyped-def]
    sub = await js.pull_subscribe(subjects.triggers, durable="test", stream=subjects.command_stream)
    [message] = await sub.fetch(1, timeout=10)
    return TriggerRequested.model_validate_json(message.data)


async def test_without_javascript_an_action_first_asks_for_confirmation(client, js, subjects):
    response = await client.post("/jobs/sync_open_orders/run", data={})
    html = await response.text()

    assert response.status == 200
    assert "Run sync_open_orders now?" in html and 'name="confirm" value="yes"' in html
    assert (await js.stream_info(subjects.command_stream)).state.messages == 0


async def test_retry_of_a_failed_run_sends_a_retry_trigger(client, js, subjects, project):
    await project(run_events(name="20261129083000", fail=True))
    response = await client.post(
        "/jobs/sync_open_orders/run", data={"retry": "20261129083000", "confirm": "yes"}, allow_redirects=False,
    )
    assert response.status == 303 and response.headers["Location"].startswith("/commands/")  # lands on the new run

    command = await queued_trigger(js, subjects)
    assert command.job == "sync_open_orders" and command.trigger == "retry"
    assert command.requested_by == "web:anonymous retry of 20261129083000"


async def test_the_api_trigger_queues_a_run_of_a_known_job(client, js, subjects, project):
    await project(run_events(name="20261129083000"))
    response = await client.post("/api/jobs/sync_open_orders/trigger", json={})
    assert response.status == 202
    accepted = await response.json()

    command = await queued_trigger(js, subjects)
    assert command.command_id == accepted["command_id"] and command.trigger == "manual"
    bad = await client.post("/api/jobs/sync_open_orders/trigger", data=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status == 400


async def test_deleting_a_run_publishes_runs_deleted_with_its_event_id_as_msg_id(client, nats_url, subjects, project, db):
    await project(run_events(name="20261129083000"))
    nc, sub = await retention_messages(nats_url, subjects)

    response = await client.post("/runs/20261129083000/delete", data={"confirm": "yes"}, allow_redirects=False)
    message = await sub.next_msg(timeout=10)
    await nc.close()

    assert response.status == 303
    event = RunsDeleted.model_validate_json(message.data)
    assert event.names == ["20261129083000"] and event.created_before is None
    assert message.headers["Nats-Msg-Id"] == str(event.event_id)


async def test_deleting_runs_older_than_a_date_uses_the_start_of_that_day(client, nats_url, subjects):
    nc, sub = await retention_messages(nats_url, subjects)
    response = await client.post("/retention", data={"before": "2026-01-31", "confirm": "yes"}, allow_redirects=False)
    message = await sub.next_msg(timeout=10)
    await nc.close()

    assert response.status == 303
    assert json.loads(message.data)["created_before"].startswith("2026-01-31T00:00:00")
    for bad in ("yesterday", "2999-01-01", ""):
        assert (await client.post("/retention", data={"before": bad, "confirm": "yes"})).status == 400
    await asyncio.sleep(0)


async def test_a_deleted_run_disappears_once_the_recorder_applies_the_deletion(client, js, subjects, services, recorder_settings, db):
    from services.log_recorder.main import run as run_recorder
    from tests.conftest import eventually
    from tests.factories import publish

    await services(run_recorder, recorder_settings)
    await publish(js, subjects, run_events(name="20261129083000") + run_events(name="20261129083100"))
    await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM job_logs WHERE status = 'success'"))

    await client.post("/runs/20261129083000/delete", data={"confirm": "yes"})

    await eventually(lambda: db.fetchval("SELECT NOT EXISTS (SELECT 1 FROM job_logs WHERE name = '20261129083000')"))
    assert (await client.get("/runs/20261129083000")).status == 404
    assert (await client.get("/runs/20261129083100")).status == 200


async def test_an_action_while_jetstream_cannot_take_it_says_so_with_a_503_not_a_500(client, js, subjects, project):
    await project(run_events(name="20261129083000"))
    for config in subjects.stream_configs():
        await js.delete_stream(config.name)  # nothing answers the publish, as when JetStream is down

    page = await client.post("/jobs/sync_open_orders/run", data={"confirm": "yes"}, allow_redirects=False)
    api = await client.post("/api/jobs/sync_open_orders/trigger", json={})
    deletion = await client.post("/runs/20261129083000/delete", data={"confirm": "yes"}, allow_redirects=False)

    assert page.status == 503 and "nothing was sent" in await page.text()
    assert api.status == 503 and "nothing was sent" in (await api.json())["detail"]
    assert deletion.status == 503
