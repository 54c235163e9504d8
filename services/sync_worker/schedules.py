"""Scheduled triggers: per-job cron expressions or fixed intervals, from JOBLOG_SCHEDULES.

The grammar (parse_schedule, Schedule.next_after) is the contract's, services/contracts/schedules.py,
which the web shares to show the next slot; this module keeps the loop that fires the slots.

Every worker runs the same schedules. Each one publishes a TriggerRequested per slot with
command_id ``schedule:<job>:<slot>``; JetStream's duplicate window (120 s) drops the copies
from the other workers, so N workers make exactly one run per slot. That holds as long as
the workers' clocks agree to well within the window (NTP) and a copy is published within
it: a slot is published at its time, never caught up later.

A schedule can be paused from the Jobs Monitor: a SchedulePaused on {prefix}.schedule.<job> in the
run stream. Every worker reads that subject's last message before each slot (and at its start), so
a pause holds across restarts and for every worker; a slot of a paused schedule is not published.
When JetStream cannot say, the last state this worker knew stands.
"""
from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import structlog

from services.contracts import SchedulePaused, TriggerRequested
from services.contracts.events import utcnow
from services.contracts.schedules import Schedule, parse_schedule
from services.contracts.subjects import DUPLICATE_WINDOW_SECONDS, Subjects, publish_trigger, schedule_paused

__all__ = ["PUBLISH_DEADLINE", "Schedule", "parse_schedule", "run_schedule", "slot_command"]

log = structlog.get_logger("joblog.worker.schedule")

# A copy published later than this after its slot could land outside the duplicate window.
PUBLISH_DEADLINE = DUPLICATE_WINDOW_SECONDS / 2


def slot_command(job: str, slot: datetime) -> TriggerRequested:
    """The trigger for one slot: every worker builds the same command_id for it."""
    iso = slot.astimezone(timezone.utc).isoformat(timespec="seconds")
    return TriggerRequested(
        command_id=f"schedule:{job}:{iso}", job=job, trigger="schedule", requested_by=f"schedule {iso}",
    )


async def run_schedule(
    js, subjects: Subjects, job: str, schedule: Schedule, zone: ZoneInfo, stopping: asyncio.Event  # type: ignore[no-untyped-def]
) -> None:
    """Publish one trigger per slot of schedule until stopping is set."""
    last = utcnow()
    state = PauseState(js, subjects, job)
    paused = await state.read()
    log.info("job scheduled", job=job, schedule=schedule.expression, next_run=schedule.next_after(last, zone).isoformat(),
             paused_by=paused.requested_by if paused else None)
    while not stopping.is_set():
        slot = schedule.next_after(last, zone)
        # Short waits, re-reading the clock: robust to a suspended machine or a clock step.
        while not stopping.is_set() and (remaining := (slot - utcnow()).total_seconds()) > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), min(remaining, 30.0))
        if stopping.is_set():
            return
        last = slot
        if (utcnow() - slot).total_seconds() > PUBLISH_DEADLINE:
            log.warning("missed a schedule slot (the worker was busy or asleep)", job=job, slot=slot.isoformat())
            continue
        paused = await state.read()
        if paused is not None:
            log.info("schedule paused; slot not run", job=job, slot=slot.isoformat(), paused_by=paused.requested_by,
                     paused_at=paused.occurred_at.isoformat())
            continue
        await _publish_slot(js, subjects, job, slot, stopping)


class PauseState:
    """A job's schedule state as the stream says (the last SchedulePaused / ScheduleResumed of its subject)."""

    def __init__(self, js, subjects: Subjects, job: str) -> None:  # type: ignore[no-untyped-def]
        self.js, self.subjects, self.job = js, subjects, job
        self.known: SchedulePaused | None = None

    async def read(self) -> SchedulePaused | None:
        try:
            self.known = await asyncio.wait_for(schedule_paused(self.js, self.subjects, self.job), 5.0)
        except Exception as error:  # NATS away or a bad message: keep what we knew
            log.warning("could not read the schedule's pause state; keeping the last known", job=self.job,
                        paused=self.known is not None, error=repr(error))
        return self.known


async def _publish_slot(js, subjects: Subjects, job: str, slot: datetime, stopping: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
    command = slot_command(job, slot)
    backoff = 0.2
    while not stopping.is_set():
        try:
            await publish_trigger(js, subjects, command)
            log.debug("schedule slot published", job=job, slot=slot.isoformat())
            return
        except Exception as error:  # NATS away: retry, but only while a copy is still de-duplicated
            if (utcnow() - slot).total_seconds() + backoff > PUBLISH_DEADLINE:
                log.warning("could not publish a schedule slot; skipped", job=job, slot=slot.isoformat(), error=repr(error))
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
