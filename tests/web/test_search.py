"""Search across every run's messages, through the HTTP API and the pages."""
from __future__ import annotations

import re
from datetime import timedelta

from tests.factories import T0
from tests.web.helpers_investigate import order_run


async def test_a_search_for_an_order_number_finds_its_message_in_the_right_run_and_links_to_it(client, project):
    await project(order_run("20261201080000", orders=["SO-104710", "SO-104712"]))
    await project(order_run("20261202080000", orders=["SO-104711"], extra=1200, start=T0 + timedelta(days=3)))
    await project(order_run("20261203080000", orders=["SO-200000"], start=T0 + timedelta(days=4), job="other_job"))

    found = await (await client.get("/api/search", params={"q": "so-104711"})).json()  # any case
    assert [(h["run"]["name"], h["key"], h["field"]) for h in found["results"]] == [("20261202080000", "order-0", "message")]
    hit = found["results"][0]
    assert hit["message"] == "Imported order SO-104711" and hit["run"]["job"] == "sync_open_orders"
    assert hit["seq"] == 3 + 1200 and hit["url"] == f"/runs/20261202080000?at={hit['seq']}#m{hit['seq']}"

    # The deep link loads the page of messages the message is on (the third page of 500), with its anchor.
    page = await client.get(hit["url"].split("#")[0])
    html = await page.text()
    assert page.status == 200
    assert f'id="m{hit["seq"]}"' in html and "Imported order SO-104711" in html
    assert 'id="m3"' not in html  # not the first page
    assert "← First messages" in html

    # The search page shows it too, highlighted, with the same link.
    page_html = await (await client.get("/search", params={"q": "SO-104711"})).text()
    assert "<mark>SO-104711</mark>" in page_html and hit["url"].replace("&", "&amp;") in page_html


async def test_search_matches_keys_and_data_and_combines_with_filters_and_pages_by_keyset(client, project):
    for day in range(4):
        await project(order_run(f"2026120{day + 1}080000", orders=[f"SO-9{day}"], start=T0 + timedelta(days=day),
                                job="sync_open_orders" if day % 2 == 0 else "other_job", error="ERP down" if day == 3 else None))

    everything = await (await client.get("/api/search", params={"q": "imported order"})).json()
    assert [h["run"]["name"] for h in everything["results"]] == ["20261204080000", "20261203080000", "20261202080000", "20261201080000"]
    by_job = await (await client.get("/api/search", params={"q": "imported order", "job": "other_job"})).json()
    assert {h["run"]["name"] for h in by_job["results"]} == {"20261202080000", "20261204080000"}
    failed = await (await client.get("/api/search", params={"q": "imported order", "status": "error"})).json()
    assert [h["run"]["name"] for h in failed["results"]] == ["20261204080000"]
    dated = await (await client.get("/api/search", params={"q": "imported order", "since": "2026-11-30", "until": "2026-12-01"})).json()
    assert {h["run"]["name"] for h in dated["results"]} == {"20261202080000", "20261203080000"}
    one_run = await (await client.get("/api/search", params={"q": "imported order", "run": "20261202080000"})).json()
    assert [h["run"]["name"] for h in one_run["results"]] == ["20261202080000"]
    in_data = await (await client.get("/api/search", params={"q": '"order": "so-92"'})).json()
    assert [(h["run"]["name"], h["field"]) for h in in_data["results"]] == [("20261203080000", "data")]
    by_key = await (await client.get("/api/search", params={"q": "order-0", "job": "other_job"})).json()
    assert all(h["field"] in ("key", "data") for h in by_key["results"]) and len(by_key["results"]) == 2

    first = await (await client.get("/api/search", params={"q": "imported order", "limit": "3"})).json()
    rest = await (await client.get("/api/search", params={"q": "imported order", "limit": "3", "before": first["next_cursor"]})).json()
    assert [h["run"]["name"] for h in first["results"] + rest["results"]] == [h["run"]["name"] for h in everything["results"]]
    assert rest["next_cursor"] is None and rest["errors"] == []

    # A failed run's error message is found as such (on the first page).
    errors = await (await client.get("/api/search", params={"q": "erp down"})).json()
    assert [(e["name"], e["error_message"]) for e in errors["errors"]] == [("20261204080000", "ERP down")]


async def test_bad_searches_are_4xx_that_say_why(client):
    for params, text in [
        ({"q": "ab"}, "at least 3 characters"),
        ({}, "at least 3 characters"),
        ({"q": "x" * 201}, "limited to 200"),
        ({"q": "abc", "since": "yesterday"}, "since must be a date"),
        ({"q": "abc", "since": "2026-12-03", "until": "2026-12-01"}, "since must be before until"),
        ({"q": "abc", "status": "weird"}, "status must be one of"),
        ({"q": "abc", "before": "x1"}, "cursor is not valid"),
        ({"q": "abc", "run": "../etc"}, "run must be a run name"),
    ]:
        response = await client.get("/api/search", params=params)
        assert response.status == 400, params
        assert text in (await response.json())["detail"], params
    page = await client.get("/search", params={"q": "ab"})
    assert page.status == 400
    form = await client.get("/search")
    assert form.status == 200 and 'name="q"' in await form.text()
    in_run = await client.get("/search", params={"run": "20261201080000"})  # "Search this run", before any text
    assert in_run.status == 200 and 'name="run" value="20261201080000"' in await in_run.text()


async def test_the_index_has_one_search_box_and_searches_are_escaped(client, project):
    await project(order_run("20261201080000", orders=["<script>alert(1)</script>"]))
    index = await (await client.get("/")).text()
    assert re.search(r'<form class="filters search-box" method="get" action="/search"', index)
    html = await (await client.get("/search", params={"q": "<script>"})).text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    # LIKE's wildcards are matched literally.
    assert (await (await client.get("/api/search", params={"q": "%%%"})).json())["results"] == []
