"""The event contract: what other programs may rely on."""
from __future__ import annotations

import json
import uuid

import pytest
from pydantic import ValidationError

from services.contracts import RunCreated, Subjects, parse_event
from tests.factories import run_events


def test_every_event_round_trips_through_json():
    for event in run_events(fail=True) + run_events():
        assert parse_event(event.model_dump_json()) == event


def test_events_are_frozen_and_reject_unknown_fields():
    event = run_events()[0]
    with pytest.raises(ValidationError):
        event.seq = 99  # type: ignore[misc]
    payload = json.loads(event.model_dump_json()) | {"surprise": 1}
    with pytest.raises(ValidationError):
        parse_event(json.dumps(payload))


@pytest.mark.parametrize(
    "change, field",
    [({"schema_version": 2}, "schema_version"), ({"name": "yesterday"}, "name"), ({"seq": 0}, "seq"),
     ({"job": "a.b"}, "job"), ({"occurred_at": "2026-11-29T08:00:00"}, "occurred_at")],
)
def test_invalid_events_are_refused_naming_the_field(change, field):
    payload = json.loads(run_events()[0].model_dump_json()) | change
    with pytest.raises(ValidationError) as error:
        parse_event(json.dumps(payload))
    assert field in str(error.value)


def test_subjects_are_hierarchical_for_wildcards():
    subjects = Subjects(prefix="joblog", stream="JOBS")
    created, failed = run_events(fail=True)[0], run_events(fail=True)[-1]
    assert subjects.for_event(created) == "joblog.run.sync_open_orders.20261129083000.created"
    assert subjects.for_event(failed) == "joblog.run.sync_open_orders.20261129083000.failed"
    assert subjects.runs == "joblog.run.>"


def test_times_are_normalised_to_utc():
    event = RunCreated(run_id=uuid.uuid4(), name="20261129083000", job="j", seq=1, worker_id="w",
                       occurred_at="2026-11-29T09:30:00+01:00")  # type: ignore[arg-type]
    assert event.occurred_at.utcoffset().total_seconds() == 0 and event.occurred_at.hour == 8
