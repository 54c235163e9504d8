"""What an operator relies on: logs a machine can read, health checks, and --help that tells."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys

import pytest

from joblog.cli import build_parser
from joblog.servers import free_port


def subcommands() -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def joblog(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    return subprocess.run([sys.executable, "-m", "joblog", *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_subcommand_help_says_what_it_does_and_what_it_needs(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    summary = subcommands()[command].description or ""
    assert len(summary.split()) >= 5, f"`joblog {command} --help` does not say what it does"
    assert summary.split(".")[0] in text
    assert "JOBLOG_" in text, f"`joblog {command} --help` does not name the variables it needs (or say it needs none)"


def test_joblog_help_lists_every_subcommand():
    out = joblog("--help", env={}).stdout
    assert all(name in out for name in subcommands())


def test_a_service_that_cannot_start_logs_one_json_object_per_line(tmp_path):
    unreachable = f"postgresql://nobody@127.0.0.1:{free_port()}/joblog"
    failed = joblog("recorder", env={"JOBLOG_LOG_FORMAT": "json", "JOBLOG_DATABASE_URL": unreachable,
                                     "JOBLOG_NATS_URL": f"nats://127.0.0.1:{free_port()}"})
    assert failed.returncode != 0
    records = [json.loads(line) for line in failed.stderr.splitlines() if line.strip()]
    crash = records[-1]
    assert crash["level"] == "critical" and crash["event"] == "uncaught exception"
    assert "Traceback" in crash["exception"] and "Error" in crash["exception"].splitlines()[-1]
    assert {"timestamp", "logger"} <= set(crash)


def test_console_logs_are_readable_lines():
    failed = joblog("recorder", env={"JOBLOG_LOG_FORMAT": "console", "JOBLOG_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/x",
                                     "JOBLOG_NATS_URL": f"nats://127.0.0.1:{free_port()}"})
    assert failed.returncode != 0
    first = failed.stderr.splitlines()[0]
    assert "uncaught exception" in first and not first.startswith("{")
    assert "Traceback (most recent call last)" in failed.stderr


async def test_health_is_ok_when_nats_the_stream_and_postgres_are_there(js, env):
    healthy = joblog("health", env=env)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "ok" in healthy.stdout

    sick = joblog("health", env={**env, "JOBLOG_NATS_URL": f"nats://127.0.0.1:{free_port()}"})
    assert sick.returncode == 1 and "NATS" in sick.stdout


async def trigger_and_wait(env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "joblog", "trigger", "sync_open_orders", "--wait",
        env={"PATH": os.environ["PATH"], **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert out, err.decode()
    return proc.returncode or 0, out.decode().strip().splitlines()[-1]


async def test_trigger_wait_follows_the_run_to_its_end_and_exits_with_its_result(services, make_worker_settings, env, tmp_path):
    from services.sync_worker.main import run as run_worker

    worker = await services(run_worker, make_worker_settings())
    code, last = await trigger_and_wait(env)
    assert code == 0
    assert " sync_open_orders " in last and " succeeded in " in last and "fetched=320" in last

    await worker.stop()
    await services(run_worker, make_worker_settings(orders_csv_path=tmp_path / "missing.csv"))
    code, last = await trigger_and_wait(env)
    assert code == 1
    assert " failed at step connect: SourceError: " in last and "missing.csv" in last
