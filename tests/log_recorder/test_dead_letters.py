"""Bad messages become dead letters and never block the stream; a database outage is waited out."""
from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import asyncpg

from services.log_recorder.main import run as run_recorder
from services.log_recorder.rebuild import rebuild
from services.log_recorder.settings import RecorderSettings
from tests.conftest import connect_when_up, eventually
from tests.factories import T0, run_events, snapshot
from tests.log_recorder.conftest import as_payloads, drained, in_order_tables, publish_many


def malformed(subjects, count: int, max_bytes: int) -> list[tuple[str, bytes, str]]:  # type: ignore[no-untyped-def]
    """(subject, payload, expected reason) for garbage bytes, wrong schema, too large and a newer version."""
    rng = random.Random(4)
    valid = json.loads(run_events()[2].model_dump_json())
    subject = f"{subjects.prefix}.run.sync_open_orders.20261129083000.step"
    out: list[tuple[str, bytes, str]] = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            out.append((subject, b"\xff{" + rng.randbytes(rng.randint(0, 200)), "not valid JSON"))
        elif kind == 1:
            out.append((subject, json.dumps({"type": "run.step", "run_id": "not-a-uuid", "i": i}).encode(), "breaks the contract"))
        elif kind == 2:
            out.append((subject, json.dumps({**valid, "message": "x" * max_bytes}).encode(), "too large"))
        else:
            out.append((subject, json.dumps({**valid, "schema_version": 2}).encode(), "unknown schema version"))
    return out


async def test_a_thousand_malformed_messages_are_dead_lettered_and_the_valid_run_behind_them_completes(
    services, js, subjects, recorder_settings, db
):
    """Fault 6: garbage bytes, wrong schema, huge and newer-version messages interleaved with a valid run."""
    settings = recorder_settings.model_copy(update={"max_event_bytes": 4096})
    bad = malformed(subjects, 1000, settings.max_event_bytes)
    good = run_events(name="20261129090000", steps=5, updates=4)
    mixed: list[tuple[str, bytes]] = [(s, p) for s, p, _ in bad]
    for i, item in enumerate(as_payloads(subjects, good)):
        mixed.insert(i * 70, item)
    await services(run_recorder, settings)

    await publish_many(js, subjects, mixed)
    await eventually(lambda: drained(js, subjects.stream))

    letters = await db.fetch("SELECT subject, payload, reason, stream_seq, received_at FROM dead_letters")
    assert len(letters) == 1000
    assert Counter(r["reason"].split(":")[0] for r in letters) == Counter(reason for _, _, reason in bad)
    assert {bytes(r["payload"]) for r in letters} == {p for _, p, _ in bad}
    assert all(r["stream_seq"] and r["received_at"] for r in letters)
    run = await db.fetchrow("SELECT status, stats FROM job_logs WHERE name = '20261129090000'")
    assert run["status"] == "success"
    assert await db.fetchval("SELECT count(*) FROM job_log_details") == 5 + 1


async def test_events_postgres_refuses_are_dead_lettered_and_the_runs_around_them_complete(
    services, js, subjects, recorder_settings, db
):
    """Valid by the contract, refused by Postgres: a NUL in a message, a seq beyond the column's range."""
    good = run_events(name="20261129090000", steps=3, updates=1)
    valid = json.loads(good[2].model_dump_json())
    subject = subjects.for_event(good[2])
    refused = [
        json.dumps({**valid, "event_id": "6f1c3a52-5f39-4a8e-9d0e-2a3b4c5d6e01", "key": "inf", "data": {"n": float("inf")}}).encode(),
        json.dumps({**valid, "event_id": "6f1c3a52-5f39-4a8e-9d0e-2a3b4c5d6e02", "key": "big", "seq": 3_000_000_000}).encode(),
    ]
    mixed = as_payloads(subjects, good[:3]) + [(subject, p) for p in refused] + as_payloads(subjects, good[3:])
    await services(run_recorder, recorder_settings)

    await publish_many(js, subjects, mixed)
    await eventually(lambda: drained(js, subjects.stream))

    letters = await db.fetch("SELECT payload, reason FROM dead_letters ORDER BY stream_seq")
    assert [bytes(r["payload"]) for r in letters] == refused
    assert all(r["reason"].startswith("refused by Postgres") for r in letters)
    run = await db.fetchrow("SELECT status FROM job_logs WHERE name = '20261129090000'")
    assert run["status"] == "success"
    assert await db.fetchval("SELECT count(*) FROM job_log_details") == 3 + 1
    kept = await snapshot(db)

    report = await rebuild(recorder_settings, progress=False)  # meets the same events: never stuck on them
    assert report.runs == 1 and await snapshot(db) == kept


async def test_a_database_outage_is_waited_out_nothing_lost_nothing_doubled(services, js, subjects, nats_url, own_postgres):
    """Fault 3: Postgres stops while events flow and comes back on the same port and data."""
    pg, dsn = own_postgres
    settings = RecorderSettings(
        nats_url=nats_url, database_url=dsn, stream=subjects.stream, subject_prefix=subjects.prefix,
        recorder_batch_size=40,
    )
    runs = [run_events(name=f"2026112910{i // 60:02d}{i % 60:02d}", start=T0, steps=4, updates=3) for i in range(60)]
    events = [e for run in runs for e in run]
    half = len(events) // 2
    recorder = await services(run_recorder, settings)

    await publish_many(js, subjects, as_payloads(subjects, events[:half]))
    conn = await asyncpg.connect(dsn)
    await eventually(lambda: conn.fetchval("SELECT count(*) > 0 FROM job_logs"))
    await conn.close()
    await asyncio.to_thread(pg.stop)
    await publish_many(js, subjects, as_payloads(subjects, events[half:]))
    await asyncio.sleep(1.5)  # the recorder meets the outage: it must retry, not ack, not dead-letter
    await asyncio.to_thread(pg.start)

    await eventually(lambda: drained(js, subjects.stream), timeout=60)
    await recorder.stop()
    conn = await connect_when_up(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 0
        recorded = await snapshot(conn)
        assert recorded == await in_order_tables(conn, events)
        assert len(recorded["job_logs"]) == 60 and {r["status"] for r in recorded["job_logs"]} == {"success"}
    finally:
        await conn.close()
