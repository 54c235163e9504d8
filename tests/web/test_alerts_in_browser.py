"""The notifier's alerts as an administrator sees them on the Jobs Monitor, in a real Chromium."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from services.log_recorder.main import run as run_recorder
from services.notifier.main import run as run_notifier
from services.notifier.settings import NotifierSettings
from tests.factories import T0, publish, run_events
from tests.notifier.conftest import Receiver
from tests.web.test_browser import DESKTOP, browser  # noqa: F401 (the fixture)

pytestmark = pytest.mark.browser


async def test_an_alert_the_notifier_delivered_shows_on_the_monitor_with_its_delivery_and_run_link(
    browser: Browser, client: Any, js: Any, subjects: Any, services: Any, recorder_settings: Any,  # noqa: F811
    nats_url: str, database_url: str, artifacts: Path,
) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        await services(run_recorder, recorder_settings)
        await services(run_notifier, NotifierSettings(
            nats_url=nats_url, database_url=database_url, stream=subjects.stream, subject_prefix=subjects.prefix,
            public_url=str(client.make_url("")).rstrip("/"), notify_webhooks=receiver.url, notify_check_interval=0.2,
        ))
        await publish(js, subjects, run_events(name="20261201020000", fail=True))
        await publish(js, subjects, run_events(name="20261201021500", start=T0 + timedelta(minutes=15)))

        page = await browser.new_page(viewport=DESKTOP, base_url=str(client.make_url("")).rstrip("/"))
        await page.goto("/monitor")
        alerts = page.locator("table.alerts tbody tr")
        failed, recovered = alerts.locator('xpath=self::tr[@data-alert="run_failed"]'), alerts.locator(
            'xpath=self::tr[@data-alert="recovered"]')
        for _ in range(60):  # the Monitor is rendered per request: reload until the notifier has delivered both
            if await recovered.count() and "webhook: delivered" in (await recovered.inner_text()):
                break
            await page.wait_for_timeout(500)
            await page.reload()
        await expect(failed).to_contain_text("SourceError: ERP unreachable")
        await expect(failed).to_contain_text("webhook: delivered")
        await expect(recovered).to_contain_text("webhook: delivered")
        await page.locator("section", has=page.locator("h2", has_text="Recent alerts")).screenshot(
            path=artifacts / "monitor-alerts-desktop.png")
        await failed.get_by_role("link", name="20261201020000").click()
        await expect(page.locator("h1")).to_have_text("20261201020000")
        assert [a["kind"] for a in receiver.alerts()] == ["run_failed", "recovered"]
    finally:
        await receiver.stop()
