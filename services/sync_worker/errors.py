"""Errors of the sync worker."""


class WorkerError(Exception):
    """Root of the worker's errors."""


class UnknownJob(WorkerError):
    """A trigger named a job this worker does not have."""


class SourceError(WorkerError):
    """The order source could not be read."""
