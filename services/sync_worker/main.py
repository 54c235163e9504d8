"""The worker's run loop: take triggers from the command stream, run jobs, relay their events."""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from contextlib import AsyncExitStack

from typing import Any

import asyncpg
import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig
from pydantic import ValidationError

from services.contracts import CancelReply, CancelRequested, TriggerRequested, WorkerHeartbeat, WorkerStopped
from services.contracts.events import TriggerKind, utcnow
from services.contracts.nats import connect
from services.contracts.process import stop_on_signals
from services.contracts.subjects import close_nats, ensure_streams_when_ready
from services.sync_worker.errors import UnknownJob
from services.sync_worker.jobs import RunContext, registry
from services.sync_worker.db import outbox_runs
from services.sync_worker.jobs.api import JobSpec, create_run, execute_run, fail_run
from services.sync_worker.outbox import Relay
from services.sync_worker.schedules import parse_schedule, run_schedule
from services.sync_worker.settings import WorkerSettings

log = structlog.get_logger("joblog.worker")

TRIGGER_CONSUMER = "workers"
JOB_LOCK_NAMESPACE = "joblog.job"


class Worker:
    """One worker process: runs triggered jobs, at most max_concurrency per job across workers."""

    def __init__(self, settings: WorkerSettings, pool: asyncpg.Pool, nc: NATS) -> None:
        self.settings = settings
        self.pool = pool
        self.nc = nc
        self.js = nc.jetstream(timeout=5)
        self.relay = Relay(pool, self.js, settings.outbox_batch_size, connected=lambda: nc.is_connected)
        self.running: dict[str, RunContext] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.started_at = utcnow()
        # This process: a fresh id per start, so a restart under the same worker id is a new holder.
        self.incarnation = uuid.uuid4()
        # The runs this process created, by name (the outbox knows subjects, not run ids).
        self.created: dict[str, uuid.UUID] = {}
        # Runs whose terminal event could not be written (a shutdown during a Postgres outage): with
        # these, the stop is not announced, so the recorder closes them as lost rather than never.
        self.abandoned: set[uuid.UUID] = set()
        # A worker takes a trigger only when it has room; the rest wait in the queue for others.
        self.capacity = asyncio.Semaphore(settings.worker_max_runs)

    def limit(self, spec: JobSpec) -> int:
        """The job's max concurrent runs across all workers (JOBLOG_JOB_CONCURRENCY overrides)."""
        return self.settings.job_concurrency.get(spec.name, spec.max_concurrency)

    async def trigger(self, job: str, trigger: TriggerKind = "manual", requested_by: str | None = None) -> RunContext:
        """Create a run of job now and start it in the background; returns its context."""
        ctx, _ = await self._launch(job, trigger, requested_by)
        return ctx

    async def _launch(
        self, job: str, trigger: TriggerKind, requested_by: str | None, command_id: str | None = None
    ) -> tuple[RunContext, asyncio.Task[Any]]:
        spec = registry.get(job)
        ctx = await create_run(
            spec, self.settings, self.pool, trigger=trigger, requested_by=requested_by, on_flush=self.relay.wake,
            incarnation=self.incarnation, command_id=command_id,
        )
        # Held from now on: the next heartbeat lists it, so the recorder never judges it unheld.
        self.running[str(ctx.run_id)] = ctx
        self.created[ctx.name] = ctx.run_id
        if len(self.created) > 10_000:
            self.created.pop(next(iter(self.created)))
        task = asyncio.create_task(self._run(spec, ctx), name=f"run-{ctx.name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return ctx, task

    async def _run(self, spec: JobSpec, ctx: RunContext) -> None:
        # This task's own context: every line logged during the run names it.
        structlog.contextvars.bind_contextvars(run=ctx.name, run_id=str(ctx.run_id), job=spec.name)
        try:
            async with self.pool.acquire() as lock_conn:
                limit = self.limit(spec)
                slot = await _take_job_slot(lock_conn, spec, limit)
                if slot is None:
                    await _skip(spec, ctx, limit)
                    return
                try:
                    await execute_run(spec, ctx)
                finally:
                    with contextlib.suppress(Exception):
                        await lock_conn.execute("SELECT pg_advisory_unlock(hashtext($1), $2)", f"{JOB_LOCK_NAMESPACE}.{spec.name}", slot)
        except (Exception, asyncio.CancelledError) as error:
            # Taking the slot or writing run.started failed, or a shutdown came first: the run still ends.
            if not ctx.finished:
                log.warning("run failed outside the job", run=ctx.name, error=repr(error))
                with contextlib.suppress(asyncio.CancelledError):
                    await fail_run(ctx, error, before_job=True)
        finally:
            self.running.pop(str(ctx.run_id), None)
            if not ctx.finished or ctx.unwritten:
                self.abandoned.add(ctx.run_id)

    async def consume_triggers(self, stopping: asyncio.Event) -> None:
        """One run per trigger message, shared by every worker through one durable consumer."""
        subjects = self.settings.subjects
        sub = await self.js.pull_subscribe(
            subjects.triggers, durable=TRIGGER_CONSUMER, stream=subjects.command_stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=60, max_deliver=5),
        )
        while await self._room_for_a_run(stopping):
            started = False
            try:
                messages = await sub.fetch(1, timeout=1)
                for message in messages:
                    if stopping.is_set():
                        # Arrived on a pull request made before SIGTERM: hand it to another worker now.
                        await message.nak()
                        continue
                    started = await self._handle_trigger(message)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                pass
            except Exception as error:
                log.warning("fetching triggers failed", error=repr(error))
                await asyncio.sleep(1)
            finally:
                if not started:
                    self.capacity.release()

    async def _room_for_a_run(self, stopping: asyncio.Event) -> bool:
        """Wait until this worker may start one more run; False once it is stopping."""
        while not stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.capacity.acquire(), 1.0)
                if stopping.is_set():
                    self.capacity.release()
                    return False
                return True
        return False

    async def _handle_trigger(self, message: Any) -> bool:
        """Start the run a trigger asks for; True if a run now holds one unit of capacity."""
        try:
            command = TriggerRequested.model_validate_json(message.data)
            ctx, task = await self._launch(command.job, command.trigger, command.requested_by, command.command_id)
        except (ValidationError, UnknownJob) as error:
            log.warning("ignoring bad trigger", subject=message.subject, error=str(error).splitlines()[0])
            await message.term()
            return False
        task.add_done_callback(lambda _: self.capacity.release())
        log.info("trigger accepted", job=command.job, run=ctx.name, command_id=command.command_id)
        try:
            await message.ack()
        except Exception as error:  # the run is started; a redelivery would be a second run, logged as such
            log.warning("could not acknowledge a trigger", run=ctx.name, error=repr(error))
        return True

    async def listen_for_cancels(self) -> Any:
        """Answer cancel requests for the runs this process holds (a core subscription of this worker's own)."""

        async def on_request(message: Any) -> None:
            try:
                request = CancelRequested.model_validate_json(message.data)
            except ValidationError as error:
                log.warning("ignoring a bad cancel request", error=str(error).splitlines()[0])
                return
            ctx = self.running.get(str(request.run_id))
            if ctx is None or ctx.name != request.name:
                reply = CancelReply(command_id=request.command_id, accepted=False,
                                    reason=f"run {request.name} is not running on worker {self.settings.worker_id}")
            elif not ctx.cancel(request.requested_by):
                reply = CancelReply(command_id=request.command_id, accepted=False, reason=f"run {request.name} has already ended")
            else:
                log.info("cancelling a run", run=ctx.name, by=request.requested_by, command_id=request.command_id)
                reply = CancelReply(command_id=request.command_id, accepted=True)
            if message.reply:
                with contextlib.suppress(Exception):
                    await message.respond(reply.model_dump_json().encode())

        return await self.nc.subscribe(self.settings.subjects.for_cancel(self.settings.worker_id), cb=on_request)

    async def heartbeat(self, stopping: asyncio.Event) -> None:
        """Tell the recorder and the monitor that this worker is alive, and what it runs."""
        subject = self.settings.subjects.for_heartbeat(self.settings.worker_id)
        while not stopping.is_set():
            beat = WorkerHeartbeat(
                worker_id=self.settings.worker_id, incarnation=self.incarnation, host=socket.gethostname(),
                pid=os.getpid(), started_at=self.started_at, running=[ctx.run_id for ctx in self.running.values()],
                jobs=registry.describe(self.settings.schedules, self.settings.job_concurrency),
            )
            with contextlib.suppress(Exception):
                await self.js.publish(subject, beat.model_dump_json().encode(), timeout=2)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.settings.heartbeat_interval)

    async def finish(self) -> None:
        """Let running jobs finish within the grace period, then fail them with a reason."""
        if self.tasks:
            log.info("waiting for running jobs", runs=[c.name for c in self.running.values()], grace_s=self.settings.shutdown_grace)
            _, pending = await asyncio.wait(set(self.tasks), timeout=self.settings.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def announce_stop(self) -> None:
        """The last word of a clean stop: this process is stopped, not lost, so no verdict follows."""
        if self.abandoned:
            log.warning("runs were left without their result; not announcing a clean stop, so the recorder "
                        "closes them as lost", runs=len(self.abandoned))
            return
        async with self.pool.acquire() as conn:
            waiting = await outbox_runs(conn, self.settings.subjects)
        stopped = WorkerStopped(
            worker_id=self.settings.worker_id, incarnation=self.incarnation, host=socket.gethostname(),
            pid=os.getpid(), pending_runs=[self.created[name] for name in sorted(waiting) if name in self.created],
        )
        await self.js.publish(
            self.settings.subjects.for_worker_stop(self.settings.worker_id), stopped.model_dump_json().encode(), timeout=2,
        )


async def _take_job_slot(conn: asyncpg.Connection, spec: JobSpec, limit: int) -> int | None:
    """One of the job's limit slots, held by this connection; None if all are taken."""
    for slot in range(1, limit + 1):
        if await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1), $2)", f"{JOB_LOCK_NAMESPACE}.{spec.name}", slot):
            return slot
    return None


async def _skip(spec: JobSpec, ctx: RunContext, limit: int) -> None:
    """A trigger while the job is at its concurrency limit: logged as a run, not dropped."""

    async def skipped(run: RunContext) -> dict[str, Any]:
        await run.log(
            f"Skipped: {spec.title} is already running (at most {limit} at a time)",
            key="skipped", level="warning",
        )
        return {"skipped": True}

    await execute_run(JobSpec(spec.name, spec.title, skipped, limit), ctx)


async def run(settings: WorkerSettings, ready: asyncio.Event | None = None, stopping: asyncio.Event | None = None) -> None:
    """Run a worker until SIGTERM/SIGINT (or stopping is set)."""
    problem = settings.unknown_jobs(registry.names())
    if problem:
        raise UnknownJob(problem)
    stopping = stop_on_signals(stopping)
    async with AsyncExitStack() as stack:
        # Per run: a connection holding its job slot, one for its work, one for its log.
        pool_size = 3 * settings.worker_max_runs + 3
        pool = await stack.enter_async_context(asyncpg.create_pool(settings.database_url, min_size=1, max_size=pool_size))
        nc = await connect(settings, f"joblog-worker-{settings.worker_id}")
        stack.push_async_callback(close_nats, nc)
        worker = Worker(settings, pool, nc)
        await ensure_streams_when_ready(worker.js, settings.subjects, settings.stream_replicas)
        relay_stop = asyncio.Event()
        relay = asyncio.create_task(worker.relay.run(relay_stop), name="outbox-relay")
        # Heartbeats go on while running jobs drain after SIGTERM: the worker is not lost yet.
        beats_stop = asyncio.Event()
        beats = asyncio.create_task(worker.heartbeat(beats_stop), name="heartbeat")
        cancels = await worker.listen_for_cancels()
        schedules = [
            asyncio.create_task(
                run_schedule(worker.js, settings.subjects, job, parse_schedule(expression), settings.zone, stopping),
                name=f"schedule-{job}",
            )
            for job, expression in settings.schedules.items()
        ]
        log.info("worker ready", worker_id=settings.worker_id, jobs=registry.names(), schedules=settings.schedules)
        if ready:
            ready.set()
        await worker.consume_triggers(stopping)
        await asyncio.gather(*schedules)
        await worker.finish()
        with contextlib.suppress(Exception):
            await cancels.unsubscribe()
        beats_stop.set()
        relay_stop.set()
        worker.relay.wake()
        try:
            await asyncio.wait_for(relay, timeout=15)
        except asyncio.TimeoutError:
            log.warning("events still in the outbox at shutdown; the next worker publishes them")
        await beats
        try:
            await worker.announce_stop()
        except Exception as error:  # NATS or Postgres gone: the recorder judges by the leases instead
            log.warning("could not announce the stop", error=repr(error))
    log.info("worker stopped", worker_id=settings.worker_id)
