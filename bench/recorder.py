"""Recorder benchmarks: throughput against a raw pull-and-ack consumer, and projection lag at 2,000 events/s.

    .venv/bin/python -m bench recorder_throughput recorder_lag
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import nats
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.common import (
    PYTHON,
    ROOT,
    create_database,
    delete_streams,
    drop_database,
    Result,
    Servers,
    median,
    peak_rss_mb,
    percentile,
    scale,
    scratch,
    server_of,
    service_env,
    service_process,
    wait_until,
)
from services.contracts import RunCreated, RunStarted, RunSucceeded, StepLogged, Subjects, parse_event
from services.log_recorder import db
from services.log_recorder.projection import Batch
from services.contracts.subjects import ensure_streams
from services.log_recorder.settings import RecorderSettings

STEPS_PER_RUN = 16  # plus created, started, succeeded: 19 events a run
PUBLISH_WINDOW = 2000  # publish acks outstanding at once


def run_events(subjects: Subjects, index: int, start: datetime, steps: int = STEPS_PER_RUN) -> Iterator[tuple[str, str, bytes]]:
    """One realistic sync run as (subject, event_id, JSON): created, started, 16 steps (some updating a
    progress detail in place), succeeded. With steps=0: created, started, succeeded (the peer row's
    equivalent of Celery's task-received, task-started, task-succeeded)."""
    run_id = uuid.uuid4()
    name = (start + timedelta(seconds=index)).strftime("%Y%m%d%H%M%S")
    common = {"run_id": run_id, "name": name, "job": "sync_open_orders"}
    at = start + timedelta(seconds=index)
    events: list = [
        RunCreated(**common, seq=1, occurred_at=at, trigger="schedule", worker_id="bench-worker"),
        RunStarted(**common, seq=2, occurred_at=at, worker_id="bench-worker", host="bench-host", pid=4242),
    ]
    for step in range(steps):
        key = "progress" if 4 <= step < 12 else f"step-{step}"  # progress updates one detail in place
        events.append(StepLogged(**common, seq=3 + step, occurred_at=at, key=key,
                                 message=f"Upserted {step * 2500} of 40000 orders ({step * 6}%)",
                                 data={"done": step * 2500, "total": 40000} if key == "progress" else None))
    events.append(RunSucceeded(**common, seq=3 + steps, occurred_at=at,
                               stats={"fetched": 40000, "inserted": 12, "updated": 340, "closed": 3}, duration_ms=900))
    for event in events:
        yield subjects.for_event(event), str(event.event_id), event.model_dump_json().encode()


def build_events(subjects: Subjects, total: int, steps: int = STEPS_PER_RUN) -> tuple[list[tuple[str, str, bytes]], int, int]:
    """About total events as whole runs: (messages, runs, distinct details)."""
    runs = max(1, total // (steps + 3))
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    messages = [m for i in range(runs) for m in run_events(subjects, i, start, steps)]
    details = runs * len({"progress" if 4 <= s < 12 else f"step-{s}" for s in range(steps)})
    return messages, runs, details


async def publish_all(js, messages: list[tuple[str, str, bytes]]) -> float:  # type: ignore[no-untyped-def]
    """Publish with a bounded window of outstanding acks; returns events/s."""
    started = time.perf_counter()
    for first in range(0, len(messages), PUBLISH_WINDOW):
        futures = [await js.publish_async(s, p, headers={"Nats-Msg-Id": i}) for s, i, p in messages[first:first + PUBLISH_WINDOW]]
        await asyncio.gather(*futures)
    return len(messages) / (time.perf_counter() - started)


async def bind_raw(js, stream: str, durable: str):  # type: ignore[no-untyped-def]
    """A pull subscription on the durable `durable` over the whole stream, acked one by one, as the
    recorder's consumer is; created if missing (processes sharing it may race to create it)."""
    with contextlib.suppress(nats.js.errors.BadRequestError):  # another process created it first
        await js.add_consumer(stream, ConsumerConfig(
            name=durable, durable_name=durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=50_000, max_deliver=-1))
    return await js.pull_subscribe_bind(durable, stream=stream)


async def raw_pull_and_ack(js, stream: str, total: int, batch: int, ahead: bool = False, tag: str = "") -> float:  # type: ignore[no-untyped-def]
    """The limit for a consumer: fetch batches and ack every message, doing nothing else. Events/s.

    The consumer is configured as the recorder's is (services/log_recorder/main.py consumer_config):
    the whole stream, no subject filter. With ahead, the next fetch is already under way while a
    batch is acked (as a pipelined consumer would)."""
    sub = await bind_raw(js, stream, f"bench_raw_{'ahead' if ahead else 'plain'}{tag}")

    async def fetch() -> list:  # type: ignore[type-arg]
        try:
            return await sub.fetch(batch, timeout=1)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            return []

    seen = 0
    started = time.perf_counter()
    pending = asyncio.create_task(fetch()) if ahead else None
    while seen < total:
        if pending is not None:
            messages = await pending
            pending = asyncio.create_task(fetch()) if seen + len(messages) < total else None
        else:
            messages = await fetch()
        for message in messages:
            await message.ack()
        seen += len(messages)
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return seen / elapsed


async def raw_share(js, stream: str, batch: int, tag: str) -> tuple[int, float, float]:  # type: ignore[no-untyped-def]
    """One of several raw consumers sharing one durable (as recorders share theirs): fetch and ack until the
    consumer has nothing left; (messages acked, time.time() of the first fetch, of the last ack)."""
    durable = f"bench_raw_share{tag}"
    sub = await bind_raw(js, stream, durable)
    seen, first, last = 0, time.time(), 0.0
    while True:
        try:
            messages = await sub.fetch(batch, timeout=0.5)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            info = await js.consumer_info(stream, durable)
            if not info.num_pending and not info.num_ack_pending:
                break
            continue
        for message in messages:
            await message.ack()
        seen, last = seen + len(messages), time.time()
    await sub.unsubscribe()
    return seen, first, last


async def raw_shared_rate(servers: Servers, stream: str, total: int, batch: int, processes: int) -> float:
    """The raw limit of `processes` consumer processes sharing one durable: all events / first fetch to last ack."""
    tag = uuid.uuid4().hex[:6]
    children = [await asyncio.create_subprocess_exec(
        PYTHON, "-m", "bench.raw_consumer", servers.nats_url, stream, str(total), str(batch), tag, "--share",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE) for _ in range(processes)]
    results = [(await child.communicate())[0].split() for child in children]
    seen = sum(int(r[0]) for r in results)
    began, ended = min(float(r[1]) for r in results), max(float(r[2]) for r in results)
    return seen / (ended - began) if ended > began else 0.0


async def applied(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT COALESCE(sum(applied_events), 0)::bigint FROM projection_state") or 0


async def recorder_throughput(servers: Servers) -> tuple[list[Result], dict[str, float]]:
    """Benchmark 1, plus the recorder's peak RSS under it."""
    total = int(200_000 * scale())
    batch = RecorderSettings.model_fields["recorder_batch_size"].default  # the recorder's own default
    async with scratch(servers, "rec") as (dsn, stream, prefix):
        subjects = Subjects(prefix=prefix, stream=stream)
        messages, runs, details = build_events(subjects, total)
        nc = await nats.connect(servers.nats_url)
        conn = await asyncpg.connect(dsn)
        try:
            js = nc.jetstream(timeout=30)
            server = server_of(nc)
            await ensure_streams(js, subjects)
            publish_rate = await publish_all(js, messages)
            # In its own process, like the recorder: the same fresh interpreter and a core of its own.
            plain, ahead = map(float, (await asyncio.to_thread(
                subprocess.run, [PYTHON, "-m", "bench.raw_consumer", servers.nats_url, stream,
                                 str(len(messages)), str(batch)], cwd=ROOT, capture_output=True, text=True, check=True,
                timeout=900)).stdout.split())
            limit = max(plain, ahead)
            loaded, sql_rate = await raw_beside_postgres(servers, stream, messages, batch, limit)
            env = service_env(servers.nats_url, dsn, stream, prefix, JOBLOG_RECORDER_BATCH_SIZE=str(batch))
            rate, done, rss = await recorder_rate(conn, env, len(messages))
            rows = await conn.fetchrow("SELECT (SELECT count(*) FROM job_logs) AS runs, (SELECT count(*) FROM job_log_details) AS details,"
                                       " (SELECT count(*) FROM job_logs WHERE status = 'success') AS ok")
            before = ""
            baseline = _baseline()
            if baseline is not None:
                before = await alternating_rounds(servers, env, stream, len(messages), batch, runs, details, baseline)
            # Scale-out: two recorders sharing one durable (into a database of their own), and two raw
            # consumers sharing one, on the same stream.
            pair_db = await create_database(servers, f"joblog_bench_rec_pair_{uuid.uuid4().hex[:8]}")
            try:
                pair_conn = await asyncpg.connect(pair_db)
                try:
                    pair_env = {**env, "JOBLOG_DATABASE_URL": pair_db, "JOBLOG_RECORDER_CONSUMER": "bench_pair"}
                    pair_rate, pair_done, _ = await recorders_rate(pair_conn, pair_env, len(messages), 2)
                    pair_exact = await pair_conn.fetchval(
                        "SELECT (SELECT count(*) FROM job_logs WHERE status = 'success') = $1 "
                        "AND (SELECT count(*) FROM job_log_details) = $2", runs, details)
                finally:
                    await pair_conn.close()
            finally:
                await drop_database(servers, pair_db.rsplit("/", 1)[1])
            raw_pair = await raw_shared_rate(servers, stream, len(messages), batch, 2)
        finally:
            await conn.close()
            await nc.close()
    complete = done and rows["runs"] == runs and rows["details"] == details and rows["ok"] == runs
    ratio = rate / limit if limit else 0.0
    result = Result(
        "1. Recorder throughput", f"{rate:,.0f} events/s", f"{limit:,.0f} events/s (raw pull+ack, batch {batch}, best of plain {plain:,.0f} and fetch-ahead {ahead:,.0f})",
        f"{ratio:.2f}", ">= 0.95 of raw pull+ack", ratio >= 0.95 and complete,
        "JOBLOG_BENCH_SCALE=1 .venv/bin/python -m bench recorder_throughput",
        [f"{len(messages):,} events ({runs:,} runs, {details:,} details); the limit and the recorder each run as their own process; publish rate {publish_rate:,.0f} events/s; "
         f"projection complete and exact: {complete} ({rows['runs']:,} runs, {rows['details']:,} details)",
         f"the ceiling on these cores: raw pull+ack again while the recorder's SQL for the same events runs beside it "
         f"at the limit's pace (pre-parsed batches of {batch}, {sql_rate:,.0f} events/s): {loaded:,.0f} events/s, "
         f"{loaded / limit if limit else 0:.2f} of the limit; the recorder is {rate / loaded if loaded else 0:.2f} of that"]
        + ([before] if before else []),
        {"ratio": ratio >= 0.95, "exact": complete}, server,
    )
    pair_ratio = pair_rate / limit if limit else 0.0
    pair_ok = bool(pair_done and pair_exact)
    pair = Result(
        "1c. Two recorders sharing the consumer", f"{pair_rate:,.0f} events/s",
        f"{limit:,.0f} events/s (row 1's raw pull+ack, one consumer process)", f"{pair_ratio:.2f}",
        ">= 0.95 of raw pull+ack (several recorders allowed)", pair_ratio >= 0.95 and pair_ok,
        "JOBLOG_BENCH_SCALE=1 .venv/bin/python -m bench recorder_throughput",
        [f"the same {len(messages):,} events, two `joblog recorder` processes on one durable consumer into a database of "
         f"their own; projection exact: {pair_ok}; {pair_rate / rate if rate else 0:.2f}x one recorder (row 1)",
         f"two raw consumer processes sharing one durable, same stream: {raw_pair:,.0f} events/s "
         f"({raw_pair / limit if limit else 0:.2f}x one); the pair of recorders is {pair_rate / raw_pair if raw_pair else 0:.2f} of that"],
        {"ratio": pair_ratio >= 0.95, "exact": pair_ok}, server,
    )
    return [result, pair], {"recorder (throughput)": rss}


async def raw_beside_postgres(servers: Servers, stream: str, messages: list[tuple[str, str, bytes]], batch: int,
                              pace: float) -> tuple[float, float]:
    """The ceiling of the ratio for one recorder process on these cores: the raw consumer again (its own
    process, consumers of its own) while the recorder's SQL for the same events (parsed and reduced
    beforehand, so no Python parse in it) is applied to a scratch database at `pace` events/s (the raw
    rate: what a recorder keeping up with the limit would ask of Postgres). (raw events/s, SQL events/s)."""
    events = [parse_event(p) for _, _, p in messages]
    batches = []
    for first in range(0, len(events), batch):
        reduced = Batch()
        for seq, event in enumerate(events[first:first + batch], first + 1):
            reduced.add(event, seq)
        batches.append(reduced)
    other = await create_database(servers, f"joblog_bench_rec_floor_{uuid.uuid4().hex[:8]}")
    try:
        conn = await asyncpg.connect(other)
        raw = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "bench.raw_consumer", servers.nats_url, stream, str(len(messages)), str(batch), "_floor",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        applied_events, began = 0, time.perf_counter()
        try:
            while raw.returncode is None:
                for reduced in batches:
                    position = db.Position("floor", applied_events, reduced.last_event_at, reduced.events)
                    await db.apply_batch(conn, reduced, position=position)
                    applied_events += reduced.events
                    await asyncio.sleep(max(0.0, began + applied_events / pace - time.perf_counter()))
                    if raw.returncode is not None:  # set by the loop when the child exits
                        break
            elapsed = time.perf_counter() - began
            out, _ = await raw.communicate()
        finally:
            await conn.close()
    finally:
        await drop_database(servers, other.rsplit("/", 1)[1])
    return float(out.split()[0]), applied_events / elapsed


async def alternating_rounds(servers: Servers, env: dict[str, str], stream: str, total: int, batch: int,
                             runs: int, details: int, baseline: Path, rounds: int = 3) -> str:
    """Before/after on a shared, noisy machine: rounds of (the limit, the other checkout's recorder, this
    one's), each recorder on a database and a consumer of its own, each ratio to the limit just before it."""
    old: list[float] = []
    new: list[float] = []
    exact = True
    for i in range(rounds):
        raw = float((await asyncio.to_thread(
            subprocess.run, [PYTHON, "-m", "bench.raw_consumer", servers.nats_url, stream, str(total), str(batch), f"_r{i}"],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=900)).stdout.split()[0])
        for tree, ratios in ((baseline, old), (ROOT, new)):
            other = await create_database(servers, f"joblog_bench_rec_round_{uuid.uuid4().hex[:8]}")
            try:
                other_conn = await asyncpg.connect(other)
                try:
                    rate, done, _ = await recorder_rate(
                        other_conn, {**env, "JOBLOG_DATABASE_URL": other, "JOBLOG_RECORDER_CONSUMER": f"bench_{'before' if tree == baseline else 'after'}_{i}"},
                        total, tree)
                    exact = exact and done and await _exact(other_conn, runs, details)
                finally:
                    await other_conn.close()
            finally:
                await drop_database(servers, other.rsplit("/", 1)[1])
            ratios.append(rate / raw if raw else 0.0)
    return (f"before/after in {rounds} alternating rounds (the limit, then {baseline}'s recorder, then this one's; each "
            f"ratio to the limit just before): before median {median(old):.2f} ({', '.join(f'{r:.2f}' for r in old)}), "
            f"after median {median(new):.2f} ({', '.join(f'{r:.2f}' for r in new)}); all exact: {exact}")


def _baseline() -> Path | None:
    """JOBLOG_BENCH_BASELINE=<another checkout> (e.g. /work/main): its recorder too, in the same run (before/after)."""
    tree = os.environ.get("JOBLOG_BENCH_BASELINE")
    return Path(tree).resolve() if tree else None


async def _exact(conn: asyncpg.Connection, runs: int, details: int) -> bool:
    row = await conn.fetchrow("SELECT (SELECT count(*) FROM job_logs) AS runs, (SELECT count(*) FROM job_log_details) AS details,"
                              " (SELECT count(*) FROM job_logs WHERE status = 'success') AS ok")
    return bool(row["runs"] == runs and row["details"] == details and row["ok"] == runs)


async def recorder_rate(conn: asyncpg.Connection, env: dict[str, str], total: int, tree: Path = ROOT) -> tuple[float, bool, float]:
    """`python -m joblog recorder` (of the checkout `tree`) as its own process on a stream already holding
    total events: (events/s from its first committed batch to the last, whether all were applied, its peak RSS)."""
    return await recorders_rate(conn, env, total, 1, tree)


async def recorders_rate(conn: asyncpg.Connection, env: dict[str, str], total: int, processes: int,
                         tree: Path = ROOT) -> tuple[float, bool, float]:
    """recorder_rate with `processes` recorders sharing the durable consumer (the highest peak RSS)."""
    with contextlib.ExitStack() as stack:
        recorders = [stack.enter_context(service_process("recorder", env, tree)) for _ in range(processes)]
        # Time from the first committed batch, so the processes' start-up is not counted.
        await wait_until(lambda: _positive(conn), timeout=60, interval=0.01)
        first_at, first = time.perf_counter(), await applied(conn)
        done = await wait_until(lambda: _reached(conn, total), timeout=600, interval=0.02)
        elapsed = time.perf_counter() - first_at
        rss = max(peak_rss_mb(process.pid) for process in recorders)
        final = await applied(conn)
    return ((final - first) / elapsed if elapsed > 0 else 0.0), done, rss


async def _positive(conn: asyncpg.Connection) -> bool:
    return await applied(conn) > 0


async def _reached(conn: asyncpg.Connection, total: int) -> bool:
    return await applied(conn) >= total


class Watcher(threading.Thread):
    """Polls each run's last_seq every ~2 ms on its own loop and connection; an event becomes visible
    when its run's last_seq reaches its seq (written in the same transaction as its detail)."""

    def __init__(self, dsn: str, run_ids: list[uuid.UUID], sent: dict[tuple[int, int], float]) -> None:
        super().__init__(daemon=True)
        self.dsn, self.run_ids, self.sent = dsn, run_ids, sent
        self.lags: list[float] = []
        self.stop = threading.Event()
        self.poll_ms: list[float] = []

    def run(self) -> None:
        asyncio.run(self._watch())

    async def _watch(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        seen = [0] * len(self.run_ids)
        index = {run_id: i for i, run_id in enumerate(self.run_ids)}
        query = await conn.prepare("SELECT id, last_seq FROM job_logs WHERE id = ANY($1::uuid[])")
        try:
            while not self.stop.is_set():
                before = time.time()
                rows = await query.fetch(self.run_ids)
                now = time.time()
                self.poll_ms.append((now - before) * 1000)
                for row in rows:
                    i = index[row["id"]]
                    for seq in range(seen[i] + 1, row["last_seq"] + 1):
                        sent_at = self.sent.get((i, seq))
                        if sent_at is not None:
                            self.lags.append((now - sent_at) * 1000)
                    seen[i] = max(seen[i], row["last_seq"])
                await asyncio.sleep(0.002)
        finally:
            await conn.close()


async def steady_publish(js, subjects: Subjects, run_ids: list[uuid.UUID], rate: int, seconds: float,  # type: ignore[no-untyped-def]
                         sent: dict[tuple[int, int], float], start_seq: int) -> int:
    """Publish step events round-robin over the runs at a steady rate, in 5 ms ticks; occurred_at is
    the moment each is built. Returns how many were sent."""
    tick = 0.005
    per_tick = max(1, round(rate * tick))
    count, pending = 0, []
    began = time.perf_counter()
    name_of = {i: (datetime(2025, 6, 1, tzinfo=timezone.utc) + timedelta(seconds=i)).strftime("%Y%m%d%H%M%S") for i in range(len(run_ids))}
    seqs = [start_seq] * len(run_ids)
    while time.perf_counter() - began < seconds:
        for _ in range(per_tick):
            i = count % len(run_ids)
            seqs[i] += 1
            event = StepLogged(run_id=run_ids[i], name=name_of[i], job="sync_open_orders", seq=seqs[i],
                               key=f"step-{seqs[i]}", message=f"Upserted {seqs[i] * 100} orders")
            sent[(i, seqs[i])] = event.occurred_at.timestamp()
            pending.append(await js.publish_async(subjects.for_event(event), event.model_dump_json().encode(),
                                                  headers={"Nats-Msg-Id": str(event.event_id)}))
            count += 1
        next_at = began + (count / per_tick) * tick
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        if len(pending) > 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return count


async def raw_round_trip(nc, js, subjects: Subjects, rate: int, seconds: float) -> list[float]:  # type: ignore[no-untyped-def]
    """The limit: the same steady publishing, consumed by a push consumer that acks; ms from occurred_at to receipt."""
    lags: list[float] = []

    async def received(message) -> None:  # type: ignore[no-untyped-def]
        now = time.time()
        occurred = _occurred(message.data)
        lags.append((now - occurred) * 1000)
        await message.ack()

    # A push consumer on the whole stream, no subject filter (as the recorder's consumer).
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=received)
    await js.add_consumer(subjects.stream, ConsumerConfig(
        durable_name="bench_raw_push", deliver_subject=inbox, ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.NEW, max_ack_pending=50_000))
    run_ids = [uuid.uuid4() for _ in range(20)]
    await steady_publish(js, subjects, run_ids, rate, seconds, {}, 2)
    await asyncio.sleep(0.5)
    await sub.unsubscribe()
    return lags


async def commit_latency(dsn: str, count: int = 300) -> list[float]:
    """The other floor: ms for a one-row transaction to commit (a WAL flush) on the same Postgres."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE bench_commit_probe (x int)")
        times = []
        for _ in range(count):
            began = time.perf_counter()
            async with conn.transaction():
                await conn.execute("INSERT INTO bench_commit_probe VALUES (1)")
            times.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(0.002)
        await conn.execute("DROP TABLE bench_commit_probe")
        return times
    finally:
        await conn.close()


def _occurred(payload: bytes) -> float:
    import json

    return datetime.fromisoformat(json.loads(payload)["occurred_at"].replace("Z", "+00:00")).timestamp()


async def lag_round(servers: Servers, rate: int, seconds: float, tree: Path = ROOT) -> tuple[list[float], int, list[float], float, str]:
    """The recorder of checkout `tree` on a fresh database and stream while steps are published at rate/s:
    (each event's lag in ms, events sent, the watcher's poll times, the recorder's peak RSS, the share of HOT updates)."""
    async with scratch(servers, "lag", tree) as (dsn, stream, prefix):
        subjects = Subjects(prefix=prefix, stream=stream)
        nc = await nats.connect(servers.nats_url)
        try:
            js = nc.jetstream(timeout=30)
            await ensure_streams(js, subjects)
            # Twenty runs in progress (created and started), then a steady stream of their steps.
            run_ids = [uuid.uuid4() for _ in range(20)]
            start = datetime(2025, 6, 1, tzinfo=timezone.utc)
            for i, run_id in enumerate(run_ids):
                common = {"run_id": run_id, "name": (start + timedelta(seconds=i)).strftime("%Y%m%d%H%M%S"), "job": "sync_open_orders"}
                for event in (RunCreated(**common, seq=1, worker_id="bench-worker"),
                              RunStarted(**common, seq=2, worker_id="bench-worker", host="bench-host", pid=1)):
                    await js.publish(subjects.for_event(event), event.model_dump_json().encode())
            env = service_env(servers.nats_url, dsn, stream, prefix)
            with service_process("recorder", env, tree) as process:
                conn = await asyncpg.connect(dsn)
                try:
                    await wait_until(lambda: _reached(conn, 40), timeout=60, interval=0.02)
                finally:
                    await conn.close()
                sent: dict[tuple[int, int], float] = {}
                watcher = Watcher(dsn, run_ids, sent)
                # This process publishes and watches: its own garbage collector's full passes (35-60 ms over
                # its heap) would stall both and count as the recorder's lag. Off while it measures.
                gc.collect()
                gc.disable()
                try:
                    watcher.start()
                    count = await steady_publish(js, subjects, run_ids, rate, seconds, sent, 2)
                    deadline = time.monotonic() + 30
                    while len(watcher.lags) < count and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    watcher.stop.set()
                    await asyncio.to_thread(watcher.join, 5)
                finally:
                    gc.enable()
                rss = peak_rss_mb(process.pid)
            hot = await _hot_share(dsn)  # the recorder's backend has exited: its table statistics are flushed
        finally:
            await nc.close()
    return watcher.lags, count, watcher.poll_ms, rss, hot


async def _hot_share(dsn: str) -> str:
    """How many of job_logs' updates were heap-only (HOT: no new index entries), as Postgres counted them."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(50):  # the exited backend's counters reach the shared statistics within moments
            row = await conn.fetchrow("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'job_logs'")
            if row and row["n_tup_upd"]:
                return f"{row['n_tup_hot_upd'] / row['n_tup_upd']:.0%} of {row['n_tup_upd']:,} job_logs updates HOT"
            await asyncio.sleep(0.1)
            await conn.execute("SELECT pg_stat_clear_snapshot()")
        return "job_logs updates: not counted"
    finally:
        await conn.close()


async def recorder_lag(servers: Servers) -> tuple[list[Result], dict[str, float]]:
    """Benchmark 2: projection lag at a steady 2,000 events/s, against a raw publish->consume round trip."""
    rate, seconds = 2000, 15.0 if scale() >= 1 else 8.0
    async with scratch(servers, "lagraw") as (dsn, stream, prefix):
        nc = await nats.connect(servers.nats_url)
        try:
            js = nc.jetstream(timeout=30)
            server = server_of(nc)
            # The limit runs on a stream of its own, so its events never reach a recorder.
            raw = Subjects(prefix=f"{prefix}raw", stream=f"{stream}_RAW")
            await ensure_streams(js, raw)
            try:
                limit_lags = await raw_round_trip(nc, js, raw, rate, seconds)
            finally:
                await delete_streams(servers.nats_url, raw.stream)
        finally:
            await nc.close()
        commits = await commit_latency(dsn)
    before = ""
    baseline = _baseline()
    if baseline is not None:
        old, old_count, _, _, old_hot = await lag_round(servers, rate, seconds, baseline)
        before = (f"before, same run ({baseline}, its own schema): p50 {percentile(old, 50):.1f} ms, "
                  f"p99 {percentile(old, 99):.1f} ms, {len(old):,} of {old_count:,} seen; {old_hot}")
    lags, count, poll_ms, rss, hot = await lag_round(servers, rate, seconds)
    p50, p99, limit_p50, limit_p99 = percentile(lags, 50), percentile(lags, 99), percentile(limit_lags, 50), percentile(limit_lags, 99)
    commit_p50, commit_p99 = percentile(commits, 50), percentile(commits, 99)
    result = Result(
        "2. Projection lag", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
        f"raw publish->consume p50 {limit_p50:.1f} ms, p99 {limit_p99:.1f} ms; "
        f"a one-row commit alone p50 {commit_p50:.1f} ms, p99 {commit_p99:.1f} ms",
        f"{p99 / limit_p99:.1f}x (p99)" if limit_p99 else "-", "p99 < 20 ms", p99 < 20 and len(lags) >= count,
        "JOBLOG_BENCH_SCALE=1 .venv/bin/python -m bench recorder_lag",
        [f"{count:,} step events at {rate:,}/s for {seconds:.0f} s over 20 runs; {len(lags):,} seen visible; "
         f"visibility polled every ~2 ms (poll query median {median(poll_ms):.1f} ms, part of the figure); "
         f"max {max(lags or [0]):.0f} ms; {hot}"] + ([before] if before else []), {}, server,
    )
    return [result], {"recorder (lag)": rss}
