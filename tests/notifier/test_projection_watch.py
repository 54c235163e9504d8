"""The notifier watches the projection itself: a recorder falling behind, and messages it dead-letters."""
from __future__ import annotations

import asyncio

from services.log_recorder.main import run as run_recorder
from services.notifier.main import run as run_notifier
from tests.conftest import eventually
from tests.factories import T0, publish, run_events


async def test_a_recorder_behind_its_backlog_threshold_raises_projection_behind_until_it_catches_up(
    services, js, subjects, db, receiver, recorder_settings, make_notifier_settings
):
    # The recorder ran once (its consumer exists), then stopped while the workers went on publishing.
    recorder = await services(run_recorder, recorder_settings)
    await recorder.stop()
    for n in range(3):
        await publish(js, subjects, run_events(name=f"2026112909{n:02d}00", start=T0))
    await services(run_notifier, make_notifier_settings(notify_webhooks=receiver.url, notify_backlog_threshold=10))

    [behind] = await eventually(lambda: asyncio.sleep(0, [a for a in receiver.alerts() if a["kind"] == "projection_behind"]))
    assert behind["details"]["pending"] >= 27  # 3 runs x 9 events and "the log recorder is behind" in behind["message"]
    assert behind["link"] == "https://joblog.example.com/monitor"
    # Once the recorder is back and has caught up, the alert clears; no second one is raised meanwhile.
    await services(run_recorder, recorder_settings)
    await eventually(lambda: db.fetchval(
        "SELECT cleared_at IS NOT NULL FROM alerts WHERE kind = 'projection_behind'"), timeout=60)
    assert await db.fetchval("SELECT count(*) FROM alerts WHERE kind = 'projection_behind'") == 1


async def test_messages_the_recorder_dead_letters_raise_one_alert_with_the_count(
    services, js, subjects, db, receiver, recorder_settings, make_notifier_settings
):
    await services(run_recorder, recorder_settings)
    await services(run_notifier, make_notifier_settings(notify_webhooks=receiver.url))
    await eventually(lambda: db.fetchval("SELECT value IS NOT NULL FROM notifier_state WHERE key = 'dead_letters_seen'"))
    # A producer with a bug: bytes that are no event at all, on a run's subject.
    subject = f"{subjects.prefix}.run.sync_open_orders.20261129083000.step"
    for _ in range(3):
        await js.publish(subject, b"\xff{not json")
    await publish(js, subjects, run_events())  # and a good run behind them, which the recorder still projects
    await eventually(lambda: db.fetchval("SELECT status = 'success' FROM job_logs WHERE name = '20261129083000'"))

    [alert] = await eventually(lambda: asyncio.sleep(0, [a for a in receiver.alerts() if a["kind"] == "dead_letters"]))
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 3
    assert "dead-lettered messages it cannot apply" in alert["message"]
    assert 1 <= alert["details"]["total"] <= 3
    await asyncio.sleep(2)  # more checks pass: the open alert is not raised again
    assert len([a for a in receiver.alerts() if a["kind"] == "dead_letters"]) == 1
