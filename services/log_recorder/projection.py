"""Fold run events into job_logs rows and job_log_details rows, order-independently.

Rules (the same whatever order or how often events arrive):
- any event creates the run's row; created_at is the earliest event, updated_at the latest;
- status only moves forward: new -> processing -> success | error; the first terminal event wins;
- a detail shows the text of the highest seq seen for its key; it is ordered by its lowest seq;
- a deletion applies at its place in the stream: a batch holds the events before it, the deletion
  last (see Segmenter), and a deleted run's name is tombstoned so its later events are skipped.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.contracts.statuses import STATUS_ORDER
from services.contracts import (
    ActionTaken,
    RunCreated,
    RunEvent,
    RunFailed,
    RunsDeleted,
    RunStarted,
    RunSucceeded,
    SchedulePaused,
    ScheduleResumed,
    StepLogged,
)
from services.log_recorder.fingerprints import fingerprint

STATUS_OF = {"run.created": "new", "run.started": "processing", "run.step": "new", "run.succeeded": "success", "run.failed": "error"}
RANK = STATUS_ORDER


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
    incarnation: uuid.UUID | None = None
    command_id: str | None = None
    error_fingerprint: str | None = None
    seqs: set[int] = field(default_factory=set)  # every seq of the run in this batch (completeness)

    def apply(self, event: RunEvent) -> None:
        self.seqs.add(event.seq)
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
            self.incarnation = self.incarnation or event.incarnation
            self.command_id = event.command_id
        elif isinstance(event, RunStarted):
            self.worker_id, self.host, self.started_at = event.worker_id, event.host, event.occurred_at
            self.incarnation = event.incarnation or self.incarnation
        elif isinstance(event, RunSucceeded):
            self.finished_at, self.duration_ms, self.stats = event.occurred_at, event.duration_ms, event.stats
            self.error_class = self.error_message = self.error_traceback = self.failed_step = None
            self.error_fingerprint = None
        elif isinstance(event, RunFailed):
            self.finished_at, self.duration_ms, self.stats = event.occurred_at, event.duration_ms, event.stats or None
            self.error_class, self.error_message = event.error_class, event.error_message
            self.error_traceback, self.failed_step = event.traceback, event.step
            self.error_fingerprint = fingerprint(event.error_class, event.step, event.error_message)


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
    actions: list[tuple[ActionTaken, int | None]] = field(default_factory=list)
    # Per run, the lowest stream sequence of its events here (deletions in progress compare it with theirs).
    first_stream_seq: dict[uuid.UUID, int] = field(default_factory=dict)
    schedules: list[tuple[SchedulePaused | ScheduleResumed, int | None]] = field(default_factory=list)
    last_event_at: datetime | None = None
    events: int = 0

    @property
    def closed(self) -> bool:
        """A deletion ends a batch: what follows it in the stream goes into the next one."""
        return bool(self.deletions)

    def add(self, event: RunEvent | RunsDeleted | ActionTaken | SchedulePaused | ScheduleResumed,
            stream_seq: int | None = None) -> None:
        self.events += 1
        if self.last_event_at is None or event.occurred_at > self.last_event_at:
            self.last_event_at = event.occurred_at
        if isinstance(event, RunsDeleted):
            self.deletions.append((event, stream_seq))
            return
        if isinstance(event, ActionTaken):
            self.actions.append((event, stream_seq))
            return
        if isinstance(event, (SchedulePaused, ScheduleResumed)):
            self.schedules.append((event, stream_seq))
            return
        if stream_seq is not None and stream_seq < self.first_stream_seq.get(event.run_id, stream_seq + 1):
            self.first_stream_seq[event.run_id] = stream_seq
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
            [r.terminal_seq for r in rows], [r.trigger for r in rows], [scrub(r.requested_by) for r in rows],
            [r.worker_id for r in rows], [scrub(r.host) for r in rows], [r.created_at for r in rows],
            [r.updated_at for r in rows], [r.started_at for r in rows], [r.finished_at for r in rows],
            [r.duration_ms for r in rows], [_json(r.stats) for r in rows], [scrub(r.error_class) for r in rows],
            [scrub(r.error_message) for r in rows], [scrub(r.error_traceback) for r in rows],
            [scrub(r.failed_step) for r in rows],
            [r.last_seq for r in rows], [r.incarnation for r in rows], [scrub(r.command_id) for r in rows],
            [r.error_fingerprint for r in rows], [seq_ranges(r.seqs) for r in rows],
        ]

    def detail_columns(self) -> list[list[Any]]:
        rows = sorted(self.details.values(), key=lambda d: (d.run_id, d.key))
        return [
            [d.run_id for d in rows], [scrub(d.key) for d in rows], [scrub(d.message) for d in rows], [d.level for d in rows],
            [_json(d.data) for d in rows], [d.first_seq for d in rows], [d.seq for d in rows],
            [d.created_at for d in rows], [d.updated_at for d in rows],
        ]


def seq_ranges(seqs: set[int]) -> str:
    """seqs as a Postgres int4multirange literal: {[1,18),[19,43)}."""
    ranges: list[str] = []
    start = previous = None
    for seq in sorted(seqs):
        if previous is not None and seq == previous + 1:
            previous = seq
            continue
        if start is not None:
            ranges.append(f"[{start},{previous + 1})")  # type: ignore[operator]
        start = previous = seq
    if start is not None:
        ranges.append(f"[{start},{previous + 1})")  # type: ignore[operator]
    return "{" + ",".join(ranges) + "}"


def action_columns(actions: list[tuple[ActionTaken, int | None]]) -> list[list[Any]]:
    return [
        [a.event_id for a, _ in actions], [a.occurred_at for a, _ in actions], [scrub(a.actor) for a, _ in actions],
        [a.action for a, _ in actions], [a.job for a, _ in actions], [scrub(a.target) for a, _ in actions],
        [_json(a.detail) for a, _ in actions], [scrub(a.source) for a, _ in actions], [seq for _, seq in actions],
    ]


def schedule_columns(events: list[tuple[SchedulePaused | ScheduleResumed, int | None]]) -> list[list[Any]]:
    """schedule_states rows: the newest event per job (by stream sequence, then time) wins."""
    newest: dict[str, tuple[SchedulePaused | ScheduleResumed, int]] = {}
    for event, seq in events:
        key = (seq or 0, event.occurred_at)
        held = newest.get(event.job)
        if held is None or key >= (held[1], held[0].occurred_at):
            newest[event.job] = (event, seq or 0)
    rows = [newest[job] for job in sorted(newest)]
    return [
        [e.job for e, _ in rows], [isinstance(e, SchedulePaused) for e, _ in rows], [scrub(e.requested_by) for e, _ in rows],
        [scrub(e.reason) if isinstance(e, SchedulePaused) else None for e, _ in rows], [e.occurred_at for e, _ in rows],
        [e.event_id for e, _ in rows], [seq for _, seq in rows],
    ]


def _json(value: dict[str, Any] | None) -> str | None:
    if value is None:
        return None
    text = json.dumps(value, separators=(",", ":"), default=str)
    return json.dumps(scrub_json(value), separators=(",", ":"), default=str) if "\\u0000" in text else text


# Postgres text and jsonb cannot hold NUL (a worker may pass on an ERP's binary error body): such a
# character is stored as U+FFFD, so the event is applied instead of refused and its run can finish.
def scrub(value: str | None) -> str | None:
    """value as Postgres can store it: NUL becomes U+FFFD."""
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def scrub_json(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub(str(k)): scrub_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_json(v) for v in value]
    return value
