"""Every run gets a terminal event, and no worker cut off from NATS holds back the others' events."""
from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import nats

from joblog.servers import NatsServer
from services.contracts import TriggerRequested
from services.contracts.subjects import close_nats, publish_trigger
from services.log_recorder.main import run as run_recorder
from services.sync_worker import db as worker_db
from services.sync_worker.outbox import RELAY_LOCK, Relay
from services.sync_worker.main import run as run_worker
from tests.conftest import eventually
from tests.factories import run_events
from tests.sync_worker.conftest import details_of, finished_runs

FAIL_ONCE = """
CREATE SEQUENCE refuse_once;  -- not rolled back with the refused insert
CREATE FUNCTION refuse_started_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.subject LIKE '%.started' AND nextval('refuse_once') = 1 THEN
        RAISE EXCEPTION 'the outbox is full (a test stands in for any failure before the job)';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_started_once BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_started_once();
"""


async def test_a_run_whose_start_cannot_be_written_ends_as_error_with_the_reason_instead_of_staying_new(
    services, js, subjects, make_worker_settings, recorder_settings, db
):
    await db.execute(FAIL_ONCE)
    await services(run_recorder, recorder_settings)
    await services(run_worker, make_worker_settings())
    await publish_trigger(js, subjects, TriggerRequested(job="sync_open_orders", trigger="cli"))

    [run] = await finished_runs(db, 1)
    assert run["status"] == "error"
    assert run["error_class"] == "RaiseError" and "the outbox is full" in run["error_message"]
    errors = [d for d in await details_of(db, run["id"]) if d["key"] == "error"]
    assert errors and errors[0]["message"].startswith("Failed: RaiseError")
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_relay_that_cannot_reach_jetstream_lets_go_so_another_worker_relays_every_event(
    js, subjects, database_url, nats_url, tmp_path: Path
):
    """Relay A holds the lock first, but its NATS has no such stream; relay B publishes everything."""
    other = NatsServer(tmp_path / "elsewhere").start()  # a NATS where our stream does not exist
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=6)
    cut_off, healthy = await nats.connect(other.url), await nats.connect(nats_url)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        events = run_events(name="20261201140000")
        async with pool.acquire() as conn:
            await worker_db.append_outbox(conn, [(subjects.for_event(e), e.event_id, e.model_dump_json().encode()) for e in events])
        relay_a = Relay(pool, cut_off.jetstream(timeout=1), connected=lambda: cut_off.is_connected)
        tasks.append(asyncio.create_task(relay_a.run(stop)))
        await eventually(lambda: _lock_held(pool))
        relay_b = Relay(pool, healthy.jetstream(timeout=5), connected=lambda: healthy.is_connected)
        tasks.append(asyncio.create_task(relay_b.run(stop)))

        async def relayed() -> bool:
            async with pool.acquire() as conn:
                return await conn.fetchval("SELECT count(*) = 0 FROM outbox")

        await eventually(relayed)
        assert relay_b.published == len(events) and relay_a.published == 0
        assert (await js.stream_info(subjects.stream)).state.messages == len(events)
    finally:
        stop.set()
        relay_a.wake(), relay_b.wake()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        await close_nats(cut_off)
        await close_nats(healthy)
        await pool.close()
        other.stop()


async def _lock_held(pool: asyncpg.Pool) -> bool:
    async with pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND ((classid::bigint << 32) | objid::bigint) = $1", RELAY_LOCK)
