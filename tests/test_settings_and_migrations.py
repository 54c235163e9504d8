"""Configuration errors stop a service with one line; migrations are safe to repeat."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from joblog.migrate import migrate


@pytest.mark.parametrize(
    "variable, value",
    [("JOBLOG_WEB_PORT", "eighty"), ("JOBLOG_NATS_URL", "http://nats"), ("JOBLOG_TIMEZONE", "Mars/Olympus"),
     ("JOBLOG_DATABASE_URL", "mysql://x"), ("JOBLOG_LOG_FORMAT", "xml"),
     ("JOBLOG_NATS_PASSWORD", "no-user-given"), ("JOBLOG_NATS_CREDS", "/nonexistent/joblog.creds")],
)
def test_a_bad_setting_stops_the_service_with_one_line_naming_it(variable, value):
    env = {**os.environ, variable: value}
    result = subprocess.run([sys.executable, "-m", "joblog", "web"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Warning" not in line and "return Path" not in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"joblog: invalid setting {variable}:")


def test_a_mistyped_database_url_is_named_without_its_password():
    env = {**os.environ, "JOBLOG_DATABASE_URL": "postgres//joblog:s3cret@db:5432/joblog"}
    bad = subprocess.run([sys.executable, "-m", "joblog", "web"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "JOBLOG_DATABASE_URL" in bad.stderr and "s3cret" not in bad.stderr
    env["JOBLOG_DATABASE_URL"] = "mysql://joblog:s3cret@db:5432/joblog"
    bad = subprocess.run([sys.executable, "-m", "joblog", "web"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "JOBLOG_DATABASE_URL" in bad.stderr and "***@db" in bad.stderr
    assert "s3cret" not in bad.stderr


async def test_migrations_are_idempotent_and_safe_concurrently(database_url, db):
    await db.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    conns = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(len(r) for r in results)[-1] >= 1 and sum(len(r) for r in results) == len(max(results, key=len))
        assert await migrate(conns[0]) == []
    finally:
        for conn in conns:
            await conn.close()
    assert await db.fetchval("SELECT to_regclass('job_logs') IS NOT NULL")
