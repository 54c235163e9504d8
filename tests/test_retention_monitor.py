"""The Jobs Monitor shows the run stream's size and age, its limits, and the projection's size."""
from __future__ import annotations

import re
from dataclasses import replace

from aiohttp.test_utils import TestClient, TestServer

from services.contracts import RunsDeleted
from services.log_recorder.main import run as run_recorder
from services.web.app import create_app
from tests.conftest import eventually
from tests.factories import publish, run_events
from tests.log_recorder.conftest import deletions_done, drained


async def test_the_monitor_shows_sizes_ages_limits_and_what_was_purged(services, js, subjects, recorder_settings, web_settings, db):
    info = await js.stream_info(subjects.stream)
    await js.update_stream(replace(info.config, max_age=90 * 86400.0))  # the operator's limit
    await services(run_recorder, recorder_settings)
    events = run_events(name="20261201080000") + run_events(name="20261201080001")
    await publish(js, subjects, events)
    deletion = RunsDeleted(names=["20261201080000"], requested_by="admin")
    await js.publish(subjects.retention, deletion.model_dump_json().encode())
    await eventually(lambda: drained(js, subjects.stream))
    await eventually(lambda: deletions_done(db))
    left = (await js.stream_info(subjects.stream)).state.messages
    assert left == len(events) // 2 + 1

    web = TestClient(TestServer(create_app(web_settings)))
    await web.start_server()
    try:
        page = await web.get("/monitor")
        assert page.status == 200
        html = await page.text()
    finally:
        await web.close()
    block = html[html.index("<section data-retention>"):]
    block = block[:block.index("</section>")]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", block))
    assert f"({left} messages," in text
    assert "90 days, no size limit" in text
    assert re.search(r"Messages purged (\d+)", text).group(1) == str(len(events) // 2)  # type: ignore[union-attr]
    assert re.search(r"Projection \d+\.\d KiB", text), text
    assert "Oldest message 2026-" in text or "Oldest message 20" in text, text
    assert "Deletions in progress 0" in text
