"""Lost runs: follow worker heartbeats, and close the runs no live worker process holds any more.

Liveness is per run, not per worker id. Each run belongs to a worker *incarnation* (one process,
a fresh id per start, named in run.created / run.started), and every heartbeat of that process
lists the runs it holds: its leases. A run is orphaned when no heartbeat of its incarnation has
listed it for longer than the timeout (the process died, or beats without it), or as soon as a
newer process of the same worker id begins beating after the old one fell silent (a restarted
container keeps its hostname, hence its worker id). A process that stopped cleanly said so
(worker.stopped) and never causes a verdict. Everything is judged on JetStream's clock, and only
once the projection has caught up with the stream, so a result already published is never
overruled.

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
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import structlog

from services.contracts import RunFailed, StepLogged, WorkerHeartbeat, WorkerStopped
from services.contracts.liveness import JetStreamClock, follow_workers
from services.log_recorder import db
from services.log_recorder.errors import is_refused
from services.log_recorder.settings import RecorderSettings

log = structlog.get_logger("joblog.recorder.watchdog")

# Far above any real seq (workers count from 1), below the seq column's int4 limit.
VERDICT_SEQ = 2_000_000_000
WORKER_LOST_KEY = "worker-lost"
# Leases of ended runs and processes not heard from for this long are forgotten.
FORGET_AFTER = timedelta(days=1)


def verdict_events(row: Any, timeout: float, now: datetime) -> tuple[StepLogged, RunFailed]:
    """The two events that close an orphaned run; their ids depend only on the run."""
    run_id: uuid.UUID = row["id"]
    worker_id: str = row["worker_id"]
    seen: datetime = (row["last_seen_at"] or now).astimezone(timezone.utc)
    seen_text = seen.strftime("%Y-%m-%d %H:%M:%S UTC")
    replaced: datetime | None = row["replaced_at"]
    if replaced is not None:
        replaced_text = replaced.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        step_text = (f"Worker {worker_id} was lost: it restarted as a new process at {replaced_text}, and the "
                     f"process that held this run was last seen at {seen_text}.")
        error_text = f"Worker {worker_id} restarted (new process at {replaced_text}; last seen {seen_text}); the run cannot finish."
    else:
        step_text = f"Worker {worker_id} was lost: no heartbeat since {seen_text} (timeout {timeout:g} s)."
        error_text = f"Worker {worker_id} stopped sending heartbeats (last seen {seen_text}); the run cannot finish."
    data: dict[str, Any] = {"worker_id": worker_id, "last_seen_at": seen.isoformat(), "timeout_s": timeout}
    if row["incarnation"] is not None:
        data["incarnation"] = str(row["incarnation"])
    if replaced is not None:
        data["replaced_at"] = replaced.isoformat()
    common = {"run_id": run_id, "name": row["name"], "job": row["job"], "occurred_at": now}
    step = StepLogged(
        event_id=uuid.uuid5(run_id, f"{WORKER_LOST_KEY}.step"), seq=VERDICT_SEQ, key=WORKER_LOST_KEY, level="error",
        message=step_text + " The run was closed as error; if the worker comes back, its own result replaces this one.",
        data=data, **common,  # type: ignore[arg-type]
    )
    failed = RunFailed(
        event_id=uuid.uuid5(run_id, f"{WORKER_LOST_KEY}.failed"), seq=VERDICT_SEQ + 1, error_class="WorkerLost",
        error_message=error_text, step=WORKER_LOST_KEY,
        **common,  # type: ignore[arg-type]
    )
    return step, failed


@dataclass
class Seen:
    """One worker message as received: the event and JetStream's time of it."""

    event: WorkerHeartbeat | WorkerStopped
    at: datetime


class Watchdog:
    """Keeps the workers' processes and run leases from heartbeats, and publishes lost-run verdicts."""

    def __init__(self, settings: RecorderSettings, pool: asyncpg.Pool, js: Any) -> None:
        self.settings = settings
        self.pool = pool
        self.js = js
        self.clock = JetStreamClock()
        # The latest heartbeat per process, and every stop, not yet written.
        self.unflushed: dict[tuple[str, uuid.UUID | None, str], Seen] = {}
        # Since when the recorder has heard NATS and Postgres without a break: runs are judged only
        # after a whole timeout of that, so an outage on our side never reads as lost workers.
        self.watching_since: float | None = None
        # The stream's last sequence at the previous tick: the projection has caught up once its
        # consumer's ack floor reaches it.
        self.stream_seq_before: int | None = None
        self.published: set[uuid.UUID] = set()
        self.ticks = 0

    async def run(self, stopping: asyncio.Event) -> None:
        """Until stopping: follow heartbeats, and every tick flush them and judge the open runs."""
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
        """The last heartbeat and stop of every worker, then each new one."""
        await follow_workers(self.js, self.settings.subjects, self.record, stopping)

    def record(self, event: WorkerHeartbeat | WorkerStopped, seen: datetime) -> None:
        self.clock.observe(seen)
        key = (event.worker_id, event.incarnation, event.type)
        known = self.unflushed.get(key)
        if known is None or known.at <= seen:
            self.unflushed[key] = Seen(event, seen)

    async def tick(self) -> None:
        await self.flush()
        if self.watching_since is None:
            self.watching_since = asyncio.get_running_loop().time()
        self.ticks += 1
        caught_up = await self.caught_up()
        if caught_up:
            await self.judge()
        if self.ticks % 600 == 1:
            now = self.clock.now()
            async with self.pool.acquire() as conn:
                await db.forget_ended(conn, now - FORGET_AFTER, now - FORGET_AFTER)

    async def flush(self) -> None:
        """Write what was received, each message on its own: one that Postgres refuses is dead-lettered."""
        pending = sorted(self.unflushed.values(), key=lambda seen: seen.at)
        self.unflushed = {}
        written = 0
        try:
            async with self.pool.acquire() as conn:
                for seen in pending:
                    try:
                        async with conn.transaction():
                            await db.record_worker_event(conn, seen.event, seen.at)
                    except Exception as error:
                        if not is_refused(error):
                            raise
                        reason = f"refused by Postgres: {type(error).__name__}: {error}"[:2000]
                        subjects = self.settings.subjects
                        subject = (subjects.for_worker_stop(seen.event.worker_id) if isinstance(seen.event, WorkerStopped)
                                   else subjects.for_heartbeat(seen.event.worker_id))
                        log.warning("dead-lettered a worker message", subject=subject, reason=reason)
                        await db.store_dead_letters(conn, [(subject, seen.event.model_dump_json().encode(), reason, None)])
                    written += 1
        except Exception:
            # Keep what was not written for the next tick (newer messages received meanwhile win).
            for seen in pending[written:]:
                key = (seen.event.worker_id, seen.event.incarnation, seen.event.type)
                known = self.unflushed.get(key)
                if known is None or known.at < seen.at:
                    self.unflushed[key] = seen
            raise

    async def caught_up(self) -> bool:
        """Whether every run event published before the previous tick has been applied (and acked)."""
        info = await self.js.consumer_info(self.settings.stream, self.settings.recorder_consumer)
        stream = await self.js.stream_info(self.settings.stream)
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        before, self.stream_seq_before = self.stream_seq_before, stream.state.last_seq
        if not info.num_pending and not info.num_ack_pending:
            return True
        return before is not None and floor >= before

    async def judge(self) -> None:
        """Close the open runs that no live worker process holds any more."""
        timeout = self.settings.worker_timeout
        started = self.watching_since
        # Judge only after watching for a whole timeout: a fresh (or reconnected) recorder may not have the beats yet.
        if started is None or asyncio.get_running_loop().time() - started < timeout:
            return
        now = self.clock.now()
        cutoff = now - timedelta(seconds=timeout)
        async with self.pool.acquire() as conn:
            await db.notice_open_runs(conn, now)
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
                            incarnation=str(row["incarnation"]), replaced=row["replaced_at"] is not None)
            await db.mark_workers_lost(conn, sorted({r["worker_id"] for r in rows}), cutoff)
