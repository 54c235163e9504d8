"""Lost workers: follow heartbeats, and close the runs of a worker that stopped beating.

The verdict is published as events on the run's own subject (a "worker-lost" error step and a
RunFailed "WorkerLost"), never written to the tables directly, so the stream stays the truth and a
rebuild reproduces it. Both events carry a deterministic Nats-Msg-Id, so when several recorders
reach the same verdict JetStream keeps one.

The rule for a worker that was only slow: the verdict's seqs (VERDICT_SEQ and VERDICT_SEQ + 1)
are far above any real one, so the worker's own terminal event (lower seq) wins under the
lowest-terminal-seq rule and replaces the verdict; the "worker-lost" detail stays, as the record
that the run was once given up for lost.
"""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import structlog
from nats.js.api import DeliverPolicy
from pydantic import ValidationError

from services.contracts import RunFailed, StepLogged, WorkerHeartbeat
from services.log_recorder import db
from services.log_recorder.settings import RecorderSettings

log = structlog.get_logger("joblog.recorder.watchdog")

# Far above any real seq (workers count from 1), below the seq column's int4 limit.
VERDICT_SEQ = 2_000_000_000
WORKER_LOST_KEY = "worker-lost"


def verdict_events(row: Any, timeout: float, now: datetime) -> tuple[StepLogged, RunFailed]:
    """The two events that close a lost worker's run; their ids depend only on the run."""
    run_id: uuid.UUID = row["id"]
    worker_id: str = row["worker_id"]
    seen: datetime = row["last_seen_at"].astimezone(timezone.utc)
    seen_text = seen.strftime("%Y-%m-%d %H:%M:%S UTC")
    common = {"run_id": run_id, "name": row["name"], "job": row["job"], "occurred_at": now}
    step = StepLogged(
        event_id=uuid.uuid5(run_id, f"{WORKER_LOST_KEY}.step"), seq=VERDICT_SEQ, key=WORKER_LOST_KEY, level="error",
        message=(f"Worker {worker_id} was lost: no heartbeat since {seen_text} (timeout {timeout:g} s). "
                 "The run was closed as error; if the worker comes back, its own result replaces this one."),
        data={"worker_id": worker_id, "last_seen_at": seen.isoformat(), "timeout_s": timeout},
        **common,  # type: ignore[arg-type]
    )
    failed = RunFailed(
        event_id=uuid.uuid5(run_id, f"{WORKER_LOST_KEY}.failed"), seq=VERDICT_SEQ + 1, error_class="WorkerLost",
        error_message=f"Worker {worker_id} stopped sending heartbeats (last seen {seen_text}); the run cannot finish.",
        step=WORKER_LOST_KEY,
        **common,  # type: ignore[arg-type]
    )
    return step, failed


class Watchdog:
    """Keeps the workers table from heartbeats, publishes worker-lost verdicts, and records the lag."""

    def __init__(self, settings: RecorderSettings, pool: asyncpg.Pool, js: Any) -> None:
        self.settings = settings
        self.pool = pool
        self.js = js
        self.unflushed: dict[str, tuple[WorkerHeartbeat, datetime]] = {}
        # Since when the recorder has heard NATS and Postgres without a break: a worker is judged only
        # after a whole timeout of that, so an outage on our side never reads as lost workers.
        self.watching_since: float | None = None
        self.published: set[uuid.UUID] = set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Until stopping: follow heartbeats, and every tick flush them, judge workers, record lag."""
        follower = asyncio.create_task(self.follow(stopping), name="heartbeats")
        interval = min(1.0, self.settings.worker_timeout / 4)
        while not stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)
            try:
                await self.tick()
            except Exception as error:  # Postgres or NATS away: the next tick tries again
                self.watching_since = None
                log.warning("watchdog tick failed", error=repr(error))
        await follower

    async def follow(self, stopping: asyncio.Event) -> None:
        """The last heartbeat of every worker, then each new one."""
        subjects = self.settings.subjects
        while not stopping.is_set():
            try:
                sub = await self.js.subscribe(
                    subjects.heartbeats, stream=subjects.heartbeat_stream, ordered_consumer=True,
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                )
                try:
                    while not stopping.is_set():
                        with contextlib.suppress(asyncio.TimeoutError):
                            message = await sub.next_msg(timeout=0.5)
                            self.record(message)
                finally:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
            except Exception as error:  # NATS away or stream missing: keep trying
                self.watching_since = None
                log.warning("following heartbeats failed", error=repr(error))
                await asyncio.sleep(1)

    def record(self, message: Any) -> None:
        try:
            beat = WorkerHeartbeat.model_validate_json(message.data)
        except ValidationError:
            return
        try:
            seen = message.metadata.timestamp  # JetStream's clock, the same for every recorder
        except Exception:
            seen = beat.occurred_at
        known = self.unflushed.get(beat.worker_id)
        if known is None or known[1] <= seen:
            self.unflushed[beat.worker_id] = (beat, seen)

    async def tick(self) -> None:
        beats, self.unflushed = self.unflushed, {}
        try:
            async with self.pool.acquire() as conn:
                await db.record_heartbeats(conn, beats)
        except Exception:
            for worker_id, (beat, seen) in beats.items():  # keep them for the next tick
                known = self.unflushed.get(worker_id)
                if known is None or known[1] < seen:
                    self.unflushed[worker_id] = (beat, seen)
            raise
        await self.record_lag()
        if self.watching_since is None:
            self.watching_since = asyncio.get_running_loop().time()
        await self.judge()

    async def record_lag(self) -> None:
        info = await self.js.consumer_info(self.settings.stream, self.settings.recorder_consumer)
        stream = await self.js.stream_info(self.settings.stream)
        async with self.pool.acquire() as conn:
            await db.record_lag(
                conn, self.settings.recorder_consumer, info.num_pending or 0, info.num_ack_pending or 0,
                info.num_redelivered or 0, stream.state.last_seq,
            )

    async def judge(self) -> None:
        """Close the open runs of workers not heard from for longer than the timeout."""
        timeout = self.settings.worker_timeout
        started = self.watching_since
        # Judge only after watching for a whole timeout: a fresh (or reconnected) recorder may not have the beats yet.
        if started is None or asyncio.get_running_loop().time() - started < timeout:
            return
        now = datetime.now(timezone.utc)
        cutoff = now - timedelta(seconds=timeout)
        async with self.pool.acquire() as conn:
            rows = await db.orphaned_runs(conn, cutoff)
            if not rows:
                return
            for row in rows:
                if row["id"] in self.published:
                    continue
                for event in verdict_events(row, timeout, now):
                    await self.js.publish(
                        self.settings.subjects.for_event(event), event.model_dump_json().encode(),
                        headers={"Nats-Msg-Id": str(event.event_id)},
                    )
                self.published.add(row["id"])
                log.warning("worker lost; run closed as error", run=row["name"], worker_id=row["worker_id"],
                            last_seen_at=row["last_seen_at"].isoformat())
            await db.mark_workers_lost(conn, sorted({r["worker_id"] for r in rows}), cutoff)
