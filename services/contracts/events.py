"""Job events: frozen, past tense, validated where they enter or leave NATS."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Final, Literal, Union

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, field_validator

SCHEMA_VERSION: Final = 1

# Names are the run's start time, YYYYMMDDhhmmss, with -2, -3 ... for runs in the same second.
RUN_NAME_PATTERN = r"^\d{14}(-\d+)?$"
# Job and worker ids become subject tokens: no dots, spaces or wildcards.
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

StepLevel = Literal["debug", "info", "warning", "error"]
TriggerKind = Literal["manual", "schedule", "cli", "retry", "startup"]
# A pid and the other counters Postgres stores as int4.
INT4_MAX: Final = 2**31 - 1
INCARNATION_DESCRIPTION = (
    "The worker process (a fresh id per start) that holds the run; its heartbeats list the runs it holds. "
    "Optional: events of older workers have none."
)


def utcnow() -> datetime:
    """The current time in UTC, to the microsecond."""
    return datetime.now(timezone.utc)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JobEvent(_Frozen):
    """What every event of a run carries."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4, description="Unique; also the Nats-Msg-Id header.")
    run_id: uuid.UUID
    name: str = Field(pattern=RUN_NAME_PATTERN, description="The run's name, YYYYMMDDhhmmss[-N].")
    job: str = Field(pattern=TOKEN_PATTERN)
    seq: int = Field(ge=1, description="Per run: 1, 2, 3 ... in emission order.")
    occurred_at: AwareDatetime = Field(default_factory=utcnow)

    @field_validator("occurred_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return value.astimezone(timezone.utc)


class RunCreated(JobEvent):
    """A run was created (status new)."""

    type: Literal["run.created"] = "run.created"
    trigger: TriggerKind = "manual"
    worker_id: str = Field(pattern=TOKEN_PATTERN)
    requested_by: str | None = Field(default=None, max_length=200)
    incarnation: uuid.UUID | None = Field(default=None, description=INCARNATION_DESCRIPTION)
    command_id: str | None = Field(default=None, max_length=200, description="The trigger command that asked for this run.")


class RunStarted(JobEvent):
    """A run began working (status processing)."""

    type: Literal["run.started"] = "run.started"
    worker_id: str = Field(pattern=TOKEN_PATTERN)
    host: str = Field(max_length=255)
    pid: int = Field(ge=0, le=INT4_MAX)
    incarnation: uuid.UUID | None = Field(default=None, description=INCARNATION_DESCRIPTION)


class StepLogged(JobEvent):
    """A step message; a later step with the same key updates that detail in place."""

    type: Literal["run.step"] = "run.step"
    key: str = Field(min_length=1, max_length=200)
    message: str = Field(max_length=20_000)
    level: StepLevel = "info"
    data: dict[str, Any] | None = None


class RunSucceeded(JobEvent):
    """A run finished without error (status success)."""

    type: Literal["run.succeeded"] = "run.succeeded"
    stats: dict[str, Any] = Field(default_factory=dict)
    duration_ms: int = Field(ge=0)


class RunFailed(JobEvent):
    """A run ended in error (status error)."""

    type: Literal["run.failed"] = "run.failed"
    error_class: str = Field(max_length=200)
    error_message: str = Field(max_length=20_000)
    traceback: str | None = Field(default=None, max_length=100_000)
    step: str | None = Field(default=None, description="Key of the step that was running.")
    stats: dict[str, Any] = Field(default_factory=dict)
    duration_ms: int | None = Field(default=None, ge=0)


RunEvent = Annotated[
    Union[RunCreated, RunStarted, StepLogged, RunSucceeded, RunFailed],
    Field(discriminator="type"),
]
EventAdapter: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)


def parse_event(payload: bytes | str) -> RunEvent:
    """Validate one run event from its JSON; raises pydantic.ValidationError."""
    return EventAdapter.validate_json(payload)


class RunsDeleted(_Frozen):
    """An administrator deleted runs (the spec's manual retention): by name, or all created before a time.

    It travels on the run stream, so a rebuild from the stream does not bring deleted runs back.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["runs.deleted"] = "runs.deleted"
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    names: list[str] = Field(default_factory=list, max_length=10_000, description="Runs deleted by name.")
    created_before: AwareDatetime | None = Field(default=None, description="Every run created before this time.")
    requested_by: str | None = Field(default=None, max_length=200)
    # Optional narrowing of created_before (additive; retention per job and per outcome):
    job: str | None = Field(default=None, pattern=TOKEN_PATTERN, description="With created_before: only this job's runs.")
    except_jobs: list[str] | None = Field(
        default=None, max_length=1000, description="With created_before: not these jobs' runs (they have a policy of their own).")
    statuses: list[Literal["new", "processing", "success", "error"]] | None = Field(
        default=None, max_length=4, description="With created_before: only runs in these statuses (null: any).")


class JobDescription(_Frozen):
    """A job a worker can run, as the Jobs Monitor shows it."""

    name: str = Field(pattern=TOKEN_PATTERN)
    title: str = Field(max_length=200)
    description: str = Field(default="", max_length=2000)
    schedule: str | None = Field(default=None, description="Cron expression or interval, if scheduled.")
    max_concurrency: int = Field(default=1, ge=1)


class WorkerHeartbeat(_Frozen):
    """A worker is alive and holds these runs (its leases: a run it stops listing is no longer held)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["worker.heartbeat"] = "worker.heartbeat"
    worker_id: str = Field(pattern=TOKEN_PATTERN)
    incarnation: uuid.UUID | None = Field(default=None, description="This process: a fresh id per start.")
    host: str = Field(max_length=255)
    pid: int = Field(ge=0, le=INT4_MAX)
    started_at: AwareDatetime
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    running: list[uuid.UUID] = Field(
        default_factory=list, max_length=10_000, description="run_ids this incarnation holds (in progress)."
    )
    jobs: list[JobDescription] = Field(default_factory=list, max_length=1000)


class WorkerStopped(_Frozen):
    """A worker process stopped cleanly (SIGTERM: a deploy, a scale-down): it is stopped, not lost.

    Every run it held has its terminal event committed; the ones in pending_runs were still in the
    outbox when it stopped, and the next worker's relay publishes them. No verdict follows a stop.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["worker.stopped"] = "worker.stopped"
    worker_id: str = Field(pattern=TOKEN_PATTERN)
    incarnation: uuid.UUID
    host: str = Field(max_length=255)
    pid: int = Field(ge=0, le=INT4_MAX)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    pending_runs: list[uuid.UUID] = Field(
        default_factory=list, max_length=10_000, description="Runs whose results were still in the outbox."
    )


WorkerEvent = Annotated[Union[WorkerHeartbeat, WorkerStopped], Field(discriminator="type")]
WorkerEventAdapter: TypeAdapter[WorkerEvent] = TypeAdapter(WorkerEvent)


def parse_worker_event(payload: bytes | str) -> WorkerHeartbeat | WorkerStopped:
    """Validate a heartbeat or a stop from its JSON; raises pydantic.ValidationError."""
    return WorkerEventAdapter.validate_json(payload)


# What a person did through the web or the CLI, kept on the run stream as the audit trail.
ActionKind = Literal["trigger", "retry", "delete_runs", "delete_before", "pause", "resume", "cancel", "bulk_retry"]


class ActionTaken(_Frozen):
    """Someone acted on the system (the audit trail): who, what, on what, from where."""

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["action.taken"] = "action.taken"
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    actor: str = Field(min_length=1, max_length=200, description="The account (web) or 'cli:<user>'.")
    action: ActionKind
    job: str | None = Field(default=None, pattern=TOKEN_PATTERN)
    target: str | None = Field(default=None, max_length=200, description="A run name, a command id, a cutoff ...")
    detail: dict[str, Any] = Field(default_factory=dict)
    source: str | None = Field(default=None, max_length=200, description="Client address or 'cli'.")


class TriggerRequested(_Frozen):
    """A command: run this job once. The command_id de-duplicates (e.g. one per schedule slot)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["trigger.requested"] = "trigger.requested"
    command_id: str = Field(default_factory=lambda: str(uuid.uuid4()), max_length=200)
    job: str = Field(pattern=TOKEN_PATTERN)
    trigger: TriggerKind = "manual"
    requested_by: str | None = Field(default=None, max_length=200)
    requested_at: AwareDatetime = Field(default_factory=utcnow)


class SchedulePaused(_Frozen):
    """An operator paused a job's schedule: no worker publishes its slots until it is resumed.

    On {prefix}.schedule.<job> in the run stream; the last message of that subject is the schedule's
    state (workers read it before every slot, so a pause survives their restarts)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["schedule.paused"] = "schedule.paused"
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    job: str = Field(pattern=TOKEN_PATTERN)
    requested_by: str = Field(min_length=1, max_length=200, description="Who paused it: the account (web) or 'cli:<user>'.")
    reason: str | None = Field(default=None, max_length=500)


class ScheduleResumed(_Frozen):
    """An operator resumed a paused schedule: its next slot runs again (missed slots are not caught up)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["schedule.resumed"] = "schedule.resumed"
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    job: str = Field(pattern=TOKEN_PATTERN)
    requested_by: str = Field(min_length=1, max_length=200)


ScheduleEvent = Annotated[Union[SchedulePaused, ScheduleResumed], Field(discriminator="type")]
ScheduleEventAdapter: TypeAdapter[ScheduleEvent] = TypeAdapter(ScheduleEvent)


def parse_schedule_event(payload: bytes | str) -> SchedulePaused | ScheduleResumed:
    """Validate a schedule pause or resume from its JSON; raises pydantic.ValidationError."""
    return ScheduleEventAdapter.validate_json(payload)


class CancelRequested(_Frozen):
    """A command to the worker holding a run: cancel it. Sent as a NATS request to {prefix}.cmd.cancel.<worker_id>.

    The worker answers with a CancelReply; the run ends `error` with an error step "cancelled by <requested_by>"."""

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["cancel.requested"] = "cancel.requested"
    command_id: str = Field(default_factory=lambda: str(uuid.uuid4()), max_length=200)
    run_id: uuid.UUID
    name: str = Field(pattern=RUN_NAME_PATTERN)
    job: str = Field(pattern=TOKEN_PATTERN)
    requested_by: str = Field(min_length=1, max_length=200)
    requested_at: AwareDatetime = Field(default_factory=utcnow)


class CancelReply(_Frozen):
    """The worker's answer to a CancelRequested: whether it holds the run and is cancelling it."""

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["cancel.reply"] = "cancel.reply"
    command_id: str = Field(max_length=200)
    accepted: bool
    reason: str = Field(default="", max_length=500)


# What the notifier alerts on (services/notifier); a new kind is an additive change.
AlertKind = Literal["run_failed", "recovered", "stalled", "missed_schedule", "too_slow", "projection_behind", "dead_letters"]


class AlertRaised(_Frozen):
    """The notifier raised an alert (also delivered to webhooks, Slack and email); alert_id is the idempotency key."""

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["alert.raised"] = "alert.raised"
    alert_id: uuid.UUID
    kind: AlertKind
    job: str | None = Field(default=None, pattern=TOKEN_PATTERN, description="The job, if the alert is about one.")
    run: str | None = Field(default=None, pattern=RUN_NAME_PATTERN, description="The run's name, if about one.")
    message: str = Field(max_length=20_000)
    link: str | None = Field(default=None, max_length=2000, description="The run's page (JOBLOG_PUBLIC_URL).")
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    details: dict[str, Any] = Field(default_factory=dict)
