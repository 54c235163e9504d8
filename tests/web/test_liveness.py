"""Worker liveness as the web sees it: JetStream's clock, incarnations, and clean stops."""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone

from services.contracts import WorkerHeartbeat, WorkerStopped
from services.contracts.events import utcnow
from services.contracts.liveness import JetStreamClock
from tests.conftest import eventually
from tests.factories import run_events


def test_the_clock_takes_the_smallest_receive_delay_as_the_offset_to_jetstream():
    local = [1_000_000.0]
    clock = JetStreamClock(local=lambda: local[0])
    assert abs((clock.now() - datetime.fromtimestamp(local[0], timezone.utc)).total_seconds()) < 1e-6  # nothing seen yet

    js_time = datetime.fromtimestamp(1_000_000.0 - 30.0, timezone.utc)  # JetStream's clock 30 s behind ours
    clock.observe(js_time - timedelta(seconds=5))  # a message stored 5 s ago (a replayed last heartbeat)
    clock.observe(js_time - timedelta(seconds=0.2))  # one stored 0.2 s ago
    clock.observe(js_time - timedelta(seconds=3))  # an older one again: does not move the estimate
    # The quickest delivery (0.2 s) is taken as no delay at all: JetStream's now is estimated 0.2 s late.
    assert abs((clock.now() - js_time).total_seconds() + 0.2) < 1e-6
    local[0] += 10
    assert abs(clock.age(js_time).total_seconds() - 9.8) < 1e-6


def _beat(worker_id: str, incarnation: uuid.UUID, pid: int, started_at: datetime, **extra: object) -> WorkerHeartbeat:
    return WorkerHeartbeat(worker_id=worker_id, incarnation=incarnation, host=f"host-{pid}", pid=pid, started_at=started_at, **extra)  # type: ignore[arg-type]


async def test_a_clean_stop_shows_the_worker_stopped_never_lost_and_its_runs_not_stalled(make_client, js, subjects, project):
    client = await make_client(worker_timeout=1)
    events = run_events(name="20261129083000", steps=1, updates=0)
    await project(events[:2])  # processing on w1
    stopping, silent = uuid.uuid4(), uuid.uuid4()
    await js.publish(subjects.for_heartbeat("w1"), _beat("w1", stopping, 101, utcnow(), running=[events[0].run_id]).model_dump_json().encode())
    await js.publish(subjects.for_heartbeat("w2"), _beat("w2", silent, 102, utcnow()).model_dump_json().encode())
    stop = WorkerStopped(worker_id="w1", incarnation=stopping, host="host-101", pid=101)
    await js.publish(subjects.for_worker_stop("w1"), stop.model_dump_json().encode())

    async def lost_w2() -> str | None:  # w2 never stopped: after the timeout it is lost
        html = await (await client.get("/monitor")).text()
        return html if "Lost workers" in html else None

    html = await eventually(lost_w2)
    lost = re.search(r"Lost workers:(.*?)</p>", html, re.S)
    stopped = re.search(r"Stopped workers:(.*?)</p>", html, re.S)
    assert lost and "w2" in lost.group(1) and "w1" not in lost.group(1)
    assert stopped and "w1" in stopped.group(1) and "w2" not in stopped.group(1)
    assert "None: every processing run has a live worker." in html
    index = await (await client.get("/")).text()
    assert "badge-processing" in index and "badge-stalled" not in index
    run = (await (await client.get("/api/runs/20261129083000")).json())["run"]
    assert run["state"] == "processing"


async def test_the_newest_incarnation_of_a_worker_id_replaces_an_older_one(make_client, js, subjects):
    client = await make_client(worker_timeout=3600)
    old, new = uuid.uuid4(), uuid.uuid4()
    started = utcnow() - timedelta(minutes=5)
    for event, subject in [
        (_beat("w3", old, 301, started), subjects.for_heartbeat("w3")),
        (_beat("w3", new, 302, started + timedelta(minutes=1)), subjects.for_heartbeat("w3")),  # a restart under the same id
        (_beat("w3", old, 301, started), subjects.for_heartbeat("w3")),  # a late heartbeat of the old process
        (WorkerStopped(worker_id="w3", incarnation=old, host="host-301", pid=301), subjects.for_worker_stop("w3")),
        (_beat("w4", uuid.uuid4(), 401, utcnow()), subjects.for_heartbeat("w4")),  # after all of them, in stream order
    ]:
        await js.publish(subject, event.model_dump_json().encode())

    async def all_seen() -> str | None:
        html = await (await client.get("/monitor")).text()
        return html if "host-401" in html else None

    html = await eventually(all_seen)
    assert "host-302 · pid 302" in html and "pid 301" not in html
    assert "Stopped workers" not in html and "Lost workers" not in html


async def test_a_heartbeat_counts_by_when_jetstream_stored_it_not_by_the_workers_clock(make_client, js, subjects):
    client = await make_client(worker_timeout=60)
    wrong_clock = utcnow() - timedelta(hours=2)  # a worker whose clock is two hours behind
    beat = WorkerHeartbeat(worker_id="w5", host="host-skewed", pid=501, started_at=wrong_clock, occurred_at=wrong_clock)
    await js.publish(subjects.for_heartbeat("w5"), beat.model_dump_json().encode())

    async def seen() -> str | None:
        html = await (await client.get("/monitor")).text()
        return html if "host-skewed" in html else None

    html = await eventually(seen)
    assert "Workers online <span class=\"muted\">(1)</span>" in html and "Lost workers" not in html


async def test_the_directory_follows_again_after_the_heartbeat_stream_is_recreated(make_client, js, subjects):
    from services.contracts.subjects import ensure_streams

    client = await make_client(worker_timeout=3600)
    await js.publish(subjects.for_heartbeat("w6"), _beat("w6", uuid.uuid4(), 601, utcnow()).model_dump_json().encode())

    async def monitor_has(text: str) -> str | None:
        html = await (await client.get("/monitor")).text()
        return html if text in html else None

    await eventually(lambda: monitor_has("host-601"))
    await js.delete_stream(subjects.heartbeat_stream)
    await ensure_streams(js, subjects)
    await js.publish(subjects.for_heartbeat("w7"), _beat("w7", uuid.uuid4(), 701, utcnow()).model_dump_json().encode())
    await eventually(lambda: monitor_has("host-701"))


async def test_the_live_index_turns_a_run_stalled_when_its_worker_is_lost(client, js, subjects, project):
    from tests.web.test_live import sse_frames

    events = run_events(name="20261129083000", steps=1, updates=0)[:3]  # processing on w1
    await project(events)
    await js.publish(subjects.for_heartbeat("w1"), _beat("w1", uuid.uuid4(), 101, utcnow(), running=[events[0].run_id]).model_dump_json().encode())
    response = await client.get("/events/runs")
    frames = await sse_frames(response, 1)  # hello
    while True:  # w1 sends no more heartbeats: after the timeout its run is stalled, pushed without a reload
        frames = await sse_frames(response, 1)
        if frames[0][0] == "run" and frames[0][2]["state"] == "stalled":
            break
    response.close()
    assert frames[0][2]["name"] == "20261129083000" and frames[0][2]["badge"]["label"] == "Stalled"
