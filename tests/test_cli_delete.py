"""`joblog delete`: the web's deletion for scripts and cron, with real NATS, Postgres and a recorder."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest

from joblog.cli import main
from services.log_recorder.main import run as run_recorder
from tests.conftest import eventually
from tests.factories import T0, publish, run_events
from tests.log_recorder.conftest import deletions_done, drained


def joblog(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "joblog", "delete", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=180)


async def names(db: Any) -> set[str]:
    return {r["name"] for r in await db.fetch("SELECT name FROM job_logs")}


async def test_delete_by_name_and_before_a_date_of_one_job(services, js, subjects, recorder_settings, db, env):
    runs = [run_events(name="20261128080000", start=T0 - timedelta(days=1)),
            run_events(name="20261128090000", start=T0 - timedelta(days=1), job="purge_closed_orders"),
            run_events(name="20261128100000", start=T0 - timedelta(days=1)),
            run_events(name="20261129100000", start=T0 + timedelta(hours=2)),
            run_events(name="20261129110000", start=T0 + timedelta(hours=3))]
    await services(run_recorder, recorder_settings)
    await publish(js, subjects, [e for run in runs for e in run])
    await eventually(lambda: drained(js, subjects.stream))

    done = joblog(env, "20261129100000", "20261129110000")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("asked to delete 2 runs (20261129100000, 20261129110000) (event ")
    assert len(done.stdout.strip().splitlines()) == 1
    await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM run_deletions"))
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))
    await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM actions WHERE action = 'delete_runs'"))
    assert await names(db) == {"20261128080000", "20261128090000", "20261128100000"}

    done = joblog(env, "--before", "2026-11-29", "--job", "sync_open_orders")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("asked to delete every run of sync_open_orders created before 2026-11-29 (UTC)")
    await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM run_deletions"))
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))
    assert await names(db) == {"20261128090000"}  # the other job's run of that day is kept

    # Audited and requested as the CLI user, like `joblog trigger`.
    deletions = await db.fetch("SELECT requested_by, job FROM run_deletions ORDER BY occurred_at")
    assert [r["job"] for r in deletions] == [None, "sync_open_orders"]
    assert all(r["requested_by"].startswith("cli") for r in deletions)
    await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM actions"))
    actions = await db.fetch("SELECT actor, action, job, target, source FROM actions ORDER BY occurred_at")
    assert [(a["action"], a["job"], a["source"]) for a in actions] == [
        ("delete_runs", None, "cli"), ("delete_before", "sync_open_orders", "cli")]
    assert actions[0]["target"] == "20261129100000,20261129110000"
    assert all(a["actor"].startswith("cli") for a in actions)


@pytest.mark.parametrize("args, said", [
    (["--before", "2026-02-30"], "joblog delete: bad date '2026-02-30': give a date such as 2026-01-31"),
    (["--before", "2999-01-01"], "joblog delete: --before 2999-01-01 is in the future"),
    (["2026112908"], "joblog delete: not a run name: '2026112908' (names look like 20261129083000 or 20261129083000-2)"),
    ([], "joblog delete: give run names (e.g. 20261129083000) or --before DATE"),
    (["20261129083000", "--before", "2026-01-01"], "joblog delete: give run names or --before DATE, not both"),
    (["20261129083000", "--job", "x"], "joblog delete: --job narrows --before DATE; a run name already names one run"),
])
def test_a_bad_request_is_one_line_and_sends_nothing(args, said, env):
    done = joblog({**env, "JOBLOG_NATS_URL": "nats://127.0.0.1:1"}, *args)  # nothing is even connected
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [said]
    assert done.stdout == ""


def test_no_nats_is_one_line(monkeypatch, capsys, unused_tcp_port):
    import joblog.delete

    monkeypatch.setattr(joblog.delete, "RETRY_FOR", 1.0)
    monkeypatch.setenv("JOBLOG_NATS_URL", f"nats://127.0.0.1:{unused_tcp_port}")
    with pytest.raises(SystemExit) as exit:
        main(["delete", "20261129083000"])
    assert exit.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"joblog delete: could not reach NATS at nats://127.0.0.1:{unused_tcp_port} within 1 s"), err


def test_help_says_what_it_does():
    done = subprocess.run([sys.executable, "-m", "joblog", "delete", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "--before DATE" in done.stdout and "--job JOB" in done.stdout and "purges their messages" in done.stdout
