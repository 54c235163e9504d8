"""The peer row: Celery's Flower absorbing task events from Redis, against joblog's recorder, same run.

    .venv/bin/python -m bench flower          (needs the bench extra: flower, celery, redis; and redis-server)

Both sides get the same number of equivalent events, already waiting when the consumer starts:

- Flower: the real `celery flower` process (its EventReceiver thread feeding celery.events.state
  through its tornado loop, as Flower runs it, default options) on a Redis of its own (Debian's
  redis-server on a free port, no persistence). Flower is stopped (SIGSTOP) once it is subscribed,
  the events are published (task-received, task-started, task-succeeded per task, with the fields a
  Celery worker sends), and it is resumed (SIGCONT): the rate is from the resume to its
  `flower_events_total` counters (GET /metrics) reaching the total. Redis holds the events for the
  stopped subscriber in its output buffer, so that buffer's limit is lifted for this Redis only
  (with Redis's default `client-output-buffer-limit pubsub 32mb 8mb 60`, a Flower that falls 32 MB
  behind is disconnected and those events are gone).
- joblog: `python -m joblog recorder` on a stream holding run.created, run.started, run.succeeded per
  run (the equivalent events), timed as benchmark 1 (first commit to the last), on the same NATS and
  Postgres as every other row.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import asyncpg
import nats

from bench.common import PYTHON, ROOT, Result, Servers, peak_rss_mb, scale, scratch, server_of, service_env, service_process
from bench.recorder import build_events, publish_all, recorder_rate
from bench.web import CONNECTIONS, wait_for_port, wrk
from joblog.servers import free_port, port_open
from services.contracts import Subjects
from services.contracts.subjects import ensure_streams

TASK = "orders.sync_open_orders"


def flower_events(port: int) -> float:
    """The sum of Flower's flower_events_total counters (every event its state has absorbed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("flower_events_total{"))


def publish_tasks(broker: str, tasks: int, hostname: str) -> tuple[float, int]:
    """task-received, task-started, task-succeeded for each task, as a Celery worker sends them; (events/s, events)."""
    from celery import Celery

    app = Celery("bench", broker=broker)
    sent = 0
    with app.connection_for_write() as connection:
        dispatcher = app.events.Dispatcher(connection, hostname=hostname, enabled=True, buffer_while_offline=False)
        began = time.perf_counter()
        for i in range(tasks):
            task_id = str(uuid.uuid4())
            dispatcher.send("task-received", uuid=task_id, name=TASK, args="()", kwargs="{}", root_id=task_id,
                            parent_id=None, retries=0, eta=None, expires=None)
            dispatcher.send("task-started", uuid=task_id)
            dispatcher.send("task-succeeded", uuid=task_id, result="{'fetched': 40000, 'inserted': 12}", runtime=0.9)
            sent += 3
        rate = sent / (time.perf_counter() - began)
        dispatcher.close()
    return rate, sent


def wait_port(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {port}")
        time.sleep(0.05)


# Flower's task list, as its /tasks page asks for it: the first 50 tasks, newest received first.
FLOWER_TASKS_PAGE = ("/tasks/datatable?draw=1&start=0&length=50&search%5Bvalue%5D=&order%5B0%5D%5Bcolumn%5D=0"
                     "&order%5B0%5D%5Bdir%5D=desc&columns%5B0%5D%5Bdata%5D=received")


WARMUP, PAGE_SECONDS = 1, 5


def run_flower(total_events: int) -> dict[str, float | str]:
    """Flower's absorption rate of total_events (rounded down to whole tasks), its task list page
    under wrk once it holds them, and what it ran on."""
    redis_server = shutil.which("redis-server")
    celery = Path(PYTHON).parent / "celery"
    if not redis_server:
        raise RuntimeError("redis-server not found: apt-get install -y redis-server")
    if not celery.exists():
        raise RuntimeError("celery/flower not installed: .venv/bin/pip install -e '.[bench]'")
    from importlib.metadata import version

    import redis

    tasks = total_events // 3
    redis_port, flower_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="joblog-bench-redis-") as tmp:
        server = subprocess.Popen([redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", tmp, "--client-output-buffer-limit", "pubsub 0 0 0"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        flower = None
        try:
            wait_port(redis_port, server, "redis-server")
            redis_version = redis.Redis(port=redis_port).info()["redis_version"]
            broker = f"redis://127.0.0.1:{redis_port}/0"
            env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "CELERY_"))}
            log = open(ROOT / ".joblog" / "bench-flower.log", "wb") if (ROOT / ".joblog").is_dir() else subprocess.DEVNULL
            flower = subprocess.Popen([str(celery), "--broker", broker, "flower", f"--port={flower_port}", "--address=127.0.0.1"],
                                      cwd=tmp, env=env, stdout=log, stderr=log)
            wait_port(flower_port, flower, "flower")
            # Subscribed once a warm-up task is counted (events sent before the subscription are simply lost).
            deadline = time.monotonic() + 60
            while flower_events(flower_port) < 3:
                if time.monotonic() > deadline:
                    raise RuntimeError("flower never counted the warm-up task's events")
                publish_tasks(broker, 1, "warmup@bench")
                time.sleep(0.5)
            time.sleep(1)
            baseline = flower_events(flower_port)
            os.kill(flower.pid, signal.SIGSTOP)
            try:
                publish_rate, sent = publish_tasks(broker, tasks, "bench-worker@bench-host")
            finally:
                os.kill(flower.pid, signal.SIGCONT)
            began = time.perf_counter()
            seen, last_change, last = baseline, began, baseline
            while seen - baseline < sent:
                time.sleep(0.05)
                seen = flower_events(flower_port)
                if seen != last:
                    last, last_change = seen, time.perf_counter()
                elif time.perf_counter() - last_change > 20:
                    break  # stalled: report what it absorbed
            elapsed = last_change - began
            absorbed = seen - baseline
            wrk(f"http://127.0.0.1:{flower_port}{FLOWER_TASKS_PAGE}", WARMUP)
            page = wrk(f"http://127.0.0.1:{flower_port}{FLOWER_TASKS_PAGE}", PAGE_SECONDS)
            rss = peak_rss_mb(flower.pid)
        finally:
            for process in (flower, server):
                if process is not None and process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
    return {"rate": absorbed / elapsed if elapsed > 0 else 0.0, "absorbed": absorbed, "sent": sent, "tasks": tasks,
            "publish_rate": publish_rate, "rss": rss, "redis": redis_version, "flower": version("flower"),
            "celery": version("celery"), **{f"page_{k}": v for k, v in page.items()}}


def joblog_index(nats_url: str, dsn: str, stream: str, prefix: str) -> dict[str, float]:
    """`python -m joblog web` on the peer row's projection: its index (the newest 50 runs) under wrk."""
    port = free_port()
    with service_process("web", service_env(nats_url, dsn, stream, prefix, JOBLOG_WEB_PORT=str(port))):
        wait_for_port(port)
        wrk(f"http://127.0.0.1:{port}/", WARMUP)
        return wrk(f"http://127.0.0.1:{port}/", PAGE_SECONDS)


async def flower(servers: Servers) -> tuple[list[Result], dict[str, float]]:
    total = int(200_000 * scale())
    # joblog first: the recorder on run.created, run.started, run.succeeded per run.
    async with scratch(servers, "peer") as (dsn, stream, prefix):
        subjects = Subjects(prefix=prefix, stream=stream)
        messages, runs, _ = build_events(subjects, total, steps=0)
        nc = await nats.connect(servers.nats_url)
        conn = await asyncpg.connect(dsn)
        try:
            js = nc.jetstream(timeout=30)
            server = server_of(nc)
            await ensure_streams(js, subjects)
            await publish_all(js, messages)
            rate, done, rss = await recorder_rate(conn, service_env(servers.nats_url, dsn, stream, prefix), len(messages))
            ok = await conn.fetchval("SELECT count(*) FROM job_logs WHERE status = 'success'")
            index = await asyncio.to_thread(joblog_index, servers.nats_url, dsn, stream, prefix)
        finally:
            await conn.close()
            await nc.close()
    peer = await asyncio.to_thread(run_flower, len(messages))
    exact = done and ok == runs
    ratio = rate / peer["rate"] if peer["rate"] else 0.0  # type: ignore[operator]
    return [Result(
        "7. Peer: Celery Flower absorbing task events", f"joblog recorder {rate:,.0f} events/s",
        f"Flower {peer['flower']} (celery {peer['celery']}, Redis {peer['redis']}) {peer['rate']:,.0f} events/s",
        f"{ratio:.2f}x Flower", ">= 1 (as fast as Flower, with its durability kept)", ratio >= 1 and exact,
        "JOBLOG_BENCH_SCALE=1 .venv/bin/python -m bench flower",
        [f"{len(messages):,} events each: joblog {runs:,} runs of run.created/started/succeeded, every run projected "
         f"`success` in Postgres: {exact}; Flower {peer['tasks']:,} tasks of task-received/started/succeeded, "
         f"{peer['absorbed']:,.0f} of {peer['sent']:,} absorbed (published at {peer['publish_rate']:,.0f} events/s while Flower was stopped)",
         f"peak RSS: recorder {rss:.0f} MB, Flower {peer['rss']:.0f} MB",
         "guarantees: joblog commits each batch to Postgres before it acks, so an event survives a recorder, NATS or "
         "Postgres restart and is applied exactly once into durable tables with every run kept; Flower keeps its state in "
         "memory only (capped at max_tasks, 100,000 by default, least recently used evicted; lost on restart unless "
         "--persistent, which saves a snapshot on an interval), and Redis pub/sub delivers events only to a subscriber "
         "connected at that moment (none while Flower is down; a subscriber 32 MB behind is disconnected at Redis's "
         "default limits; lifted here so the backlog could be measured)"],
        {"ratio": ratio >= 1, "exact": exact}, f"{server} (joblog); Redis {peer['redis']} (Flower)",
    ), Result(
        "7b. Peer: the newest 50 runs / tasks page", f"joblog `/` {index['rps']:,.0f} req/s, p50 {index['p50']:.1f} ms, "
        f"p99 {index['p99']:.1f} ms", f"Flower `/tasks/datatable` {peer['page_rps']:,.0f} req/s, p50 {peer['page_p50']:.1f} ms, "
        f"p99 {peer['page_p99']:.1f} ms", f"{index['rps'] / peer['page_rps']:.2f}x Flower" if peer["page_rps"] else "-",
        ">= 1", bool(peer["page_rps"]) and index["rps"] >= peer["page_rps"] and not index["errors"],  # type: ignore[operator]
        "JOBLOG_BENCH_SCALE=1 .venv/bin/python -m bench flower",
        [f"each holding the row's {runs:,} runs / {peer['tasks']:,} tasks; wrk -t1 -c{CONNECTIONS} -d{PAGE_SECONDS}s after "
         f"{WARMUP} s; errors or non-2xx: joblog {index['errors']:.0f}, Flower {peer['page_errors']:.0f}",
         "joblog renders its index page (HTML) and keeps it until the projection moves; Flower answers the JSON its "
         "/tasks page loads, sorting the tasks it holds in memory per request (at most max_tasks, 100,000 by default: "
         "a million tasks is beyond Flower's default)"],
        {}, f"{server} (joblog); Redis {peer['redis']} (Flower)",
    )], {"recorder (peer)": rss, "Flower (peer, reference)": float(peer["rss"])}  # type: ignore[arg-type]
