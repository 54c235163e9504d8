"""The generic job API: any registered job gets a complete run log, failures included."""
from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from services.contracts import parse_event
from services.log_recorder.main import run as run_recorder
from services.sync_worker.jobs import RunContext, registry
from services.sync_worker.jobs.api import JobRegistry, create_run, execute_run
from services.sync_worker.main import run as run_worker
from tests.conftest import eventually


async def outbox_events(db: asyncpg.Connection) -> list[Any]:
    """The events the runs committed, in the order the relay would publish them."""
    return [parse_event(bytes(r["payload"])) for r in await db.fetch("SELECT payload FROM outbox ORDER BY id")]


async def test_an_uncaught_exception_fails_the_run_with_class_message_traceback_and_step(make_worker_settings, database_url, db):
    jobs = JobRegistry()

    @jobs.job("reindex_orders", title="ReindexOrdersJob")
    async def reindex(ctx: RunContext) -> dict[str, Any]:
        await ctx.log("Reading the index", key="read")
        await ctx.log("Rebuilding", key="rebuild")
        raise LookupError("index open_orders_open is missing")

    settings = make_worker_settings()
    async with asyncpg.create_pool(database_url, min_size=1, max_size=3) as pool:
        ctx = await create_run(jobs.get("reindex_orders"), settings, pool, trigger="manual", requested_by="ops")
        assert await execute_run(jobs.get("reindex_orders"), ctx) is False

    events = await outbox_events(db)
    assert [e.type for e in events] == ["run.created", "run.started", "run.step", "run.step", "run.step", "run.failed"]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    failed = events[-1]
    assert failed.error_class == "LookupError"
    assert failed.error_message == "index open_orders_open is missing"
    assert failed.step == "rebuild"
    assert "Traceback" in failed.traceback and "in reindex" in failed.traceback
    error_detail = events[-2]
    assert error_detail.level == "error" and error_detail.key == "error"
    assert error_detail.message == "Failed during step 'rebuild': LookupError: index open_orders_open is missing"


async def test_a_job_returns_its_final_statistics(make_worker_settings, database_url, db):
    settings = make_worker_settings()
    spec = registry.get("purge_closed_orders")
    async with asyncpg.create_pool(database_url, min_size=1, max_size=3) as pool:
        ctx = await create_run(spec, settings, pool, trigger="cli")
        assert await execute_run(spec, ctx) is True

    events = await outbox_events(db)
    assert events[0].type == "run.created" and events[0].trigger == "cli"
    assert events[-1].type == "run.succeeded" and events[-1].stats == {"deleted": 0}
    assert {e.name for e in events} == {ctx.name} and len({e.run_id for e in events}) == 1


def test_every_registered_job_is_described_for_the_monitor():
    described = {j.name: j for j in registry.describe({"purge_closed_orders": "@daily"}, {"sync_open_orders": 2})}

    assert set(described) >= {"sync_open_orders", "purge_closed_orders"}
    assert described["purge_closed_orders"].schedule == "@daily"
    assert described["sync_open_orders"].schedule is None
    assert described["sync_open_orders"].max_concurrency == 2


async def test_tasks_of_one_run_logging_at_once_commit_every_event_exactly_once(make_worker_settings, database_url, db):
    jobs = JobRegistry()

    @jobs.job("fan_out", title="FanOutJob")
    async def fan_out(ctx: RunContext) -> dict[str, Any]:
        # A job's helper tasks log while the job itself writes in its own transactions.
        async def helper(n: int) -> None:
            for i in range(40):
                await ctx.log(f"helper {n} item {i}", key=f"h{n}-{i}")
                await asyncio.sleep(0)

        async def writer() -> None:
            for i in range(40):
                async with ctx.transaction() as conn:
                    await ctx.log(f"batch {i}", key="batch", conn=conn)
                await asyncio.sleep(0)

        await asyncio.gather(writer(), *(helper(n) for n in range(5)))
        return {}

    settings = make_worker_settings()
    async with asyncpg.create_pool(database_url, min_size=1, max_size=6) as pool:
        ctx = await create_run(jobs.get("fan_out"), settings, pool, trigger="manual")
        assert await execute_run(jobs.get("fan_out"), ctx) is True

    seqs = [e.seq for e in await outbox_events(db)]
    assert sorted(seqs) == list(range(1, ctx.seq + 1))


async def test_a_step_logged_before_a_long_silent_wait_is_in_the_log_during_the_wait(
    services, make_worker_settings, recorder_settings, database_url, db
):
    jobs = JobRegistry()
    connected = asyncio.Event()

    @jobs.job("slow_connect", title="SlowConnectJob")
    async def slow_connect(ctx: RunContext) -> dict[str, Any]:
        await ctx.log("Connecting to the ERP", key="connect")
        await connected.wait()  # a 30 s connect: the job logs nothing meanwhile
        return {}

    settings = make_worker_settings()
    await services(run_recorder, recorder_settings)
    await services(run_worker, settings)  # its outbox relay publishes what the run commits
    async with asyncpg.create_pool(database_url, min_size=1, max_size=3) as pool:
        ctx = await create_run(jobs.get("slow_connect"), settings, pool, trigger="manual")
        running = asyncio.create_task(execute_run(jobs.get("slow_connect"), ctx))
        try:
            detail = await eventually(
                lambda: db.fetchrow("SELECT message FROM job_log_details WHERE job_log_id = $1 AND key = 'connect'", ctx.run_id),
                timeout=15,
            )
            assert detail["message"] == "Connecting to the ERP"
            assert not running.done()
        finally:
            connected.set()
        assert await running is True
