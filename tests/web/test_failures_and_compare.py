"""Failure groups, event completeness, the run page's tools, comparing two runs and downloads, over HTTP."""
from __future__ import annotations

import json
from datetime import timedelta

from tests.factories import T0
from tests.web.helpers_investigate import order_run


async def test_two_runs_whose_error_differs_only_in_an_id_form_one_failure_group(client, project):
    await project(order_run("20261201080000", orders=["SO-1"], error="Order SO-104711 rejected by ERP (request 3f2504e0-4f89-11d3-9a0c-0305e82c3301)"))
    await project(order_run("20261202080000", orders=["SO-2"], start=T0 + timedelta(days=3),
                            error="Order SO-104712 rejected by ERP (request 9b2c7a10-0000-4000-8000-00000000abcd)"))
    await project(order_run("20261203080000", orders=["SO-3"], start=T0 + timedelta(days=4), error="ERP unreachable"))
    await project(order_run("20261204080000", orders=["SO-4"], start=T0 + timedelta(days=5)))

    runs = (await (await client.get("/api/runs")).json())["runs"]
    prints = {r["name"]: r["error_fingerprint"] for r in runs}
    assert prints["20261201080000"] == prints["20261202080000"] != prints["20261203080000"]
    assert prints["20261204080000"] is None

    html = await (await client.get("/failures")).text()
    group = html.split(f'data-fingerprint="{prints["20261201080000"]}"')[1].split("<li class=\"card group\"")[0]
    assert "2 runs" in group and "20261201080000" in group and "20261202080000" in group and "20261203080000" not in group
    assert "sync_open_orders" in group and "ERPError" in group
    assert html.index(prints["20261203080000"]) < html.index(prints["20261201080000"])  # the group seen last comes first

    run_page = await (await client.get("/runs/20261202080000")).text()
    assert "This error:" in run_page and "2 runs since 29 Nov 2026" in run_page
    same = await (await client.get("/api/runs", params={"fingerprint": prints["20261201080000"]})).json()
    assert [r["name"] for r in same["runs"]] == ["20261202080000", "20261201080000"]
    index = await (await client.get("/", params={"fingerprint": prints["20261201080000"]})).text()
    assert "same error" in index and "20261201080000" in index and "20261203080000" not in index
    assert (await client.get("/api/runs", params={"fingerprint": "nothex"})).status == 400


async def test_a_run_with_a_missing_event_shows_its_gap_and_the_index_flags_it(client, project):
    await project(order_run("20261201080000", orders=[f"SO-{i}" for i in range(40)]))
    await project(order_run("20261202080000", orders=[f"SO-{i}" for i in range(40)], skip={18}, start=T0 + timedelta(days=1)))

    complete = await (await client.get("/runs/20261201080000")).text()
    assert "44 of 44 events" in complete and 'data-completeness="complete"' in complete
    gapped = await (await client.get("/runs/20261202080000")).text()
    assert "43 events, gap after #17" in gapped and 'data-completeness="gap"' in gapped

    index = await (await client.get("/")).text()
    flagged = [row for row in index.split("<tr ") if "data-gap" in row]
    assert len(flagged) == 1 and 'data-run="20261202080000"' in flagged[0]
    only_gaps = await (await client.get("/api/runs", params={"gap": "yes"})).json()
    assert [r["name"] for r in only_gaps["runs"]] == ["20261202080000"]
    assert only_gaps["runs"][0]["completeness"] == {"state": "gap", "text": "43 events, gap after #17", "gap": 17}


async def test_the_run_page_filters_by_level_and_each_message_has_its_link_and_time_until_the_next(client, project):
    await project(order_run("20261201080000", orders=["SO-1", "SO-2"], error="ERP down"))
    everything = await (await client.get("/runs/20261201080000")).text()
    assert everything.count('class="permalink"') == 3
    assert 'href="/runs/20261201080000?at=3#m3"' in everything
    assert '<span class="took" title="Time until the next message">1.0 s</span>' in everything
    assert "<svg class=\"timeline-bar\"" in everything and "Download as JSON" in everything
    errors_only = await (await client.get("/runs/20261201080000", params={"level": "error"})).text()
    assert errors_only.count('class="permalink"') == 1 and "ERPError: ERP down" in errors_only
    api = await (await client.get("/api/runs/20261201080000")).json()
    assert api["total_details"] == 3
    assert (await client.get("/runs/20261201080000", params={"level": "loud"})).status == 400
    assert (await client.get("/runs/20261201080000", params={"at": "0"})).status == 400


async def test_comparing_a_failed_run_with_the_previous_successful_one_shows_the_differing_step(client, project):
    await project(order_run("20261201080000", orders=["SO-1", "SO-2"]))
    await project(order_run("20261202080000", orders=["SO-1", "SO-3", "SO-4"], start=T0 + timedelta(days=1), error="ERP down"))

    failed = await (await client.get("/runs/20261202080000")).text()
    assert 'href="/runs/20261202080000/compare/20261201080000" data-compare' in failed
    html = await (await client.get("/runs/20261202080000/compare/20261201080000")).text()

    def row(key: str) -> str:
        return html.split(f'data-step="{key}"')[1].split("</tr>")[0]

    assert 'data-change="same"' in row("order-0")
    assert 'data-change="changed"' in row("order-1") and "SO-3" in row("order-1") and "SO-2" in row("order-1")
    assert 'data-change="only_a"' in row("order-2") and 'data-change="only_a"' in row("error")
    assert 'data-change="only_b"' in row("done")
    stats = html.split('data-stat="imported"')[1].split("</tr>")[0]
    assert ">—<" in stats and ">2<" in stats and "only in B" in stats  # the failed run has no statistics
    assert (await client.get("/runs/20261202080000/compare/20991231235959")).status == 404
    assert (await client.get("/runs/20261202080000/compare/nope")).status == 404


async def test_final_statistics_are_compared_with_their_differences(client, project):
    await project(order_run("20261201080000", orders=["SO-1", "SO-2"]))
    await project(order_run("20261202080000", orders=["SO-1", "SO-2", "SO-3", "SO-4", "SO-5"], start=T0 + timedelta(days=1)))
    html = await (await client.get("/runs/20261201080000/compare/20261202080000")).text()
    imported = html.split('data-stat="imported"')[1].split("</tr>")[0]
    assert ">2<" in imported and ">5<" in imported and "+3" in imported
    assert 'class="same" data-stat="created"' in html


async def test_a_run_downloads_as_text_and_as_json_with_every_message(client, project):
    await project(order_run("20261201080000", orders=["SO-1"], extra=4500))
    text = await client.get("/runs/20261201080000/download.txt")
    assert text.status == 200 and text.headers["Content-Disposition"] == 'attachment; filename="run-20261201080000.txt"'
    body = await text.text()
    assert body.startswith("Run 20261201080000 of sync_open_orders: success")
    assert body.count("[row-") == 4500 and "Imported order SO-1" in body
    data = await client.get("/runs/20261201080000/download.json")
    parsed = json.loads(await data.read())
    assert parsed["run"]["name"] == "20261201080000" and len(parsed["details"]) == 4502
    assert [d["seq"] for d in parsed["details"]] == sorted(d["seq"] for d in parsed["details"])
    assert parsed["details"][-2]["data"] == {"order": "SO-1"}
    assert (await client.get("/runs/20991231235959/download.json")).status == 404
