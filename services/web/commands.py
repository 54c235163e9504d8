"""What the web sends: triggers to the workers, deletions and the audit trail to the run stream (for the recorder)."""
from __future__ import annotations

from nats.aio.client import Client as NATS

from services.contracts import RunsDeleted, Subjects, TriggerRequested
from services.contracts.events import ActionTaken
from services.contracts.subjects import publish_action, publish_trigger

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
