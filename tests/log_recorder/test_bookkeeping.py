"""Bounded bookkeeping: tombstones, deletions and dead letters are forgotten once of no further use."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import asyncpg

from services.log_recorder.main import run as run_recorder
from services.log_recorder.retention import Reaper
from tests.conftest import eventually
from tests.log_recorder.conftest import drained


async def test_tombstones_deletions_and_dead_letters_are_pruned_after_their_margin(recorder_settings, db, database_url):
    now = datetime.now(timezone.utc)
    old_event, new_event, pending_event = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for event_id, finished in ((old_event, now - timedelta(days=8)), (new_event, now - timedelta(days=1)), (pending_event, None)):
        await db.execute("INSERT INTO run_deletions (event_id, occurred_at, finished_at) VALUES ($1, $2, $3)",
                         event_id, now - timedelta(days=9), finished)
    await db.execute("INSERT INTO run_deletion_spared (event_id, name) VALUES ($1, '20261101000009')", old_event)
    tombstones = {"20261101000001": now - timedelta(days=8), "20261101000002": now - timedelta(days=1),
                  "20261101000003": None}
    for name, purged_at in tombstones.items():
        await db.execute("INSERT INTO deleted_runs (name, deleted_at, event_id, purged_at) VALUES ($1, $2, $3, $4)",
                         name, now - timedelta(days=9), old_event, purged_at)
        await db.execute("INSERT INTO run_names (name, run_id, job) VALUES ($1, $2, 'sync_open_orders')", name, uuid.uuid4())
    await db.execute("INSERT INTO run_names (name, run_id, job) VALUES ('20261201000000', $1, 'sync_open_orders')", uuid.uuid4())
    for seq, received in ((1, now - timedelta(days=31)), (2, now - timedelta(days=2))):
        await db.execute("INSERT INTO dead_letters (subject, payload, reason, stream_seq, received_at) VALUES ('x', 'y', 'z', $1, $2)",
                         seq, received)

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        pruned = await Reaper(recorder_settings, pool, None).prune(now)
    finally:
        await pool.close()

    assert pruned == {"tombstones": 1, "deletions": 1, "dead_letters": 1}
    # A tombstone goes only once its messages were purged, plus JOBLOG_TOMBSTONE_DAYS (7): nothing can bring them back.
    assert {r["name"] for r in await db.fetch("SELECT name FROM deleted_runs")} == {"20261101000002", "20261101000003"}
    assert {r["name"] for r in await db.fetch("SELECT name FROM run_names")} == {
        "20261101000002", "20261101000003", "20261201000000"}
    assert {r["event_id"] for r in await db.fetch("SELECT event_id FROM run_deletions")} == {new_event, pending_event}
    assert await db.fetchval("SELECT count(*) FROM run_deletion_spared") == 0
    assert [r["stream_seq"] for r in await db.fetch("SELECT stream_seq FROM dead_letters")] == [2]


async def test_a_dead_letter_keeps_a_bounded_prefix_of_its_payload_and_its_size(services, js, subjects, recorder_settings, db):
    await services(run_recorder, recorder_settings.model_copy(update={"dead_letter_payload_bytes": 1000, "max_event_bytes": 2048}))
    payload = b'{"type":"run.step","message":"' + b"ERP said: " * 1000 + b'"}'
    await js.publish(f"{subjects.prefix}.run.sync_open_orders.20261201000000.step", payload)
    await eventually(lambda: drained(js, subjects.stream))
    letter = await db.fetchrow("SELECT payload, payload_bytes, reason FROM dead_letters")
    assert letter["reason"].startswith("too large")
    assert bytes(letter["payload"]) == payload[:1000]
    assert letter["payload_bytes"] == len(payload)
