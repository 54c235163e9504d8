"""Rendered pages, kept until the projection moves on.

A page is stored under a key that includes the projection's version (bumped in the same
transaction as every change to job_logs / job_log_details) and the workers that are alive
(they decide "stalled"); it is read *before* the rows, so a page is never filed under a
version newer than its data. max_age bounds what the version cannot see: the running
duration of a processing run.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable


class PageCache:
    """A small LRU of rendered page bodies."""

    def __init__(self, size: int = 512, max_age: float = 5.0) -> None:
        self.size = size
        self.max_age = max_age
        self._pages: OrderedDict[Hashable, tuple[float, bytes]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> bytes | None:
        entry = self._pages.get(key)
        if entry is None or time.monotonic() - entry[0] > self.max_age:
            self.misses += 1
            return None
        self._pages.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: Hashable, body: bytes) -> None:
        if self.size <= 0:
            return
        self._pages[key] = (time.monotonic(), body)
        self._pages.move_to_end(key)
        while len(self._pages) > self.size:
            self._pages.popitem(last=False)
