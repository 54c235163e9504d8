"""`joblog health`: can this container reach what it needs? For the worker and recorder healthchecks.

Cheap on purpose (one NATS connection, a few stream and consumer lookups, one SELECT): Docker runs
it every 10 s. A consumer that is ahead of its stream (it has delivered sequence numbers the stream
no longer has: the stream was recreated or restored under it) is unhealthy: it would skip every new
message up to its old position, while everything else looks fine.
"""
from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from services.contracts.nats import connect
from services.contracts.settings import CommonSettings
from services.contracts.subjects import close_nats


async def check(settings: CommonSettings, timeout: float = 5.0) -> list[str]:
    """The problems found; an empty list means healthy."""
    problems: list[str] = []
    async def quiet(error: Exception) -> None:
        """Reported below, once; nats-py would print each attempt."""

    try:
        # max_reconnect_attempts=0 would make nats-py retry a refused first connect forever.
        nc = await asyncio.wait_for(
            connect(settings, "joblog-health", reconnect=False, connect_timeout=timeout, reconnect_time_wait=0.2,
                    error_cb=quiet),
            timeout * 2,
        )
    except Exception as error:
        problems.append(f"NATS at {settings.nats_url} unreachable: {error!r}")
    else:
        try:
            js = nc.jetstream(timeout=timeout)
            await js.stream_info(settings.stream)
            problems += await consumers_ahead(js, [str(config.name) for config in settings.subjects.stream_configs()])
        except Exception as error:
            problems.append(f"JetStream stream {settings.stream} unavailable: {error!r}")
        finally:
            await close_nats(nc, timeout)
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=timeout)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
    except Exception as error:
        problems.append(f"Postgres unreachable: {error!r}")
    return problems


async def consumers_ahead(js: Any, streams: list[str]) -> list[str]:
    """A problem for each durable consumer whose position is beyond its stream's last message."""
    import nats.js.errors

    problems = []
    for stream in streams:
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            continue  # not created yet (the first worker or recorder creates it)
        last = info.state.last_seq
        for consumer in await js.consumers_info(stream):
            delivered = consumer.delivered.stream_seq if consumer.delivered else 0
            if consumer.config.durable_name and (delivered or 0) > last:
                problems.append(
                    f"consumer {consumer.name} of stream {stream} is at #{delivered} but the stream ends at #{last}: "
                    "the stream was recreated or restored under it, so the messages up to #"
                    f"{delivered} would be skipped (see README, Backup and restore)"
                )
    return problems


def run(settings: CommonSettings) -> int:
    problems = asyncio.run(check(settings))
    for problem in problems:
        print(f"joblog health: {problem}")
    if not problems:
        print(f"joblog health: ok (NATS, stream {settings.stream}, Postgres)")
    return 1 if problems else 0
