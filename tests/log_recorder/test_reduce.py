"""A fetched batch is validated in one call, yet every message is judged on its own."""
from __future__ import annotations

from nats.aio.msg import Msg

from services.contracts import Subjects
from services.log_recorder.main import reduce
from services.log_recorder.settings import RecorderSettings
from tests.factories import run_events


def delivered(subjects: Subjects, payloads: list[bytes]) -> list[Msg]:
    """Messages as a pull consumer receives them (stream seqs 1.., in the ack subject)."""
    return [Msg(None, subject=f"{subjects.prefix}.run.sync_open_orders.x.step",  # type: ignore[arg-type]
                reply=f"$JS.ACK.{subjects.stream}.log_recorder.1.{seq}.{seq}.1733000000000000000.0", data=payload)
            for seq, payload in enumerate(payloads, 1)]


def settings(subjects: Subjects) -> RecorderSettings:
    return RecorderSettings(database_url="postgresql://unused/db", nats_url="nats://127.0.0.1:1", stream=subjects.stream,
                            subject_prefix=subjects.prefix)


def test_a_broken_message_among_good_ones_is_a_dead_letter_and_the_others_are_applied():
    subjects = Subjects(prefix="t", stream="T")
    events = run_events(name="20261201120000")
    payloads = [e.model_dump_json().encode() for e in events]
    payloads.insert(2, b'{"schema_version": 1, "type": "run.step"')  # cut short

    batches, letters, last_seq = reduce(delivered(subjects, payloads), settings(subjects))

    assert [(seq, reason.split(":")[0]) for _, _, reason, seq in letters] == [(3, "not valid JSON")]
    assert batches[0].events == len(events) and last_seq == len(payloads)
    assert batches[0].first_stream_seq == {events[0].run_id: 1}


def test_two_events_in_one_message_are_a_dead_letter_not_two_events():
    subjects = Subjects(prefix="t", stream="T")
    events = run_events(name="20261201120001")
    payloads = [e.model_dump_json().encode() for e in events]
    two_in_one = payloads[1] + b"," + payloads[2]  # a '{...}' that would split in the joined array
    batch_payloads = [payloads[0], two_in_one, *payloads[3:]]

    batches, letters, _ = reduce(delivered(subjects, batch_payloads), settings(subjects))

    assert [seq for _, _, _, seq in letters] == [2]
    assert batches[0].events == len(events) - 2
