"""Two recorders on one durable consumer give the tables one gives; a SIGKILLed recorder loses and doubles nothing."""
from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig

from services.contracts import RunsDeleted
from services.log_recorder.main import run as run_recorder
from tests.conftest import eventually
from tests.factories import T0, publish, run_events, snapshot
from tests.log_recorder.conftest import deletions_done, as_payloads, drained, in_order_tables, publish_many


def many_runs(count: int, prefix: str = "20261129") -> list[Any]:
    return [
        e for i in range(count)
        for e in run_events(name=f"{prefix}{14 + i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}", steps=4, updates=4, fail=i % 7 == 0)
    ]


async def test_two_recorders_on_one_durable_give_the_tables_of_one_and_track_their_position(services, js, subjects, recorder_settings, db):
    events = many_runs(80)
    shuffled = events[:]
    random.Random(11).shuffle(shuffled)
    settings = recorder_settings.model_copy(update={"recorder_batch_size": 25})
    await services(run_recorder, settings)
    await services(run_recorder, settings)

    await publish_many(js, subjects, as_payloads(subjects, shuffled))
    await eventually(lambda: drained(js, subjects.stream))
    last_seq = (await js.stream_info(subjects.stream)).state.last_seq

    position = await db.fetchrow("SELECT * FROM projection_state WHERE consumer = 'log_recorder'")
    assert position["last_stream_seq"] == last_seq and position["applied_events"] == len(events)
    assert position["last_event_at"] == max(e.occurred_at for e in events)
    assert await snapshot(db) == await in_order_tables(db, events)


async def test_a_recorder_killed_with_sigkill_mid_batch_and_restarted_loses_and_doubles_nothing(js, subjects, db, env, tmp_path: Path):
    """Fault 1: `joblog recorder` as an OS process, killed -9 while events flow, then started again."""
    events = many_runs(240)  # 3,360 events
    recorder_env = {**os.environ, **env, "JOBLOG_RECORDER_BATCH_SIZE": "50", "JOBLOG_LOG_LEVEL": "WARNING",
                    # What the killed recorder fetched but never acked goes to the next one after this.
                    "JOBLOG_RECORDER_ACK_WAIT": "2"}
    log = (tmp_path / "recorder.log").open("wb")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "joblog", "recorder"], env=recorder_env, stdout=log, stderr=log)

    recorder = start()
    try:
        publishing = asyncio.create_task(publish_many(js, subjects, as_payloads(subjects, events), chunk=100))
        applied = await eventually(lambda: db.fetchval(
            "SELECT applied_events FROM projection_state WHERE applied_events >= 500"), timeout=60)
        recorder.send_signal(signal.SIGKILL)
        recorder.wait(10)
        at_kill = await db.fetchval("SELECT applied_events FROM projection_state")
        await publishing
        assert applied <= at_kill < len(events)  # it died with work left, some of it fetched and unacked

        recorder = start()
        await eventually(lambda: drained(js, subjects.stream), timeout=90)
        assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
        recorded = await snapshot(db)
        assert len(recorded["job_logs"]) == 240
        assert recorded == await in_order_tables(db, events)
    finally:
        if recorder.poll() is None:
            recorder.send_signal(signal.SIGTERM)
            try:
                recorder.wait(15)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()
        log.close()


async def test_a_durable_made_by_an_older_recorder_is_brought_up_to_date_to_receive_deletions(services, js, subjects, recorder_settings, db):
    """An older recorder's durable filtered run events only; now it must also carry retention events."""
    await js.add_consumer(subjects.stream, ConsumerConfig(
        name="log_recorder", durable_name="log_recorder", filter_subject=subjects.runs, ack_policy=AckPolicy.EXPLICIT))
    old, new = run_events(name="20261129150000", start=T0), run_events(name="20261129150001", start=T0 + timedelta(days=1))
    await publish(js, subjects, old + new)
    await services(run_recorder, recorder_settings)

    info = await js.consumer_info(subjects.stream, "log_recorder")
    # Now both subjects (nats-server 2.10+), or no filter at all, i.e. the whole stream (2.9 ignores filter_subjects).
    assert sorted(info.config.filter_subjects or [info.config.filter_subject or ""]) in (
        sorted([subjects.runs, subjects.retention]), [""])
    deleted = RunsDeleted(created_before=T0 + timedelta(hours=1))
    await js.publish(subjects.retention, deleted.model_dump_json().encode())
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))  # carried out by the reaper after the batch that read it
    assert [r["name"] for r in await db.fetch("SELECT name FROM job_logs")] == ["20261129150001"]
