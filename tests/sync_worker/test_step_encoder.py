"""ctx.log writes run.step rows without building a model: the JSON must be the contract model's, byte for byte."""
from __future__ import annotations

import math
import uuid
from datetime import datetime, timezone
from typing import Any

import asyncpg
import pytest

from services.contracts import StepLogged, Subjects, parse_event
from services.sync_worker.jobs import RunContext
from services.sync_worker.jobs.api import FLUSH_BACKLOG, JobRegistry, create_run, execute_run
from services.sync_worker.outbox import StepEncoder

RUN_ID = uuid.UUID("5b0c1f3e-8d2a-4c71-9e55-0a8f6d2b7c41")
NAME, JOB = "20260131123456-2", "sync_open_orders"


def encoder() -> StepEncoder:
    return StepEncoder(Subjects(prefix="t1", stream="T1"), RUN_ID, NAME, JOB)


@pytest.mark.parametrize("message, key, level, data", [
    ("Upserted 2,500 of 40,000 orders (6%)", "progress", "info", {"done": 2500, "total": 40000}),
    ("Kunde Müller & Söhne: \"Lieferung\" \\ offen\n\ttab \u2028 ✓ 🚚", "step-7", "warning", None),
    ("", "k" * 200, "debug", {"nested": {"list": [1, 2.5, None, True, "x"]}, "empty": {}}),
    ("m" * 20_000, "error", "error", {"ü": "ß"}),
])
def test_the_row_is_the_models_json(message: str, key: str, level: str, data: dict[str, Any] | None):
    subject, event_id, payload = encoder().row(9, key, message, level, data)  # type: ignore[misc]
    parsed = parse_event(payload)
    model = StepLogged(run_id=RUN_ID, name=NAME, job=JOB, seq=9, key=key, message=message, level=level,  # type: ignore[arg-type]
                       data=data, event_id=parsed.event_id, occurred_at=parsed.occurred_at)
    assert parsed == model
    assert payload == model.model_dump_json().encode()
    assert subject == Subjects(prefix="t1", stream="T1").for_event(model)
    assert str(parsed.event_id) == event_id and parsed.event_id.version == 4 and parsed.event_id.variant == uuid.RFC_4122
    assert abs((parsed.occurred_at - datetime.now(timezone.utc)).total_seconds()) < 60


def test_event_ids_are_distinct():
    steps = encoder()
    ids = {steps.row(i + 1, "k", "m", "info", None)[1] for i in range(3000)}  # type: ignore[index]
    assert len(ids) == 3000


@pytest.mark.parametrize("message, key, level, data", [
    ("m", "", "info", None),                                  # key too short
    ("m", "k" * 201, "info", None),                           # key too long
    ("m" * 20_001, "k", "info", None),                        # message too long
    ("m", "k", "verbose", None),                              # no such level
    ("m", "k", "info", {"at": datetime(2026, 1, 1, tzinfo=timezone.utc)}),  # JSON knows no datetime
    ("m", "k", "info", {"ratio": math.nan}),                  # NaN is not JSON
    ("bad \udc80 text", "k", "info", None),                   # not valid Unicode
])
def test_what_it_cannot_vouch_for_goes_the_models_way(message: str, key: str, level: str, data: dict[str, Any] | None):
    assert encoder().row(3, key, message, level, data) is None


async def test_ctx_log_commits_valid_events_either_way(make_worker_settings, database_url, db):
    """Through the real run context: encoded rows and the model's fallbacks interleave in seq order, nothing lost."""
    jobs = JobRegistry()
    steps = FLUSH_BACKLOG + 7  # past the point where the job waits for the background writes

    @jobs.job("bench_encoder", title="EncoderJob")
    async def job(ctx: RunContext) -> dict[str, Any]:
        for i in range(steps):
            await ctx.log(f"Step {i} ünicode", key=f"step-{i % 50}")
        await ctx.log("When", key="when", at=datetime(2026, 1, 1, tzinfo=timezone.utc))  # the model serialises it
        await ctx.log("Secret postgresql://u:hunter2@db/x", key="dsn")
        with pytest.raises(Exception):
            await ctx.log("Bad level", key="bad", level="verbose")  # type: ignore[arg-type]
        return {"steps": steps}

    settings = make_worker_settings()
    async with asyncpg.create_pool(database_url, min_size=1, max_size=3) as pool:
        ctx = await create_run(jobs.get("bench_encoder"), settings, pool, trigger="manual")
        assert await execute_run(jobs.get("bench_encoder"), ctx) is True

    rows = await db.fetch("SELECT subject, event_id, payload FROM outbox ORDER BY id")
    events = [parse_event(bytes(r["payload"])) for r in rows]
    assert [e.type for e in events] == ["run.created", "run.started", *["run.step"] * (steps + 2), "run.succeeded"]
    # A refused log call still used its seq: the run's seqs are increasing, one per call.
    assert [e.seq for e in events[:-1]] == list(range(1, steps + 5))
    assert all(r["event_id"] == e.event_id and r["subject"] == settings.subjects.for_event(e) for r, e in zip(rows, events))
    assert events[2].message == "Step 0 ünicode" and events[steps + 1].key == "step-" + str((steps - 1) % 50)
    assert events[steps + 2].data == {"at": "2026-01-01T00:00:00Z"}
    assert "hunter2" not in events[steps + 3].message
