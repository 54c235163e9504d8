"""The JSON API mirrors the pages, and says what it is in an OpenAPI document."""
from __future__ import annotations

from datetime import timedelta

from services.web.api import openapi_document
from tests.factories import T0, run_events


async def test_runs_are_listed_newest_first_with_filters_and_a_keyset_cursor(client, project):
    for i in range(5):
        await project(run_events(name=f"2026112908{i:02d}00", start=T0 + timedelta(minutes=i), fail=i == 3))

    first = await (await client.get("/api/runs", params={"limit": "2"})).json()
    second = await (await client.get("/api/runs", params={"limit": "2", "before": first["next_cursor"]})).json()
    failed = await (await client.get("/api/runs", params={"status": "error"})).json()
    searched = await (await client.get("/api/runs", params={"q": "2026112908010"})).json()

    assert [r["name"] for r in first["runs"]] == ["20261129080400", "20261129080300"]
    assert [r["name"] for r in second["runs"]] == ["20261129080200", "20261129080100"]
    assert [r["name"] for r in failed["runs"]] == ["20261129080300"]
    assert failed["runs"][0]["summary"] == "ERP unreachable" and failed["runs"][0]["url"] == "/runs/20261129080300"
    assert failed["next_cursor"] is None
    assert [r["name"] for r in searched["runs"]] == ["20261129080100"]


async def test_one_run_comes_with_its_details_a_page_at_a_time(client, project):
    await project(run_events(name="20261129083000", steps=7, fail=True))

    page = await (await client.get("/api/runs/20261129083000", params={"limit": "3"})).json()
    rest = await (await client.get("/api/runs/20261129083000", params={"after": str(page["next_after"]), "limit": "100"})).json()

    assert page["run"]["status"] == "error" and page["run"]["error_traceback"] == "Traceback ..."
    assert page["run"]["failed_step"] == "progress"
    assert [d["key"] for d in page["details"]] == ["step-0", "step-1", "step-2"]
    assert page["total_details"] == 9
    keys = [d["key"] for d in rest["details"]]
    assert keys == ["step-3", "step-4", "step-5", "step-6", "progress", "error"] and rest["next_after"] is None
    assert rest["details"][-2]["message"] == "Imported 200 orders"


async def test_unknown_runs_and_bad_parameters_are_json_errors(client):
    for path, params, status in [
        ("/api/runs/20991231235959", {}, 404),
        ("/api/runs", {"before": "nope"}, 400),
        ("/api/runs", {"limit": "0"}, 400),
        ("/api/runs/20261129083000", {"after": "-1"}, 400),
        ("/api/open_orders", {"page": "0"}, 400),
        ("/api/open_orders", {"after": "not-a-cursor"}, 400),
        ("/api/jobs/nosuchjob/trigger", {}, 404),
    ]:
        method = client.post if path.endswith("trigger") else client.get
        response = await method(path, params=params)
        body = await response.json()
        assert response.status == status, (path, params)
        assert body["status"] == status and body["detail"]


async def test_the_openapi_document_describes_every_api_route(client):
    served = await (await client.get("/api/openapi.json")).json()

    assert served == openapi_document()
    assert served["openapi"].startswith("3.")
    assert set(served["paths"]) == {"/api/runs", "/api/runs/{name}", "/api/open_orders", "/api/jobs", "/api/actions", "/api/jobs/{job}/trigger",
                                     "/api/search", "/api/commands/{command_id}"}
    assert "Run" in served["components"]["schemas"] and "Detail" in served["components"]["schemas"]


async def test_metrics_count_requests_and_runs_by_status_in_prometheus_format(client, project):
    await project(run_events(name="20261129083000"))
    await project(run_events(name="20261129083100", fail=True))
    await client.get("/")

    response = await client.get("/metrics")
    text = await response.text()

    assert response.status == 200 and response.content_type == "text/plain"
    assert 'joblog_runs{status="success"} 1.0' in text and 'joblog_runs{status="error"} 1.0' in text
    assert 'joblog_web_requests_total{method="GET",route="/",status="200"} 1.0' in text
    assert "joblog_web_request_seconds_bucket" in text and "joblog_dead_letters 0.0" in text


async def test_the_scrape_reads_the_projections_counters_not_every_run(client, project, db):
    """joblog_runs{status} comes from run_status_counts (kept by job_logs' triggers), a few rows whatever the runs."""
    await project(run_events(name="20261129083000"))
    await project(run_events(name="20261129083100", fail=True))
    await project(run_events(name="20261129083200")[:2])  # still processing
    text = await (await client.get("/metrics")).text()
    for status, runs in (("success", 1), ("error", 1), ("processing", 1), ("new", 0)):
        assert f'joblog_runs{{status="{status}"}} {runs}.0' in text, status

    # What the counters say is what the scrape says (here a shard that counts 1,000 more, as if projected).
    await db.execute("INSERT INTO run_status_counts (status, shard, runs) VALUES ('success', 15, 1000) "
                     "ON CONFLICT (status, shard) DO UPDATE SET runs = run_status_counts.runs + 1000")
    assert 'joblog_runs{status="success"} 1001.0' in await (await client.get("/metrics")).text()
