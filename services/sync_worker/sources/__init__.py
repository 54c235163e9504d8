"""Order sources: where SyncOpenOrdersJob reads the ERP's open orders."""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from services.sync_worker.settings import WorkerSettings

RawOrder = dict[str, Any]


class OrderSource(Protocol):
    """A source yields raw order rows in batches, never all of them at once."""

    description: str

    def connect(self) -> AbstractAsyncContextManager[AsyncIterator[list[RawOrder]]]:
        """Open the source; the context's value iterates over batches of raw rows."""
        ...


@dataclass(frozen=True)
class BulkRows:
    """A source's rows as Postgres can COPY them: CSV bytes, header line first."""

    columns: list[str]  # the header's names, in the order of the fields
    data: AsyncIterator[bytes]
    empty_is_null: bool  # an empty field is "no value" (a CSV file cannot say otherwise)


class NotBulk(Exception):
    """Raised from BulkRows.data when Postgres would not read the rows exactly as the per-row path does.

    Nothing has been written when it is raised: the run takes the per-row path instead."""


@runtime_checkable
class BulkSource(OrderSource, Protocol):
    """A source that can also hand Postgres all its rows at once."""

    def bulk(self) -> AbstractAsyncContextManager[BulkRows | None]:
        """Open the source for COPY; None when it must be read row by row after all."""
        ...


def open_source(settings: WorkerSettings, on_retry: Callable[[str], Awaitable[None]] | None = None) -> OrderSource:
    """The source named by JOBLOG_ORDERS_SOURCE (the settings guarantee what it needs is set).

    on_retry hears about requests that are retried, so the run's log can say why it waits."""
    if settings.orders_source == "postgres":
        from services.sync_worker.sources.postgres import PostgresSource

        assert settings.orders_dsn is not None
        return PostgresSource(settings.orders_dsn.get_secret_value(), settings.orders_query, settings.sync_batch_size)
    if settings.orders_source == "http":
        from services.sync_worker.sources.http import HttpSource

        assert settings.orders_url is not None
        token = settings.orders_http_token.get_secret_value() if settings.orders_http_token else None
        return HttpSource(
            settings.orders_url, timeout=settings.orders_http_timeout, retries=settings.orders_http_retries,
            backoff=settings.orders_http_backoff, token=token, on_retry=on_retry,
        )
    from services.sync_worker.sources.csv_file import CsvSource

    return CsvSource(settings.orders_csv_path, settings.sync_batch_size)
