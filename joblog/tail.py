"""`joblog tail`: print job events live, one readable line each; the worked example of a consumer.

A consumer that only watches needs no state on the server: an *ordered ephemeral* consumer
(nothing to clean up, redelivers nothing, restarts itself at the right place after a reconnect).
A consumer that must not miss events while it is down uses a durable consumer instead, see
docs/examples/failures_to_stdout.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from datetime import tzinfo
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import nats

from services.contracts.nats import connect as nats_connect
from nats.js.api import DeliverPolicy
from pydantic import ValidationError

from services.contracts import RunFailed, RunsDeleted, RunStarted, RunSucceeded, StepLogged, Subjects, parse_event
from services.contracts.events import RUN_NAME_PATTERN, TOKEN_PATTERN, RunCreated
from services.contracts.settings import CommonSettings
from services.contracts.subjects import close_nats


def filter_subject(subjects: Subjects, text: str | None) -> str:
    """The subject filter a FILTER argument means: nothing, a job, a run name, or a subject (wildcards allowed)."""
    if not text:
        return subjects.runs
    if re.fullmatch(RUN_NAME_PATTERN, text):
        return f"{subjects.prefix}.run.*.{text}.>"
    if re.fullmatch(TOKEN_PATTERN, text):
        return f"{subjects.prefix}.run.{text}.>"
    return text


def _one_line(text: str) -> str:
    return " ⏎ ".join(part.strip() for part in text.strip().splitlines()) if "\n" in text else text


def _stats(stats: dict[str, Any]) -> str:
    shown = [f"{key}={value}" for key, value in stats.items() if isinstance(value, (int, float, str, bool))]
    return f" ({', '.join(shown)})" if shown else ""


def format_event(event: Any, zone: tzinfo) -> str:
    """One readable line: time, job, run name, seq, kind and what happened."""
    at = event.occurred_at.astimezone(zone).strftime("%H:%M:%S.%f")[:-3]
    if isinstance(event, RunsDeleted):
        what = f"{len(event.names)} by name" if event.names else ""
        if event.created_before:
            what += (", and " if what else "") + f"all created before {event.created_before.astimezone(zone):%Y-%m-%d %H:%M:%S}"
        by = f" (by {event.requested_by})" if event.requested_by else ""
        return f"{at} runs deleted: {what or 'none'}{by}"
    head = f"{at} {event.job} {event.name} #{event.seq}"
    if isinstance(event, RunCreated):
        by = f", requested by {event.requested_by}" if event.requested_by else ""
        return f"{head} created on {event.worker_id} ({event.trigger}{by})"
    if isinstance(event, RunStarted):
        return f"{head} started on {event.host} pid {event.pid} (worker {event.worker_id})"
    if isinstance(event, StepLogged):
        return f"{head} step [{event.level}] {_one_line(event.message)}"
    if isinstance(event, RunSucceeded):
        return f"{head} succeeded in {event.duration_ms / 1000:.3f} s{_stats(event.stats)}"
    if isinstance(event, RunFailed):
        step = f" at step {event.step}" if event.step else ""
        return f"{head} failed{step}: {event.error_class}: {_one_line(event.error_message)}"
    return f"{head} {getattr(event, 'type', '?')}"


def describe(subject: str, payload: bytes, zone: tzinfo) -> str:
    """The line for one message; messages this version does not know are shown, not fatal."""
    try:
        if subject.endswith(".retention.deleted"):
            return format_event(RunsDeleted.model_validate_json(payload), zone)
        return format_event(parse_event(payload), zone)
    except ValidationError:
        # A newer producer may send types or versions this joblog does not know: consumers skip them.
        try:
            kind = json.loads(payload).get("type", "?")
        except (ValueError, AttributeError):
            kind = "not JSON"
        return f"?            {subject} ({kind}: not understood by this version; --json shows it raw)"


async def connect(settings: CommonSettings, name: str) -> Any:
    """A connection that follows NATS through restarts; None (and a message) if there is none at first."""

    async def quiet(error: Exception) -> None:
        """Reconnecting is normal for a tool that runs for hours; nats-py would print each attempt."""

    try:
        # max_reconnect_attempts=-1 also retries a refused first connect forever: bound that part.
        return await asyncio.wait_for(
            nats_connect(settings, name, error_cb=quiet),
            10,
        )
    except (OSError, asyncio.TimeoutError, nats.errors.Error):
        print(f"joblog: cannot reach NATS at {settings.nats_url}", file=sys.stderr)
        return None


async def tail(settings: CommonSettings, text: str | None, *, raw: bool = False, from_start: bool = False,
               count: int | None = None, out: TextIO, stopping: asyncio.Event | None = None) -> int:
    """Print matching events until stopping is set (or count were printed); returns an exit code."""
    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    nc = await connect(settings, "joblog-tail")
    if nc is None:
        return 1
    try:
        js = nc.jetstream(timeout=5)
        subject = filter_subject(settings.subjects, text)
        try:
            sub = await js.subscribe(
                subject, stream=settings.stream, ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
            )
        except nats.js.errors.NotFoundError:
            print(f"joblog tail: no stream {settings.stream} on {settings.nats_url} (a worker or recorder creates it)",
                  file=sys.stderr)
            return 1
        except nats.js.errors.APIError as error:
            print(f"joblog tail: cannot follow {subject!r} in stream {settings.stream}: {error.description}",
                  file=sys.stderr)
            return 2
        printed = 0
        while not stopping.is_set() and (count is None or printed < count):
            try:
                message = await sub.next_msg(timeout=0.5)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            line = message.data.decode("utf-8", "replace") if raw else describe(message.subject, message.data, settings.zone)
            print(line, file=out, flush=True)
            printed += 1
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        return 0
    finally:
        await close_nats(nc)


def _imported(data: dict[str, Any] | None) -> int | None:
    """Orders handled so far, from a sync's progress detail (None for other steps)."""
    if not data or "created" not in data:
        return None
    return sum(int(data.get(key, 0)) for key in ("created", "updated", "unchanged", "invalid"))


async def wait_for_run(settings: CommonSettings, job: str, send: Callable[[], Awaitable[Any]], out: TextIO) -> int:
    """Send a trigger (send returns the TriggerRequested), then show its run's progress until it ends:
    0 on success, 1 on error.

    The run is recognised by the trigger's command_id, which its run.created carries; we subscribe
    before sending so the run's first event cannot be missed.
    """
    from tqdm import tqdm

    from joblog.trigger import connect as connect_retrying, retrying

    nc = await connect_retrying(settings, "joblog-trigger-wait")
    bar = tqdm(desc=f"{job}: waiting for a worker", unit=" orders", file=sys.stderr, disable=None, leave=False)
    try:
        js = nc.jetstream(timeout=5)

        async def follow() -> Any:
            # Creating the ordered consumer goes through the stream's leader: retried through an election.
            return await js.subscribe(f"{settings.subjects.prefix}.run.{job}.>", stream=settings.stream,
                                      ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)

        sub = await retrying(f"follow the runs of {job} in stream {settings.stream}", follow)
        command = await send()
        run_id = None
        while True:
            try:
                message = await sub.next_msg(timeout=1)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            try:
                event = parse_event(message.data)
            except ValidationError:
                continue  # a type this version does not know
            if run_id is None and isinstance(event, RunCreated) and event.command_id == command.command_id:
                run_id = event.run_id
                bar.set_description_str(f"{job} {event.name}")
            if event.run_id != run_id:
                continue
            if isinstance(event, StepLogged):
                done = _imported(event.data)
                if done is not None:
                    bar.update(done - bar.n)
            elif isinstance(event, (RunSucceeded, RunFailed)):
                bar.close()
                print(format_event(event, settings.zone), file=out, flush=True)
                return 0 if isinstance(event, RunSucceeded) else 1
    finally:
        bar.close()
        await close_nats(nc)
