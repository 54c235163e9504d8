"""The three pages an administrator opens, over real Postgres and NATS."""
from __future__ import annotations

from datetime import timedelta

from services.sync_worker import db as worker_db
from services.sync_worker.jobs.sync_open_orders import SourceOrder
from services.sync_worker.sources.sample import generate_orders
from tests.factories import T0, run_events


async def test_root_is_the_job_log_index_newest_first_with_links_on_top(client, project):
    await project(run_events(name="20261129083000", start=T0))
    await project(run_events(name="20261129093000", start=T0 + timedelta(hours=1), fail=True))

    response = await client.get("/")
    html = await response.text()

    assert response.status == 200
    assert html.index("20261129093000") < html.index("20261129083000")
    assert 'href="/open_orders"' in html and "View Open Orders" in html
    assert html.index("View Open Orders") < html.index("<table")
    assert 'class="button button-primary" href="/monitor">Jobs Monitor</a>' in html
    assert "badge-error" in html and "badge-success" in html
    assert "ERP unreachable" in html  # the failed run's one-line summary


async def test_a_run_page_shows_its_messages_in_order_with_timestamps(client, project):
    events = run_events(name="20261129083000", steps=3, fail=True)
    await project(list(reversed(events)))

    response = await client.get("/runs/20261129083000")
    html = await response.text()

    assert response.status == 200
    positions = [html.index(f"Step {i} done") for i in range(3)]
    assert positions == sorted(positions)
    assert html.index("Step 2 done") < html.index("Imported 200 orders") < html.index("Failed: SourceError")
    assert "Imported 100 orders" not in html  # updated in place: only the latest text
    assert "2026-11-29 08:30:00.300" in html  # millisecond timestamps
    assert "SourceError" in html and 'class="detail level-error' in html
    assert "<details><summary>Traceback</summary>" in html


async def test_a_detail_updated_in_place_shows_when_it_was_first_logged_and_when_it_changed(client, project):
    # step-0 .. step-2 at 08:30:00.450/.600/.750; "progress" first at .900, updated at 01.050
    await project(run_events(name="20261129083000", steps=3, updates=2))

    html = await (await client.get("/runs/20261129083000")).text()

    progress = html[html.index('data-key="progress"'):]
    progress = progress[: progress.index("</li>")]
    assert '<time datetime="2026-11-29T08:30:00.900000+00:00">2026-11-29 08:30:00.900</time>' in progress
    assert 'updated <time datetime="2026-11-29T08:30:01.050000+00:00">08:30:01.050</time>' in progress
    shown = [html.index(t) for t in ("08:30:00.450", "08:30:00.600", "08:30:00.750", "08:30:00.900")]
    assert shown == sorted(shown)  # the messages' times read in order
    step = html[html.index('data-key="step-0"'):]
    assert "updated" not in step[: step.index("</li>")]


async def test_an_unknown_run_is_a_helpful_404(client):
    for path in ("/runs/20991231235959", "/runs/not-a-run"):
        response = await client.get(path)
        assert response.status == 404
        assert "Back to job logs" in await response.text()


async def test_open_orders_lists_open_orders_and_links_back(client, db):
    records = [SourceOrder.model_validate(row).record() for row in generate_orders(60)]
    await worker_db.prepare_staging(db)
    async with db.transaction():
        await worker_db.upsert_orders(db, records, run_id=__import__("uuid").uuid4(), now=T0)

    response = await client.get("/open_orders")
    html = await response.text()

    assert response.status == 200
    assert "60 open orders" in html
    assert 'href="/"' in html and "Back to job logs" in html
    assert html.count("<tr>") == 51  # header + 50 per page
    searched = await (await client.get("/open_orders", params={"q": "SO-100007"})).text()
    assert "SO-100007" in searched and "SO-100008" not in searched


async def test_bad_parameters_get_a_4xx_not_a_500(client):
    for path, params in [
        ("/", {"status": "exploded"}),
        ("/", {"before": "%%%garbage"}),
        ("/", {"q": "x" * 500}),
        ("/open_orders", {"page": "-1"}),
        ("/open_orders", {"sort": "drop table"}),
    ]:
        response = await client.get(path, params=params)
        assert 400 <= response.status < 500, (path, params, response.status)


async def test_health_endpoints(client):
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json()) == {"status": "ready", "postgres": True, "nats": True}


async def test_a_long_run_shows_its_first_messages_and_loads_the_rest_a_page_at_a_time(client, project):
    from services.contracts import StepLogged

    events = run_events(name="20261129083000", steps=0, updates=0)
    run_id = events[0].run_id
    steps = [
        StepLogged(run_id=run_id, name="20261129083000", job="sync_open_orders", seq=3 + i, occurred_at=T0,
                   key=f"row-{i}", message=f"Row {i} checked")
        for i in range(1100)
    ]
    await project(events[:2] + steps)

    first = await (await client.get("/runs/20261129083000")).text()
    second = await (await client.get("/runs/20261129083000", params={"after": "502"})).text()
    last = await (await client.get("/runs/20261129083000", params={"after": "1002"})).text()

    assert first.count('class="detail ') == 500 and "Row 499 checked" in first and "Row 500 checked" not in first
    assert 'href="/runs/20261129083000?after=502" data-load-more' in first
    assert "Showing 500 of 1,100 messages" in first
    assert second.count('class="detail ') == 500 and "Row 500 checked" in second
    assert last.count('class="detail ') == 100 and "data-load-more" not in last and "Row 1099 checked" in last


async def test_the_monitor_shows_jobs_with_schedule_and_workers_with_their_runs(client, js, subjects, project):
    from services.contracts import JobDescription, WorkerHeartbeat
    from services.contracts.events import utcnow
    from tests.conftest import eventually

    events = run_events(name="20261129083000", steps=1, updates=0)
    await project(events[:2])
    beat = WorkerHeartbeat(
        worker_id="w1", host="host-a", pid=101, started_at=utcnow(), running=[events[0].run_id],
        jobs=[JobDescription(name="sync_open_orders", title="SyncOpenOrdersJob", schedule="every 15m")],
    )
    await js.publish(subjects.for_heartbeat("w1"), beat.model_dump_json().encode())

    async def monitor_page() -> str | None:
        html = await (await client.get("/monitor")).text()
        # The heartbeat has arrived (the run's own host, host-a, shows before it does).
        return html if "SyncOpenOrdersJob" in html else None

    html = await eventually(monitor_page)
    assert "SyncOpenOrdersJob" in html and "every 15m" in html and "next 20" in html
    assert 'Running\n        <a class="mono" href="/runs/20261129083000">20261129083000</a>' in html
    assert "▶ Run now" in html and "Pending events" in html and "Dead letters" in html


async def test_pages_are_served_from_cache_until_the_projection_changes(client, project, db):
    from services.web.keys import PAGE_CACHE
    from tests.web.test_run_page_cache import settled

    cache = client.app[PAGE_CACHE]
    first = run_events(name="20261129083000", start=T0)
    await project(first[:3])
    await settled(client, db)  # else the first pages may be filed under the version before that commit
    assert "20261129083000" in await (await client.get("/")).text()
    assert "Step 0 done" in await (await client.get("/runs/20261129083000")).text()
    hits = cache.hits
    await client.get("/")
    await client.get("/runs/20261129083000")
    assert cache.hits == hits + 2  # nothing changed: both pages from the cache

    await project(first[3:])  # the rest of the run, a second run
    await project(run_events(name="20261129093000", start=T0 + timedelta(hours=1)))
    await settled(client, db)
    index = await (await client.get("/")).text()
    page = await (await client.get("/runs/20261129083000")).text()
    assert "20261129093000" in index and "badge-success" in index
    assert "Step 3 done" in page and "Imported 200 orders" in page
    assert cache.hits == hits + 2  # the projection moved: both re-rendered
