"""A CSV file of open orders (the local default; a sample ships with the package)."""
from __future__ import annotations

import csv
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

from services.sync_worker.errors import SourceError
from services.sync_worker.sources import BulkRows, NotBulk, RawOrder

# Bytes handed to COPY at a time, and how far a record may run past them (a quoted field with
# newlines) before the file is read row by row instead.
CHUNK = 1 << 20
MAX_RECORD = 8 << 20

# The CSV both Postgres and the csv module read the same way: every field either unquoted
# without quotes, or quoted as a whole with "" for a quote. (Postgres also honours a quote in the
# middle of a field, which the csv module keeps as a character.) Possessive: no backtracking.
_FIELD = rb'(?:"(?:[^"]|"")*+"|[^",\r\n]*+)'
_RECORD = _FIELD + rb"(?:," + _FIELD + rb")*+"
_RECORDS = re.compile(rb"(?:" + _RECORD + rb"(?:\r\n|\n|\r))*+")
_LAST_RECORDS = re.compile(rb"(?:" + _RECORD + rb"(?:\r\n|\n|\r))*+(?:" + _RECORD + rb")?")


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

    @asynccontextmanager
    async def bulk(self) -> AsyncIterator[BulkRows | None]:
        """The file's bytes for COPY (FORMAT csv, HEADER); None when its header must be read row by row.

        The bytes are checked on their way (NotBulk) for what Postgres would read differently from
        the csv module: a NUL, a line "\\." (COPY's end of data), a quote inside a field."""
        try:
            handle = self.path.open("rb")
        except OSError as error:
            raise SourceError(f"cannot open {self.path}: {error.strerror}") from error
        with handle:
            header = _header(self.path)
            # A one-column file would make a blank line a row of Postgres' (the csv module: none).
            if header is None or len(header) < 2:
                yield None
            else:
                yield BulkRows(header, _checked(handle), empty_is_null=True)

    async def _batches(self, handle) -> AsyncIterator[list[RawOrder]]:  # type: ignore[no-untyped-def]
        reader = csv.reader(handle)
        try:
            # The first read decodes several KB: a small file's bad byte shows up here already.
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as error:
            raise SourceError(f"{self.path.name} line {reader.line_num}: {error}") from error
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


def _header(path: Path) -> list[str] | None:
    """The header as the per-row path reads it, or None when that path should report what is wrong."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    return header if header and "order_number" in header else None


async def _checked(handle: BinaryIO) -> AsyncIterator[bytes]:
    """The file in chunks, raising NotBulk at the first thing COPY would read differently."""
    pending = b""  # the records not yet checked: from the last record end outside quotes
    backslash = False  # the previous chunk ended with one
    while chunk := handle.read(CHUNK):
        if b"\x00" in chunk or b"\\." in chunk or backslash and chunk.startswith(b"."):
            raise NotBulk("a NUL character or a \\. in the file")
        backslash = chunk.endswith(b"\\")
        pending += chunk
        if b'"' in pending:
            end = _records_end(pending)
            if not _RECORDS.fullmatch(pending, 0, end):
                raise NotBulk("a quote inside a field")
            pending = pending[end:]
            if len(pending) > MAX_RECORD:
                raise NotBulk("a record longer than the limit")
        else:
            pending = pending[pending.rfind(b"\n") + 1:]
        yield chunk
    if b'"' in pending and not _LAST_RECORDS.fullmatch(pending):
        raise NotBulk("a quote inside a field")


def _records_end(data: bytes) -> int:
    """Just after the last newline outside quotes (an even number of quotes before it), or 0."""
    end = len(data)
    while (newline := data.rfind(b"\n", 0, end)) >= 0:
        if data.count(b'"', 0, newline) % 2 == 0:
            return newline + 1
        end = newline
    return 0
