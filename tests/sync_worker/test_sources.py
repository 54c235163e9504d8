"""Order sources against real peers: an ERP's Postgres, an HTTP orders API, a CSV file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import asyncpg

from services.log_recorder.main import run as run_recorder
from joblog.trigger import send_trigger
from services.sync_worker.main import run as run_worker
from services.sync_worker.settings import WorkerSettings
from services.sync_worker.sources import open_source
from services.sync_worker.sources.sample import generate_orders, write_csv
from tests.sync_worker.conftest import ERP_QUERY, OrdersApi, details_of, finished_runs, paged


async def seed_erp(dsn: str, rows: list[dict[str, str]], *, closed: int = 0) -> None:
    """The ERP's sales_orders: rows as open orders, plus `closed` closed ones the query leaves out."""
    conn = await asyncpg.connect(dsn)
    records = [
        (
            r["order_number"], r["customer_code"], r["customer_name"] or None, r["status"],
            _date(r["order_date"]), _date(r["requested_ship_date"]), r["warehouse"], r["currency"],
            Decimal(r["total_amount"]), int(r["line_count"]), None,
        )
        for r in rows
    ]
    records += [(f"SO-CLOSED-{i}", "C-1", "Closed Co", "closed", _date("2026-01-01"), None, None, "EUR", Decimal(1), 1, None) for i in range(closed)]
    await conn.copy_records_to_table("sales_orders", records=records)
    await conn.close()


def _date(text: str):  # type: ignore[no-untyped-def]
    from datetime import date

    return date.fromisoformat(text) if text else None


async def test_the_erp_database_is_read_in_batches_through_a_cursor(erp_dsn, make_worker_settings):
    await seed_erp(erp_dsn, list(generate_orders(25)), closed=3)
    settings = make_worker_settings(orders_source="postgres", orders_dsn=erp_dsn, orders_query=ERP_QUERY, sync_batch_size=10)
    source = open_source(settings)

    async with source.connect() as batches:
        sizes = [len(batch) async for batch in batches]

    assert sizes == [10, 10, 5]
    assert "_erp" in source.description and "postgres@" not in source.description


async def test_a_sync_from_the_erp_database_imports_its_open_orders(services, erp_dsn, make_worker_settings, recorder_settings, db):
    rows = list(generate_orders(40))
    rows[7]["currency"] = "EURO"
    await seed_erp(erp_dsn, rows, closed=5)
    settings = make_worker_settings(orders_source="postgres", orders_dsn=erp_dsn, orders_query=ERP_QUERY, sync_batch_size=15)
    await services(run_recorder, recorder_settings)
    await services(run_worker, settings)

    await send_trigger(settings, "sync_open_orders")
    [run] = await finished_runs(db, 1)

    assert run["status"] == "success", run["error_message"]
    assert json.loads(run["stats"]) == {
        "fetched": 40, "created": 39, "updated": 0, "unchanged": 0, "closed": 0, "invalid": 1, "imported": 39,
    }
    details = await details_of(db, run["id"])
    assert details[0]["message"].startswith("Connecting to ERP database 127.0.0.1")
    [warning] = [d for d in details if d["level"] == "warning"]
    assert "SO-100007" in warning["message"] and "currency" in warning["message"]
    assert await db.fetchval("SELECT count(*) FROM open_orders WHERE closed_at IS NULL") == 39
    assert await db.fetchval("SELECT total_amount FROM open_orders WHERE order_number = 'SO-100003'") == Decimal(rows[3]["total_amount"])


async def test_an_orders_api_is_followed_page_by_page_and_a_503_is_retried(
    services, orders_api: OrdersApi, make_worker_settings, recorder_settings, db
):
    orders_api.pages = paged(list(generate_orders(23)), 10)
    orders_api.fail_once = {2}
    settings = make_worker_settings(orders_source="http", orders_url=orders_api.url, orders_http_backoff=0.05)
    await services(run_recorder, recorder_settings)
    await services(run_worker, settings)

    await send_trigger(settings, "sync_open_orders")
    [run] = await finished_runs(db, 1)

    assert run["status"] == "success", run["error_message"]
    assert orders_api.hits == [1, 2, 2, 3]
    assert json.loads(run["stats"])["created"] == 23
    by_key = {d["key"]: d for d in await details_of(db, run["id"])}
    assert by_key["source-retry"]["level"] == "warning"
    assert "503" in by_key["source-retry"]["message"] and "retry 1 of 4" in by_key["source-retry"]["message"]
    assert await db.fetchval("SELECT count(*) FROM open_orders WHERE closed_at IS NULL") == 23


async def test_an_orders_api_that_keeps_failing_fails_the_run_naming_the_page(
    services, orders_api: OrdersApi, make_worker_settings, recorder_settings, db
):
    orders_api.pages = paged(list(generate_orders(5)), 10)
    settings = make_worker_settings(
        orders_source="http", orders_url=orders_api.url.replace("page=1", "page=9"), orders_http_retries=1,
    )
    await services(run_recorder, recorder_settings)
    await services(run_worker, settings)

    await send_trigger(settings, "sync_open_orders")
    [run] = await finished_runs(db, 1)

    assert run["status"] == "error"
    assert run["error_class"] == "SourceError" and "404" in run["error_message"] and "page=9" in run["error_message"]
    assert run["failed_step"] == "connect"


async def test_a_csv_file_is_read_in_batches(tmp_path: Path, make_worker_settings):
    path = tmp_path / "orders.csv"
    write_csv(path, generate_orders(25))
    source = open_source(make_worker_settings(orders_csv_path=path, sync_batch_size=10))

    async with source.connect() as batches:
        sizes = [len(batch) async for batch in batches]

    assert sizes == [10, 10, 5]


def test_a_postgres_source_without_a_dsn_stops_the_worker_with_one_clear_line(env):
    result = subprocess.run(
        [sys.executable, "-m", "joblog", "worker"], env={**os.environ, **env, "JOBLOG_ORDERS_SOURCE": "postgres"},
        capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "joblog: invalid setting JOBLOG_ORDERS_DSN: Value error, required when JOBLOG_ORDERS_SOURCE=postgres"
    ]


def test_bad_source_and_schedule_settings_name_the_variable():
    import pytest
    from pydantic import ValidationError

    from services.contracts.settings import describe_error

    cases = {
        "JOBLOG_ORDERS_URL": {"orders_source": "http"},
        "JOBLOG_ORDERS_SOURCE": {"orders_source": "ftp"},
        "JOBLOG_SCHEDULES": {"schedules": {"sync_open_orders": "every fortnight"}},
    }
    for variable, values in cases.items():
        with pytest.raises(ValidationError) as caught:
            WorkerSettings(**values)
        assert describe_error(caught.value).startswith(f"invalid setting {variable}:")


async def test_an_unreachable_erp_fails_with_a_source_error_that_hides_the_password(make_worker_settings):
    import pytest

    from joblog.servers import free_port
    from services.sync_worker.errors import SourceError

    dsn = f"postgresql://reader:s3cret-pw@127.0.0.1:{free_port()}/erp"
    source = open_source(make_worker_settings(orders_source="postgres", orders_dsn=dsn))

    with pytest.raises(SourceError) as caught:
        async with source.connect():
            pass

    assert "cannot connect to ERP database 127.0.0.1" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value) and "s3cret-pw" not in source.description


async def test_a_batch_postgres_refuses_fails_the_run_instead_of_hanging_it(
    services, orders_api: OrdersApi, make_worker_settings, recorder_settings, db
):
    rows = list(generate_orders(100))
    rows[2]["customer_name"] = "Acme Refused"  # valid to pydantic, refused by Postgres (the trigger below)
    await db.execute("""
        CREATE FUNCTION refuse_acme() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.customer_name = 'Acme Refused' THEN RAISE EXCEPTION 'refused: %', NEW.order_number; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_acme BEFORE INSERT ON open_orders FOR EACH ROW EXECUTE FUNCTION refuse_acme();
    """)
    orders_api.pages = paged(rows, 5)
    settings = make_worker_settings(orders_source="http", orders_url=orders_api.url)
    await services(run_recorder, recorder_settings)
    await services(run_worker, settings)

    await send_trigger(settings, "sync_open_orders")
    [run] = await finished_runs(db, 1)

    assert run["status"] == "error"
    assert "refused: SO-100002" in run["error_message"]
    assert await db.fetchval("SELECT count(*) FROM open_orders") == 0


def test_worker_settings_are_plain_data_that_import_no_job_or_source():
    import subprocess
    import sys

    probe = ("import sys; import services.sync_worker.settings as s; s.WorkerSettings(); "
             "loaded = [m for m in sys.modules if m.startswith(('services.sync_worker.jobs', 'services.sync_worker.sources'))]; "
             "print(loaded)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_worker_refuses_to_start_on_an_unknown_job_or_an_unreadable_csv_with_one_line():
    import os
    import subprocess
    import sys

    cases = {
        "JOBLOG_SCHEDULES": ('{"sync_open_ordrs": "every 5m"}', "unknown job 'sync_open_ordrs'; known: "),
        "JOBLOG_JOB_CONCURRENCY": ('{"nope": 2}', "unknown job 'nope'; known: "),
        "JOBLOG_ORDERS_CSV_PATH": ("/nonexistent/orders.csv", "cannot read /nonexistent/orders.csv"),
    }
    for variable, (value, reason) in cases.items():
        env = {**os.environ, variable: value}
        done = subprocess.run([sys.executable, "-m", "joblog", "worker"], env=env, capture_output=True, text=True, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith(f"joblog: invalid setting {variable}:") and reason in lines[0]
