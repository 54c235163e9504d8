"""A notifier SIGKILLed mid-delivery neither loses nor duplicates an alert (by alert id)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from tests.conftest import eventually
from tests.factories import publish, run_events


def start_notifier(env: dict[str, str], url: str, log) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    notifier_env = {**os.environ, **env, "JOBLOG_NOTIFY_WEBHOOKS": url, "JOBLOG_NOTIFY_CHECK_INTERVAL": "0.2",
                    "JOBLOG_NOTIFY_RETRY_MAX": "1", "JOBLOG_LOG_LEVEL": "INFO"}
    return subprocess.Popen([sys.executable, "-m", "joblog", "notifier"], env=notifier_env, stdout=log, stderr=log)


async def test_a_notifier_killed_mid_delivery_delivers_every_alert_after_its_restart_under_the_same_id(
    js, subjects, db, env, receiver, tmp_path
):
    receiver.hang = asyncio.Event()  # the receiver takes the first alert and does not answer yet
    log = (tmp_path / "notifier.log").open("wb")
    first = start_notifier(env, receiver.url, log)
    second = None
    try:
        await eventually(lambda: _consumer_exists(js, subjects), timeout=60)
        await publish(js, subjects, run_events(name="20261129090000", job="job_a", fail=True))
        await eventually(lambda: asyncio.sleep(0, receiver.requests or None), timeout=60)
        first.send_signal(signal.SIGKILL)  # mid-delivery: the POST is in flight, unanswered
        await asyncio.to_thread(first.wait, 30)
        assert await db.fetchval("SELECT state FROM alert_deliveries WHERE channel = 'webhook'") == "pending"

        await publish(js, subjects, run_events(name="20261129091000", job="job_b", fail=True))  # while it is down
        receiver.hang.set()
        receiver.hang = None
        second = start_notifier(env, receiver.url, log)
        await eventually(lambda: db.fetchval(
            "SELECT count(*) = 2 AND bool_and(state = 'delivered') FROM alert_deliveries WHERE channel = 'webhook'"),
            timeout=90)
        alerts = await db.fetch("SELECT id, job FROM alerts ORDER BY job")
        assert [a["job"] for a in alerts] == ["job_a", "job_b"]
        received = {a["alert_id"] for a in receiver.alerts()}
        assert received == {str(a["id"]) for a in alerts}  # none lost, none raised twice
        # At least once: job_a's alert may arrive twice, always under the same id.
        assert [a["job"] for a in receiver.alerts()].count("job_b") == 1
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(process.wait, 30)
                except subprocess.TimeoutExpired:
                    process.kill()
        log.close()


async def _consumer_exists(js, subjects) -> bool:  # type: ignore[no-untyped-def]
    try:
        await js.consumer_info(subjects.stream, "notifier")
    except Exception:
        return False
    return True
