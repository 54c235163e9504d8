"""Fold run events into job_logs rows and job_log_details rows, order-independently.

Rules (the same whatever order or how often events arrive):
- any event creates the run's row; created_at is the earliest event, updated_at the latest;
- status only moves forward: new -> processing -> success | error; the first terminal event wins;
- a detail shows the text of the highest seq seen for its key; it is ordered by its lowest seq;
- a deleted run stays deleted: deletions are applied before the batch's run events (see db.py).
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.contracts import RunCreated, RunEvent, RunFailed, RunsDeleted, RunStarted, RunSucceeded, StepLogged

STATUS_OF = {"run.created": "new", "run.started": "processing", "run.step": "new", "run.succeeded": "success", "run.failed": "error"}
RANK = {"new": 0, "processing": 1, "success": 2, "error": 2}


@dataclass
class RunRow:
    """What a batch says about one run; merged with the stored row by SQL of the same rules."""

    id: uuid.UUID
    name: str
    job: str
    created_at: datetime
    updated_at: datetime
    last_seq: int
    status: str = "new"
    terminal_seq: int | None = None
    trigger: str | None = None
    requested_by: str | None = None
    worker_id: str | None = None
    host: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    stats: dict[str, Any] | None = None
    error_class: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    failed_step: str | None = None

    def apply(self, event: RunEvent) -> None:
        self.created_at = min(self.created_at, event.occurred_at)
        self.updated_at = max(self.updated_at, event.occurred_at)
        self.last_seq = max(self.last_seq, event.seq)
        status = STATUS_OF[event.type]
        if RANK[status] == 2:
            if self.terminal_seq is not None and self.terminal_seq <= event.seq:
                return
            self.terminal_seq = event.seq
            self.status = status
        elif RANK[status] > RANK[self.status]:
            self.status = status
        if isinstance(event, RunCreated):
            self.trigger, self.requested_by = event.trigger, event.requested_by
            self.worker_id = self.worker_id or event.worker_id
        elif isinstance(event, RunStarted):
            self.worker_id, self.host, self.started_at = event.worker_id, event.host, event.occurred_at
        elif isinstance(event, RunSucceeded):
            self.finished_at, self.duration_ms, self.stats = event.occurred_at, event.duration_ms, event.stats
            self.error_class = self.error_message = self.error_traceback = self.failed_step = None
        elif isinstance(event, RunFailed):
            self.finished_at, self.duration_ms, self.stats = event.occurred_at, event.duration_ms, event.stats or None
            self.error_class, self.error_message = event.error_class, event.error_message
            self.error_traceback, self.failed_step = event.traceback, event.step


@dataclass
class DetailRow:
    """The newest text of one detail key, and where it first appeared."""

    run_id: uuid.UUID
    key: str
    message: str
    level: str
    data: dict[str, Any] | None
    first_seq: int
    seq: int
    created_at: datetime
    updated_at: datetime

    def apply(self, step: StepLogged) -> None:
        if step.seq < self.first_seq:
            self.first_seq, self.created_at = step.seq, step.occurred_at
        if step.seq > self.seq:
            self.seq, self.message, self.level, self.data, self.updated_at = (
                step.seq, step.message, step.level, step.data, step.occurred_at,
            )


@dataclass
class Batch:
    """A batch of events reduced to one row per run and per detail."""

    runs: dict[uuid.UUID, RunRow] = field(default_factory=dict)
    details: dict[tuple[uuid.UUID, str], DetailRow] = field(default_factory=dict)
    deletions: list[tuple[RunsDeleted, int | None]] = field(default_factory=list)
    last_event_at: datetime | None = None
    events: int = 0

    def add(self, event: RunEvent | RunsDeleted, stream_seq: int | None = None) -> None:
        self.events += 1
        if self.last_event_at is None or event.occurred_at > self.last_event_at:
            self.last_event_at = event.occurred_at
        if isinstance(event, RunsDeleted):
            self.deletions.append((event, stream_seq))
            return
        run = self.runs.get(event.run_id)
        if run is None:
            run = self.runs[event.run_id] = RunRow(
                id=event.run_id, name=event.name, job=event.job,
                created_at=event.occurred_at, updated_at=event.occurred_at, last_seq=event.seq,
            )
        run.apply(event)
        if isinstance(event, StepLogged):
            detail = self.details.get((event.run_id, event.key))
            if detail is None:
                self.details[(event.run_id, event.key)] = DetailRow(
                    event.run_id, event.key, event.message, event.level, event.data,
                    event.seq, event.seq, event.occurred_at, event.occurred_at,
                )
            else:
                detail.apply(event)

    def run_columns(self) -> list[list[Any]]:
        rows = sorted(self.runs.values(), key=lambda r: r.id)
        return [
            [r.id for r in rows], [r.name for r in rows], [r.job for r in rows], [r.status for r in rows],
            [r.terminal_seq for r in rows], [r.trigger for r in rows], [_text(r.requested_by) for r in rows],
            [r.worker_id for r in rows], [_text(r.host) for r in rows], [r.created_at for r in rows],
            [r.updated_at for r in rows], [r.started_at for r in rows], [r.finished_at for r in rows],
            [r.duration_ms for r in rows], [_json(r.stats) for r in rows], [_text(r.error_class) for r in rows],
            [_text(r.error_message) for r in rows], [_text(r.error_traceback) for r in rows],
            [_text(r.failed_step) for r in rows],
            [r.last_seq for r in rows],
        ]

    def detail_columns(self) -> list[list[Any]]:
        rows = sorted(self.details.values(), key=lambda d: (d.run_id, d.key))
        return [
            [d.run_id for d in rows], [_text(d.key) for d in rows], [_text(d.message) for d in rows], [d.level for d in rows],
            [_json(d.data) for d in rows], [d.first_seq for d in rows], [d.seq for d in rows],
            [d.created_at for d in rows], [d.updated_at for d in rows],
        ]


def _json(value: dict[str, Any] | None) -> str | None:
    if value is None:
        return None
    text = json.dumps(value, separators=(",", ":"), default=str)
    return json.dumps(_scrub(value), separators=(",", ":"), default=str) if "\\u0000" in text else text


# Postgres text and jsonb cannot hold NUL (a worker may pass on an ERP's binary error body): such a
# character is stored as U+FFFD, so the event is applied instead of refused and its run can finish.
def _text(value: str | None) -> str | None:
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value
