"""The pages in a real Chromium (Debian's, never a downloaded one), against real services."""
from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from services.log_recorder.main import run as run_recorder
from services.sync_worker.main import run as run_worker
from services.sync_worker.sources.sample import generate_orders, write_csv
from tests.factories import T0, run_events

pytestmark = pytest.mark.browser

# The system's Chromium: on PATH, else where Debian puts it.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
DESKTOP = {"width": 1280, "height": 860}
# Every status each row shows, in order, however briefly (a fast run may pass "processing" between two polls).
RECORD_STATUSES = """() => {
  window.statusesSeen = [];
  const record = () => {
    for (const row of document.querySelectorAll("tr[data-run]")) {
      const seen = row.dataset.run + ":" + row.dataset.status;
      if (!window.statusesSeen.includes(seen)) window.statusesSeen.push(seen);
    }
  };
  new MutationObserver(record).observe(document.querySelector("table.runs"), {subtree: true, childList: true, attributes: true});
}"""
PHONE = {"width": 390, "height": 844}


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium from the system (CI installs it with apt), shared by this module's tests."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield launched
        await launched.close()


async def shoot(page: Page, artifacts: Path, name: str) -> None:
    """A full-page screenshot at desktop width, then the first screen at phone width."""
    await page.set_viewport_size(DESKTOP)
    await page.screenshot(path=artifacts / f"{name}-desktop.png", full_page=True)
    await page.set_viewport_size(PHONE)
    await page.screenshot(path=artifacts / f"{name}-phone.png")
    await page.set_viewport_size(DESKTOP)


async def test_run_now_shows_a_new_run_going_from_processing_to_success_without_reload(
    browser: Browser, client: Any, project: Any, services: Any, make_worker_settings: Any, recorder_settings: Any,
    tmp_path: Path, artifacts: Path,
) -> None:
    await project(run_events(name="20261129083000", start=T0, fail=True))
    await project(run_events(name="20261129093000", start=T0 + timedelta(hours=1)))
    source = tmp_path / "orders.csv"
    write_csv(source, list(generate_orders(2000)))
    # Small batches and frequent progress make "processing" last long enough to see.
    await services(run_recorder, recorder_settings)
    await services(run_worker, make_worker_settings(orders_csv_path=source, sync_batch_size=20, sync_progress_interval=0.05))
    base = str(client.make_url("/"))
    context = await browser.new_context(viewport=DESKTOP, base_url=base.rstrip("/"))
    index, monitor = await context.new_page(), await context.new_page()
    monitor.on("dialog", lambda dialog: dialog.accept())

    await index.goto("/")
    rows = index.locator("table.runs tbody tr")
    await expect(rows).to_have_count(2)
    assert await rows.nth(0).get_attribute("data-run") == "20261129093000"  # newest first
    await expect(rows.nth(1).locator(".badge")).to_have_text("✕Error")
    await index.evaluate("window.notReloaded = true")
    await index.evaluate(RECORD_STATUSES)
    await expect(index.locator("html")).to_have_attribute("data-live", "connected")

    await monitor.goto("/")
    await monitor.get_by_role("link", name="Jobs Monitor").first.click()
    await expect(monitor).to_have_url(f"{base}monitor")
    run_now = monitor.locator('tr[data-job="sync_open_orders"] button', has_text="Run now")
    await expect(run_now).to_be_visible(timeout=15_000)  # once the worker's heartbeat describes the job
    await shoot(monitor, artifacts, "monitor")
    await run_now.click()
    await expect(monitor).to_have_url(re.compile(r"/runs/\d{14}(-\d+)?$"), timeout=15_000)  # lands on the run it started

    new_row = rows.first
    await expect(rows).to_have_count(3, timeout=15_000)
    with contextlib.suppress(AssertionError):  # for the screenshot: the run in progress, if it still is
        await expect(new_row.locator(".badge")).to_have_text("◐Processing", timeout=5_000)
    await index.screenshot(path=artifacts / "index-live-desktop.png")
    await expect(new_row.locator(".badge")).to_have_text("✓Success", timeout=30_000)
    await expect(new_row.locator('[data-field="summary"]')).to_contain_text("imported")
    name = await new_row.get_attribute("data-run")
    seen = await index.evaluate("window.statusesSeen")
    assert f"{name}:processing" in seen and seen.index(f"{name}:processing") < seen.index(f"{name}:success")
    assert await index.evaluate("window.notReloaded") is True

    await new_row.get_by_role("link").click()
    await expect(index.locator("h1")).to_have_text(name or "")
    await expect(index.locator(".details li").first).to_be_visible()
    await shoot(index, artifacts, "run-success")

    await index.goto("/")
    await index.get_by_role("link", name="View Open Orders").click()
    await expect(index).to_have_url(f"{base}open_orders")
    await expect(index.locator("table.orders tbody tr")).to_have_count(50)
    await shoot(index, artifacts, "open-orders")
    await context.close()


async def test_a_failed_run_is_visibly_distinct_and_its_failing_step_highlighted(
    browser: Browser, client: Any, project: Any, artifacts: Path,
) -> None:
    await project(run_events(name="20261129083000", start=T0, steps=6, fail=True))
    await project(run_events(name="20261129093000", start=T0 + timedelta(hours=1)))
    page = await browser.new_page(viewport=DESKTOP, base_url=str(client.make_url("")).rstrip("/"))

    await page.goto("/")
    failed, ok = page.locator('tr[data-run="20261129083000"]'), page.locator('tr[data-run="20261129093000"]')
    failed_colour = await failed.locator(".badge").evaluate("e => getComputedStyle(e).backgroundColor")
    ok_colour = await ok.locator(".badge").evaluate("e => getComputedStyle(e).backgroundColor")
    assert failed_colour != ok_colour
    await expect(failed).to_have_class("run-row state-error")
    await shoot(page, artifacts, "index")

    await failed.get_by_role("link").click()
    await expect(page.locator(".error-box")).to_contain_text("ERP unreachable")
    await expect(page.locator(".failed-step")).to_contain_text("Failed here")
    traceback = page.locator(".error-box details")
    assert await traceback.get_attribute("open") is None  # folded until asked for
    await shoot(page, artifacts, "run-error")
    await page.close()


async def test_without_javascript_pages_read_the_same_and_actions_ask_on_a_confirmation_page(
    browser: Browser, client: Any, project: Any, js: Any, subjects: Any, artifacts: Path,
) -> None:
    await project(run_events(name="20261129083000", start=T0, fail=True))
    context = await browser.new_context(viewport=DESKTOP, java_script_enabled=False, base_url=str(client.make_url("")).rstrip("/"))
    page = await context.new_page()

    await page.goto("/")
    await expect(page.locator('tr[data-run="20261129083000"] .badge')).to_have_text("✕Error")
    await page.get_by_role("link", name="20261129083000").click()
    await page.get_by_role("button", name="Retry").click()
    await expect(page.locator("h1")).to_have_text("Retry sync_open_orders (run 20261129083000)?")
    await shoot(page, artifacts, "confirm")
    await page.get_by_role("button", name="Retry").click()
    # No worker here: the landing page says it waits for one to take the run (and reloads itself meanwhile).
    await expect(page.locator("h1")).to_contain_text("Waiting for a worker to take the run of sync_open_orders", timeout=20_000)
    assert (await js.stream_info(subjects.command_stream)).state.messages == 1
    await context.close()


async def test_a_run_page_streams_new_messages_and_loads_long_logs_as_you_scroll(
    browser: Browser, client: Any, project: Any, js: Any, subjects: Any,
) -> None:
    from services.contracts import RunSucceeded, StepLogged
    from tests.factories import publish

    events = run_events(name="20261129083000", steps=0, updates=0)
    run_id = events[0].run_id
    common = {"run_id": run_id, "name": "20261129083000", "job": "sync_open_orders", "occurred_at": T0}
    history = [StepLogged(**common, seq=3 + i, key=f"row-{i}", message=f"Row {i} checked") for i in range(1100)]  # type: ignore[arg-type]
    await project(events[:2] + history)
    page = await browser.new_page(viewport=DESKTOP, base_url=str(client.make_url("")).rstrip("/"))
    await page.goto("/runs/20261129083000")
    details = page.locator("ol.details > li")
    await expect(details).to_have_count(500)

    await page.locator("a[data-load-more]").scroll_into_view_if_needed()
    await expect(details).to_have_count(1000)
    # Not .click(): its scrolling would let the automatic load take the link away mid-click.
    await page.locator("a[data-load-more]").dispatch_event("click")
    await expect(details).to_have_count(1100)
    await expect(page.locator("a[data-load-more]")).to_have_count(0)

    await expect(page.locator("html")).to_have_attribute("data-live", "connected")
    await publish(js, subjects, [
        StepLogged(**{**common, "occurred_at": T0 + timedelta(seconds=2)}, seq=2000, key="row-5",  # type: ignore[arg-type]
                   message="Row 5 checked again", level="warning"),
        StepLogged(**common, seq=2001, key="done", message="All rows checked"),  # type: ignore[arg-type]
        RunSucceeded(**common, seq=2002, stats={"rows": 1100}, duration_ms=1234),  # type: ignore[arg-type]
    ])
    await expect(page.locator('li[data-key="row-5"] .message')).to_have_text("Row 5 checked again")
    await expect(page.locator('li[data-key="row-5"]')).to_have_class("detail level-warning just-updated")
    # Still where and when it was first logged, with a note of the update.
    await expect(page.locator('li[data-key="row-5"] .when > time')).to_have_text("2026-11-29 08:30:00.000")
    await expect(page.locator('li[data-key="row-5"] .updated')).to_have_text("updated 08:30:02.000")
    await expect(details.last).to_contain_text("All rows checked")
    await expect(page.locator('[data-field="badge"] .badge')).to_have_text("✓Success")
    await expect(page.locator('[data-field="duration"]')).to_have_text("1.2 s")
    await expect(page.get_by_role("status")).to_contain_text("This run has finished")
    await page.close()


async def test_messages_logged_while_the_live_stream_was_cut_all_appear_once_it_reconnects(
    browser: Browser, client: Any, project: Any, js: Any, subjects: Any,
) -> None:
    from services.contracts import StepLogged
    from services.web.keys import FEED
    from tests.factories import publish

    events = run_events(name="20261129083000", steps=2, updates=0)[:4]  # created, started, step-0, step-1: processing
    await project(events)
    common = {"run_id": events[0].run_id, "name": "20261129083000", "job": "sync_open_orders", "occurred_at": T0}
    page = await browser.new_page(viewport=DESKTOP, base_url=str(client.make_url("")).rstrip("/"))
    await page.goto("/runs/20261129083000")
    details = page.locator("ol.details > li")
    await expect(details).to_have_count(2)
    await expect(page.locator("[data-live-state]")).to_have_text("Connection established")

    client.app[FEED].close_all()  # the server drops every live stream; the page reconnects on its own
    missed = [StepLogged(**common, seq=5 + i, key=f"late-{i}", message=f"Late {i}") for i in range(3)]  # type: ignore[arg-type]
    await project(missed)  # recorded while the page was away ...
    await publish(js, subjects, missed)  # ... and on NATS, perhaps before the page is back

    await expect(details).to_have_count(5)
    for i in range(3):
        await expect(page.locator(f'li[data-key="late-{i}"]')).to_have_count(1)
    await expect(page.locator('[data-field="message-count"]')).to_have_text("5")
    await expect(page.locator("[data-live-state]")).to_have_text("Connection established")
    await page.close()
