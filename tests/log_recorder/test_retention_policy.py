"""The automatic retention policy: off by default, per job and per outcome, published once per interval."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from services.log_recorder.main import run as run_recorder
from services.log_recorder.retention import policy_deletions
from services.log_recorder.settings import RecorderSettings
from tests.conftest import eventually
from tests.factories import publish, run_events
from tests.log_recorder.conftest import deletions_done, drained
from tests.log_recorder.test_deletion import everything_in_the_stream

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def test_the_policy_is_off_by_default_and_its_rules_cover_each_run_once():
    assert policy_deletions(RecorderSettings(), NOW, 1) == []
    assert not RecorderSettings().retention_on
    settings = RecorderSettings(retention_days=30, retention_failed_days=90, retention_jobs='{"b_job": 7, "a_job": 365}')
    rules = policy_deletions(settings, NOW, 1)
    assert [(d.job, d.except_jobs, d.statuses, NOW - d.created_before) for d in rules] == [  # type: ignore[operator]
        ("a_job", None, ["success", "error"], timedelta(days=365)),
        ("b_job", None, ["success", "error"], timedelta(days=7)),
        (None, ["a_job", "b_job"], ["success"], timedelta(days=30)),
        (None, ["a_job", "b_job"], ["error"], timedelta(days=90)),
    ]
    # The same slot gives the same event ids (several recorders, a restart); the next slot new ones.
    assert [d.event_id for d in policy_deletions(settings, NOW, 1)] == [d.event_id for d in rules]
    assert not {d.event_id for d in policy_deletions(settings, NOW, 2)} & {d.event_id for d in rules}
    only_failed = policy_deletions(RecorderSettings(retention_failed_days=10), NOW, 1)
    assert [(d.job, d.statuses) for d in only_failed] == [(None, ["error"])]  # successes are kept


async def test_the_policy_deletes_old_finished_runs_once_per_interval_with_two_recorders(
    services, js, subjects, recorder_settings, db
):
    now = datetime.now(timezone.utc)
    runs = {
        "20261101000001": run_events(name="20261101000001", start=now - timedelta(days=3)),                   # goes
        "20261101000002": run_events(name="20261101000002", start=now - timedelta(days=3), fail=True),        # kept: failed
        "20261101000003": run_events(name="20261101000003", start=now - timedelta(days=10), fail=True),       # goes
        "20261101000004": run_events(name="20261101000004", start=now - timedelta(days=10), job="purge_closed_orders"),  # kept
        "20261101000005": run_events(name="20261101000005", start=now - timedelta(days=3))[:3],               # kept: open
        "20261101000006": run_events(name="20261101000006", start=now - timedelta(hours=1)),                  # kept: new
    }
    await publish(js, subjects, [e for events in runs.values() for e in events])
    policy = recorder_settings.model_copy(update={
        "retention_days": 1, "retention_failed_days": 5, "retention_jobs": '{"purge_closed_orders": 30}',
        "retention_interval": 3600})
    await services(run_recorder, policy)
    await services(run_recorder, policy)
    await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM retention_slots"))
    await eventually(lambda: db.fetchval("SELECT count(*) = 3 FROM run_deletions"))
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))

    kept = {r["name"] for r in await db.fetch("SELECT name FROM job_logs")}
    assert kept == {"20261101000002", "20261101000004", "20261101000005", "20261101000006"}
    seen = await everything_in_the_stream(js, subjects)
    deletions = [m for m in seen if m.subject == subjects.retention]
    assert len(deletions) == 3  # one per rule, by one recorder
    assert all(b'"requested_by":"retention:' in m.data for m in deletions)
    assert await db.fetchval("SELECT count(*) FROM run_deletions") == 3


@pytest.mark.parametrize("variable, value, said", [
    ("JOBLOG_RETENTION_DAYS", "-3", "joblog: invalid setting JOBLOG_RETENTION_DAYS: Input should be greater than 0 (got '-3')"),
    ("JOBLOG_RETENTION_JOBS", "{bad", "joblog: invalid setting JOBLOG_RETENTION_JOBS: Value error, not valid JSON: "
                                      "Expecting property name enclosed in double quotes at column 2 (got '{bad')"),
    ("JOBLOG_RETENTION_INTERVAL", "1", "joblog: invalid setting JOBLOG_RETENTION_INTERVAL: "
                                       "Input should be greater than or equal to 10 (got '1')"),
])
def test_a_bad_retention_setting_stops_the_recorder_with_one_line(variable, value, said, env):
    done = subprocess.run([sys.executable, "-m", "joblog", "recorder"], env={**os.environ, **env, variable: value},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [said]
