"""Search, the run page's tools, failure groups and comparison in a real Chromium (Debian's), as in test_browser."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from tests.factories import T0
from tests.web.helpers_investigate import order_run
from tests.web import test_browser
from tests.web.test_browser import DESKTOP, shoot

browser = test_browser.browser  # the same fixture: Debian's Chromium, one per module

pytestmark = pytest.mark.browser


async def test_a_search_for_an_order_number_lands_on_its_message_in_the_right_run(
    browser: Browser, client: Any, project: Any, artifacts: Path,
) -> None:
    await project(order_run("20261201080000", orders=["SO-104710", "SO-104712"], error="Order SO-104712 rejected by ERP"))
    await project(order_run("20261202080000", orders=["SO-104711"], extra=1200, start=T0 + timedelta(days=3)))
    page = await browser.new_page(viewport=DESKTOP, base_url=str(client.make_url("")).rstrip("/"))
    await page.goto("/")
    await page.get_by_label("Search every run's messages").fill("so-10471")
    await page.get_by_role("button", name="Search").click()
    hits = page.locator("ol.search-results > li")
    await expect(hits).to_have_count(4)  # three orders, and the failed run's error step
    await expect(page.locator(".search-errors li")).to_have_count(1)
    await expect(hits.first.locator("mark")).to_have_text("SO-10471")
    await shoot(page, artifacts, "search")

    await page.goto("/search?q=SO-104711")
    await expect(hits).to_have_count(1)
    await hits.first.get_by_role("link", name="Show in the run").click()
    await expect(page.locator("h1")).to_have_text("20261202080000")
    target = page.locator("#m1203")
    await expect(target).to_be_visible()
    await expect(target).to_contain_text("Imported order SO-104711")
    await expect(target).to_be_in_viewport()
    assert await target.evaluate("e => e.matches(':target')")
    await expect(page.locator("ol.details > li").first).to_have_attribute("data-seq", "1003")  # the third page of 500

    # A bare anchor (a link copied before the page moved) still finds its page.
    await page.goto("/runs/20261202080000#m1203")
    await expect(page).to_have_url(f"{str(client.make_url('')).rstrip('/')}/runs/20261202080000?at=1203#m1203")
    await expect(page.locator("#m1203")).to_be_in_viewport()
    await page.close()


async def test_the_run_page_filters_by_level_finds_text_and_copies_a_messages_link(
    browser: Browser, client: Any, project: Any, artifacts: Path,
) -> None:
    await project(order_run("20261201080000", orders=["SO-1", "SO-2", "SO-3"]))
    await project(order_run("20261202080000", orders=["SO-1", "SO-12", "SO-13", "SO-4"], skip={5},
                            start=T0 + timedelta(days=1), error="Order SO-13 rejected"))
    context = await browser.new_context(viewport=DESKTOP, base_url=str(client.make_url("")).rstrip("/"))
    await context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = await context.new_page()
    await page.goto("/runs/20261202080000")
    await expect(page.locator('[data-completeness="gap"]')).to_contain_text("gap after #4")
    await expect(page.locator("[data-error-group]")).to_contain_text("This error: 1 run since")
    await expect(page.locator("svg.timeline-bar rect")).to_have_count(4)

    await page.get_by_label("Find in this run").fill("so-1")
    await expect(page.locator("[data-find-count]")).to_have_text("1 of 3")
    await page.locator("[data-find-next]").click()
    await expect(page.locator("[data-find-count]")).to_have_text("2 of 3")
    await expect(page.locator("mark.find-current")).to_have_text("SO-1")
    await expect(page.locator("#m4 mark.find-current")).to_be_visible()
    await page.locator("[data-find-prev]").click()
    await page.locator("[data-find-prev]").click()
    await expect(page.locator("[data-find-count]")).to_have_text("3 of 3")
    await shoot(page, artifacts, "run-tools")

    await page.locator("#m4 a[data-copy-link]").click()
    await expect(page.locator("#m4 a[data-copy-link]")).to_have_class("permalink copied")
    copied = await page.evaluate("navigator.clipboard.readText()")
    assert copied.endswith("/runs/20261202080000?at=4#m4")

    await page.get_by_label("Level").select_option("error")
    await expect(page).to_have_url(f"{str(client.make_url('')).rstrip('/')}/runs/20261202080000?level=error")
    await expect(page.locator("ol.details > li")).to_have_count(1)
    await expect(page.locator("ol.details > li")).to_contain_text("Order SO-13 rejected")

    await page.goto("/")
    await expect(page.locator('tr[data-run="20261202080000"] [data-gap]')).to_be_visible()
    await expect(page.locator('tr[data-run="20261201080000"] [data-gap]')).to_have_count(0)
    await context.close()


async def test_failure_groups_and_comparing_a_failed_run_with_the_previous_successful_one(
    browser: Browser, client: Any, project: Any, artifacts: Path,
) -> None:
    await project(order_run("20261201080000", orders=["SO-1", "SO-2"]))
    await project(order_run("20261202080000", orders=["SO-1", "SO-3", "SO-4"], start=T0 + timedelta(days=1), error="Order SO-3 rejected (HTTP 422)"))
    await project(order_run("20261203080000", orders=["SO-7"], start=T0 + timedelta(days=2), error="Order SO-7 rejected (HTTP 422)"))
    await project(order_run("20261204080000", orders=["SO-8"], start=T0 + timedelta(days=3), error="ERP unreachable", step="connect"))
    page = await browser.new_page(viewport=DESKTOP, base_url=str(client.make_url("")).rstrip("/"))

    await page.goto("/failures")
    groups = page.locator("li.group")
    await expect(groups).to_have_count(2)
    rejected = groups.filter(has_text="rejected")
    await expect(rejected.locator(".group-count")).to_have_text("2 runs")
    await expect(rejected.locator(".group-runs li")).to_have_count(2)
    await shoot(page, artifacts, "failures")
    await rejected.get_by_role("link", name="All 2 runs").click()
    await expect(page.locator("table.runs tbody tr")).to_have_count(2)
    await expect(page.locator("[data-same-error]")).to_be_visible()

    await page.goto("/runs/20261202080000")
    await page.get_by_role("link", name="Compare with the previous successful run").click()
    await expect(page.locator("h1")).to_have_text("Compare runs")
    await expect(page.locator('tr[data-step="order-1"]')).to_have_attribute("data-change", "changed")
    await expect(page.locator('tr[data-step="error"] .tag')).to_have_text("only in A")
    await expect(page.locator('tr[data-step="done"] .tag')).to_have_text("only in B")
    await shoot(page, artifacts, "compare")
    await page.close()
