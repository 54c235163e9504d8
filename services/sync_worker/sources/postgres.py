"""An ERP's Postgres: a configurable query read through a server-side cursor, one batch at a time."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from services.sync_worker.errors import SourceError
from services.sync_worker.sources import RawOrder


class PostgresSource:
    """Runs query in a read-only transaction; a cursor keeps the rows on the server until fetched."""

    def __init__(self, dsn: str, query: str, batch_size: int, connect_timeout: float = 10.0) -> None:
        self.dsn = dsn
        self.query = query
        self.batch_size = batch_size
        self.connect_timeout = connect_timeout
        # Never show the password: host, port and database are enough to recognise the ERP.
        self.description = f"ERP database {_safe_dsn(dsn)}"

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncIterator[list[RawOrder]]]:
        try:
            conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise SourceError(f"cannot connect to {self.description}: {error}") from error
        try:
            async with conn.transaction(readonly=True, isolation="repeatable_read"):
                yield self._batches(conn)
        finally:
            await conn.close()

    async def _batches(self, conn: asyncpg.Connection) -> AsyncIterator[list[RawOrder]]:
        try:
            cursor = await conn.cursor(self.query)
            while True:
                rows = await cursor.fetch(self.batch_size)
                if not rows:
                    return
                yield [dict(row) for row in rows]
        except asyncpg.PostgresError as error:
            raise SourceError(f"the orders query failed on {self.description}: {error}") from error


def _safe_dsn(dsn: str) -> str:
    """host:port/database of a DSN, without user or password."""
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path or ''}"
