"""The audit trail: every action is an ActionTaken on the run stream, shown in the Jobs Monitor and the API,
projected by the real recorder and kept through a rebuild."""
from __future__ import annotations

import json

from services.contracts import ActionTaken
from services.log_recorder.main import run as run_recorder
from services.log_recorder.rebuild import rebuild
from services.web.passwords import hash_password
from tests.conftest import eventually
from tests.factories import publish, run_events
from tests.web.test_accounts import basic

OTTO = basic("otto", "press buttons")
AUDIT = "SELECT actor, action, job, target, detail, source FROM actions ORDER BY occurred_at, event_id"


async def test_every_action_names_its_actor_and_target_and_the_trail_survives_a_rebuild(
    make_client, tmp_path, services, recorder_settings, js, subjects, db,
):
    users = tmp_path / "users"
    users.write_text(f"otto:operator:{hash_password('press buttons', iterations=1000)}\n")
    client = await make_client(web_users_file=users)
    await services(run_recorder, recorder_settings)
    await publish(js, subjects, run_events(name="20261129083000", fail=True) + run_events(name="20261129083100"))
    await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM job_logs WHERE status IN ('success', 'error')"))

    posts = [
        ("/jobs/sync_open_orders/run", {"confirm": "yes"}),
        ("/jobs/sync_open_orders/run", {"retry": "20261129083000", "confirm": "yes"}),
        ("/runs/20261129083100/delete", {"confirm": "yes"}),
        ("/retention", {"before": "2026-01-31", "confirm": "yes"}),
    ]
    for path, form in posts:
        response = await client.post(path, data=form, headers=OTTO, allow_redirects=False)
        assert response.status == 303, path
    accepted = await (await client.post("/api/jobs/sync_open_orders/trigger", json={}, headers=OTTO)).json()

    rows = await eventually(lambda: _audit_when(db, 5))
    assert [(r["actor"], r["action"], r["job"]) for r in rows] == [
        ("otto", "trigger", "sync_open_orders"), ("otto", "retry", "sync_open_orders"), ("otto", "delete_runs", None),
        ("otto", "delete_before", None), ("otto", "trigger", "sync_open_orders"),
    ]
    assert rows[1]["target"] == "20261129083000" and rows[2]["target"] == "20261129083100"
    assert rows[3]["target"].startswith("2026-01-31T00:00:00")
    assert rows[4]["target"] == accepted["command_id"] and json.loads(rows[4]["detail"])["via"] == "api"
    assert {r["source"] for r in rows} == {"127.0.0.1"}

    stored = await js.get_last_msg(subjects.stream, subjects.for_action("trigger"))
    assert ActionTaken.model_validate_json(stored.data).actor == "otto"  # on the stream itself, not only in the table

    monitor = await (await client.get("/monitor", headers=OTTO)).text()
    trail = monitor[monitor.index("Recent actions"):]
    assert trail.count('<td class="mono">otto</td>') == 5
    assert '<a class="mono" href="/runs/20261129083000">20261129083000</a>' in trail  # the retried run
    assert 'href="/?job=sync_open_orders"' in trail
    api = await (await client.get("/api/actions", headers=OTTO)).json()
    assert [a["action"] for a in api["actions"]] == ["trigger", "delete_before", "delete_runs", "retry", "trigger"]
    assert api["actions"][3]["url"] == "/runs/20261129083000" and api["actions"][0]["actor"] == "otto"

    # The trail lives in the stream: even emptied, the table comes back whole from a rebuild.
    before = [dict(r) for r in rows]
    await db.execute("DELETE FROM actions")
    await rebuild(recorder_settings, progress=False)
    assert [dict(r) for r in await db.fetch(AUDIT)] == before


async def _audit_when(db, count):  # type: ignore[no-untyped-def]
    rows = await db.fetch(AUDIT)
    return rows if len(rows) == count else None
