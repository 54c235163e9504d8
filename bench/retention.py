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
import itertools
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import nats
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.common import Result, Servers, percentile, scale, scratch, server_of
from services.contracts import RunsDeleted, parse_event
from services.contracts.subjects import Subjects, ensure_streams, server_version
from services.log_recorder.main import consumer_config, run as run_recorder
from services.log_recorder.rebuild import rebuild
from services.log_recorder.settings import RecorderSettings
from services.log_recorder.snapshot import take
from tests.factories import run_events

COMMAND = ".venv/bin/python -m bench retention"


def runs(count: int, start: datetime, tag: int, first: int = 0, steps: int = 6, updates: int = 3) -> list[list[Any]]:
    """`count` runs a second apart from `start`, every tenth failed, named by tag and index."""
    return [run_events(name=f"{tag:02d}{i:012d}", start=start + timedelta(seconds=i), steps=steps, updates=updates,
                       fail=i % 10 == 0)
            for i in range(first, first + count)]


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


async def publish_bulk(nc: Any, js: Any, subjects: Subjects, count: int, start: datetime, tag: int) -> int:
    """Publish `count` small runs (created, started, a step, the end) fast, as plain NATS messages the
    stream stores (no ack per message, no msg id), kept at most ~50k messages ahead of what the
    stream has stored; returns the messages published, all of them stored when it returns."""
    before = (await js.stream_info(subjects.stream)).state.messages
    sent = 0
    for first in range(0, count, 5_000):
        for run in runs(min(5_000, count - first), start, tag, first, steps=1, updates=0):
            for event in run:
                await nc.publish(subjects.for_event(event), event.model_dump_json().encode())
                sent += 1
        await nc.flush()
        await until(lambda: stored_at_least(js, subjects, before + sent - 50_000), 300)
    await until(lambda: stored_at_least(js, subjects, before + sent), 300)
    return sent


async def stored_at_least(js: Any, subjects: Subjects, messages: int) -> bool:
    return bool((await js.stream_info(subjects.stream)).state.messages >= messages)


def on_disk(servers: Servers, stream: str) -> int | None:
    """Bytes of the stream's files on disk (the embedded server's store), or None where unknown."""
    if servers.nats_store is None:
        return None
    for folder in servers.nats_store.glob(f"**/streams/{stream}"):
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return None


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


async def lag_p99(js: Any, subjects: Subjects, pool: asyncpg.Pool, count: int, tag: int,
                  busy: Any = None, most: int = 5_000) -> tuple[float, int]:
    """Publish new runs one after another, `count` of them, or while `busy()` is true (at most
    `most`): (the p99 of publish -> row shows success in ms, how many were probed)."""
    lags: list[float] = []
    for i in itertools.count():
        if (busy is None and i >= count) or i >= most:
            break
        if busy is not None and i >= count and not await busy():
            break
        run = runs(1, datetime.now(timezone.utc), tag, first=i)[0]
        began = time.perf_counter()
        await publish(js, subjects, [run])
        name = run[0].name
        await until(lambda: pool.fetchval("SELECT status IN ('success', 'error') FROM job_logs WHERE name = $1", name), 120)
        lags.append((time.perf_counter() - began) * 1000)
    return percentile(lags, 99), len(lags)


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
            disk = on_disk(servers, stream)
            results.append(Result(
                "stream bytes per run", f"{per_run:,.0f} B", f"raw JSON {raw_per_run:,.0f} B", f"{per_run / raw_per_run:.2f}×",
                "recorded", None, COMMAND,
                [f"{count:,} runs of {state.messages // count} events; compression {compression}; "
                 f"{state.bytes / state.messages:,.0f} B per message as JetStream counts it (uncompressed)",
                 f"on disk: {disk / count:,.0f} B per run ({disk / state.bytes:.2f} of JetStream's count)" if disk
                 else "on disk: not known (not the embedded server)"], server=server_of(nc)))

            async with Recorder(settings):
                await until(lambda: drained(js, settings))
            raw_events, raw_seconds = await raw_replay(js, subjects)
            full = await rebuild(settings, progress=False, full=True)
            results.append(Result(
                "rebuild events/s", f"{full.events_per_second:,.0f} events/s",
                f"raw ordered replay {raw_events / raw_seconds:,.0f} events/s",
                f"{full.events_per_second / (raw_events / raw_seconds):.2f}×", "≥ 0.1×",
                full.events_per_second >= 0.1 * raw_events / raw_seconds, COMMAND,
                [f"{full.replayed:,} events; the ratio is what the database costs on top of reading the stream"], server=server_of(nc)))

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
                 f"{count + count // 10:,} runs"], server=server_of(nc)))

            async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool, Recorder(settings):
                probes = max(20, int(100 * scale()))
                quiet, _ = await lag_p99(js, subjects, pool, probes, 20)
                deletion = RunsDeleted(created_before=datetime.now(timezone.utc) - timedelta(hours=1), requested_by="bench")
                await js.publish(subjects.retention, deletion.model_dump_json().encode())
                busy, _ = await lag_p99(js, subjects, pool, probes, 21)
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
                 "after the probes"], server=server_of(nc)))
        finally:
            await nc.close()
    return results, {}


SIZE_COMMAND = ".venv/bin/python -m bench retention_size"


async def retention_size(servers: Servers) -> tuple[list[Result], dict[str, float]]:
    """The issue's sizes: rebuild of 1M runs with and without a snapshot, lag while half of them are deleted.

    Runs of 4 events (created, started, a step, the end; 4.1 on average with the failures) are
    published as plain messages so that 4M events take minutes; the projection is built by a full
    rebuild (which also gives its rate at this size), the recorder's consumer created at the end
    of the stream, as it would be after projecting it."""
    count = max(2_000, int(1_000_000 * scale()))
    results: list[Result] = []
    async with scratch(servers, "retsize") as (dsn, stream, prefix):
        subjects = Subjects(prefix=prefix, stream=stream)
        settings = RecorderSettings(nats_url=servers.nats_url, database_url=dsn, stream=stream, subject_prefix=prefix)
        nc = await nats.connect(servers.nats_url)
        js = nc.jetstream(timeout=60)
        server = server_of(nc)
        await ensure_streams(js, subjects)
        try:
            base = datetime.now(timezone.utc) - timedelta(days=30)
            began = time.perf_counter()
            published = await publish_bulk(nc, js, subjects, count, base, 30)
            publish_seconds = time.perf_counter() - began
            state = (await js.stream_info(stream)).state
            disk = on_disk(servers, stream)
            print(f"   published {published:,} events of {count:,} runs in {publish_seconds:.0f} s", flush=True)

            raw_events, raw_seconds = await raw_replay(js, subjects)
            full = await rebuild(settings, progress=False, full=True)
            raw_rate = raw_events / raw_seconds
            results.append(Result(
                f"rebuild events/s at {count:,} runs", f"{full.events_per_second:,.0f} events/s",
                f"raw ordered replay {raw_rate:,.0f} events/s", f"{full.events_per_second / raw_rate:.2f}×", "≥ 0.1×",
                full.events_per_second >= 0.1 * raw_rate, SIZE_COMMAND,
                [f"{full.replayed:,} events ({full.runs:,} runs, {full.details:,} details) in {full.replay_seconds:,.0f} s; "
                 f"the stream {state.bytes / 1e9:.2f} GB as JetStream counts it"
                 + (f", {disk / 1e9:.2f} GB on disk ({disk / count:,.0f} B per run)" if disk else "")],
                server=server))

            # The recorder's consumer, as if it had projected everything the rebuild did.
            await js.add_consumer(stream, consumer_config(
                settings, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=state.last_seq + 1))
            began = time.perf_counter()
            await take(settings)
            snapshot_seconds = time.perf_counter() - began
            tail_runs = count // 10
            async with Recorder(settings):  # the tail, applied live as usual
                tail_published = await publish_bulk(nc, js, subjects, tail_runs, datetime.now(timezone.utc) - timedelta(days=1), 31)
                await until(lambda: drained(js, settings), 1800)
            began = time.perf_counter()
            tail = await rebuild(settings, progress=False)
            tail_seconds = time.perf_counter() - began
            began = time.perf_counter()
            again = await rebuild(settings, progress=False, full=True)
            full_seconds = time.perf_counter() - began
            results.append(Result(
                f"rebuild of {count + tail_runs:,} runs from a snapshot + 10 % tail", f"{tail_seconds:,.0f} s",
                f"full replay {full_seconds:,.0f} s", f"{tail_seconds / full_seconds:.2f}×", "< 1×",
                tail_seconds < full_seconds, SIZE_COMMAND,
                [f"snapshot of {count:,} runs taken in {snapshot_seconds:,.0f} s at #{tail.snapshot_seq:,}; "
                 f"{tail.replayed:,} events replayed after it; the full replay {again.replayed:,} events "
                 f"at {again.events_per_second:,.0f} events/s"], server=server))

            async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool, Recorder(settings):
                quiet, quiet_probes = await lag_p99(js, subjects, pool, 200, 40)
                cutoff = base + timedelta(seconds=count // 2)
                deletion = RunsDeleted(created_before=cutoff, requested_by="bench")
                began = time.perf_counter()
                await js.publish(subjects.retention, deletion.model_dump_json().encode())

                deleted_at = purged_at = 0.0

                async def deleting() -> bool:
                    """True until the deletion's rows are gone and its runs purged from the stream."""
                    nonlocal deleted_at, purged_at
                    if not deleted_at and await pool.fetchval(
                            "SELECT finished_at IS NOT NULL FROM run_deletions WHERE event_id = $1", deletion.event_id):
                        deleted_at = time.perf_counter()
                    if deleted_at and not purged_at and not await pool.fetchval(
                            "SELECT EXISTS (SELECT 1 FROM deleted_runs WHERE purged_at IS NULL)"):
                        purged_at = time.perf_counter()
                    return not purged_at

                busy, busy_probes = await lag_p99(js, subjects, pool, 200, 41, busy=deleting, most=100_000)
                while await deleting():
                    await asyncio.sleep(0.2)
                deletion_seconds, purge_seconds = deleted_at - began, purged_at - began
                deleted = await pool.fetchval("SELECT deleted_runs FROM run_deletions WHERE event_id = $1", deletion.event_id)
            after = (await js.stream_info(stream)).state
            results.append(Result(
                f"lag p99 while {deleted:,} runs are deleted", f"{busy:,.0f} ms", f"without {quiet:,.0f} ms",
                f"{busy / quiet:.2f}×", "≤ 5×", busy <= 5 * quiet, SIZE_COMMAND,
                [f"rows deleted in {deletion_seconds:,.0f} s (chunks of {settings.delete_chunk:,}), the runs purged from "
                 f"the stream after {purge_seconds:,.0f} s ({state.messages + tail_published:,} -> {after.messages:,} messages); {busy_probes:,} runs "
                 f"probed one after another until both had finished, {quiet_probes} before it"], server=server))
        finally:
            await nc.close()
    return results, {}
