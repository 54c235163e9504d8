"""A failing run alerts once, on every channel, with the right content and signature; success recovers it."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

from services.contracts import AlertRaised
from services.notifier.main import run as run_notifier
from tests.conftest import eventually
from tests.factories import T0, publish, run_events
from tests.notifier.conftest import SECRET


async def test_a_failing_run_alerts_once_with_its_content_and_a_valid_signature(
    services, js, subjects, db, receiver, mailbox, make_notifier_settings
):
    box, smtp_port = mailbox
    settings = make_notifier_settings(
        notify_webhooks=receiver.url, notify_webhook_secret=SECRET, notify_slack_webhooks=receiver.slack_url,
        notify_email_to="ops@example.com", smtp_host="127.0.0.1", smtp_port=smtp_port,
    )
    await services(run_notifier, settings)
    failing = run_events(name="20261129090000", fail=True)
    await publish(js, subjects, failing)

    [alert] = await eventually(lambda: asyncio.sleep(0, receiver.alerts() or None))
    request = next(r for r in receiver.requests if r["path"] == "/hook")
    expected = "sha256=" + hmac.new(SECRET.encode(), request["body"], hashlib.sha256).hexdigest()
    assert request["headers"]["X-Joblog-Signature"] == expected
    assert request["headers"]["X-Joblog-Alert-Id"] == alert["alert_id"]
    assert alert["version"] == 1 and alert["kind"] == "run_failed"
    assert alert["job"] == "sync_open_orders" and alert["run"] == "20261129090000"
    assert alert["link"] == "https://joblog.example.com/runs/20261129090000"
    assert "at step progress" in alert["message"] and "SourceError: ERP unreachable" in alert["message"]
    assert alert["details"]["error_class"] == "SourceError" and alert["time"].endswith("Z")

    [slack] = await eventually(lambda: asyncio.sleep(0, receiver.alerts("/slack") or None))
    assert "Run failed" in slack["text"] and "<https://joblog.example.com/runs/20261129090000|" in slack["text"]
    [mail] = await eventually(lambda: asyncio.sleep(0, box.messages or None))
    assert mail["Message-ID"] == f"<{alert['alert_id']}@joblog>" and "sync_open_orders" in mail["Subject"]
    published = await eventually(lambda: _alerts_on_stream(js, subjects))
    assert [a.alert_id for a in published] == [__import__("uuid").UUID(alert["alert_id"])]

    # A second failure of the same job while the alert is open is a repeat, not a second alert.
    await publish(js, subjects, run_events(name="20261129091500", fail=True, start=T0))
    await eventually(lambda: db.fetchval("SELECT repeats = 1 FROM alerts WHERE kind = 'run_failed'"))
    # The first success after the failures: "recovered", and the failure alert is cleared.
    await publish(js, subjects, run_events(name="20261129093000"))
    recovered = await eventually(lambda: asyncio.sleep(0, [a for a in receiver.alerts() if a["kind"] == "recovered"]))
    assert recovered[0]["run"] == "20261129093000"
    assert await db.fetchval("SELECT cleared_at IS NOT NULL FROM alerts WHERE kind = 'run_failed'")
    await asyncio.sleep(1)
    assert [a["kind"] for a in receiver.alerts()] == ["run_failed", "recovered"]
    assert await db.fetchval("SELECT count(*) FROM alert_deliveries WHERE state <> 'delivered'") == 0


async def _alerts_on_stream(js, subjects) -> list[AlertRaised]:  # type: ignore[no-untyped-def]
    sub = await js.subscribe(subjects.alerts, stream=subjects.alert_stream, ordered_consumer=True)
    found = []
    try:
        while True:
            try:
                message = await sub.next_msg(timeout=0.5)
            except asyncio.TimeoutError:
                break
            found.append(AlertRaised.model_validate_json(message.data))
    finally:
        await sub.unsubscribe()
    return found


async def test_a_receiver_down_for_ten_seconds_gets_the_alert_once_after_it_returns(
    services, js, subjects, db, receiver, make_notifier_settings
):
    await receiver.stop()
    await services(run_notifier, make_notifier_settings(notify_webhooks=receiver.url, notify_retry_max=2))
    await publish(js, subjects, run_events(fail=True))
    await eventually(lambda: db.fetchval(
        "SELECT attempts >= 2 AND state = 'pending' FROM alert_deliveries WHERE channel = 'webhook'"))
    await asyncio.sleep(10)  # the receiver stays down for 10 s
    assert receiver.requests == []
    await receiver.start()
    await eventually(lambda: asyncio.sleep(0, receiver.alerts() or None), timeout=60)
    await eventually(lambda: db.fetchval("SELECT state = 'delivered' FROM alert_deliveries WHERE channel = 'webhook'"))
    await asyncio.sleep(3)  # several retry periods later: still exactly one delivery
    assert len(receiver.alerts()) == 1 and receiver.alerts()[0]["kind"] == "run_failed"


def test_bad_rules_stop_the_notifier_with_one_line_naming_the_problem(tmp_path):
    import os
    import subprocess
    import sys

    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"sync_open_orders": ["sms"]}))
    env = {**os.environ, "JOBLOG_NOTIFY_WEBHOOKS": "http://127.0.0.1:9/hook", "JOBLOG_NOTIFY_RULES": str(rules)}
    result = subprocess.run([sys.executable, "-m", "joblog", "notifier"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("joblog: invalid setting JOBLOG_NOTIFY_RULES:"), result.stderr
    assert "unknown channel 'sms'" in lines[0]
