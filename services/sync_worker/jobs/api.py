"""The generic job API: any job registered here gets a complete run log for free.

    @registry.job("purge_closed_orders", title="PurgeClosedOrdersJob")
    async def purge(ctx: RunContext) -> dict:
        await ctx.log("Looking for closed orders", key="scan")
        ...
        return {"deleted": n}            # final statistics of the run

The runner publishes run.created, run.started, one run.step per ctx.log, and run.succeeded
with the returned statistics; an uncaught exception becomes run.failed with its class,
message, traceback and the step that was running.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from services.contracts import (
    JobDescription,
    RunCreated,
    RunEvent,
    RunFailed,
    RunStarted,
    RunSucceeded,
    StepLevel,
    StepLogged,
)
from services.contracts.events import TriggerKind, utcnow
from services.contracts.redaction import redact
from services.sync_worker import db
from services.sync_worker.errors import RunCancelled, UnknownJob
from services.sync_worker.outbox import OutboxRow, StepEncoder, encode
from services.sync_worker.settings import WorkerSettings

log = structlog.get_logger("joblog.worker")

JobFunction = Callable[["RunContext"], Awaitable[dict[str, Any] | None]]

# log() has its buffer written at FLUSH_SIZE events, and no event waits longer than FLUSH_DELAY
# even when the job logs nothing after it (a step before a 30 s connect is in the log during it).
# The write runs in a task of its own while the job goes on (one at a time); the job waits for it
# only when FLUSH_BACKLOG events are waiting, so a Postgres slower than the job bounds the memory.
FLUSH_SIZE = 1000
FLUSH_DELAY = 0.05
FLUSH_BACKLOG = 4 * FLUSH_SIZE


@dataclass(frozen=True)
class JobSpec:
    """A registered job: its id (used in subjects), display title and the function."""

    name: str
    title: str
    function: JobFunction
    max_concurrency: int = 1
    description: str = ""


class JobRegistry:
    """Jobs by name."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobSpec] = {}

    def job(
        self, name: str, *, title: str, max_concurrency: int = 1, description: str = ""
    ) -> Callable[[JobFunction], JobFunction]:
        """Register an async function as a job."""

        def register(function: JobFunction) -> JobFunction:
            self._jobs[name] = JobSpec(name, title, function, max_concurrency, description or (function.__doc__ or "").strip())
            return function

        return register

    def get(self, name: str) -> JobSpec:
        try:
            return self._jobs[name]
        except KeyError:
            raise UnknownJob(f"unknown job {name!r}; known: {', '.join(sorted(self._jobs))}") from None

    def describe(self, schedules: dict[str, str] | None = None, concurrency: dict[str, int] | None = None) -> list[JobDescription]:
        """The jobs as heartbeats announce them, with this worker's schedules and limits."""
        schedules, concurrency = schedules or {}, concurrency or {}
        return [
            JobDescription(
                name=s.name, title=s.title, description=s.description, schedule=schedules.get(s.name),
                max_concurrency=concurrency.get(s.name, s.max_concurrency),
            )
            for s in sorted(self._jobs.values(), key=lambda s: s.name)
        ]

    def names(self) -> list[str]:
        return sorted(self._jobs)


registry = JobRegistry()


@dataclass
class RunContext:
    """What a running job sees: its identity, settings, a pool, and log()."""

    run_id: uuid.UUID
    name: str
    job: str
    settings: WorkerSettings
    pool: asyncpg.Pool
    on_flush: Callable[[], None] = lambda: None
    seq: int = 0
    current_step: str | None = None
    _buffer: list[RunEvent | OutboxRow] = field(default_factory=list)  # events, or run.step rows already encoded
    _last_flush: float = field(default_factory=time.monotonic)
    # A job's helper tasks log too: one flush at a time, so no event is written twice or dropped.
    _flushing: asyncio.Lock = field(default_factory=asyncio.Lock)
    _timer: asyncio.TimerHandle | None = None
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    incarnation: uuid.UUID | None = None
    # Set once the run's terminal event (succeeded or failed) is emitted: every run gets exactly one.
    finished: bool = False
    _steps: StepEncoder | None = None
    # Who cancelled the run (a CancelRequested): the next ctx.log raises RunCancelled, and the job's
    # task is cancelled after JOBLOG_CANCEL_GRACE if it has not stopped by then (a job awaiting forever).
    cancelled_by: str | None = None
    _job_task: asyncio.Future[Any] | None = None

    @property
    def cancelled(self) -> bool:
        """An operator asked to cancel this run: a long job may check this between its steps."""
        return self.cancelled_by is not None

    def cancel(self, actor: str) -> bool:
        """Ask the run to stop (cooperatively first); False when it already ended."""
        if self.finished:
            return False
        if self.cancelled_by is None:
            self.cancelled_by = actor
            asyncio.get_running_loop().call_later(self.settings.cancel_grace, self._cancel_task)
        return True

    def _cancel_task(self) -> None:
        if self._job_task is not None and not self._job_task.done():
            self._job_task.cancel()

    def check_cancelled(self) -> None:
        """Raise RunCancelled if the run was cancelled (every ctx.log does this first)."""
        if self.cancelled_by is not None and not self.finished:
            raise RunCancelled(f"cancelled by {self.cancelled_by}")

    @property
    def unwritten(self) -> bool:
        """Events are still only in memory (not yet in the outbox)."""
        return bool(self._buffer)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def log(
        self,
        message: str,
        *,
        key: str | None = None,
        level: StepLevel = "info",
        conn: asyncpg.Connection | None = None,
        **data: Any,
    ) -> None:
        """Log a step. A later call with the same key updates that detail in place.

        Pass conn to commit the event in the same transaction as the work it describes.
        Raises RunCancelled once the run was cancelled.
        """
        self.check_cancelled()
        seq = self.next_seq()
        key = key or f"step-{seq}"
        self.current_step = key
        if "://" in message:
            message = redact(message)
        if self._steps is None:
            self._steps = StepEncoder(self.settings.subjects, self.run_id, self.name, self.job)
        # The outbox row directly (one serialisation); the model when the encoder cannot vouch for it.
        row = self._steps.row(seq, key, message, level, data or None) if isinstance(message, str) and isinstance(key, str) else None
        self.emit(row or StepLogged(
            run_id=self.run_id, name=self.name, job=self.job, seq=seq, key=key, message=message, level=level, data=data or None,
        ))
        if conn is not None:
            await self.flush(conn)
        elif len(self._buffer) >= FLUSH_SIZE or time.monotonic() - self._last_flush > FLUSH_DELAY:
            if not self._background and not self._flushing.locked():
                self._write_in_background()
            elif len(self._buffer) >= FLUSH_BACKLOG:
                await self.flush()  # the writes fall behind the job: wait for them

    def emit(self, event: RunEvent | OutboxRow) -> None:
        self._buffer.append(event)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush_soon)

    def _write_in_background(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._flush_soon()

    def _flush_soon(self) -> None:
        """The timer: write what is still buffered in a task of its own (the job may be awaiting)."""
        self._timer = None
        if self._buffer:
            task = asyncio.create_task(self._flush_in_background(), name=f"flush-{self.name}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _flush_in_background(self) -> None:
        try:
            await self.flush()
        except Exception as error:  # Postgres away: the events stay buffered; try again in a second
            log.warning("writing buffered run events failed; retrying", run=self.name, error=repr(error))
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(1.0, self._flush_soon)

    async def flush(self, conn: asyncpg.Connection | None = None) -> None:
        """Write buffered events to the outbox (in conn's transaction if given)."""
        async with self._flushing:
            if not self._buffer:
                return
            # Events logged while this write is in flight stay buffered for the next flush.
            events, self._buffer = self._buffer, []
            try:
                rows = encode(self.settings.subjects, events)
                if conn is None:
                    async with self.pool.acquire() as own:
                        await db.append_outbox(own, rows)
                else:
                    await db.append_outbox(conn, rows)
            except BaseException:
                self._buffer[:0] = events
                raise
            self._last_flush = time.monotonic()
        self.on_flush()

    async def flush_durably(self) -> None:
        """Write the buffer, waiting out a Postgres outage: a run's last events must not be dropped."""
        backoff = 0.2
        while True:
            try:
                await self.flush()
                return
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("writing a run's events failed; retrying", run=self.name, error=repr(error), backoff=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction whose buffered events commit with it."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                yield conn
                await self.flush(conn)


def base_name(moment: datetime, settings: WorkerSettings) -> str:
    """YYYYMMDDhhmmss in the configured time zone."""
    return moment.astimezone(settings.zone).strftime("%Y%m%d%H%M%S")


async def create_run(
    spec: JobSpec,
    settings: WorkerSettings,
    pool: asyncpg.Pool,
    *,
    trigger: TriggerKind,
    requested_by: str | None = None,
    on_flush: Callable[[], None] = lambda: None,
    incarnation: uuid.UUID | None = None,
    command_id: str | None = None,
) -> RunContext:
    """Name the run (unique across workers) and commit its run.created event."""
    run_id = uuid.uuid4()
    now = utcnow()
    async with pool.acquire() as conn:
        async with conn.transaction():
            name = await db.reserve_run_name(conn, base_name(now, settings), run_id, spec.name)
            ctx = RunContext(run_id=run_id, name=name, job=spec.name, settings=settings, pool=pool, on_flush=on_flush,
                             incarnation=incarnation)
            ctx.emit(
                RunCreated(
                    run_id=run_id, name=name, job=spec.name, seq=ctx.next_seq(), occurred_at=now,
                    trigger=trigger, worker_id=settings.worker_id, requested_by=requested_by,
                    incarnation=incarnation, command_id=command_id,
                )
            )
            await ctx.flush(conn)
    return ctx


async def execute_run(spec: JobSpec, ctx: RunContext) -> bool:
    """Run the job, publishing started, then succeeded or failed. Returns True on success."""
    started = time.monotonic()
    bound = log.bind(run=ctx.name, job=spec.name, run_id=str(ctx.run_id))
    ctx.emit(
        RunStarted(
            run_id=ctx.run_id, name=ctx.name, job=ctx.job, seq=ctx.next_seq(),
            worker_id=ctx.settings.worker_id, host=socket.gethostname(), pid=os.getpid(), incarnation=ctx.incarnation,
        )
    )
    try:
        await ctx.flush()
        bound.info("run started")
        ctx.check_cancelled()
        # The job runs in a task of its own, so that cancelling the run cancels the job and nothing else.
        ctx._job_task = asyncio.ensure_future(spec.function(ctx))
        stats = await ctx._job_task or {}
        ctx.check_cancelled()  # a job that swallowed RunCancelled still ends cancelled
    except (Exception, asyncio.CancelledError) as error:
        task = asyncio.current_task()
        shut_down = isinstance(error, asyncio.CancelledError) and (task is None or task.cancelling() > 0)
        await fail_run(ctx, error, int((time.monotonic() - started) * 1000), shut_down=shut_down)
        if shut_down:
            raise
        return False
    duration_ms = int((time.monotonic() - started) * 1000)
    ctx.finished = True
    ctx.emit(
        RunSucceeded(
            run_id=ctx.run_id, name=ctx.name, job=ctx.job, seq=ctx.next_seq(),
            stats=stats, duration_ms=duration_ms,
        )
    )
    await ctx.flush_durably()
    bound.info("run succeeded", duration_ms=duration_ms)
    return True


async def fail_run(
    ctx: RunContext, error: BaseException, duration_ms: int | None = None, *, before_job: bool = False,
    shut_down: bool = True,
) -> None:
    """End the run as error with the reason: an error step and run.failed, written whatever it takes."""
    if ctx.finished:
        return
    if ctx.cancelled_by is not None and not (isinstance(error, asyncio.CancelledError) and shut_down):
        await _cancelled(ctx, duration_ms)
        return
    ctx.finished = True
    message = str(error) or repr(error)
    if isinstance(error, asyncio.CancelledError):
        message = (
            f"the worker was shut down and the run did not finish within the "
            f"{ctx.settings.shutdown_grace:g} s shutdown grace (JOBLOG_SHUTDOWN_GRACE)"
        )
    message = redact(message)
    where = f" during step '{ctx.current_step}'" if ctx.current_step else (" before the job started" if before_job else "")
    ctx.emit(
        StepLogged(
            run_id=ctx.run_id, name=ctx.name, job=ctx.job, seq=ctx.next_seq(), key="error", level="error",
            message=f"Failed{where}: {type(error).__name__}: {message}"[:20_000],
            data={"error_class": type(error).__name__, "step": ctx.current_step},
        )
    )
    ctx.emit(
        RunFailed(
            run_id=ctx.run_id, name=ctx.name, job=ctx.job, seq=ctx.next_seq(),
            error_class=type(error).__name__, error_message=message[:20_000],
            traceback=redact("".join(traceback.format_exception(error)))[-100_000:],
            step=ctx.current_step, duration_ms=duration_ms,
        )
    )
    await ctx.flush_durably()
    log.warning("run failed", run=ctx.name, job=ctx.job, error=message, step=ctx.current_step)


async def _cancelled(ctx: RunContext, duration_ms: int | None) -> None:
    """End a cancelled run: an error step "Cancelled by <actor>" and run.failed (RunCancelled)."""
    ctx.finished = True
    actor = ctx.cancelled_by or "someone"
    where = f" during step '{ctx.current_step}'" if ctx.current_step else ""
    ctx.emit(
        StepLogged(
            run_id=ctx.run_id, name=ctx.name, job=ctx.job, seq=ctx.next_seq(), key="cancelled", level="error",
            message=f"Cancelled by {actor}{where}"[:20_000], data={"cancelled_by": actor, "step": ctx.current_step},
        )
    )
    ctx.emit(
        RunFailed(
            run_id=ctx.run_id, name=ctx.name, job=ctx.job, seq=ctx.next_seq(), error_class="RunCancelled",
            error_message=f"cancelled by {actor}"[:20_000], traceback=None, step=ctx.current_step, duration_ms=duration_ms,
        )
    )
    await ctx.flush_durably()
    log.warning("run cancelled", run=ctx.name, job=ctx.job, by=actor, step=ctx.current_step)
