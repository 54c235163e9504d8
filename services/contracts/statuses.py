"""A run's statuses and their order: a run's status only moves forward in this order.

The recorder's projection (and its SQL twin joblog_status_rank, in the migrations) and the web's
live updates (app.js reads STATUS_ORDER from the page's data-status-order) apply the same rule:
an event that arrives after a later one never moves the status back. The two terminal statuses
share a rank: whichever comes first stays. This module imports nothing from the services.
"""
from __future__ import annotations

from typing import Final, Literal

RunStatus = Literal["new", "processing", "success", "error"]
STATUSES: Final[tuple[RunStatus, ...]] = ("new", "processing", "success", "error")
STATUS_ORDER: Final[dict[str, int]] = {"new": 0, "processing": 1, "success": 2, "error": 2}
TERMINAL: Final = frozenset(status for status, rank in STATUS_ORDER.items() if rank == max(STATUS_ORDER.values()))
