"""Order sources: where SyncOpenOrdersJob reads the ERP's open orders."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from services.sync_worker.settings import WorkerSettings

RawOrder = dict[str, Any]


class OrderSource(Protocol):
    """A source yields raw order rows in batches, never all of them at once."""

    description: str

    def connect(self) -> AbstractAsyncContextManager[AsyncIterator[list[RawOrder]]]:
        """Open the source; the context's value iterates over batches of raw rows."""
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
