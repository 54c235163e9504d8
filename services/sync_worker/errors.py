"""Errors of the sync worker."""


class WorkerError(Exception):
    """Root of the worker's errors."""


class UnknownJob(WorkerError):
    """A trigger named a job this worker does not have."""


class SourceError(WorkerError):
    """The order source could not be read."""


class RunCancelled(WorkerError):
    """An operator cancelled the run (raised by ctx.log, or the job's task is cancelled after the grace)."""
