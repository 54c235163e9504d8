"""Many runs failing at once: a receiver gets a few alerts, then one summary of the rest, each alert exactly once."""
from __future__ import annotations

import asyncio
import hashlib
import hmac

from services.notifier.main import run as run_notifier
from tests.conftest import eventually
from tests.factories import publish, run_events
from tests.notifier.conftest import SECRET

JOBS = [f"sync_region_{n:02d}" for n in range(12)]


async def test_a_storm_of_failures_reaches_each_receiver_as_a_few_alerts_and_one_summary(
    services, js, subjects, db, receiver, mailbox, make_notifier_settings
):
    box, smtp_port = mailbox
    await services(run_notifier, make_notifier_settings(
        notify_webhooks=receiver.url, notify_webhook_secret=SECRET, notify_slack_webhooks=receiver.slack_url,
        notify_email_to="ops@example.com", smtp_host="127.0.0.1", smtp_port=smtp_port,
        notify_storm_threshold=3, notify_storm_window=3,
    ))
    # The ERP goes down: twelve jobs fail within moments of each other.
    for n, job in enumerate(JOBS):
        await publish(js, subjects, run_events(name=f"202611290900{n:02d}", job=job, fail=True))

    def summaries(path: str = "/hook") -> list[dict]:
        return [a for a in receiver.alerts(path) if a.get("kind") == "summary" or a.get("text", "").startswith("*Alert summary*")]

    [summary] = await eventually(lambda: asyncio.sleep(0, summaries() or None), timeout=60)
    singles = [a for a in receiver.alerts() if a["kind"] != "summary"]
    assert len(singles) == 3 and all(a["kind"] == "run_failed" for a in singles)
    assert summary["version"] == 1 and summary["details"] == {"count": 9, "kinds": {"run_failed": 9}}
    assert summary["message"].startswith("9 alerts within 3 s: 9 run failed (")
    assert summary["link"] == "https://joblog.example.com/monitor"
    # Every alert reached the receiver exactly once: alone or inside the summary.
    carried = [a["alert_id"] for a in summary["alerts"]]
    assert sorted([a["alert_id"] for a in singles] + carried) == sorted(
        str(i) for i in await db.fetchval("SELECT array_agg(id) FROM alerts WHERE kind = 'run_failed'"))
    assert {a["job"] for a in singles + summary["alerts"]} == set(JOBS)
    request = next(r for r in receiver.requests if r["path"] == "/hook" and r["json"]["kind"] == "summary")
    assert request["headers"]["X-Joblog-Signature"] == "sha256=" + hmac.new(
        SECRET.encode(), request["body"], hashlib.sha256).hexdigest()
    assert request["headers"]["X-Joblog-Alert-Id"] == summary["alert_id"]

    # Slack and email get their own few alerts and their own summary.
    [slack] = await eventually(lambda: asyncio.sleep(0, summaries("/slack") or None), timeout=60)
    assert "9 alerts within 3 s" in slack["text"] and slack["text"].count("\n- ") == 9
    assert len(receiver.alerts("/slack")) == 4
    mail = await eventually(lambda: asyncio.sleep(0, [m for m in box.messages if m["Subject"] == "[joblog] 9 alerts"]), timeout=60)
    assert len(box.messages) == 4 and "run failed" in mail[0].get_payload()
    # On the stream every alert stays its own event; nothing is left pending.
    assert await db.fetchval("SELECT count(*) FROM alert_deliveries WHERE channel = 'stream' AND summary_id IS NULL "
                             "AND state = 'delivered'") == 12
    await eventually(lambda: db.fetchval("SELECT count(*) = 0 FROM alert_deliveries WHERE state <> 'delivered'"))
    # The same nine alerts make the same summary id on every channel: 9 alerts x 3 channels in one summary.
    assert await db.fetchval("SELECT count(*) FROM alert_deliveries WHERE summary_id = $1",
                             __import__("uuid").UUID(summary["alert_id"])) == 27

    # Once the storm has passed, an alert goes out on its own again.
    await asyncio.sleep(3.5)
    await publish(js, subjects, run_events(name="20261129100000", job="sync_after_the_storm", fail=True))
    later = await eventually(lambda: asyncio.sleep(0, [a for a in receiver.alerts() if a.get("job") == "sync_after_the_storm"]))
    assert later[0]["kind"] == "run_failed" and len(summaries()) == 1
