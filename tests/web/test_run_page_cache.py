"""A run page is rendered once and served again while it is the same page: per projection version, and
its long parts per version of the run itself; a browser holding it gets a 304. What it shows changes
with a late event of the run, its deletion, a new failure with the same error, a new previous success."""
from __future__ import annotations

from datetime import timedelta

from services.contracts import RunsDeleted
from services.log_recorder.retention import carry_out_deletions
from services.web.keys import PAGE_CACHE
from tests.conftest import eventually
from tests.factories import T0
from tests.web.helpers_investigate import order_run


async def settled(client, db) -> None:  # type: ignore[no-untyped-def]
    """Wait until the web has heard of the projection's last commit (its pages are keyed by that version)."""
    cache = client.app[PAGE_CACHE]

    async def caught_up() -> bool:
        return cache.known_version() == await db.fetchval("SELECT version FROM projection_version")

    await eventually(caught_up)


async def page(client, name: str, etag: str | None = None):  # type: ignore[no-untyped-def]
    response = await client.get(f"/runs/{name}", headers={"If-None-Match": etag} if etag else {})
    return response, await response.text()


async def test_a_browser_holding_the_page_gets_a_304_until_the_page_changes(client, project, db):
    await project(order_run("20261201080000", orders=["SO-1", "SO-2"]))
    await settled(client, db)

    first, html = await page(client, "20261201080000")
    etag = first.headers["ETag"]
    assert first.status == 200 and "Imported order SO-2" in html
    assert first.headers["Cache-Control"] == "private, no-cache"  # kept by the browser only, and always asked again
    again, body = await page(client, "20261201080000", etag)
    assert again.status == 304 and body == "" and again.headers["ETag"] == etag
    other, html = await page(client, "20261201080000", '"something-else"')
    assert other.status == 200 and "Imported order SO-2" in html
    weak, _ = await page(client, "20261201080000", f'"x", W/{etag}')
    assert weak.status == 304

    # Another run arrives: the projection moves, this run's page is the same page (its parts reused, not read).
    parts = client.app[PAGE_CACHE].run_parts
    hits = parts.hits
    await project(order_run("20261202080000", orders=["SO-3"], start=T0 + timedelta(days=1)))
    await settled(client, db)
    same, body = await page(client, "20261201080000", etag)
    assert same.status == 304 and body == ""
    assert parts.hits == hits + 1


async def test_a_late_event_of_a_finished_run_changes_its_page(client, project, db):
    events = order_run("20261201080000", orders=[f"SO-{i}" for i in range(5)])
    missing = [e for e in events if e.seq == 5]
    await project([e for e in events if e.seq != 5])
    await settled(client, db)
    before, html = await page(client, "20261201080000")
    assert "gap after #4" in html and "Imported order SO-2" not in html

    # The lost event arrives after the run ended: below the run's last seq, so last_seq does not move.
    await project(missing)
    await settled(client, db)
    after, html = await page(client, "20261201080000", before.headers["ETag"])
    assert after.status == 200 and after.headers["ETag"] != before.headers["ETag"]
    assert "Imported order SO-2" in html and "9 of 9 events" in html and "gap after" not in html
    assert html.index("Imported order SO-1") < html.index("Imported order SO-2") < html.index("Imported order SO-3")


async def test_a_deleted_run_is_gone_from_its_page_whatever_the_browser_holds(client, project, db):
    await project(order_run("20261201080000", orders=["SO-1"]))
    await settled(client, db)
    shown, _ = await page(client, "20261201080000")
    assert shown.status == 200

    await project([RunsDeleted(names=["20261201080000"])])
    await carry_out_deletions(db)
    await settled(client, db)
    for etag in (None, shown.headers["ETag"]):
        gone, html = await page(client, "20261201080000", etag)
        assert gone.status == 404 and "There is no run named 20261201080000" in html


async def test_a_new_failure_with_the_same_error_changes_the_count_the_failed_run_shows(client, project, db):
    await project(order_run("20261201080000", orders=["SO-1"], error="ERP unreachable"))
    await settled(client, db)
    first, html = await page(client, "20261201080000")
    assert "1 run since 29 Nov 2026" in html

    await project(order_run("20261202080000", orders=["SO-2"], start=T0 + timedelta(days=3), error="ERP unreachable"))
    await settled(client, db)
    later, html = await page(client, "20261201080000", first.headers["ETag"])
    assert later.status == 200 and "2 runs since" in html


async def test_a_previous_successful_run_that_arrives_late_is_offered_for_comparison(client, project, db):
    await project(order_run("20261202080000", orders=["SO-1"], start=T0 + timedelta(days=1), error="ERP down"))
    await settled(client, db)
    first, html = await page(client, "20261202080000")
    assert "data-compare" not in html

    await project(order_run("20261201080000", orders=["SO-1"]))  # an earlier run, recorded late
    await settled(client, db)
    later, html = await page(client, "20261202080000", first.headers["ETag"])
    assert later.status == 200 and 'href="/runs/20261202080000/compare/20261201080000" data-compare' in html


async def test_a_page_of_a_run_still_running_follows_its_messages(client, project, db):
    events = order_run("20261201080000", orders=["SO-1", "SO-2", "SO-3"])
    await project(events[:3])  # created, started, one message
    await settled(client, db)
    _, html = await page(client, "20261201080000")
    assert "Imported order SO-1" in html and "Imported order SO-2" not in html

    await project(events[3:])
    await settled(client, db)
    _, html = await page(client, "20261201080000")
    assert "Imported order SO-3" in html and "All orders imported" in html


async def test_the_pages_completeness_expressions_agree_with_the_migrations_functions(db):
    from services.web.db import SEQ_COUNT, SEQ_GAP

    seen = "$1::text::int4multirange"
    sql = (f"SELECT {SEQ_GAP.format(seen=seen)} AS gap, joblog_seq_gap({seen}) AS function_gap, "
           f"{SEQ_COUNT.format(seen=seen)} AS count, joblog_seq_count({seen}) AS function_count")
    for ranges in (None, "{}", "{[1,10)}", "{[2,10)}", "{[1,5),[6,10)}", "{[1,5),[2000000000,2000000001)}",
                   "{[2000000000,2000000002)}", "{[3,4),[7,9)}"):
        row = await db.fetchrow(sql, ranges)
        assert (row["gap"], row["count"]) == (row["function_gap"], row["function_count"]), ranges
