"""Each run knows whether all its events arrived; failed runs carry their error's fingerprint."""
from __future__ import annotations

import random

from services.contracts import RunFailed
from services.log_recorder import db as recorder_db
from services.log_recorder.fingerprints import fingerprint, normalise
from services.log_recorder.main import run as run_recorder
from services.log_recorder.projection import Batch, seq_ranges
from services.log_recorder.rebuild import rebuild
from tests.conftest import eventually
from tests.factories import publish, run_events, snapshot
from tests.log_recorder.conftest import drained, project_batches

GAP = ("SELECT joblog_seq_gap(seen_seqs) AS gap, joblog_seq_count(seen_seqs) AS seen, seen_seqs::text AS seqs, has_gap "
       "FROM job_logs WHERE name = $1")


def test_two_errors_that_differ_only_in_ids_numbers_and_quoted_values_share_a_fingerprint() -> None:
    a = fingerprint("ERPError", "import", "Order SO-104711 rejected by 'erp-7': HTTP 422 after 3.5 s (request 3f2504e0-4f89-11d3-9a0c-0305e82c3301)")
    b = fingerprint("ERPError", "import", "Order SO-104712 rejected by 'erp-2': HTTP 422 after 12 s (request 9b2c7a10-0000-4000-8000-00000000abcd)")
    assert a == b and len(a) == 16
    assert fingerprint("ERPError", "import", "trace 8f14e45fceea167a5a36dedd4bea2543") == fingerprint("ERPError", "import", "trace 0cc175b9c0f1b6a831c399e269772661")
    # What is not an id keeps errors apart: another class, another step, other words.
    assert fingerprint("SourceError", "import", "Order SO-1 rejected") != fingerprint("ERPError", "import", "Order SO-1 rejected")
    assert fingerprint("ERPError", "connect", "Order SO-1 rejected") != fingerprint("ERPError", "import", "Order SO-1 rejected")
    assert fingerprint("ERPError", "import", "Order SO-1 rejected") != fingerprint("ERPError", "import", "Order SO-1 accepted")
    assert normalise('column "total" got 12,5 at 08:30:00, id deadbeef01') == "column <q> got <n> at <n>, id <hex>"


def test_seq_ranges_are_a_compact_multirange_literal() -> None:
    assert seq_ranges({1, 2, 3, 5, 7, 8}) == "{[1,4),[5,6),[7,9)}"
    assert seq_ranges(set()) == "{}"


async def test_a_run_knows_its_gap_and_redelivery_in_any_order_gives_the_same_tables(db) -> None:
    events = run_events(name="20261129083000", steps=20)
    assert len(events) == 25
    complete = await project_batches(db, [events])
    row = await db.fetchrow(GAP, "20261129083000")
    assert (row["gap"], row["seen"], row["seqs"], row["has_gap"]) == (None, 25, "{[1,26)}", False)

    # Event 18 never arrives; the rest come in shuffled batches, some twice.
    missing = [e for e in events if e.seq != 18]
    shuffled = missing + random.sample(missing, 10)
    random.shuffle(shuffled)
    gapped = await project_batches(db, [shuffled[i : i + 7] for i in range(0, len(shuffled), 7)])
    row = await db.fetchrow(GAP, "20261129083000")
    assert (row["gap"], row["seen"], row["has_gap"]) == (17, 24, True)
    assert gapped != complete
    assert await project_batches(db, [missing]) == gapped

    # The first events missing: the gap is "after #0".
    await project_batches(db, [events[3:]])
    row = await db.fetchrow(GAP, "20261129083000")
    assert (row["gap"], row["has_gap"]) == (0, True)


async def test_the_stored_gap_flag_agrees_with_the_gap_function_for_every_shape_of_seen_seqs(db) -> None:
    shapes = [None, "{}", "{[1,2)}", "{[1,5)}", "{[2,5)}", "{[1,3),[4,6)}", "{[3,4),[5,9)}", "{[1,4),[5,6),[9,10)}",
              "{[1,5),[2000000001,2000000002)}", "{[2000000001,2000000002)}", "{[1,1999999999)}"]
    for shape in shapes:
        flag, function = await db.fetchrow(
            "WITH s AS (SELECT $1::text::int4multirange AS m) "
            "SELECT (SELECT has_gap FROM (SELECT m AS seen_seqs) r, LATERAL (SELECT "
            "  COALESCE(NOT isempty(seen_seqs * '{[1,2000000000)}'::int4multirange) AND (lower(seen_seqs * "
            "  '{[1,2000000000)}'::int4multirange) > 1 OR seen_seqs * '{[1,2000000000)}'::int4multirange <> "
            "  int4multirange(range_merge(seen_seqs * '{[1,2000000000)}'::int4multirange))), false) AS has_gap) g), "
            "joblog_seq_gap(m) IS NOT NULL FROM s", shape)
        assert flag == function, shape
    # and the column Postgres stores is that expression
    await db.execute("DELETE FROM job_logs")
    for i, shape in enumerate(shapes):
        await db.execute("INSERT INTO job_logs (id, name, job, created_at, updated_at, seen_seqs) "
                         "VALUES (gen_random_uuid(), $1, 'j', now(), now(), $2::text::int4multirange)", f"r{i}", shape)
    assert await db.fetchval("SELECT count(*) FROM job_logs WHERE has_gap <> (joblog_seq_gap(seen_seqs) IS NOT NULL)") == 0
    assert await db.fetchval("SELECT count(*) FROM job_logs WHERE has_gap") == 4


async def test_a_step_rewrites_its_run_in_place_not_every_index_of_job_logs(db) -> None:
    """Steps change only last_seq, seen_seqs and updated_at: heap-only (HOT) updates, no new index entries."""
    events = run_events(name="20261129083000", steps=40)
    await project_batches(db, [])  # emptied tables; the counters below start here
    await db.execute("SELECT pg_stat_force_next_flush()")
    before = await db.fetchrow("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'job_logs'")
    for event in events:  # one batch (and one transaction) per event, as a quiet recorder sees them
        batch = Batch()
        batch.add(event)
        async with db.transaction():
            await recorder_db.apply_batch(db, batch)
    await db.execute("SELECT pg_stat_force_next_flush()")
    after = await db.fetchrow("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'job_logs'")
    updates, hot = after[0] - before[0], after[1] - before[1]
    assert updates == len(events) - 1
    # Not HOT: only the updates that change an indexed column (new -> processing, the terminal event).
    assert hot >= updates - 3, (updates, hot)
    assert (await db.fetchrow(GAP, "20261129083000"))["has_gap"] is False


async def test_a_failed_runs_fingerprint_follows_its_terminal_event_and_survives_a_rebuild(
    services, js, subjects, recorder_settings, db
) -> None:
    first = run_events(name="20261129083000", fail=True)
    second = run_events(name="20261129093000", fail=True)
    ok = run_events(name="20261129103000")
    await services(run_recorder, recorder_settings)
    await publish(js, subjects, first + second + ok)
    await eventually(lambda: drained(js, subjects.stream))
    prints = {r["name"]: r["error_fingerprint"] for r in await db.fetch("SELECT name, error_fingerprint FROM job_logs")}
    assert prints["20261129083000"] == prints["20261129093000"] == fingerprint("SourceError", "progress", "ERP unreachable")
    assert prints["20261129103000"] is None

    # A lost-worker verdict (seq 2e9+1) never counts as a gap in the worker's own events.
    last = second[-1]
    assert isinstance(last, RunFailed)
    await db.execute("UPDATE job_logs SET seen_seqs = seen_seqs + '{[2000000000,2000000002)}' WHERE name = $1", last.name)
    assert (await db.fetchrow(GAP, last.name))["gap"] is None
    await db.execute("UPDATE job_logs SET seen_seqs = seen_seqs - '{[2000000000,2000000002)}' WHERE name = $1", last.name)

    before = await snapshot(db)
    indexes = {r["indexname"] for r in await db.fetch("SELECT indexname FROM pg_indexes WHERE tablename LIKE 'job_log%'")}
    assert {"job_log_details_search", "job_logs_error_search", "job_logs_fingerprint", "job_logs_with_gap"} <= indexes
    await rebuild(recorder_settings, progress=False)
    assert await snapshot(db) == before
    assert {r["indexname"] for r in await db.fetch("SELECT indexname FROM pg_indexes WHERE tablename LIKE 'job_log%'")} == indexes
    definition = await db.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'job_log_details_search'")
    assert "gin_trgm_ops" in definition and "job_log_details " in definition
