"""A rebuild from a snapshot replays only the stream after it, and gives the tables a full replay gives."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

from services.log_recorder.errors import RebuildFailed
from services.log_recorder.main import run as run_recorder
from services.log_recorder.rebuild import rebuild
from services.log_recorder.snapshot import take
from tests.conftest import eventually
from tests.factories import T0, publish, run_events, snapshot
from tests.log_recorder.conftest import deletions_done, drained
from tests.log_recorder.test_deletion import delete


async def test_a_rebuild_from_a_snapshot_and_the_tail_equals_a_full_replay(services, js, subjects, recorder_settings, db, env):
    before = [run_events(name=f"2026112808{i:02d}00", start=T0 - timedelta(days=1, minutes=i), fail=i % 3 == 0)
              for i in range(12)]
    await services(run_recorder, recorder_settings)
    await publish(js, subjects, [e for run in before for e in run])
    await eventually(lambda: drained(js, subjects.stream))

    done = subprocess.run([sys.executable, "-m", "joblog", "snapshot"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    position = await db.fetchval("SELECT stream_seq FROM projection_snapshots")
    assert position == (await js.stream_info(subjects.stream)).state.last_seq
    assert done.stdout.startswith("snapshot of 12 runs and ") and f"#{position}" in done.stdout

    # The tail: new runs, a run of before the snapshot that goes on (a late step), deletions of old and new runs.
    after = [run_events(name=f"2026113008{i:02d}00", start=T0 + timedelta(days=1, minutes=i), fail=i == 2) for i in range(5)]
    await publish(js, subjects, [e for run in after for e in run])
    late = before[1][-2].model_copy(update={"event_id": before[1][-1].event_id.__class__(int=7), "seq": 99,
                                            "message": "a late word"})
    await publish(js, subjects, [late])
    await delete(js, subjects, names=[before[4][0].name, after[3][0].name])
    await delete(js, subjects, created_before=T0 - timedelta(days=1, minutes=9, seconds=30))  # the 2 oldest
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))
    live = await snapshot(db)
    assert len(live["job_logs"]) == 12 + 5 - 4

    tail = (await js.stream_info(subjects.stream)).state.last_seq - position
    from_snapshot = await rebuild(recorder_settings, progress=False)
    assert from_snapshot.snapshot_seq == position
    assert from_snapshot.replayed <= tail < from_snapshot.stream_last_seq  # only the tail was replayed
    assert await snapshot(db) == live

    full = await rebuild(recorder_settings, progress=False, full=True)
    assert full.snapshot_seq is None and full.replayed > from_snapshot.replayed
    assert await snapshot(db) == live

    # Messages before the snapshot lost to limits: a full replay refuses, the snapshot's rebuild does not need them.
    await js.purge_stream(subjects.stream, seq=position + 1)
    try:
        await rebuild(recorder_settings, progress=False, full=True)
    except RebuildFailed as error:
        assert "are gone" in str(error)
    else:
        raise AssertionError("a full rebuild ran over a stream that lost messages")
    assert await snapshot(db) == live
    again = await rebuild(recorder_settings, progress=False)
    assert again.snapshot_seq == position
    assert await snapshot(db) == live


async def test_a_snapshot_waits_for_deletions_in_progress(js, recorder_settings, db):
    from services.log_recorder.main import ensure_consumer

    await ensure_consumer(js, recorder_settings)  # a recorder's consumer, and no reaper to finish the deletion
    await db.execute("INSERT INTO run_deletions (event_id, occurred_at, created_before) "
                     "VALUES (gen_random_uuid(), now(), now() - interval '900 days')")
    try:
        await take(recorder_settings)
    except RebuildFailed as error:
        assert str(error).startswith("1 deletion(s) still in progress")
    else:
        raise AssertionError("a snapshot kept runs a deletion in progress removes")
    assert await db.fetchval("SELECT count(*) FROM projection_snapshots") == 0
    await db.execute("UPDATE run_deletions SET finished_at = now()")
    taken = await take(recorder_settings)
    assert (taken.stream_seq, taken.runs) == (0, 0)
