"""Per-event costs of the hot paths, one at a time: the numbers behind docs/performance.md's analysis.

    .venv/bin/python -m bench.costs
"""
from __future__ import annotations

import asyncio
import time
import timeit
import uuid

import asyncpg
from pydantic import TypeAdapter

from bench.common import Servers, percentile, scratch
from bench.recorder import build_events, commit_latency

from services.contracts import RunEvent, StepLogged, Subjects, parse_event
from services.log_recorder import db
from services.log_recorder.projection import Batch
from services.sync_worker.outbox import encode

N = 20_000


def per_event(label: str, function, count: int) -> None:  # type: ignore[no-untyped-def]
    seconds = min(timeit.repeat(function, number=1, repeat=3))
    print(f"{label:58} {seconds / count * 1e6:6.1f} µs/event")


async def main() -> None:
    subjects = Subjects("bench", "BENCH")
    messages, _, _ = build_events(subjects, N)
    payloads = [p for _, _, p in messages]
    events = [parse_event(p) for p in payloads]
    print("recorder, in Python:")
    per_event("parse_event (pydantic validate_json)", lambda: [parse_event(p) for p in payloads], len(payloads))
    # Tried for issue 15: one pydantic-core call per fetched batch (its payloads joined into a JSON array).
    batch_of_events = TypeAdapter(list[RunEvent])
    per_event("  the same, 500 payloads as one JSON array (list[RunEvent])",
              lambda: [batch_of_events.validate_json(b"[" + b",".join(payloads[i:i + 500]) + b"]")
                       for i in range(0, len(payloads), 500)], len(payloads))

    def reduce_in_batches() -> None:
        for first in range(0, len(events), 500):
            batch = Batch()
            for event in events[first:first + 500]:
                batch.add(event)
            batch.run_columns()
            batch.detail_columns()

    per_event("Batch.add + columns, batches of 500", reduce_in_batches, len(events))
    with Servers() as servers:
        async with scratch(servers, "costs") as (dsn, _, _):
            conn = await asyncpg.connect(dsn)
            try:
                for size in (500, 2000):
                    await conn.execute("TRUNCATE job_logs, job_log_details, projection_state CASCADE")
                    spent = 0.0
                    for first in range(0, len(events), size):
                        batch = Batch()
                        for event in events[first:first + size]:
                            batch.add(event)
                        began = time.perf_counter()
                        # As the recorder writes a batch: one statement with the consumer's position, no BEGIN/COMMIT.
                        await db.apply_batch(conn, batch, position=db.Position("costs", first, batch.last_event_at, batch.events))
                        spent += time.perf_counter() - began
                    print(f"{'recorder SQL + commit (one statement), batches of %d' % size:58} {spent / len(events) * 1e6:6.1f} µs/event")
            finally:
                await conn.close()
            commits = await commit_latency(dsn)
            print(f"{'one-row commit (WAL flush) p50 / p99':58} {percentile(commits, 50):6.1f} / {percentile(commits, 99):.1f} ms")
    print("worker, per ctx.log:")
    run_id = uuid.uuid4()

    def build() -> list[StepLogged]:
        return [StepLogged(run_id=run_id, name="20250101000000", job="sync_open_orders", seq=i + 1,
                           key=f"step-{i % 1000}", message=f"Processed order SO-{i:07d}") for i in range(N)]

    per_event("StepLogged(...) (validation, uuid4, utcnow)", build, N)
    per_event("  of which uuid.uuid4()", lambda: [uuid.uuid4() for _ in range(N)], N)
    steps = build()
    per_event("outbox encode (subject + model_dump_json)", lambda: encode(subjects, steps), N)
    from services.sync_worker.outbox import StepEncoder

    encoder = StepEncoder(subjects, run_id, "20250101000000", "sync_open_orders")
    per_event("StepEncoder.row (what ctx.log does instead of the two above)",
              lambda: [encoder.row(i + 1, f"step-{i % 1000}", f"Processed order SO-{i:07d}", "info", None) for i in range(N)], N)


if __name__ == "__main__":
    asyncio.run(main())
