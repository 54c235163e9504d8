"""Authentication, CSRF, escaping and bad input: the web never trusts what it shows or receives."""
from __future__ import annotations

import base64
import re
import uuid
from pathlib import Path

import pytest
from aiohttp import BasicAuth
from pydantic import SecretStr

from services.contracts import RunCreated, RunFailed, StepLogged
from services.sync_worker import db as worker_db
from services.sync_worker.jobs.sync_open_orders import SourceOrder
from services.sync_worker.sources.sample import generate_orders
from services.web.passwords import hash_password
from tests.factories import T0

TEMPLATES = Path(__file__).parents[2] / "services" / "web" / "templates"
XSS = '<script>alert(1)</script><img src=x onerror=alert(2)>"\'&'
PAGES = ["/", "/runs/20261129083000", "/open_orders", "/monitor", "/api/runs", "/api/jobs", "/api/openapi.json",
         "/metrics", "/events/runs", "/static/app.css"]


@pytest.mark.parametrize("setting", ["admin_password", "admin_password_hash"])
async def test_with_a_password_everything_but_health_needs_it(make_client, setting):
    value = "s3cret pass" if setting == "admin_password" else hash_password("s3cret pass", iterations=1000)
    client = await make_client(**{setting: SecretStr(value)})

    for path in PAGES + ["/jobs/sync_open_orders/run", "/runs/20261129083000/delete", "/retention"]:
        method = client.post if path in ("/jobs/sync_open_orders/run", "/runs/20261129083000/delete", "/retention") else client.get
        response = await method(path)
        assert response.status == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    refused = await client.get("/api/runs", auth=BasicAuth("admin", "wrong"))
    assert refused.status == 401 and (await refused.json())["status"] == 401
    assert "Content-Security-Policy" in refused.headers
    assert (await client.get("/", auth=BasicAuth("root", "s3cret pass"))).status == 401
    garbage = {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe").decode()}
    assert (await client.get("/", headers=garbage)).status == 401
    assert (await client.get("/", auth=BasicAuth("admin", "s3cret pass"))).status == 200
    assert (await client.get("/healthz")).status == 200 and (await client.get("/readyz")).status == 200


async def test_cross_site_posts_are_refused(client):
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        for path in ("/jobs/sync_open_orders/run", "/runs/20261129083000/delete", "/retention", "/api/jobs/x/trigger"):
            response = await client.post(path, data={"confirm": "yes"}, headers=headers)
            assert response.status == 403, (path, headers)
    own = await client.post("/jobs/sync_open_orders/run", data={}, headers={"Origin": str(client.make_url("/")).rstrip("/")})
    assert own.status == 200  # the confirmation page


async def test_xss_in_log_messages_errors_and_orders_renders_inert(client, project, db):
    run_id = uuid.uuid4()
    common = {"run_id": run_id, "name": "20261129083000", "job": "sync_open_orders"}
    await project([
        RunCreated(**common, seq=1, occurred_at=T0, worker_id="w1", requested_by=XSS),
        StepLogged(**common, seq=2, occurred_at=T0, key=XSS, message=XSS, level="warning", data={"x": XSS}),
        RunFailed(**common, seq=3, occurred_at=T0, error_class=XSS[:200], error_message=XSS, traceback=XSS, step=XSS, stats={XSS: 1}),
    ])
    row = SourceOrder.model_validate({**next(iter(generate_orders(1))), "customer_name": XSS}).record()
    await worker_db.prepare_staging(db)
    async with db.transaction():
        await worker_db.upsert_orders(db, [row], run_id=run_id, now=T0)

    for path in ("/", "/runs/20261129083000", "/open_orders", "/monitor", "/open_orders?q=%3Cscript%3E"):
        html = await (await client.get(path)).text()
        assert "<script>alert" not in html and "<img src=x" not in html, path
        assert path == "/open_orders?q=%3Cscript%3E" or "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
    api = await client.get("/api/runs/20261129083000")
    assert api.content_type == "application/json"


async def test_a_strict_content_security_policy_and_no_inline_script_or_style(client):
    response = await client.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "style-src 'self'" in csp
    assert response.headers["X-Frame-Options"] == "DENY" and response.headers["X-Content-Type-Options"] == "nosniff"
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name
        assert not re.search(r"\sstyle=|<style|\son[a-z]+=", text), template.name


BAD_INPUT = [
    ("/", {"status": "exploded"}),
    ("/", {"before": "%%%garbage"}),
    ("/", {"before": base64.urlsafe_b64encode(b"1e999|x").decode()}),
    ("/", {"q": "x" * 10_000}),
    ("/", {"q": "2026\x00"}),
    ("/api/open_orders", {"q": "a\x00b"}),
    ("/", {"job": "../../etc/passwd"}),
    ("/runs/20261129083000", {"after": "-1"}),
    ("/runs/20261129083000", {"after": "9" * 40}),
    ("/runs/20991231235959", {}),
    ("/runs/" + "9" * 300, {}),
    ("/open_orders", {"page": "-1"}),
    ("/open_orders", {"page": "99999999999999999999"}),
    ("/open_orders", {"sort": "drop table"}),
    ("/api/runs", {"limit": "1e9"}),
    ("/nowhere", {}),
]


async def test_bad_input_gets_a_helpful_4xx_never_a_500(client):
    for path, params in BAD_INPUT:
        response = await client.get(path, params=params)
        assert 400 <= response.status < 500, (path, response.status)
        text = await response.text()
        assert "Back to job logs" in text or '"detail"' in text, path


async def test_bad_posts_are_4xx(client):
    assert (await client.post("/retention", data={"before": "x" * 10_000, "confirm": "yes"})).status == 400
    assert (await client.post("/jobs/sync_open_orders/run", data={"retry": "<x>", "confirm": "yes"})).status == 400
    assert (await client.post("/api/jobs/sync_open_orders/trigger", data="[]", headers={"Content-Type": "application/json"})).status in (400, 404)
    assert (await client.post("/", data={})).status == 405
    huge = await client.post("/retention", data={"before": "x" * 200_000})
    assert huge.status == 413


def test_without_a_password_the_web_only_serves_on_the_loopback_address(web_settings):
    from services.web.app import serve

    with pytest.raises(SystemExit):
        serve(web_settings.model_copy(update={"web_host": "0.0.0.0"}))


def test_the_web_refuses_to_listen_beyond_loopback_without_a_password_unless_told_to():
    import os
    import subprocess
    import sys

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("JOBLOG_")}, "JOBLOG_WEB_HOST": "0.0.0.0"}
    done = subprocess.run([sys.executable, "-m", "joblog", "web"], env=env, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("joblog: invalid setting JOBLOG_WEB_OPEN:") and "no password" in lines[0]
    from services.web.settings import WebSettings

    assert WebSettings(web_host="0.0.0.0", web_open=True).web_open
    assert WebSettings(web_host="0.0.0.0", admin_password="pw").auth_enabled
