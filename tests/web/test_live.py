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
