"""Runs the search, failure-group and comparison tests share: built with the contract's own models."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from services.contracts import RunCreated, RunEvent, RunFailed, RunStarted, RunSucceeded, StepLogged
from tests.factories import T0


def order_run(
    name: str, *, orders: list[str], job: str = "sync_open_orders", start: datetime = T0, error: str | None = None,
    step: str = "import", skip: set[int] | None = None, extra: int = 0,
) -> list[RunEvent]:
    """A run that logs one message per order (key order-<n>, the number in data), then `extra` filler messages,
    and succeeds, or fails with `error` during `step`. Seqs in `skip` are left out (lost events)."""
    run_id = uuid.uuid4()
    events: list[RunEvent] = []

    def common(seq: int) -> dict[str, Any]:
        return {"run_id": run_id, "name": name, "job": job, "seq": seq, "occurred_at": start + timedelta(seconds=seq)}

    events.append(RunCreated(**common(1), trigger="schedule", worker_id="w1"))
    events.append(RunStarted(**common(2), worker_id="w1", host="host-a", pid=7))
    seq = 2
    for i in range(extra):
        seq += 1
        events.append(StepLogged(**common(seq), key=f"row-{i}", message=f"Row {i} checked"))
    for i, order in enumerate(orders):
        seq += 1
        events.append(StepLogged(**common(seq), key=f"order-{i}", message=f"Imported order {order}", data={"order": order}))
    seq += 1
    if error:
        events.append(StepLogged(**common(seq), key="error", level="error", message=f"Failed during step '{step}': ERPError: {error}"))
        events.append(RunFailed(**common(seq + 1), error_class="ERPError", error_message=error, step=step, duration_ms=1000))
    else:
        events.append(StepLogged(**common(seq), key="done", message="All orders imported", level="info"))
        events.append(RunSucceeded(**common(seq + 1), stats={"imported": len(orders), "created": 1}, duration_ms=1000 + seq))
    return [e for e in events if e.seq not in (skip or set())]
