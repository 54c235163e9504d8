"""The notifier's loops: judge run events and heartbeats, raise alerts into an outbox, deliver it.

- consume: its own durable consumer on the run stream; a batch is judged in one transaction
  (runs, alerts, their deliveries), acked after commit. Events stored before the consumer was
  created are history: they teach durations and results, and raise nothing.
- check: every JOBLOG_NOTIFY_CHECK_INTERVAL, on JetStream's clock: stalled runs, runs too slow,
  missed schedule slots (also when no worker runs at all), the recorder's lag, dead letters.
- deliver: pending deliveries, one at a time, locked while sent; retried with backoff.
An alert's id depends only on its cause, so judging an event twice raises one alert.
"""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import asyncpg
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from services.contracts import (
    AlertRaised, RunCreated, RunFailed, RunStarted, RunSucceeded, WorkerHeartbeat, WorkerStopped, parse_event,
)
from services.contracts.liveness import JetStreamClock, follow_workers, stored_at
from services.contracts.nats import connect
from services.contracts.process import stop_on_signals
from services.contracts.schedules import parse_schedule
from services.contracts.subjects import close_nats, ensure_streams_when_ready
from services.notifier import db
from services.notifier.delivery import Sender, Summary, alert_of
from services.notifier.errors import DeliveryFailed
from services.notifier.settings import NotifierSettings

log = structlog.get_logger("joblog.notifier")

ALERT_NAMESPACE = uuid.UUID("5d7c1a8e-0f4b-4e8a-9c3d-6b2a1f0e9d87")
LIVE_FROM = "live_from_stream_seq"
DEAD_LETTERS_SEEN = "dead_letters_seen"
# A run.created this long before its slot still counts for it (clocks, publish delays).
SLOT_TOLERANCE = timedelta(seconds=5)
DEAD_LETTERS_QUIET = 3600.0


def alert_id(*cause: object) -> uuid.UUID:
    """The same cause, the same alert id: judging an event again raises nothing new."""
    return uuid.uuid5(ALERT_NAMESPACE, ":".join(str(part) for part in cause))


class Notifier:
    """Alerts from the run stream and the heartbeats; the outbox and its delivery."""

    def __init__(self, settings: NotifierSettings, pool: asyncpg.Pool, js: Any, sender: Sender) -> None:
        self.settings = settings
        self.pool = pool
        self.js = js
        self.sender = sender
        self.clock = JetStreamClock()
        self.live_from = 0
        self.listed: dict[uuid.UUID, datetime] = {}  # run -> when a heartbeat of its process last listed it
        self.stopped: set[uuid.UUID] = set()  # incarnations that stopped cleanly
        self.announced: dict[str, str | None] = {}  # job -> schedule, from heartbeats not yet written
        self.watching_since: float | None = None
        self.dead_letters_at: float | None = None
        self.wake = asyncio.Event()

    # --- the run stream ------------------------------------------------------------------

    async def subscribe(self) -> Any:
        """Bind the durable consumer, creating it (and marking where history ends) on the first start."""
        stream, name = self.settings.stream, self.settings.notifier_consumer
        try:
            await self.js.consumer_info(stream, name)
        except nats.js.errors.NotFoundError:
            last = (await self.js.stream_info(stream)).state.last_seq
            async with self.pool.acquire() as conn:
                await db.set_state(conn, LIVE_FROM, last)
            await self.js.add_consumer(stream, ConsumerConfig(
                name=name, durable_name=name, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                ack_wait=30, max_ack_pending=10_000, max_deliver=-1,
            ))
        async with self.pool.acquire() as conn:
            self.live_from = await db.get_state(conn, LIVE_FROM) or 0
        return await self.js.pull_subscribe_bind(name, stream=stream)

    async def consume(self, sub: Any, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                messages: list[Msg] = await sub.fetch(100, timeout=0.5)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            except Exception as error:
                log.warning("fetching events failed", error=repr(error))
                await asyncio.sleep(0.5)
                continue
            try:
                async with self.pool.acquire() as conn:
                    async with conn.transaction():
                        for message in messages:
                            await self.judge(conn, message)
            except Exception as error:  # Postgres away, or a bug: redelivered soon, nothing acked
                log.warning("judging a batch failed; it will be redelivered", error=repr(error))
                for message in messages:
                    with contextlib.suppress(Exception):
                        await message.nak(delay=1)
                await asyncio.sleep(1)
                continue
            self.wake.set()
            for message in messages:
                with contextlib.suppress(Exception):
                    await message.ack()

    async def judge(self, conn: asyncpg.Connection, message: Msg) -> None:
        """One message of the run stream: update the run, raise or clear alerts. Anything else is skipped."""
        try:
            event = parse_event(message.data)
        except ValidationError:
            return  # deletions, the audit trail, or malformed: not ours to judge
        at = stored_at(message) or event.occurred_at
        self.clock.observe(at)
        seq = 0
        with contextlib.suppress(Exception):
            seq = message.metadata.sequence.stream
        live = seq > self.live_from
        if isinstance(event, RunCreated):
            await db.run_created(conn, event.run_id, event.job, event.name, event.incarnation, event.worker_id, at)
            await db.clear(conn, "missed_schedule", event.job, at)
        elif isinstance(event, RunStarted):
            await db.run_started(conn, event.run_id, event.job, event.name, event.incarnation, event.worker_id, at)
        elif isinstance(event, (RunSucceeded, RunFailed)):
            await self.result(conn, event, at, live)

    async def result(self, conn: asyncpg.Connection, event: RunSucceeded | RunFailed, at: datetime, live: bool) -> None:
        """A terminal event; of several, the lowest seq is the run's result."""
        before = await db.previous_result(conn, event.run_id)
        if before is not None and before["terminal_seq"] is not None and before["terminal_seq"] <= event.seq:
            return
        status = "success" if isinstance(event, RunSucceeded) else "error"
        if before is not None and before["status"] == status:
            await db.store_result(conn, event.run_id, event.job, event.name, status, event.seq, at, event.duration_ms)
            return
        median, runs = await db.median_ms(conn, event.job, self.settings.notify_slow_runs, event.run_id)
        await db.store_result(conn, event.run_id, event.job, event.name, status, event.seq, at, event.duration_ms)
        if isinstance(event, RunFailed):
            if live:
                await self.raise_alert(conn, AlertRaised(
                    alert_id=alert_id("run_failed", event.event_id), kind="run_failed", job=event.job, run=event.name,
                    message=(f"{event.job} run {event.name} failed" + (f" at step {event.step}" if event.step else "")
                             + f": {event.error_class}: {event.error_message}"),
                    link=self.link(event.name), occurred_at=at,
                    details={"error_class": event.error_class, "error_message": event.error_message, "step": event.step},
                ))
            return
        failed = await db.clear(conn, "run_failed", event.job, at)
        if failed is not None and live:
            await self.raise_alert(conn, AlertRaised(
                alert_id=alert_id("recovered", event.event_id), kind="recovered", job=event.job, run=event.name,
                message=f"{event.job} recovered: run {event.name} succeeded after failures (first: {failed['run_name']})",
                link=self.link(event.name), occurred_at=at, details={"failed_run": failed["run_name"]},
            ), cleared=True)
        limit = self.slow_limit_ms(median, runs)
        if limit is None:
            return
        if event.duration_ms <= limit:
            await db.clear(conn, "too_slow", event.job, at)
        elif live:
            await self.raise_alert(conn, self.too_slow(event.run_id, event.job, event.name, event.duration_ms, median, at, True))

    def slow_limit_ms(self, median: float | None, runs: int) -> float | None:
        if median is None or runs < self.settings.notify_slow_min_runs:
            return None
        return self.settings.notify_slow_factor * median

    def too_slow(self, run_id: uuid.UUID, job: str, name: str, elapsed_ms: float, median: float | None,
                 at: datetime, finished: bool) -> AlertRaised:
        verb = "took" if finished else "has been running for"
        return AlertRaised(
            alert_id=alert_id("too_slow", run_id), kind="too_slow", job=job, run=name,
            message=(f"{job} run {name} {verb} {elapsed_ms / 1000:.1f} s, more than {self.settings.notify_slow_factor:g} x "
                     f"the median {(median or 0) / 1000:.1f} s of its last successes"),
            link=self.link(name), occurred_at=at,
            details={"elapsed_ms": int(elapsed_ms), "median_ms": median, "finished": finished},
        )

    def link(self, name: str) -> str:
        return f"{self.settings.public_url}/runs/{name}"

    async def raise_alert(self, conn: asyncpg.Connection, alert: AlertRaised, *, cleared: bool = False) -> bool:
        """The alert and its deliveries, in the caller's transaction (the outbox)."""
        targets: list[tuple[str, str]] = [("stream", self.settings.subjects.for_alert(alert.kind, alert.job))]
        for channel in self.settings.channels_for(alert.job):
            if channel == "webhook":
                targets += [("webhook", url) for url in self.settings.webhooks]
            elif channel == "slack":
                targets += [("slack", url) for url in self.settings.slack_webhooks]
            elif channel == "email":
                targets.append(("email", ",".join(self.settings.email_to)))
        raised = await db.raise_alert(conn, alert, targets, cleared=cleared)
        if raised:
            log.warning("alert raised", kind=alert.kind, job=alert.job, run=alert.run, alert_id=str(alert.alert_id))
        return raised

    # --- heartbeats ----------------------------------------------------------------------

    def record(self, event: WorkerHeartbeat | WorkerStopped, at: datetime) -> None:
        self.clock.observe(at)
        if isinstance(event, WorkerStopped):
            self.stopped.add(event.incarnation)
            return
        for run_id in event.running:
            if self.listed.get(run_id) is None or self.listed[run_id] < at:
                self.listed[run_id] = at
        if self.clock.age(at) <= timedelta(seconds=self.settings.worker_timeout):
            for job in event.jobs:  # only what a live worker says now
                self.announced[job.name] = job.schedule

    # --- the checks ----------------------------------------------------------------------

    async def check(self, stopping: asyncio.Event) -> None:
        ticks = 0
        while not stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.settings.notify_check_interval)
            if self.watching_since is None:
                self.watching_since = asyncio.get_running_loop().time()
            try:
                async with self.pool.acquire() as conn:
                    async with conn.transaction():
                        await self.check_schedules(conn)
                        await self.check_runs(conn)
                        if ticks % 5 == 0:
                            await self.check_projection(conn)
                self.wake.set()
            except Exception as error:  # Postgres or NATS away: the next tick tries again
                log.warning("notifier check failed", error=repr(error))
            ticks += 1

    async def check_schedules(self, conn: asyncpg.Connection) -> None:
        """Missed slots: no run.created within the grace, whether or not any worker still runs."""
        now = self.clock.now()
        announced, self.announced = self.announced, {}
        for job, expression in announced.items():
            await db.announce_schedule(conn, job, expression, now)
        grace = timedelta(seconds=self.settings.notify_schedule_grace)
        for row in await db.schedules(conn):
            try:
                schedule = parse_schedule(row["expression"])
            except ValueError:
                continue
            checked_until = row["checked_until"]
            slot = schedule.next_after(checked_until, self.settings.zone)
            missed: list[datetime] = []
            while slot + grace <= now and len(missed) < 1000:
                if not row["paused"] and not await db.created_between(conn, row["job"], slot - SLOT_TOLERANCE, slot + grace):
                    missed.append(slot)
                checked_until, slot = slot, schedule.next_after(slot, self.settings.zone)
            if checked_until != row["checked_until"]:
                await db.checked(conn, row["job"], checked_until)
            if missed:
                first = missed[0].strftime("%Y-%m-%d %H:%M:%S UTC")
                await self.raise_alert(conn, AlertRaised(
                    alert_id=alert_id("missed_schedule", row["job"], missed[0].isoformat()), kind="missed_schedule",
                    job=row["job"], occurred_at=now,
                    message=(f"{row['job']} missed its schedule ({row['expression']}): no run was created for the slot of "
                             f"{first} within {self.settings.notify_schedule_grace:g} s"
                             + (f" ({len(missed)} slots missed)" if len(missed) > 1 else "")),
                    link=f"{self.settings.public_url}/monitor",
                    details={"schedule": row["expression"], "slots": [s.isoformat() for s in missed[:20]]},
                ))

    async def check_runs(self, conn: asyncpg.Connection) -> None:
        """Stalled runs (no live process lists them) and runs past k x their job's median."""
        now = self.clock.now()
        timeout = timedelta(seconds=self.settings.worker_timeout)
        started = self.watching_since
        judging_stalls = started is not None and asyncio.get_running_loop().time() - started >= self.settings.worker_timeout
        stalled: dict[str, list[str]] = {}
        for run in await db.open_runs(conn):
            if run["incarnation"] is not None and run["incarnation"] not in self.stopped and judging_stalls:
                listed = max(self.listed.get(run["run_id"], run["started_at"]), run["started_at"])
                if now - listed > timeout:
                    stalled.setdefault(run["job"], []).append(run["name"])
            median, runs = await db.median_ms(conn, run["job"], self.settings.notify_slow_runs, run["run_id"])
            limit = self.slow_limit_ms(median, runs)
            elapsed = (now - run["started_at"]).total_seconds() * 1000
            if limit is not None and elapsed > limit:
                await self.raise_alert(conn, self.too_slow(run["run_id"], run["job"], run["name"], elapsed, median, now, False))
        for job, names in stalled.items():
            await self.raise_alert(conn, AlertRaised(
                alert_id=alert_id("stalled", names[0]), kind="stalled", job=job, run=names[0], occurred_at=now,
                message=(f"{job} run {names[0]} is processing but no live worker holds it "
                         f"(not listed by a heartbeat for over {self.settings.worker_timeout:g} s)"
                         + (f"; {len(names) - 1} more run(s) of the job too" if len(names) > 1 else "")),
                link=self.link(names[0]), details={"runs": names[:50]},
            ))
        if judging_stalls:
            for open_job in await db.open_jobs(conn, "stalled"):
                if open_job not in stalled:
                    await db.clear(conn, "stalled", open_job, now)

    async def check_projection(self, conn: asyncpg.Connection) -> None:
        """The recorder's backlog and the age of its oldest pending message; dead letters appearing."""
        now = self.clock.now()
        problem = None
        try:
            info = await self.js.consumer_info(self.settings.stream, self.settings.recorder_consumer)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None:
            pending = (info.num_pending or 0) + (info.num_ack_pending or 0)
            age = 0.0
            if pending:
                floor = info.ack_floor.stream_seq if info.ack_floor else 0
                with contextlib.suppress(Exception):
                    oldest = await self.js.get_msg(self.settings.stream, floor + 1)
                    if oldest.time is not None:
                        age = (now - oldest.time).total_seconds()
            if pending > self.settings.notify_backlog_threshold or age > self.settings.notify_lag_threshold:
                problem = (f"the log recorder is behind: {pending:,} messages pending, the oldest {age:.0f} s old "
                           f"(thresholds {self.settings.notify_backlog_threshold:,} / {self.settings.notify_lag_threshold:g} s)")
                await self.raise_alert(conn, AlertRaised(
                    alert_id=alert_id("projection_behind", uuid.uuid4()), kind="projection_behind", occurred_at=now,
                    message=problem, link=f"{self.settings.public_url}/monitor",
                    details={"pending": pending, "oldest_age_s": round(age, 1)},
                ))
        if problem is None:
            await db.clear(conn, "projection_behind", None, now)
        count, last = await db.dead_letters(conn)
        seen = await db.get_state(conn, DEAD_LETTERS_SEEN)
        loop_now = asyncio.get_running_loop().time()
        if seen is None or last < seen:
            await db.set_state(conn, DEAD_LETTERS_SEEN, last)  # the first look: the old ones are known
        elif last > seen:
            await db.set_state(conn, DEAD_LETTERS_SEEN, last)
            self.dead_letters_at = loop_now
            await self.raise_alert(conn, AlertRaised(
                alert_id=alert_id("dead_letters", last), kind="dead_letters", occurred_at=now,
                message=f"the log recorder dead-lettered messages it cannot apply: {count:,} dead letters now",
                link=f"{self.settings.public_url}/monitor", details={"total": count, "last_id": last},
            ))
        elif self.dead_letters_at is not None and loop_now - self.dead_letters_at > DEAD_LETTERS_QUIET:
            await db.clear(conn, "dead_letters", None, now)
            self.dead_letters_at = None

    # --- delivery ------------------------------------------------------------------------

    async def deliver(self, stopping: asyncio.Event) -> None:
        """Send what is due, oldest first; sleep until something is raised or a retry falls due."""
        while not stopping.is_set():
            try:
                sent = await self.deliver_one()
            except Exception as error:  # Postgres away
                log.warning("delivering alerts failed", error=repr(error))
                sent = False
            if not sent:
                self.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 0.5)

    async def deliver_one(self) -> bool:
        """One due delivery, or one receiver's summary; False when nothing is due."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                row = await db.claim(conn)
                if row is None:
                    return False
                settings = self.settings
                if row["channel"] != "stream" and not row["grouped"]:
                    lately = await db.delivered_lately(conn, row["channel"], row["target"], settings.notify_storm_window)
                    if lately >= settings.notify_storm_threshold:  # a storm: this one waits for the summary
                        await db.hold_for_summary(conn, row, settings.notify_storm_window)
                        log.info("alert held for a summary", channel=row["channel"], alert_id=str(row["alert_id"]))
                        return True
                rows = await db.claim_group(conn, row) if row["grouped"] else [row]
                summary = None
                try:
                    if len(rows) == 1:
                        await self.sender.send(row["channel"], row["target"], alert_of(row))
                    else:
                        summary = Summary([alert_of(r) for r in rows], settings.notify_storm_window,
                                          f"{settings.public_url}/monitor")
                        await self.sender.send_summary(row["channel"], row["target"], summary)
                except (DeliveryFailed, Exception) as error:
                    wait = min(settings.notify_retry_max, 0.5 * 2 ** min(row["attempts"], 20))
                    age = (datetime.now(timezone.utc) - row["raised_at"]).total_seconds()
                    give_up = age > settings.notify_give_up_after
                    log.warning("delivery failed; retrying" if not give_up else "delivery failed; given up",
                                channel=row["channel"], alert_id=str(row["alert_id"]), alerts=len(rows),
                                error=str(error), retry_in_s=wait)
                    for each in rows:
                        await db.retry_later(conn, each, f"{type(error).__name__}: {error}", wait, give_up)
                    return True
                for each in rows:
                    await db.delivered(conn, each, summary.summary_id if summary else None)
                log.info("alert delivered" if summary is None else "alert summary delivered", channel=row["channel"],
                         alert_id=str(summary.summary_id if summary else row["alert_id"]), alerts=len(rows))
                return True

async def run(settings: NotifierSettings, ready: asyncio.Event | None = None, stopping: asyncio.Event | None = None) -> None:
    """Run the notifier until SIGTERM/SIGINT (or stopping is set)."""
    stopping = stop_on_signals(stopping)
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(asyncpg.create_pool(settings.database_url, min_size=1, max_size=4))
        nc = await connect(settings, "joblog-notifier")
        stack.push_async_callback(close_nats, nc)
        js = nc.jetstream(timeout=5)
        await ensure_streams_when_ready(js, settings.subjects, settings.stream_replicas)
        session = await stack.enter_async_context(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)))
        notifier = Notifier(settings, pool, js, Sender(settings, session, js))
        sub = await notifier.subscribe()
        tasks = [
            asyncio.create_task(follow_workers(js, settings.subjects, notifier.record, stopping), name="heartbeats"),
            asyncio.create_task(notifier.check(stopping), name="checks"),
            asyncio.create_task(notifier.deliver(stopping), name="deliveries"),
        ]
        log.info("notifier ready", consumer=settings.notifier_consumer, channels=sorted(
            {c for c in ("webhook", "slack", "email") if c in settings.channels_for(None)}))
        if ready:
            ready.set()
        try:
            await notifier.consume(sub, stopping)
        finally:
            stopping.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    log.info("notifier stopped")
