"""Errors of the log recorder."""


class RecorderError(Exception):
    """Root of the recorder's errors."""


class DeadLetter(RecorderError):
    """A message that can never be applied; stored with this reason and acknowledged."""


class RebuildFailed(RecorderError):
    """The projection could not be rebuilt; the live tables are left as they were."""
