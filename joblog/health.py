"""`joblog health`: can this container reach what it needs? For the worker and recorder healthchecks.

Cheap on purpose (one NATS connection, one stream lookup, one SELECT): Docker runs it every 30 s.
"""
from __future__ import annotations

import asyncio

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
            await nc.jetstream(timeout=timeout).stream_info(settings.stream)
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


def run(settings: CommonSettings) -> int:
    problems = asyncio.run(check(settings))
    for problem in problems:
        print(f"joblog health: {problem}")
    if not problems:
        print(f"joblog health: ok (NATS, stream {settings.stream}, Postgres)")
    return 1 if problems else 0
