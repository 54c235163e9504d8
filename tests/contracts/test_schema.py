"""The published contract (docs/schema/, docs/events.md) says exactly what the models do."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from joblog import schema
from services.contracts import (
    ActionTaken, AlertRaised, CancelReply, CancelRequested, RunsDeleted, SchedulePaused, ScheduleResumed, Subjects,
    TriggerRequested, WorkerHeartbeat, WorkerStopped, parse_event,
)
from tests.factories import run_events

ROOT = Path(__file__).parents[2]
SCHEMA_DIR = ROOT / "docs" / "schema"
EVENTS_MD = ROOT / "docs" / "events.md"
NON_RUN_MODELS = {
    "runs.deleted": RunsDeleted, "worker.heartbeat": WorkerHeartbeat, "trigger.requested": TriggerRequested,
    "worker.stopped": WorkerStopped, "action.taken": ActionTaken,
    "alert.raised": AlertRaised,
    "schedule.paused": SchedulePaused, "schedule.resumed": ScheduleResumed,
    "cancel.requested": CancelRequested, "cancel.reply": CancelReply,
}


def published_schema() -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / schema.SCHEMA_FILE).read_text(encoding="utf-8"))


def doc_examples() -> list[dict[str, Any]]:
    """Every ```json block of docs/events.md."""
    blocks = re.findall(r"```json\n(.*?)```", EVENTS_MD.read_text(encoding="utf-8"), flags=re.S)
    return [json.loads(block) for block in blocks]


def validate_with_models(payload: dict[str, Any]) -> Any:
    model = NON_RUN_MODELS.get(payload["type"])
    return model.model_validate_json(json.dumps(payload)) if model else parse_event(json.dumps(payload))


def test_the_checked_in_schema_matches_the_models():
    stale = schema.stale(SCHEMA_DIR)
    assert not stale, f"the event models changed: run `joblog schema` and commit {', '.join(map(str, stale))}"


def test_generation_is_deterministic():
    assert schema.documents() == schema.documents()


def test_joblog_schema_check_reports_an_out_of_date_directory(tmp_path: Path):
    check = [sys.executable, "-m", "joblog", "schema", "--out", str(tmp_path), "--check"]
    assert subprocess.run(check, capture_output=True, cwd=ROOT).returncode == 1
    written = subprocess.run([sys.executable, "-m", "joblog", "schema", "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert written.returncode == 0 and "asyncapi.json" in written.stdout
    assert subprocess.run(check, capture_output=True, cwd=ROOT).returncode == 0


def test_events_the_models_produce_are_valid_against_the_published_schema():
    validator = jsonschema.Draft202012Validator(published_schema())
    for event in run_events() + run_events(fail=True):
        validator.validate(json.loads(event.model_dump_json()))


def test_every_example_in_events_md_is_valid_for_the_schema_and_the_models():
    validator = jsonschema.Draft202012Validator(published_schema())
    examples = doc_examples()
    for payload in examples:
        validator.validate(payload)
        assert json.loads(validate_with_models(payload).model_dump_json()) == payload
    documented = {payload["type"] for payload in examples}
    published = set(published_schema()["discriminator"]["mapping"])
    assert documented == published, f"docs/events.md lacks an example of {published - documented}"


def test_the_published_schema_tolerates_additive_changes_but_not_wrong_types():
    validator = jsonschema.Draft202012Validator(published_schema())
    event = json.loads(run_events()[0].model_dump_json())
    validator.validate({**event, "added_in_a_later_release": True})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**event, "seq": "one"})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({key: value for key, value in event.items() if key != "run_id"})


def test_asyncapi_channels_are_the_subjects_the_services_use():
    document = json.loads((SCHEMA_DIR / schema.ASYNCAPI_FILE).read_text(encoding="utf-8"))
    assert document["asyncapi"].startswith("3.")
    channels = document["channels"]
    subjects = Subjects()
    event = run_events()[0]

    def address(channel: str, **values: str) -> str:
        text = channels[channel]["address"]
        for name, value in {"prefix": subjects.prefix, **values}.items():
            text = text.replace("{" + name + "}", value)
        return text

    assert address("runEvents", job=event.job, name=event.name, kind="created") == subjects.for_event(event)
    assert address("heartbeats", worker_id="w1") == subjects.for_heartbeat("w1")
    assert address("triggers", job="sync_open_orders") == subjects.for_trigger("sync_open_orders")
    assert address("retention") == subjects.retention
    assert address("schedules", job="sync_open_orders") == subjects.for_schedule("sync_open_orders")
    assert address("cancels", worker_id="w1") == subjects.for_cancel("w1")
    referenced = {ref["$ref"].rsplit("/", 1)[1] for channel in channels.values() for ref in channel["messages"].values()}
    assert referenced == set(document["components"]["messages"])
    for message in document["components"]["messages"].values():
        assert message["payload"]["$ref"].rsplit("/", 1)[1] in document["components"]["schemas"]
