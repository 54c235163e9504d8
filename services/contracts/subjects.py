"""Subject names and stream definitions: hierarchical, so wildcards select what a consumer needs.

    {prefix}.run.{job}.{name}.{kind}     run events; kind is created|started|step|succeeded|failed
    {prefix}.retention.deleted           runs deleted by an administrator (on the run stream)
    {prefix}.action.{action}             the audit trail: who did what (on the run stream)
    {prefix}.worker.{worker_id}.heartbeat
    {prefix}.worker.{worker_id}.stopped  a worker process stopped cleanly
    {prefix}.cmd.trigger.{job}           commands to the workers (a work-queue stream)
    {prefix}.schedule.{job}              a schedule paused or resumed (on the run stream; the last one is its state)
    {prefix}.cmd.cancel.{worker_id}      cancel a run: a core NATS request to the worker holding it
    {prefix}.alert.{kind}.{job}          alerts of the notifier (a stream of its own; job "_" for none)
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StoreCompression, StreamConfig

from services.contracts.events import RunEvent

DUPLICATE_WINDOW_SECONDS = 120.0


@dataclass(frozen=True)
class Subjects:
    """Where events and commands go, for one deployment (prefix) and stream name."""

    prefix: str = "joblog"
    stream: str = "JOBS"

    @property
    def runs(self) -> str:
        return f"{self.prefix}.run.>"

    @property
    def retention(self) -> str:
        return f"{self.prefix}.retention.deleted"

    @property
    def actions(self) -> str:
        return f"{self.prefix}.action.*"

    @property
    def schedules(self) -> str:
        return f"{self.prefix}.schedule.*"

    def for_schedule(self, job: str) -> str:
        return f"{self.prefix}.schedule.{job}"

    def for_cancel(self, worker_id: str) -> str:
        return f"{self.prefix}.cmd.cancel.{worker_id}"

    @property
    def heartbeats(self) -> str:
        return f"{self.prefix}.worker.*.heartbeat"

    @property
    def worker_stops(self) -> str:
        return f"{self.prefix}.worker.*.stopped"

    @property
    def worker_events(self) -> str:
        """Heartbeats and stops: what follows a worker's liveness."""
        return f"{self.prefix}.worker.*.*"

    @property
    def triggers(self) -> str:
        return f"{self.prefix}.cmd.trigger.*"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}.alert.>"

    @property
    def alert_stream(self) -> str:
        return f"{self.stream}_ALERTS"

    def for_alert(self, kind: str, job: str | None) -> str:
        return f"{self.prefix}.alert.{kind}.{job or '_'}"

    @property
    def heartbeat_stream(self) -> str:
        return f"{self.stream}_HEARTBEATS"

    @property
    def command_stream(self) -> str:
        return f"{self.stream}_COMMANDS"

    def for_event(self, event: RunEvent) -> str:
        kind = event.type.split(".", 1)[1]
        return f"{self.prefix}.run.{event.job}.{event.name}.{kind}"

    def for_heartbeat(self, worker_id: str) -> str:
        return f"{self.prefix}.worker.{worker_id}.heartbeat"

    def for_worker_stop(self, worker_id: str) -> str:
        return f"{self.prefix}.worker.{worker_id}.stopped"

    def for_action(self, action: str) -> str:
        return f"{self.prefix}.action.{action}"

    def for_trigger(self, job: str) -> str:
        return f"{self.prefix}.cmd.trigger.{job}"

    def stream_configs(self, replicas: int = 1) -> list[StreamConfig]:
        """The streams: run events (kept), heartbeats (short-lived), commands (work queue), alerts (kept 30 days).

        Alerts have a stream of their own: the recorder consumes all of the run stream."""
        return [
            StreamConfig(
                name=self.stream,
                subjects=[self.runs, self.retention, self.actions, self.schedules],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_SECONDS,
                num_replicas=replicas,
                max_msg_size=1024 * 1024,
            ),
            StreamConfig(
                name=self.heartbeat_stream,
                subjects=[self.heartbeats, self.worker_stops],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=3600.0,
                max_msgs_per_subject=100,
                num_replicas=replicas,
            ),
            StreamConfig(
                name=self.command_stream,
                subjects=[self.triggers],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_SECONDS,
                discard=DiscardPolicy.OLD,
                max_age=24 * 3600.0,
                num_replicas=replicas,
            ),
            StreamConfig(
                name=self.alert_stream,
                subjects=[self.alerts],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_SECONDS,
                max_age=30 * 24 * 3600.0,
                num_replicas=replicas,
            ),
        ]


# nats-server compresses a file stream's blocks (s2) from 2.10 on; older servers refuse the field.
COMPRESSION_SINCE = (2, 10)


def server_version(js) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(major, minor) of the server this JetStream context's connection is on; (0, 0) if unknown."""
    try:
        version = js._nc.connected_server_version
        return int(version.major), int(version.minor)
    except Exception:
        return 0, 0


def compressed(config: StreamConfig, version: tuple[int, int]) -> StreamConfig:
    """A file stream's config with s2 compression, when the server supports it (else unchanged)."""
    if version >= COMPRESSION_SINCE and config.storage == StorageType.FILE and config.compression is None:
        return replace(config, compression=StoreCompression.S2)
    return config


class StreamsUnavailable(Exception):
    """A stream joblog needs is missing and this connection may not create it (or NATS refused)."""


async def ensure_streams(js, subjects: Subjects, replicas: int = 1) -> None:  # type: ignore[no-untyped-def]
    """Create the streams that are missing; on existing ones, add only subjects joblog needs and lacks.

    Safe from many processes at once. Never touches an existing stream's limits (max_age,
    max_bytes, max_msgs, replicas, compression ...): those are the operator's. A stream created
    here is compressed (s2) when the server is 2.10 or newer. A service whose NATS user may only read
    streams (deploy/nats/nats.conf) works once `joblog migrate` (an admin) has created them.
    """
    import nats.errors
    import nats.js.errors

    version = server_version(js)
    for config in subjects.stream_configs(replicas):
        config = compressed(config, version)
        try:
            info = await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            info = None
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as error:
            raise StreamsUnavailable(f"cannot look up stream {config.name}: {type(error).__name__} "
                                     "(is JetStream enabled, and may this NATS user read streams?)") from None
        if info is None:
            try:
                await js.add_stream(config)
                continue
            except nats.js.errors.BadRequestError:
                info = await js.stream_info(config.name)  # created meanwhile by another process
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as error:
                raise StreamsUnavailable(
                    f"stream {config.name} is missing and this NATS user may not create it ({type(error).__name__}); "
                    "run `joblog migrate` with an admin NATS user first") from None
        missing = [subject for subject in config.subjects or [] if subject not in (info.config.subjects or [])]
        if missing:
            # An older release's stream: add what this release publishes, keep everything else as it is.
            await js.update_stream(replace(info.config, subjects=[*(info.config.subjects or []), *missing]))


async def ensure_streams_when_ready(js, subjects: Subjects, replicas: int = 1, wait: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """ensure_streams, retried while JetStream is not ready yet (a cluster electing its leader, a restart)."""
    import asyncio

    import nats.errors
    import nats.js.errors

    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            await ensure_streams(js, subjects, replicas)
            return
        except (StreamsUnavailable, nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as error:
            if asyncio.get_running_loop().time() > deadline:
                raise StreamsUnavailable(f"JetStream not ready after {wait:g} s: {error}") from None
            await asyncio.sleep(1)


async def publish_trigger(js, subjects: Subjects, command) -> None:  # type: ignore[no-untyped-def]
    """Send a TriggerRequested to the workers' work queue; its command_id de-duplicates."""
    await js.publish(
        subjects.for_trigger(command.job), command.model_dump_json().encode(),
        headers={"Nats-Msg-Id": command.command_id},
    )


async def publish_action(js, subjects: Subjects, action) -> None:  # type: ignore[no-untyped-def]
    """Put one ActionTaken (the audit trail) on the run stream; its event_id de-duplicates."""
    await js.publish(
        subjects.for_action(action.action), action.model_dump_json().encode(),
        headers={"Nats-Msg-Id": str(action.event_id)},
    )


async def publish_schedule_event(js, subjects: Subjects, event) -> None:  # type: ignore[no-untyped-def]
    """Put a SchedulePaused / ScheduleResumed on the run stream (the last one per job is the schedule's state)."""
    await js.publish(
        subjects.for_schedule(event.job), event.model_dump_json().encode(),
        headers={"Nats-Msg-Id": str(event.event_id)},
    )


async def schedule_paused(js, subjects: Subjects, job: str):  # type: ignore[no-untyped-def]
    """The job's schedule state from the stream: the SchedulePaused in force, or None when it runs.

    Raises what nats-py raises when JetStream cannot answer (the caller keeps what it knew)."""
    import nats.js.errors

    from services.contracts.events import SchedulePaused, parse_schedule_event

    try:
        message = await js.get_last_msg(subjects.stream, subjects.for_schedule(job))
    except nats.js.errors.NotFoundError:
        return None
    event = parse_schedule_event(message.data or b"")
    return event if isinstance(event, SchedulePaused) else None


async def close_nats(nc, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Flush what we published, then close; never hang a shutdown on a NATS server that is gone.

    Everything we consumed is acknowledged by then, so there is nothing to drain."""
    import contextlib

    with contextlib.suppress(Exception):
        await nc.flush(timeout=timeout)
    with contextlib.suppress(Exception):
        await nc.close()
