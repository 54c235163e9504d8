"""Retention (docs/retention.md): what a run costs in the stream, how fast a rebuild replays, the lag while runs are deleted.

    .venv/bin/python -m bench retention        # JOBLOG_BENCH_SCALE=0.2 for a quick run

Rows, each against a limit measured in the same run:
- stream bytes per run: JetStream's accounting of a run (its events, with subjects and headers;
  the logical size, which compression does not change) against the raw JSON of those events;
- rebuild events/s: `joblog rebuild` (full replay into fresh tables and swap) against a raw ordered
  replay of the same stream (fetch and validate every event, no database);
- rebuild with a snapshot: time of a rebuild from `joblog snapshot` + a 10 % tail against a full one;
- lag p99 during a deletion: time from publishing a new run to its row showing success, while a
  deletion of every older run proceeds, against the same without the deletion.
"""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import nats
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.common import Result, Servers, percentile, scale, scratch
from services.contracts import RunsDeleted, parse_event
from services.contracts.subjects import Subjects, ensure_streams, server_version
from services.log_recorder.main import run as run_recorder
from services.log_recorder.rebuild import rebuild
from services.log_recorder.settings import RecorderSettings
from services.log_recorder.snapshot import take
from tests.factories import run_events

COMMAND = ".venv/bin/python -m bench retention"


def runs(count: int, start: datetime, tag: int) -> list[list[Any]]:
    return [run_events(name=f"{tag:02d}{i:012d}", start=start + timedelta(seconds=i), steps=6, updates=3, fail=i % 10 == 0)
            for i in range(count)]


async def publish(js: Any, subjects: Subjects, batch: list[list[Any]]) -> int:
    """Publish runs as a relay does (msg ids); returns the raw JSON bytes published."""
    raw = 0
    events = [e for run in batch for e in run]
    for start in range(0, len(events), 500):
        chunk = events[start:start + 500]
        payloads = [e.model_dump_json().encode() for e in chunk]
        raw += sum(len(p) for p in payloads)
        await asyncio.gather(*(js.publish(subjects.for_event(e), p, headers={"Nats-Msg-Id": str(e.event_id)})
                               for e, p in zip(chunk, payloads)))
    return raw


async def drained(js: Any, settings: RecorderSettings) -> bool:
    try:
        info = await js.consumer_info(settings.stream, settings.recorder_consumer)
    except Exception:
        return False
    return info.num_pending == 0 and info.num_ack_pending == 0


async def until(check: Any, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        await asyncio.sleep(0.05)


async def raw_replay(js: Any, subjects: Subjects) -> tuple[int, float]:
    """Every message of the stream, in order, validated: (events, seconds)."""
    began = time.perf_counter()
    sub = await js.pull_subscribe(f"{subjects.prefix}.>", stream=subjects.stream, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=60.0, mem_storage=True))
    count = 0
    try:
        while True:
            try:
                messages = await sub.fetch(2000, timeout=1)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                if (await sub.consumer_info()).num_pending == 0:
                    break
                continue
            for message in messages:
                if ".run." in message.subject:
                    parse_event(message.data)
                count += 1
    finally:
        await sub.unsubscribe()
    return count, time.perf_counter() - began


class Recorder:
    """The recorder in this process (as the tests run it)."""

    def __init__(self, settings: RecorderSettings) -> None:
        self.settings, self.stopping, self.task = settings, asyncio.Event(), None

    async def __aenter__(self) -> "Recorder":
        ready = asyncio.Event()
        self.task = asyncio.create_task(run_recorder(self.settings, ready=ready, stopping=self.stopping))  # type: ignore[assignment]
        await ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stopping.set()
        await self.task  # type: ignore[misc]


async def lag_p99(js: Any, subjects: Subjects, pool: asyncpg.Pool, count: int, tag: int) -> float:
    """Publish `count` new runs one after another; the p99 of publish -> row shows success, in ms."""
    lags = []
    for run in runs(count, datetime.now(timezone.utc), tag):
        began = time.perf_counter()
        await publish(js, subjects, [run])
        name = run[0].name
        await until(lambda: pool.fetchval("SELECT status IN ('success', 'error') FROM job_logs WHERE name = $1", name), 120)
        lags.append((time.perf_counter() - began) * 1000)
    return percentile(lags, 99)


async def retention(servers: Servers) -> tuple[list[Result], dict[str, float]]:
    count = max(200, int(5000 * scale()))
    results: list[Result] = []
    async with scratch(servers, "ret") as (dsn, stream, prefix):
        subjects = Subjects(prefix=prefix, stream=stream)
        settings = RecorderSettings(nats_url=servers.nats_url, database_url=dsn, stream=stream, subject_prefix=prefix)
        nc = await nats.connect(servers.nats_url)
        js = nc.jetstream(timeout=30)
        await ensure_streams(js, subjects)
        try:
            old = runs(count, datetime.now(timezone.utc) - timedelta(days=30), 10)
            raw = await publish(js, subjects, old)
            state = (await js.stream_info(stream)).state
            compression = "s2" if server_version(js) >= (2, 10) else "none (nats-server < 2.10)"
            per_run, raw_per_run = state.bytes / count, raw / count
            results.append(Result(
                "stream bytes per run", f"{per_run:,.0f} B", f"raw JSON {raw_per_run:,.0f} B", f"{per_run / raw_per_run:.2f}×",
                "recorded", None, COMMAND,
                [f"{count:,} runs of {state.messages // count} events; compression {compression}; "
                 f"{state.bytes / state.messages:,.0f} B stored per message"]))

            async with Recorder(settings):
                await until(lambda: drained(js, settings))
            raw_events, raw_seconds = await raw_replay(js, subjects)
            full = await rebuild(settings, progress=False, full=True)
            results.append(Result(
                "rebuild events/s", f"{full.events_per_second:,.0f} events/s",
                f"raw ordered replay {raw_events / raw_seconds:,.0f} events/s",
                f"{full.events_per_second / (raw_events / raw_seconds):.2f}×", "≥ 0.1×",
                full.events_per_second >= 0.1 * raw_events / raw_seconds, COMMAND,
                [f"{full.replayed:,} events; the ratio is what the database costs on top of reading the stream"]))

            await take(settings)
            async with Recorder(settings):  # the tail, applied live as usual
                await publish(js, subjects, runs(count // 10, datetime.now(timezone.utc) - timedelta(days=1), 11))
                await until(lambda: drained(js, settings))
            began = time.perf_counter()
            tail = await rebuild(settings, progress=False)
            tail_seconds = time.perf_counter() - began
            began = time.perf_counter()
            await rebuild(settings, progress=False, full=True)
            full_seconds = time.perf_counter() - began
            results.append(Result(
                "rebuild from a snapshot + 10 % tail", f"{tail_seconds:.1f} s", f"full replay {full_seconds:.1f} s",
                f"{tail_seconds / full_seconds:.2f}×", "< 1×", tail_seconds < full_seconds, COMMAND,
                [f"snapshot at #{tail.snapshot_seq}, {tail.replayed:,} events replayed after it; "
                 f"{count + count // 10:,} runs"]))

            async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool, Recorder(settings):
                probes = max(20, int(100 * scale()))
                quiet = await lag_p99(js, subjects, pool, probes, 20)
                deletion = RunsDeleted(created_before=datetime.now(timezone.utc) - timedelta(hours=1), requested_by="bench")
                await js.publish(subjects.retention, deletion.model_dump_json().encode())
                busy = await lag_p99(js, subjects, pool, probes, 21)
                finished = await pool.fetchval("SELECT finished_at IS NOT NULL FROM run_deletions WHERE event_id = $1",
                                               deletion.event_id)
                await until(lambda: pool.fetchval(
                    "SELECT count(*) = 0 FROM run_deletions WHERE finished_at IS NULL"))
                deleted = await pool.fetchval("SELECT deleted_runs FROM run_deletions WHERE event_id = $1", deletion.event_id)
            results.append(Result(
                "lag p99 during a deletion", f"{busy:,.0f} ms", f"without {quiet:,.0f} ms", f"{busy / quiet:.2f}×",
                "≤ 5×", busy <= 5 * quiet, COMMAND,
                [f"{deleted:,} runs deleted (chunks of {settings.delete_chunk:,}, purged from the stream); "
                 f"{probes} runs probed one after another; deletion {'had finished' if finished else 'still running'} "
                 "after the probes"]))
        finally:
            await nc.close()
    return results, {}
