"""What the web sends: triggers to the workers, deletions and the audit trail to the run stream (for the recorder)."""
from __future__ import annotations

from nats.aio.client import Client as NATS

from services.contracts import CancelReply, CancelRequested, RunsDeleted, SchedulePaused, ScheduleResumed, Subjects, TriggerRequested
from services.contracts.events import ActionTaken
from services.contracts.subjects import publish_action, publish_schedule_event, publish_trigger

PUBLISH_TIMEOUT = 5.0


async def trigger(nc: NATS, subjects: Subjects, command: TriggerRequested) -> None:
    """Queue one run of a job; the command_id de-duplicates."""
    await publish_trigger(nc.jetstream(timeout=PUBLISH_TIMEOUT), subjects, command)


async def delete_runs(nc: NATS, subjects: Subjects, event: RunsDeleted) -> None:
    """Put the deletion on the run stream, so the recorder applies it and a rebuild honours it."""
    await nc.jetstream(timeout=PUBLISH_TIMEOUT).publish(
        subjects.retention, event.model_dump_json().encode(), headers={"Nats-Msg-Id": str(event.event_id)},
    )


async def record(nc: NATS, subjects: Subjects, action: ActionTaken) -> None:
    """Put an action on the audit trail (the run stream, so a rebuild keeps it)."""
    await publish_action(nc.jetstream(timeout=PUBLISH_TIMEOUT), subjects, action)


async def schedule_event(nc: NATS, subjects: Subjects, event: SchedulePaused | ScheduleResumed) -> None:
    """Pause or resume a schedule: on the run stream, where every worker reads it before each slot."""
    await publish_schedule_event(nc.jetstream(timeout=PUBLISH_TIMEOUT), subjects, event)


async def cancel(nc: NATS, subjects: Subjects, worker_id: str, request: CancelRequested, timeout: float = 3.0) -> CancelReply:
    """Ask the worker holding a run to cancel it; raises nats.errors.NoRespondersError / TimeoutError if it does not answer."""
    reply = await nc.request(subjects.for_cancel(worker_id), request.model_dump_json().encode(), timeout=timeout)
    return CancelReply.model_validate_json(reply.data)
