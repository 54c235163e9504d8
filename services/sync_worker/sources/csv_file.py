"""A CSV file of open orders (the local default; a sample ships with the package)."""
from __future__ import annotations

import csv
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from services.sync_worker.errors import SourceError
from services.sync_worker.sources import RawOrder


class CsvSource:
    """Reads the file in batches with the csv module; the header names the columns, an empty field is None."""

    def __init__(self, path: Path, batch_size: int) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.description = f"CSV file {self.path.name}"

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncIterator[list[RawOrder]]]:
        try:
            handle = self.path.open(newline="", encoding="utf-8-sig")
        except OSError as error:
            raise SourceError(f"cannot open {self.path}: {error.strerror}") from error
        with handle:
            yield self._batches(handle)

    async def _batches(self, handle) -> AsyncIterator[list[RawOrder]]:  # type: ignore[no-untyped-def]
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or "order_number" not in header:
            raise SourceError(f"{self.path.name} has no order_number column in its header")
        batch: list[RawOrder] = []
        try:
            for row in reader:
                # CSV cannot say "no value": an empty field is one.
                batch.append({name: value or None for name, value in zip(header, row)})
                if len(batch) >= self.batch_size:
                    yield batch
                    batch = []
        except (csv.Error, UnicodeDecodeError) as error:
            raise SourceError(f"{self.path.name} line {reader.line_num}: {error}") from error
        if batch:
            yield batch
