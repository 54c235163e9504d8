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
import contextlib
import gzip
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("joblog.web")


def etag_of(body: bytes) -> str:
    """A page's entity tag: a digest of its bytes, so equal pages are equal tags whatever made them."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


# gzip level 1: a 37 kB index page becomes 3.4 kB in 0.15 ms (level 6: 3.1 kB in 0.26 ms), once per page.
GZIP_LEVEL = 1


@dataclass(eq=False)
class Page:
    """A rendered page, its ETag, and (made on first demand, then kept with it) its gzip encoding."""

    body: bytes
    etag: str
    _gzipped: bytes | None = None

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, compresslevel=GZIP_LEVEL, mtime=0)
        return self._gzipped

    @property
    def gzip_etag(self) -> str:
        """The gzip encoding's own tag (another representation: another entity tag)."""
        return self.etag[:-1] + '-gzip"'


class PageCache:
    """A small LRU of rendered pages (with their ETag and gzip encoding), and the run pages' long parts (run_parts)."""

    def __init__(self, size: int = 512, max_age: float = 5.0, run_parts_bytes: int = 32 * 1024 * 1024) -> None:
        self.size = size
        self.max_age = max_age
        self._pages: OrderedDict[Hashable, tuple[float, Page]] = OrderedDict()
        self._rendering: dict[Hashable, asyncio.Future[Page]] = {}
        self.hits = 0
        self.misses = 0
        self.projection: ProjectionVersion | None = None  # set while the app runs (services.web.app)
        self.run_parts = RunParts(run_parts_bytes if size > 0 else 0)

    def known_version(self) -> int | None:
        """The projection's version as last announced, or None (not listening: ask the database)."""
        return self.projection.current if self.projection is not None else None

    async def page(self, key: Hashable, render: Callable[[], Awaitable[bytes]]) -> bytes:
        """The page under key: cached, being rendered by another request, or rendered now."""
        return (await self.tagged(key, render)).body

    async def tagged(self, key: Hashable, render: Callable[[], Awaitable[bytes]]) -> Page:
        """The page under key with its ETag and gzip encoding, as page() finds or renders it."""
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
        future: asyncio.Future[Page] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # waiters may be none
        self._rendering[key] = future
        try:
            body = await render()
        except BaseException as error:
            future.set_exception(error)
            raise
        finally:
            del self._rendering[key]
        found = Page(body, etag_of(body))
        future.set_result(found)
        self._put(key, found)
        return found

    def _put(self, key: Hashable, page: Page) -> None:
        if self.size <= 0:
            return
        self._pages[key] = (time.monotonic(), page)
        self._pages.move_to_end(key)
        while len(self._pages) > self.size:
            self._pages.popitem(last=False)


class RunParts:
    """The long parts of finished runs' pages (their messages, timeline, counts), each under the run page's
    key (name, after, levels) with the run's page version (investigate_db.RUN_PAGE): a page rendered again
    because the projection moved, its run not, reuses them; its short parts (header, error group, previous
    successful run, account) are rendered each time. An LRU bounded by the size of what it holds.

    Only runs that have ended are kept: an open run's parts show time so far. A late event changes the
    run's row and so its version (the parts are rendered again); a deleted run has no row (404), and its
    parts age out."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._parts: OrderedDict[Hashable, tuple[str, dict[str, Any], int]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def version(self, key: Hashable) -> str | None:
        """The run page version whose parts are held under key, if any."""
        entry = self._parts.get(key)
        return entry[0] if entry is not None else None

    def get(self, key: Hashable, version: str) -> dict[str, Any] | None:
        """The parts held under key for this version of the run, or None."""
        entry = self._parts.get(key)
        if entry is None or entry[0] != version:
            self.misses += 1
            return None
        self._parts.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: Hashable, version: str, parts: dict[str, Any], size: int) -> None:
        """Keep parts (about `size` bytes) under key for this version, forgetting the least recently used beyond max_bytes."""
        self.discard(key)
        if size > self.max_bytes:
            return
        self._parts[key] = (version, parts, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, _, gone) = self._parts.popitem(last=False)
            self.bytes -= gone

    def discard(self, key: Hashable) -> None:
        entry = self._parts.pop(key, None)
        if entry is not None:
            self.bytes -= entry[2]


class ProjectionVersion:
    """The projection's version as Postgres announces it (migration 0011: LISTEN joblog_projection).

    A cache hit then needs no database round trip: page_key reads `current` instead of
    `SELECT version`. One connection of its own listens; after LISTEN it reads the version once
    (so no bump between the two is missed), then every committed bump arrives as a notification,
    in commit order. While that connection is down, `current` is None and readers fall back to
    the SELECT; it reconnects in the background. A notification arrives just after its commit,
    so a page rendered in between is filed under the previous version with newer rows, never
    the other way round: it is rendered again when the notification lands.
    """

    CHANNEL = "joblog_projection"
    APPLICATION = "joblog-web-projection-version"  # its session in pg_stat_activity

    def __init__(self, dsn: str, retry: float = 1.0) -> None:
        self.dsn = dsn
        self.retry = retry
        self.current: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> "ProjectionVersion":
        self._task = asyncio.create_task(self._listen(), name="projection-version")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 5)  # not required: readers fall back meanwhile
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.current = None

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.current = int(payload)

    async def _listen(self) -> None:
        import asyncpg

        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn, server_settings={"application_name": self.APPLICATION})
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c: lost.set())
                await conn.add_listener(self.CHANNEL, self._notified)
                found = await conn.fetchval("SELECT version FROM projection_version")
                # A bump committed after that read's snapshot may have been announced while it ran: keep the newer.
                self.current = found if self.current is None else max(self.current, found)
                self._ready.set()
                await lost.wait()
                log.warning("the projection version's listener lost its connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Postgres away or not migrated yet: readers SELECT meanwhile
                log.warning("cannot listen for the projection version; retrying", error=repr(error))
            finally:
                self.current = None
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
            await asyncio.sleep(self.retry)
