"""Operating jobs from the Monitor in a real Chromium (Debian's), against real workers and recorders: the live
Monitor, Run now landing on its run, charts with the right counts, pause/resume, cancel, bulk retry."""
from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from services.log_recorder.main import run as run_recorder
from services.sync_worker.main import run as run_worker
from services.sync_worker.sources.sample import generate_orders, write_csv
from tests.conftest import eventually
from tests.factories import run_events
import tests.sync_worker.test_pause_and_cancel as worker_tests
import tests.web.test_browser as browser_tests
from tests.web.test_monitor_ops import name_at, skipped

DESKTOP, shoot = browser_tests.DESKTOP, browser_tests.shoot
browser = browser_tests.browser  # the fixtures, shared
test_jobs = worker_tests.test_jobs

pytestmark = pytest.mark.browser
RUN_URL = re.compile(r"/runs/\d{14}(-\d+)?$")

# Sums the stacked bars' data-count per outcome, as the chart draws them.
SVG_COUNTS = """() => {
  const counts = {success: 0, error: 0, skipped: 0};
  for (const rect of document.querySelectorAll("svg.chart-runs rect[data-outcome]"))
    counts[rect.dataset.outcome] += Number(rect.dataset.count);
  return counts;
}"""


async def test_the_monitor_follows_a_run_started_by_run_now_which_lands_on_its_page_and_the_charts_count_it(
    browser: Browser, client: Any, project: Any, services: Any, make_worker_settings: Any, recorder_settings: Any,
    tmp_path: Path, artifacts: Path, db: Any,
) -> None:
    now = datetime.now(timezone.utc)
    for hours, fail in ((20, False), (15, True), (9, False), (5, False), (3, True)):
        start = now - timedelta(hours=hours)
        await project(run_events(name=name_at(start), start=start, fail=fail))
    await project(skipped(name_at(now - timedelta(hours=2)), now - timedelta(hours=2)))
    source = tmp_path / "orders.csv"
    write_csv(source, list(generate_orders(2000)))
    await services(run_recorder, recorder_settings)
    await services(run_worker, make_worker_settings(orders_csv_path=source, sync_batch_size=20, sync_progress_interval=0.05,
                                                    schedules={"purge_closed_orders": "0 3 * * *"}))
    context = await browser.new_context(viewport=DESKTOP, base_url=str(client.make_url("")).rstrip("/"))
    watcher, actor = await context.new_page(), await context.new_page()
    actor.on("dialog", lambda dialog: dialog.accept())

    await watcher.goto("/monitor")
    job = watcher.locator('tr[data-job="sync_open_orders"]')
    await expect(job.locator("button", has_text="Run now")).to_be_visible(timeout=15_000)
    await expect(watcher.locator("html")).to_have_attribute("data-live", "connected")
    await watcher.evaluate("window.notReloaded = true")
    await expect(job.locator('[data-field="last-run"] .badge')).to_have_text("↷Skipped")
    await expect(job.locator('[data-field="last-result"] .badge')).to_have_text("✕Error")  # the skipped run is not it

    await actor.goto("/monitor")
    await actor.locator('tr[data-job="sync_open_orders"] button', has_text="Run now").click()
    await expect(actor).to_have_url(RUN_URL, timeout=15_000)
    name = actor.url.rsplit("/", 1)[1]
    await expect(actor.locator("h1")).to_have_text(name)

    # The other Monitor follows the run without a reload: it appears, then succeeds.
    await expect(job.locator('[data-field="last-run"]')).to_contain_text(name, timeout=15_000)
    await expect(job.locator('[data-field="last-run"] .badge')).to_have_text("✓Success", timeout=30_000)
    await expect(job.locator('[data-field="last-result"] .badge')).to_have_text("✓Success")
    assert await watcher.evaluate("window.notReloaded") is True
    await expect(watcher.locator(f'svg.spark circle[data-run="{name}"]')).to_have_attribute("data-state", "success")
    await shoot(watcher, artifacts, "monitor")

    await watcher.locator('tr[data-job="sync_open_orders"] a', has_text="Charts").click()
    await expect(watcher.locator("h1")).to_have_text("SyncOpenOrdersJob")
    assert await watcher.evaluate(SVG_COUNTS) == {"success": 4, "error": 2, "skipped": 1}  # the new run counted
    await expect(watcher.locator('[data-field="success-rate"]')).to_have_text("66.7 %")
    await expect(watcher.locator("svg.chart-durations rect")).to_have_count(6)
    await shoot(watcher, artifacts, "job")
    await watcher.get_by_role("link", name="7 days").click()
    assert await watcher.evaluate(SVG_COUNTS) == {"success": 4, "error": 2, "skipped": 1}
    await expect(watcher.locator("svg.chart-runs g.bar")).to_have_count(7)
    await context.close()


async def test_pause_stops_the_next_slot_and_resume_brings_it_back(
    browser: Browser, client: Any, services: Any, make_worker_settings: Any, recorder_settings: Any, db: Any,
) -> None:
    await services(run_recorder, recorder_settings)
    await services(run_worker, make_worker_settings(schedules={"purge_closed_orders": "every 1s"}, shutdown_grace=1))
    page = await browser.new_page(viewport=DESKTOP, base_url=str(client.make_url("")).rstrip("/"))
    page.on("dialog", lambda dialog: dialog.accept())
    runs = "SELECT count(*) FROM run_names WHERE job = 'purge_closed_orders'"
    await eventually(lambda: db.fetchval(runs))

    await page.goto("/monitor")
    job = page.locator('tr[data-job="purge_closed_orders"]')
    await job.locator("button", has_text="Pause").click()
    await expect(page.get_by_role("status")).to_contain_text("Paused the schedule of purge_closed_orders")
    await expect(job.locator("[data-pause]")).to_contain_text("Paused by anonymous", timeout=15_000)
    await asyncio.sleep(1.5)  # a slot being published as the pause came may still run
    held = await db.fetchval(runs)
    await asyncio.sleep(3.5)  # three slots pass without a run
    assert await db.fetchval(runs) == held

    await job.locator("button", has_text="Resume").click()
    await expect(page.get_by_role("status")).to_contain_text("Resumed the schedule")
    await eventually(lambda: _more(db, runs, held))
    await expect(job.locator("button", has_text="Pause")).to_be_visible(timeout=15_000)
    await expect(job.locator("[data-pause]")).to_have_count(0)
    await page.close()


async def _more(db: Any, query: str, than: int) -> bool:
    return await db.fetchval(query) > than


async def test_cancel_ends_a_hung_run_as_error_with_who_cancelled_it(
    browser: Browser, client: Any, services: Any, make_worker_settings: Any, recorder_settings: Any,
    test_jobs: Any, db: Any,
) -> None:
    await services(run_recorder, recorder_settings)
    await services(run_worker, make_worker_settings(cancel_grace=0.2, shutdown_grace=1))
    page = await browser.new_page(viewport=DESKTOP, base_url=str(client.make_url("")).rstrip("/"))
    page.on("dialog", lambda dialog: dialog.accept())

    await page.goto("/monitor")
    await page.locator('tr[data-job="test_hang"] button', has_text="Run now").click(timeout=15_000)
    await expect(page).to_have_url(RUN_URL, timeout=15_000)
    await expect(page.locator('[data-field="badge"] .badge')).to_have_text("◐Processing", timeout=15_000)
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.get_by_role("status").filter(has_text="Cancelling run")).to_be_visible()
    await expect(page.locator('[data-field="badge"] .badge')).to_have_text("✕Error", timeout=15_000)
    name = page.url.split("?")[0].rsplit("/", 1)[1]
    # The live page shows the event itself; the reload shows the projection, once the recorder has it.
    await eventually(lambda: db.fetchval("SELECT status = 'error' FROM job_logs WHERE name = $1", name))
    await page.reload()
    await expect(page.locator(".error-box")).to_contain_text("cancelled by anonymous")
    await expect(page.locator(".details li").last).to_contain_text("Cancelled by anonymous during step 'waiting'")
    await expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    await page.close()


async def test_bulk_retry_of_the_filter_starts_one_run_per_job(
    browser: Browser, client: Any, project: Any, services: Any, make_worker_settings: Any, recorder_settings: Any, db: Any,
) -> None:
    now = datetime.now(timezone.utc)
    for i, job in enumerate(["sync_open_orders"] * 3 + ["purge_closed_orders"] * 2):
        start = now - timedelta(hours=i + 1)
        await project(run_events(name=name_at(start), start=start, fail=True, job=job))
    await services(run_recorder, recorder_settings)
    await services(run_worker, make_worker_settings())
    page = await browser.new_page(viewport=DESKTOP, base_url=str(client.make_url("")).rstrip("/"))

    await page.goto("/?status=error")
    await page.get_by_role("link", name="Retry failed…").click()
    await expect(page.locator("h1")).to_have_text("Retry 5 failed runs?")
    await expect(page.locator("[data-retry-groups] li")).to_have_count(2)
    await page.get_by_role("button", name="Start 2 new runs").click()
    await expect(page.get_by_role("status")).to_contain_text("Retried 5 failed runs: 2 new runs, one per job")
    retried = "SELECT job FROM job_logs WHERE trigger = 'retry' AND status = 'success' ORDER BY job"
    rows = await eventually(lambda: _rows(db, retried, 2))
    assert [r["job"] for r in rows] == ["purge_closed_orders", "sync_open_orders"]
    await page.close()


async def _rows(db: Any, query: str, count: int) -> list[Any] | None:
    rows = await db.fetch(query)
    return rows if len(rows) >= count else None
