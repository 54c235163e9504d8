"""Order sources: where SyncOpenOrdersJob reads the ERP's open orders."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from services.sync_worker.settings import WorkerSettings

RawOrder = dict[str, Any]


class OrderSource(Protocol):
    """A source yields raw order rows in batches, never all of them at once."""

    description: str

    def connect(self) -> AbstractAsyncContextManager[AsyncIterator[list[RawOrder]]]:
        """Open the source; the context's value iterates over batches of raw rows."""
        ...


def open_source(settings: WorkerSettings) -> OrderSource:
    """The source named by JOBLOG_ORDERS_SOURCE."""
    from services.sync_worker.sources.csv_file import CsvSource

    return CsvSource(settings.orders_csv_path, settings.sync_batch_size)
