"""The Jobs Monitor lists the notifier's recent alerts with each channel's delivery state."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone


async def test_the_monitor_shows_recent_alerts_and_how_far_each_channel_got(client, db):
    alert = uuid.uuid4()
    await db.execute(
        "INSERT INTO alerts (id, kind, job, run_name, condition_key, message, repeats, raised_at) "
        "VALUES ($1, 'run_failed', 'sync_open_orders', '20261201230000', 'run_failed:sync_open_orders', "
        "'sync_open_orders 20261201230000 failed at step connect: SourceError: ERP unreachable', 2, $2)",
        alert, datetime.now(timezone.utc))
    await db.execute(
        "INSERT INTO alert_deliveries (alert_id, channel, target, state, attempts, last_error) VALUES "
        "($1, 'webhook', 'http://hooks/a', 'delivered', 1, NULL), ($1, 'email', 'ops@example.com', 'pending', 3, 'refused')",
        alert)
    await db.execute("INSERT INTO alert_deliveries (alert_id, channel, target, state, grouped) VALUES "
                     "($1, 'slack', 'http://hooks/s', 'pending', true)", alert)
    page = await client.get("/monitor")
    text = await page.text()
    assert page.status == 200
    assert 'data-alert="run_failed"' in text and "ERP unreachable" in text and "(+2)" in text
    assert "webhook: delivered" in text and "email: pending (3 tries)" in text
    assert "slack: pending, held for a summary" in text  # a storm: it goes out in the receiver's next summary
    assert 'href="/runs/20261201230000"' in text


async def test_without_alerts_the_monitor_says_what_would_raise_them(client):
    text = await (await client.get("/monitor")).text()
    assert "No alerts." in text
