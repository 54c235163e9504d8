"""Rendered pages, kept until the projection moves on.

A page is stored under a key that includes the projection's version (bumped in the same
transaction as every change to job_logs / job_log_details) and the workers that are alive
(they decide "stalled"); the version is read *before* the rows, so a page is never filed
under a version newer than its data. max_age bounds what the version cannot see: the
running duration of a processing run. One request renders a key at a time: the others wait
for it, or get the expired copy meanwhile, instead of all rendering the same page at once.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable


class PageCache:
    """A small LRU of rendered page bodies."""

    def __init__(self, size: int = 512, max_age: float = 5.0) -> None:
        self.size = size
        self.max_age = max_age
        self._pages: OrderedDict[Hashable, tuple[float, bytes]] = OrderedDict()
        self._rendering: dict[Hashable, asyncio.Future[bytes]] = {}
        self.hits = 0
        self.misses = 0

    async def page(self, key: Hashable, render: Callable[[], Awaitable[bytes]]) -> bytes:
        """The page under key: cached, being rendered by another request, or rendered now."""
        entry = self._pages.get(key)
        if entry is not None and time.monotonic() - entry[0] <= self.max_age:
            self._pages.move_to_end(key)
            self.hits += 1
            return entry[1]
        pending = self._rendering.get(key)
        if pending is not None:
            self.hits += 1
            return entry[1] if entry is not None else await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # waiters may be none
        self._rendering[key] = future
        try:
            body = await render()
        except BaseException as error:
            future.set_exception(error)
            raise
        finally:
            del self._rendering[key]
        future.set_result(body)
        self._put(key, body)
        return body

    def _put(self, key: Hashable, body: bytes) -> None:
        if self.size <= 0:
            return
        self._pages[key] = (time.monotonic(), body)
        self._pages.move_to_end(key)
        while len(self._pages) > self.size:
            self._pages.popitem(last=False)
