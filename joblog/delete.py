"""`joblog delete`: the web's "Delete run" / "Delete runs before" for scripts and cron.

It publishes the same RunsDeleted event (and the same ActionTaken on the audit trail) as the web,
so the recorder applies it, purges the runs' messages from the stream, and a rebuild honours it.
"""
from __future__ import annotations

import re
from datetime import date, datetime, time
from typing import Any

from services.contracts import ActionTaken, RunsDeleted
from services.contracts.events import RUN_NAME_PATTERN, TOKEN_PATTERN
from services.contracts.settings import CommonSettings
from services.contracts.subjects import close_nats, ensure_streams, publish_action


class BadRequest(Exception):
    """What was asked cannot be a deletion; str() is the one line to print."""


def deletion(settings: CommonSettings, names: list[str], before: str | None, job: str | None,
             requested_by: str, today: date | None = None) -> RunsDeleted:
    """The RunsDeleted event for the command line's arguments, or BadRequest saying why not."""
    if names and before:
        raise BadRequest("give run names or --before DATE, not both")
    if not names and not before:
        raise BadRequest("give run names (e.g. 20261129083000) or --before DATE")
    if job is not None and not before:
        raise BadRequest("--job narrows --before DATE; a run name already names one run")
    if job is not None and not re.match(TOKEN_PATTERN, job):
        raise BadRequest(f"bad job id {job!r}: letters, digits, _ and - only")
    if names:
        bad = [n for n in names if not re.match(RUN_NAME_PATTERN, n)]
        if bad:
            raise BadRequest(f"not a run name: {bad[0]!r} (names look like 20261129083000 or 20261129083000-2)")
        if len(set(names)) > 10_000:
            raise BadRequest("at most 10,000 run names at once")
        return RunsDeleted(names=sorted(set(names)), requested_by=requested_by)
    try:
        day = date.fromisoformat(str(before))
    except ValueError:
        raise BadRequest(f"bad date {before!r}: give a date such as 2026-01-31") from None
    if day > (today or datetime.now(settings.zone).date()):
        raise BadRequest(f"--before {day.isoformat()} is in the future")
    cutoff = datetime.combine(day, time.min, settings.zone)
    return RunsDeleted(created_before=cutoff, job=job, requested_by=requested_by)


def describe(event: RunsDeleted, settings: CommonSettings) -> str:
    """The one line that says what was asked."""
    if event.names:
        shown = ", ".join(event.names[:5]) + (f" and {len(event.names) - 5} more" if len(event.names) > 5 else "")
        what = f"{len(event.names)} run{'s' if len(event.names) != 1 else ''} ({shown})"
    else:
        assert event.created_before is not None
        day = event.created_before.astimezone(settings.zone).date().isoformat()
        what = f"every run{' of ' + event.job if event.job else ''} created before {day} ({settings.timezone})"
    return (f"asked to delete {what} (event {event.event_id}); "
            "the recorder removes their rows and purges their messages from the stream")


def audit(event: RunsDeleted) -> ActionTaken:
    """The audit trail's entry, as the web records its deletions."""
    assert event.requested_by
    if event.names:
        return ActionTaken(actor=event.requested_by, action="delete_runs", target=",".join(event.names)[:200],
                           detail={"event_id": str(event.event_id), "runs": len(event.names)}, source="cli")
    assert event.created_before is not None
    return ActionTaken(actor=event.requested_by, action="delete_before", job=event.job,
                       target=event.created_before.isoformat(), detail={"event_id": str(event.event_id)}, source="cli")


# How long it keeps trying to reach NATS and publish (a leader election takes a few seconds).
RETRY_FOR = 60.0


async def send(settings: CommonSettings, event: RunsDeleted) -> None:
    """Publish the deletion and its audit entry; retried (same ids, so JetStream keeps one) through a leader change."""
    import asyncio

    from joblog.trigger import retrying
    from services.contracts.nats import connect

    async def quiet(error: Exception) -> None:
        """Reported once, by GaveUp."""

    async def connecting() -> Any:
        return await asyncio.wait_for(connect(settings, "joblog-delete", error_cb=quiet), 15)

    nc = await retrying(f"reach NATS at {settings.nats_url}", connecting, RETRY_FOR)
    try:
        js = nc.jetstream(timeout=5)

        async def publish() -> None:
            await ensure_streams(js, settings.subjects, settings.stream_replicas)
            await js.publish(settings.subjects.retention, event.model_dump_json().encode(),
                             headers={"Nats-Msg-Id": str(event.event_id)})

        await retrying(f"publish the deletion to NATS at {settings.nats_url}", publish, RETRY_FOR)
        action = audit(event)
        await retrying(f"record the deletion on the audit trail at {settings.nats_url}",
                       lambda: publish_action(js, settings.subjects, action), RETRY_FOR)
    finally:
        await close_nats(nc)
