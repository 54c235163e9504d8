"""Live updates: run events on NATS reach the browsers as server-sent events."""
from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.factories import publish, run_events


async def sse_events(response: Any, wanted: int) -> list[tuple[str, dict[str, Any]]]:
    """Read server-sent events until `wanted` of them (not counting the hello) arrived."""
    events: list[tuple[str, dict[str, Any]]] = []
    kind = None
    async with asyncio.timeout(30):
        while len(events) < wanted:
            line = (await response.content.readline()).decode().rstrip("\r\n")
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind != "hello":
                events.append((kind or "message", json.loads(line.split(":", 1)[1])))
    return events


async def hello(response: Any) -> None:
    """Wait for the stream's first event: from then on the web is listening."""
    async with asyncio.timeout(30):
        while not (await response.content.readline()).startswith(b"data:"):
            pass


async def test_the_index_stream_carries_each_runs_status_changes_rendered_from_the_events(client, js, subjects):
    events = run_events(name="20261129083000", steps=2, fail=True)
    response = await client.get("/events/runs")
    assert response.headers["Content-Type"].startswith("text/event-stream")
    await hello(response)

    await publish(js, subjects, events)
    received = await sse_events(response, 3)  # created, started, failed: the index gets no steps
    response.close()

    assert [kind for kind, _ in received[:3]] == ["run", "run", "run"]
    statuses = [data["status"] for _, data in received[:3]]
    assert statuses == ["new", "processing", "error"]
    failed = received[2][1]
    assert failed["name"] == "20261129083000" and failed["summary"] == "ERP unreachable"
    assert failed["badge"] == {"label": "Error", "icon": "✕", "css": "error"}
    assert failed["duration"] == "900 ms"


async def test_a_run_stream_carries_only_that_runs_messages_with_millisecond_times(client, js, subjects):
    mine = run_events(name="20261129083000", steps=2, updates=2)
    other = run_events(name="20261129083001", steps=2)
    response = await client.get("/runs/20261129083000/events")
    await hello(response)

    await publish(js, subjects, other + mine)
    received = await sse_events(response, len(mine))
    response.close()

    steps = [data for kind, data in received if kind == "step"]
    assert [s["key"] for s in steps] == ["step-0", "step-1", "progress", "progress"]
    assert steps[-1]["message"] == "Imported 200 orders"
    assert steps[0]["at"] == "2026-11-29 08:30:00.450"
    assert steps[-1]["clock"] == "08:30:00.900"  # for the note on a detail updated in place
    assert {data["name"] for kind, data in received if kind == "run"} == {"20261129083000"}
    assert received[-1][1]["status"] == "success"


async def test_live_updates_need_a_valid_run_name(client):
    assert (await client.get("/runs/nonsense/events")).status == 404


async def sse_frames(response: Any, wanted: int) -> list[tuple[str, str | None, dict[str, Any]]]:
    """Read (event, id, data) frames, the hello included, until `wanted` of them arrived."""
    frames: list[tuple[str, str | None, dict[str, Any]]] = []
    kind, ident = "message", None
    async with asyncio.timeout(30):
        while len(frames) < wanted:
            line = (await response.content.readline()).decode().rstrip("\r\n")
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("id:"):
                ident = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                frames.append((kind, ident, json.loads(line.split(":", 1)[1])))
                kind, ident = "message", None
    return frames


async def test_a_run_stream_resumes_after_the_last_seq_replaying_the_database_then_live_without_duplicates(client, project, js, subjects):
    events = run_events(name="20261129083000", steps=4, updates=0)  # seq 1..7: created, started, 4 steps, succeeded
    await project(events[:4])  # the page showed seq 1..4 (step-0, step-1) ...
    shown = 2
    await project(events[4:6])  # ... then step-2 and step-3 were recorded while the browser was away

    response = await client.get("/runs/20261129083000/events", headers={"Last-Event-ID": str(shown + 2)})
    replay = await sse_frames(response, 4)  # hello, step-2, step-3, the run as it stands
    await publish(js, subjects, events)  # the stream again on NATS: the live copies of 1..6 are dropped
    live = await sse_frames(response, 1)
    response.close()

    assert replay[0][0] == "hello" and replay[0][1] == "4"
    assert [(kind, ident, data["key"]) for kind, ident, data in replay[1:3]] == [("step", "5", "step-2"), ("step", "6", "step-3")]
    assert replay[3][:2] == ("run", "6") and replay[3][2]["status"] == "processing"
    assert [(kind, ident, data["status"]) for kind, ident, data in live] == [("run", "7", "success")]


async def test_a_run_stream_first_connection_resumes_from_the_pages_after_parameter(client, project):
    await project(run_events(name="20261129083000", steps=3, updates=0))  # seq 1..6; the page showed up to 4
    response = await client.get("/runs/20261129083000/events?after=4")
    frames = await sse_frames(response, 3)
    response.close()
    assert [(kind, ident) for kind, ident, _ in frames] == [("hello", "4"), ("step", "5"), ("run", "6")]
    assert frames[1][2]["key"] == "step-2" and frames[2][2]["status"] == "success"


async def test_a_resume_point_that_is_not_a_number_is_a_400(client):
    response = await client.get("/runs/20261129083000/events", headers={"Last-Event-ID": "abc"})
    assert response.status == 400
    assert (await client.get("/events/runs?since=-1")).status == 400


async def test_the_index_stream_replays_the_newest_runs_when_the_projection_moved_since_the_page(client, project, db):
    since = await db.fetchval("SELECT version FROM projection_version")
    await project(run_events(name="20261129083000"))
    response = await client.get(f"/events/runs?since={since}")
    frames = await sse_frames(response, 2)
    response.close()
    version = str(await db.fetchval("SELECT version FROM projection_version"))
    assert frames[0][:2] == ("hello", version)
    assert frames[1][0] == "run" and frames[1][1] == version
    assert frames[1][2]["name"] == "20261129083000" and frames[1][2]["status"] == "success"
