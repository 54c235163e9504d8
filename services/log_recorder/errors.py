"""Errors of the log recorder, and which of Postgres's errors are worth retrying."""
from __future__ import annotations

import asyncio

import asyncpg

# Errors after which the same batch is tried again (the database is away or busy), never dead-lettered.
TRANSIENT = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
             asyncpg.OperatorInterventionError, asyncpg.TransactionRollbackError, asyncpg.InsufficientResourcesError,
             asyncpg.LockNotAvailableError, asyncpg.InvalidCachedStatementError, asyncpg.ReadOnlySQLTransactionError,
             asyncpg.InternalClientError)
# A value the contract allows but Postgres refuses (a seq beyond int4, JSON's Infinity). The client-side
# DataError is an InterfaceError, so it is named here and checked before TRANSIENT.
CLIENT_REFUSED = (asyncpg.DataError, asyncpg.exceptions._base.DataError)


def is_refused(error: BaseException) -> bool:
    """Postgres refuses this for good (an integrity violation, a bad value): retrying never helps."""
    if isinstance(error, CLIENT_REFUSED):
        return True
    return isinstance(error, asyncpg.PostgresError) and not isinstance(error, TRANSIENT)



class RecorderError(Exception):
    """Root of the recorder's errors."""


class DeadLetter(RecorderError):
    """A message that can never be applied; stored with this reason and acknowledged."""


class RebuildFailed(RecorderError):
    """The projection could not be rebuilt; the live tables are left as they were."""
