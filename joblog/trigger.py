"""What the CLI sends to NATS, retried through a JetStream leader change.

In a cluster that just lost a node, JetStream answers nothing (no responders, a timeout) for a
few seconds until the streams and consumers have new leaders. The worker and recorder ride that
out with their own loops; a command line tool must too, for a bounded time, and then end with one
line saying what it could not do (never a traceback).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors

from services.contracts import TriggerRequested
from services.contracts.nats import connect as nats_connect
from services.contracts.events import TriggerKind
from services.contracts.settings import CommonSettings
from services.contracts.subjects import StreamsUnavailable, close_nats, ensure_streams, publish_trigger

T = TypeVar("T")

# How long a CLI command keeps trying before it gives up (a leader election takes a few seconds).
RETRY_FOR = 60.0


class GaveUp(Exception):
    """A NATS operation still failed after RETRY_FOR seconds; str() is the one line to print."""


def retryable(error: BaseException) -> bool:
    """Errors that a leader change, a restarting server or a slow cluster cause; not bad requests."""
    if isinstance(error, nats.js.errors.APIError):
        # 503: no leader / JetStream temporarily unavailable; 408/504: timeouts inside the cluster.
        # 10008 "JetStream system temporarily unavailable", 10074/10075 no quorum.
        return (error.code or 0) in (408, 503, 504) or (error.err_code or 0) in (10008, 10074, 10075)
    return isinstance(error, (StreamsUnavailable, nats.errors.NoRespondersError, nats.errors.TimeoutError, nats.errors.ConnectionClosedError,
                              nats.errors.NoServersError, nats.errors.StaleConnectionError, asyncio.TimeoutError,
                              nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError, OSError))


async def retrying(what: str, attempt: Callable[[], Awaitable[T]], retry_for: float = RETRY_FOR) -> T:
    """attempt() until it succeeds, a non-retryable error, or retry_for seconds (then GaveUp)."""
    deadline = time.monotonic() + retry_for
    pause = 0.25
    while True:
        try:
            return await attempt()
        except Exception as error:
            if not retryable(error):
                raise
            if time.monotonic() + pause > deadline:
                raise GaveUp(f"could not {what} within {retry_for:.0f} s: {describe(error)}") from error
        await asyncio.sleep(pause)
        pause = min(pause * 2, 2.0)


def describe(error: BaseException) -> str:
    if isinstance(error, nats.js.errors.APIError) and error.description:
        return f"{type(error).__name__}: {error.description}"
    return f"{type(error).__name__}{': ' + str(error) if str(error) else ''}"


async def connect(settings: CommonSettings, name: str) -> Any:
    """A connection that follows the cluster (reconnects to the other nodes); GaveUp if none answers."""

    async def quiet(error: Exception) -> None:
        """Reported once, by GaveUp; nats-py would print every attempt."""

    async def attempt() -> Any:
        # A refused first connect would otherwise be retried forever by nats-py: bound each try.
        return await asyncio.wait_for(nats_connect(settings, name, error_cb=quiet), 15)

    return await retrying(f"reach NATS at {settings.nats_url}", attempt)


async def send_trigger(settings: CommonSettings, job: str, trigger: TriggerKind = "cli",
                       requested_by: str | None = None) -> TriggerRequested:
    """Publish one trigger command; retried (same command id, so JetStream keeps one) through a leader change."""
    command = TriggerRequested(job=job, trigger=trigger, requested_by=requested_by)
    nc = await connect(settings, "joblog-trigger")
    try:
        js = nc.jetstream(timeout=5)

        async def publish() -> None:
            await ensure_streams(js, settings.subjects, settings.stream_replicas)
            await publish_trigger(js, settings.subjects, command)

        await retrying(f"publish the trigger of {job} to NATS at {settings.nats_url}", publish)
    finally:
        await close_nats(nc)
    return command
