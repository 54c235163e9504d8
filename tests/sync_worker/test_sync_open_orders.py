"""SyncOpenOrdersJob end to end: worker -> JetStream -> recorder -> Postgres."""
from __future__ import annotations

import json
import re
from pathlib import Path

from services.log_recorder.main import run as run_recorder
from joblog.trigger import send_trigger
from services.sync_worker.main import run as run_worker
from services.sync_worker.sources.sample import generate_orders, write_csv
from tests.conftest import eventually


async def finished_run(db, job: str = "sync_open_orders"):  # type: ignore[no-untyped-def]
    return await eventually(
        lambda: db.fetchrow("SELECT * FROM job_logs WHERE job = $1 AND status IN ('success', 'error')", job)
    )


async def details_of(db, run_id):  # type: ignore[no-untyped-def]
    return await db.fetch(
        "SELECT key, message, level, data, created_at FROM job_log_details WHERE job_log_id = $1 ORDER BY first_seq", run_id
    )


async def test_a_sync_run_leaves_a_complete_log_and_the_open_orders(services, make_worker_settings, recorder_settings, db):
    settings = make_worker_settings()
    await services(run_recorder, recorder_settings)
    await services(run_worker, settings)

    await send_trigger(settings, "sync_open_orders")
    run = await finished_run(db)

    assert run["status"] == "success"
    assert re.fullmatch(r"\d{14}", run["name"])
    assert run["trigger"] == "cli" and run["worker_id"] == settings.worker_id
    assert run["started_at"] is not None and run["finished_at"] >= run["started_at"]
    details = await details_of(db, run["id"])
    keys = [d["key"] for d in details]
    assert keys[:2] == ["connect", "connected"]
    assert {"fetched", "import", "closed", "duration"} <= set(keys)
    assert [d["created_at"] for d in details] == sorted(d["created_at"] for d in details)
    by_key = {d["key"]: d for d in details}
    # The progress detail was updated in place and shows the final counts.
    assert by_key["import"]["message"].startswith("Imported 318 orders (318 created")
    assert "Fetched 320 orders" == by_key["fetched"]["message"]
    # The sample's two broken rows are skipped with a warning naming the order and the reason.
    warnings = [d for d in details if d["level"] == "warning"]
    assert len(warnings) == 2
    assert any("SO-100057" in w["message"] and "customer_name" in w["message"] for w in warnings)
    assert any("SO-100211" in w["message"] and "total_amount" in w["message"] for w in warnings)
    assert await db.fetchval("SELECT count(*) FROM open_orders WHERE closed_at IS NULL") == 318


async def test_a_second_sync_counts_unchanged_orders_and_closes_vanished_ones(services, make_worker_settings, recorder_settings, db, tmp_path: Path):
    source = tmp_path / "orders.csv"
    write_csv(source, list(generate_orders(50)))
    settings = make_worker_settings(orders_csv_path=source)
    await services(run_recorder, recorder_settings)
    await services(run_worker, settings)
    await send_trigger(settings, "sync_open_orders")
    await finished_run(db)

    rows = list(generate_orders(50))
    rows[0]["status"] = "picking" if rows[0]["status"] != "picking" else "open"
    write_csv(source, rows[:45])
    await send_trigger(settings, "sync_open_orders")
    await eventually(lambda: _count_is(db, "SELECT count(*) FROM job_logs WHERE status = 'success'", 2))

    second = await db.fetchrow("SELECT stats FROM job_logs ORDER BY created_at DESC LIMIT 1")
    assert json.loads(second["stats"]) == {
        "fetched": 45, "created": 0, "updated": 1, "unchanged": 44, "closed": 5, "invalid": 0, "imported": 45,
    }
    assert await db.fetchval("SELECT count(*) FROM open_orders WHERE closed_at IS NULL") == 45


async def _count_is(db, sql: str, expected: int) -> bool:  # type: ignore[no-untyped-def]
    return await db.fetchval(sql) == expected


async def test_a_failing_source_ends_the_run_in_error_with_the_reason_in_a_detail(services, make_worker_settings, recorder_settings, db, tmp_path: Path):
    vanishing = tmp_path / "missing.csv"
    vanishing.write_text("")
    settings = make_worker_settings(orders_csv_path=vanishing)
    await services(run_recorder, recorder_settings)
    await services(run_worker, settings)
    vanishing.unlink()  # removed under a running worker (a missing file at start is refused: test_sources)

    await send_trigger(settings, "sync_open_orders")
    run = await finished_run(db)

    assert run["status"] == "error"
    assert run["error_class"] == "SourceError"
    assert "missing.csv" in run["error_message"]
    assert run["failed_step"] == "connect"
    assert "Traceback" in run["error_traceback"]
    details = await details_of(db, run["id"])
    assert details[0]["key"] == "connect"
    assert details[-1]["level"] == "error"
    assert "missing.csv" in details[-1]["message"] and "during step 'connect'" in details[-1]["message"]


async def test_a_large_import_updates_one_progress_detail_in_place(services, make_worker_settings, recorder_settings, db, tmp_path: Path):
    source = tmp_path / "orders.csv"
    write_csv(source, generate_orders(3000))
    settings = make_worker_settings(orders_csv_path=source, sync_batch_size=100, sync_progress_interval=0)
    await services(run_recorder, recorder_settings)
    await services(run_worker, settings)

    await send_trigger(settings, "sync_open_orders")
    run = await finished_run(db)

    details = await db.fetch("SELECT key, message, first_seq, seq FROM job_log_details WHERE job_log_id = $1 ORDER BY first_seq", run["id"])
    assert [d["key"] for d in details] == ["connect", "connected", "fetched", "import", "closed", "duration"]
    progress = {d["key"]: d for d in details}["import"]
    # 30 batches, each a progress update of the same detail, then the final count.
    assert progress["seq"] - progress["first_seq"] >= 30
    assert progress["message"].startswith("Imported 3,000 orders (3,000 created")
    assert run["last_seq"] == run["terminal_seq"]


async def _sync_with_bad_rows(services, make_worker_settings, recorder_settings, db, tmp_path: Path, bad: dict[int, dict[str, str]]):  # type: ignore[no-untyped-def]
    """Sync 10 orders of which `bad` (index -> field values) are broken; returns the run and its warnings."""
    rows = list(generate_orders(10))
    for index, values in bad.items():
        rows[index].update(values)
    source = tmp_path / "orders.csv"
    write_csv(source, rows)
    settings = make_worker_settings(orders_csv_path=source)
    await services(run_recorder, recorder_settings)
    await services(run_worker, settings)
    await send_trigger(settings, "sync_open_orders")
    run = await finished_run(db)
    warnings = [d["message"] for d in await details_of(db, run["id"]) if d["level"] == "warning"]
    return run, warnings


async def test_values_the_database_could_not_store_are_invalid_rows_not_a_failed_run(services, make_worker_settings, recorder_settings, db, tmp_path: Path):
    run, warnings = await _sync_with_bad_rows(
        services, make_worker_settings, recorder_settings, db, tmp_path,
        {3: {"line_count": "99999999999"}, 5: {"total_amount": "123456789012345.00"}},
    )
    assert run["status"] == "success"
    assert json.loads(run["stats"])["invalid"] == 2 and json.loads(run["stats"])["created"] == 8
    assert any("SO-100003" in w and "line_count" in w for w in warnings)
    assert any("SO-100005" in w and "total_amount" in w for w in warnings)


async def test_a_nul_character_in_a_source_value_is_an_invalid_row_not_a_failed_run(services, make_worker_settings, recorder_settings, db, tmp_path: Path):
    run, warnings = await _sync_with_bad_rows(
        services, make_worker_settings, recorder_settings, db, tmp_path,
        # legacy ERPs do this; Postgres text cannot hold it
        {2: {"customer_name": "ACME\x00GmbH"}, 4: {"order_number": "SO-1\x0004"}},
    )
    assert run["status"] == "success"
    assert json.loads(run["stats"])["invalid"] == 2 and json.loads(run["stats"])["created"] == 8
    assert any("SO-100002" in w and "customer_name" in w for w in warnings)
    assert any("SO-1\\x0004" in w and "order_number" in w for w in warnings)  # shown, not dead-lettered
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
