"""Prototype, not service code: what pipelining and batch size do to the recorder's throughput.

Runs the real Recorder in-process on the same published events, once as it is, and once with a
consume loop that keeps the next batch fetching and reducing while the previous one commits
(up to DEPTH transactions in flight), each variant on an emptied projection and a fresh consumer.

    .venv/bin/python -m bench.prototype_recorder [events]
    .venv/bin/python -m bench.prototype_recorder [events] --processes   # 1 vs 2 `joblog recorder` processes
    .venv/bin/python -m bench.prototype_recorder [events] --acks        # the raw limit: ack each vs one AckAll per batch
"""
from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import asyncpg
import nats

from bench.common import Servers, scratch
from bench.recorder import applied, build_events, publish_all
from services.contracts import Subjects
from services.contracts.subjects import ensure_streams
from services.log_recorder.main import Recorder
from services.log_recorder.settings import RecorderSettings


class PipelinedRecorder(Recorder):
    """Recorder.consume with the apply of batch n overlapping the fetch and reduce of batch n+1."""

    depth = 2

    async def consume(self, stopping: asyncio.Event, sub: Any = None) -> None:
        sub = sub or await self.subscribe()
        inflight: set[asyncio.Task[None]] = set()
        while not stopping.is_set():
            try:
                messages = await sub.fetch(self.settings.recorder_batch_size, timeout=1)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            inflight.add(asyncio.create_task(self.apply(messages, stopping)))
            if len(inflight) >= self.depth:
                _, inflight = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*inflight)


async def measure(cls: type[Recorder], settings: RecorderSettings, total: int) -> float:
    async with asyncpg.create_pool(settings.database_url, min_size=1, max_size=4) as pool:
        nc = await nats.connect(settings.nats_servers)
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("TRUNCATE job_logs, job_log_details, projection_state CASCADE")
            recorder = cls(settings, pool, nc)
            stopping = asyncio.Event()
            task = asyncio.create_task(recorder.consume(stopping))
            while await applied(conn) == 0:
                await asyncio.sleep(0.01)
            first, began = await applied(conn), time.perf_counter()
            while await applied(conn) < total:
                await asyncio.sleep(0.02)
            rate = (total - first) / (time.perf_counter() - began)
            stopping.set()
            await task
            return rate
        finally:
            await conn.close()
            await nc.close()


async def main(total: int) -> None:
    with Servers() as servers:
        async with scratch(servers, "proto") as (dsn, stream, prefix):
            subjects = Subjects(prefix=prefix, stream=stream)
            messages, _, _ = build_events(subjects, total)
            nc = await nats.connect(servers.nats_url)
            js = nc.jetstream(timeout=30)
            await ensure_streams(js, subjects)
            await publish_all(js, messages)
            await nc.close()
            variants = [(Recorder, 500), (PipelinedRecorder, 500), (Recorder, 2000), (PipelinedRecorder, 2000)]
            for n, (cls, batch) in enumerate(variants):
                settings = RecorderSettings(database_url=dsn, nats_url=servers.nats_url, stream=stream, subject_prefix=prefix,
                                            recorder_consumer=f"proto{n}", recorder_batch_size=batch, log_level="WARNING")
                rate = await measure(cls, settings, len(messages))
                print(f"{cls.__name__:18} batch {batch:5}: {rate:8,.0f} events/s", flush=True)


async def processes(total: int) -> None:
    """The same events projected by one, then two `python -m joblog recorder` processes sharing the durable consumer."""
    import contextlib

    from bench.common import service_env, service_process, wait_until

    with Servers() as servers:
        async with scratch(servers, "procs") as (dsn, stream, prefix):
            subjects = Subjects(prefix=prefix, stream=stream)
            messages, _, _ = build_events(subjects, total)
            nc = await nats.connect(servers.nats_url)
            js = nc.jetstream(timeout=30)
            await ensure_streams(js, subjects)
            await publish_all(js, messages)
            await nc.close()
            conn = await asyncpg.connect(dsn)
            try:
                for count in (1, 2):
                    await conn.execute("TRUNCATE job_logs, job_log_details, projection_state CASCADE")
                    env = service_env(servers.nats_url, dsn, stream, prefix, JOBLOG_RECORDER_CONSUMER=f"procs{count}")
                    with contextlib.ExitStack() as stack:
                        for _ in range(count):
                            stack.enter_context(service_process("recorder", env))
                        await wait_until(lambda: _any(conn), timeout=60, interval=0.01)
                        first, began = await applied(conn), time.perf_counter()
                        await wait_until(lambda: _all(conn, len(messages)), timeout=600, interval=0.02)
                        rate = (await applied(conn) - first) / (time.perf_counter() - began)
                    print(f"{count} recorder process(es): {rate:8,.0f} events/s", flush=True)
            finally:
                await conn.close()


async def acks(total: int) -> None:
    """The raw pull consumer's rate when it acks every message (as the recorder does) and with one ack per batch."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    with Servers() as servers:
        async with scratch(servers, "acks") as (_, stream, prefix):
            subjects = Subjects(prefix=prefix, stream=stream)
            messages, _, _ = build_events(subjects, total)
            nc = await nats.connect(servers.nats_url)
            try:
                js = nc.jetstream(timeout=30)
                await ensure_streams(js, subjects)
                await publish_all(js, messages)
                for policy in (AckPolicy.EXPLICIT, AckPolicy.ALL):
                    sub = await js.pull_subscribe(subjects.runs, durable=f"acks_{policy.value}", stream=stream, config=ConsumerConfig(
                        ack_policy=policy, deliver_policy=DeliverPolicy.ALL, max_ack_pending=50_000))
                    seen, began = 0, time.perf_counter()
                    while seen < len(messages):
                        batch = await sub.fetch(500, timeout=5)
                        if policy == AckPolicy.ALL:
                            await batch[-1].ack()
                        else:
                            for message in batch:
                                await message.ack()
                        seen += len(batch)
                    print(f"raw pull, ack {policy.value:8}: {seen / (time.perf_counter() - began):8,.0f} events/s", flush=True)
            finally:
                await nc.close()


async def _any(conn: asyncpg.Connection) -> bool:
    return await applied(conn) > 0


async def _all(conn: asyncpg.Connection, total: int) -> bool:
    return await applied(conn) >= total


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 100_000
    asyncio.run(processes(size) if "--processes" in sys.argv else acks(size) if "--acks" in sys.argv else main(size))
