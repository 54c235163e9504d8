"""The page cache renders a page once however many requests ask for it at the same time."""
from __future__ import annotations

import asyncio

import pytest

from services.web.cache import PageCache


async def test_concurrent_requests_for_one_page_render_it_once():
    cache, renders, release = PageCache(), 0, asyncio.Event()

    async def render() -> bytes:
        nonlocal renders
        renders += 1
        await release.wait()
        return b"<html>page</html>"

    waiting = [asyncio.create_task(cache.page("key", render)) for _ in range(16)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == [b"<html>page</html>"] * 16
    assert renders == 1


async def test_an_expired_page_is_served_while_one_request_renders_it_again():
    cache = PageCache(max_age=0.0)
    await cache.page("key", _returns(b"old"))
    release = asyncio.Event()

    async def slow() -> bytes:
        await release.wait()
        return b"new"

    renderer = asyncio.create_task(cache.page("key", slow))
    await asyncio.sleep(0)
    assert await cache.page("key", _returns(b"never")) == b"old"
    release.set()
    assert await renderer == b"new"


async def test_a_failed_render_fails_its_waiters_and_is_not_cached():
    cache = PageCache()

    async def broken() -> bytes:
        await asyncio.sleep(0)
        raise LookupError("no such run")

    results = await asyncio.gather(cache.page("k", broken), cache.page("k", broken), return_exceptions=True)
    assert all(isinstance(r, LookupError) for r in results)
    assert await cache.page("k", _returns(b"ok")) == b"ok"
    with pytest.raises(LookupError):
        await cache.page("other", broken)


def _returns(body: bytes):  # type: ignore[no-untyped-def]
    async def render() -> bytes:
        return body

    return render


async def test_the_projection_version_is_announced_on_commit_and_the_listener_recovers(database_url, db):
    from services.web.cache import ProjectionVersion
    from tests.conftest import eventually

    def at(expected: int):  # type: ignore[no-untyped-def]
        async def check() -> bool:
            return version.current == expected

        return check

    async with ProjectionVersion(database_url, retry=0.05) as version:
        assert version.current == await db.fetchval("SELECT version FROM projection_version")
        async with db.transaction():
            await db.execute("UPDATE projection_version SET version = version + 1")
            await db.execute("UPDATE projection_version SET version = version + 1")
            await asyncio.sleep(0.05)
            assert version.current == 0  # nothing is announced before the commit
        await eventually(at(2))
        # Its connection cut (a Postgres restart, an administrator): unknown until it listens again, no bump missed.
        listener = "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()"
        old = await db.fetchval(listener, ProjectionVersion.APPLICATION)
        assert old is not None and await db.fetchval("SELECT pg_terminate_backend($1)", old)

        async def listening_again() -> bool:
            return await db.fetchval(listener, ProjectionVersion.APPLICATION) not in (None, old) and version.current is not None

        await eventually(listening_again)
        await db.execute("UPDATE projection_version SET version = 7")
        await eventually(at(7))
        await db.execute("UPDATE projection_version SET version = version + 1")
        await eventually(at(8))
    assert version.current is None


async def test_a_cached_index_is_rendered_again_once_the_projection_moves(client, project):
    import uuid

    from services.contracts import RunCreated
    from tests.conftest import eventually

    first = await (await client.get("/")).text()
    assert "20260101000000" not in first
    await project([RunCreated(run_id=uuid.uuid4(), name="20260101000000", job="sync_open_orders", seq=1,
                              worker_id="w1")])

    async def shows_the_new_run() -> bool:
        return "20260101000000" in await (await client.get("/")).text()

    await eventually(shows_the_new_run)
