"""Events of realistic runs, built with the contract's own models."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from services.contracts import RunCreated, RunEvent, RunFailed, RunStarted, RunSucceeded, StepLogged

T0 = datetime(2026, 11, 29, 8, 30, 0, tzinfo=timezone.utc)


def run_events(
    *, name: str = "20261129083000", job: str = "sync_open_orders", steps: int = 4, fail: bool = False,
    start: datetime = T0, updates: int = 2,
) -> list[RunEvent]:
    """created, started, steps (one key updated in place `updates` times), then succeeded or failed."""
    run_id = uuid.uuid4()
    seq = 0
    at = start

    def common() -> dict[str, object]:
        nonlocal seq, at
        seq += 1
        at = at + timedelta(milliseconds=150)
        return {"run_id": run_id, "name": name, "job": job, "seq": seq, "occurred_at": at}

    events: list[RunEvent] = [
        RunCreated(**common(), trigger="manual", worker_id="w1"),  # type: ignore[arg-type]
        RunStarted(**common(), worker_id="w1", host="host-a", pid=101),  # type: ignore[arg-type]
    ]
    for i in range(steps):
        events.append(StepLogged(**common(), key=f"step-{i}", message=f"Step {i} done", data={"n": i}))  # type: ignore[arg-type]
    for i in range(updates):
        events.append(StepLogged(**common(), key="progress", message=f"Imported {(i + 1) * 100} orders", data={"imported": (i + 1) * 100}))  # type: ignore[arg-type]
    if fail:
        events.append(StepLogged(**common(), key="error", level="error", message="Failed: SourceError: ERP unreachable"))  # type: ignore[arg-type]
        events.append(RunFailed(**common(), error_class="SourceError", error_message="ERP unreachable",  # type: ignore[arg-type]
                                traceback="Traceback ...", step="progress", duration_ms=900))
    else:
        events.append(RunSucceeded(**common(), stats={"imported": updates * 100, "created": 3}, duration_ms=900))  # type: ignore[arg-type]
    return events


async def publish(js, subjects, events: list[RunEvent], *, msg_ids: bool = True) -> None:  # type: ignore[no-untyped-def]
    """Publish events as a worker's relay would (msg_ids=False lets duplicates into the stream)."""
    for event in events:
        headers = {"Nats-Msg-Id": str(event.event_id)} if msg_ids else None
        await js.publish(subjects.for_event(event), event.model_dump_json().encode(), headers=headers)


TABLES_SQL = {
    "job_logs": """SELECT id, name, job, status, trigger, requested_by, worker_id, host, created_at, updated_at,
                          started_at, finished_at, duration_ms, stats, error_class, error_message, error_traceback,
                          failed_step, last_seq, terminal_seq, error_fingerprint,
                          seen_seqs::text AS seen_seqs FROM job_logs ORDER BY id""",
    "job_log_details": """SELECT job_log_id, key, message, level, data, first_seq, seq, created_at, updated_at
                          FROM job_log_details ORDER BY job_log_id, key""",
}


async def snapshot(conn) -> dict[str, list[dict[str, object]]]:  # type: ignore[no-untyped-def]
    """The projection's tables, without surrogate ids, for exact comparison."""
    return {table: [dict(r) for r in await conn.fetch(sql)] for table, sql in TABLES_SQL.items()}
