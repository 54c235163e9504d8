"""The public event contract of joblog: event models, subjects and stream settings.

Other programs subscribe to these events; change them only as docs/events.md allows.
This package imports nothing from the services.
"""
from services.contracts.events import (
    SCHEMA_VERSION,
    ActionTaken,
    AlertRaised,
    EventAdapter,
    JobDescription,
    JobEvent,
    RunCreated,
    RunEvent,
    RunFailed,
    RunStarted,
    RunsDeleted,
    RunSucceeded,
    StepLevel,
    StepLogged,
    TriggerRequested,
    WorkerHeartbeat,
    WorkerStopped,
    parse_event,
    parse_worker_event,
)
from services.contracts.subjects import Subjects

__all__ = [
    "SCHEMA_VERSION",
    "ActionTaken",
    "AlertRaised",
    "EventAdapter",
    "JobDescription",
    "JobEvent",
    "RunCreated",
    "RunEvent",
    "RunFailed",
    "RunStarted",
    "RunsDeleted",
    "RunSucceeded",
    "StepLevel",
    "StepLogged",
    "Subjects",
    "TriggerRequested",
    "WorkerHeartbeat",
    "WorkerStopped",
    "parse_event",
    "parse_worker_event",
]
