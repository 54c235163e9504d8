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
