"""Accounts with roles, sign-in limits, and password checks that never stall the event loop."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import encode_basic_auth
from pydantic import SecretStr, ValidationError

from services.web.accounts import UsersFileError, parse_users
from services.web.keys import AUTHENTICATOR
from services.web.passwords import hash_password
from services.web.settings import WebSettings
from tests.conftest import eventually
from tests.factories import publish, run_events
from tests.web.test_live import hello, sse_events

CHEAP = 1000  # iterations: the tests' accounts are quick to check, except where the cost is the point


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": encode_basic_auth(name, password)}


VIEWER, OPERATOR = basic("vera", "look only"), basic("otto", "press buttons")


def users_file(tmp_path: Path, iterations: int = CHEAP) -> Path:
    path = tmp_path / "users"
    path.write_text(
        "# who may sign in\n"
        f"vera:viewer:{hash_password('look only', iterations=iterations)}\n\n"
        f"otto : operator : {hash_password('press buttons', iterations=iterations)}\n"
    )
    return path


async def test_a_viewer_sees_every_page_and_the_api_but_cannot_act(make_client, tmp_path, project, js, subjects):
    await project(run_events(name="20261129083000", fail=True))
    client = await make_client(web_users_file=users_file(tmp_path))

    for path in ("/", "/runs/20261129083000", "/open_orders", "/monitor", "/api/runs", "/api/actions", "/metrics"):
        assert (await client.get(path, headers=VIEWER)).status == 200, path
    run_page = await (await client.get("/runs/20261129083000", headers=VIEWER)).text()
    monitor = await (await client.get("/monitor", headers=VIEWER)).text()
    assert 'data-account="vera" data-role="viewer"' in run_page
    assert "Retry" not in run_page and "/delete" not in run_page  # no buttons a viewer cannot use
    assert "▶ Run now" not in monitor and 'action="/retention"' not in monitor

    for path, data in (("/jobs/sync_open_orders/run", {}), ("/jobs/sync_open_orders/run", {"confirm": "yes"}),
                       ("/runs/20261129083000/delete", {"confirm": "yes"}), ("/retention", {"before": "2026-01-01", "confirm": "yes"})):
        refused = await client.post(path, data=data, headers=VIEWER)
        assert refused.status == 403 and "viewer" in await refused.text(), path
    api = await client.post("/api/jobs/sync_open_orders/trigger", json={}, headers=VIEWER)
    assert api.status == 403 and "viewer" in (await api.json())["detail"]
    assert (await js.stream_info(subjects.command_stream)).state.messages == 0

    operator_page = await (await client.get("/runs/20261129083000", headers=OPERATOR)).text()
    assert 'data-account="otto" data-role="operator"' in operator_page and "↻ Retry" in operator_page
    assert (await client.post("/jobs/sync_open_orders/run", data={}, headers=OPERATOR)).status == 200  # the confirmation page


async def test_the_admin_password_is_an_operator_account_next_to_the_users_file(make_client, tmp_path, project):
    await project(run_events(name="20261129083000"))
    client = await make_client(web_users_file=users_file(tmp_path), admin_password=SecretStr("adm1n"))
    page = await (await client.get("/monitor", headers=basic("admin", "adm1n"))).text()
    assert 'data-account="admin" data-role="operator"' in page and "▶ Run now" in page
    assert (await client.get("/", headers=basic("vera", "wrong"))).status == 401
    assert (await client.get("/", headers=basic("nobody", "look only"))).status == 401


@pytest.mark.parametrize(("text", "problem"), [
    ("vera:viewer\n", "line 1: expected name:role:hash"),
    ("# ok\nvera:admin:" + hash_password("x", iterations=CHEAP), "line 2: role 'admin' is not one of viewer, operator"),
    ("vera:viewer:plaintext", "line 1: the hash is not readable"),
    ("bad name:viewer:" + hash_password("x", iterations=CHEAP), "line 1: the name must be"),
    ("vera:viewer:{h}\nvera:operator:{h}".format(h=hash_password("x", iterations=CHEAP)), "line 2: vera is listed twice"),
    ("# nobody\n\n", "no accounts in it"),
])
def test_a_users_file_that_cannot_be_used_names_the_line(text, problem):
    with pytest.raises(UsersFileError, match=problem.replace("(", r"\(")):
        parse_users(text)


def test_a_bad_users_file_stops_the_web_at_start_with_one_line_naming_it(env, tmp_path):
    path = tmp_path / "users"
    path.write_text(f"vera:viewer:{hash_password('x', iterations=CHEAP)}\notto:root:{hash_password('y', iterations=CHEAP)}\n")
    result = subprocess.run([sys.executable, "-m", "joblog", "web"], env={**os.environ, **env, "JOBLOG_WEB_USERS_FILE": str(path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "JOBLOG_WEB_USERS_FILE" in line and "line 2: role 'root'" in line
    with pytest.raises(ValidationError, match="cannot read it"):
        WebSettings(web_users_file=tmp_path / "missing")


async def test_after_too_many_failures_an_address_gets_429_at_once_and_signed_in_users_go_on(make_client, tmp_path):
    client = await make_client(web_users_file=users_file(tmp_path), web_login_failures=5)
    assert (await client.get("/", headers=VIEWER)).status == 200  # signed in before the guessing starts
    auth = client.app[AUTHENTICATOR]

    statuses = [(await client.get("/", headers=basic("vera", f"guess {i}"))).status for i in range(8)]
    checked = auth.checked

    assert statuses == [401] * 5 + [429] * 3
    limited = await client.get("/api/runs", headers=OPERATOR)  # right password, same address, while it is limited
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert auth.checked == checked  # refused without hashing
    assert (await client.get("/", headers=VIEWER)).status == 200  # remembered: never limited


async def test_fifty_concurrent_guesses_from_one_address_get_only_the_allowed_checks(make_client, tmp_path):
    client = await make_client(web_users_file=users_file(tmp_path), web_login_failures=10)
    guesses = await asyncio.gather(*(client.get("/", headers=basic("vera", f"guess {i}")) for i in range(50)))
    statuses = sorted(r.status for r in guesses)
    assert statuses == [401] * 10 + [429] * 40
    assert client.app[AUTHENTICATOR].checked == 10


async def test_failures_count_for_every_web_process_of_a_database_even_checked_at_once(make_client, tmp_path, db):
    # Two apps over one database stand for two web processes (JOBLOG_WEB_PROCESSES, tests/web/test_web_processes.py).
    first = await make_client(web_users_file=users_file(tmp_path), web_login_failures=10)
    second = await make_client(web_users_file=users_file(tmp_path), web_login_failures=10)
    guesses = await asyncio.gather(*(client.get("/", headers=basic("vera", f"guess {i}"))
                                     for i in range(25) for client in (first, second)))
    assert sorted(r.status for r in guesses) == [401] * 10 + [429] * 40
    assert first.app[AUTHENTICATOR].checked + second.app[AUTHENTICATOR].checked == 10
    assert await db.fetchval("SELECT count(*) FROM sign_in_failures") == 10

    assert (await second.get("/", headers=VIEWER)).status == 429  # limited on both, whichever saw the failures
    await db.execute("UPDATE sign_in_failures SET failed_at = failed_at - interval '61 seconds'")  # the window passes
    third = await make_client(web_users_file=users_file(tmp_path), web_login_failures=10)  # no address remembered as limited
    assert (await third.get("/", headers=VIEWER)).status == 200
    assert await db.fetchval("SELECT count(*) FROM sign_in_failures") == 0  # a sign-in forgives its address's failures


async def test_an_address_forgiven_by_a_sign_in_elsewhere_is_not_refused_here_for_long(make_client, tmp_path, db):
    # Two apps over one database stand for two web processes: one saw the address at its limit...
    first = await make_client(web_users_file=users_file(tmp_path), web_login_failures=3)
    second = await make_client(web_users_file=users_file(tmp_path), web_login_failures=3)
    await db.execute("INSERT INTO sign_in_failures (address) SELECT '127.0.0.1' FROM generate_series(1, 3)")
    assert (await second.get("/", headers=VIEWER)).status == 429
    # ...then a sign-in in the other forgave it (as a check claimed before the limit and found right does).
    await db.execute("DELETE FROM sign_in_failures")
    assert (await first.get("/", headers=VIEWER)).status == 200

    async def signed_in() -> bool:
        return (await second.get("/", headers=VIEWER)).status == 200

    await eventually(signed_in)  # within seconds (authenticator.LIMITED_BELIEVED), not the minute's window


async def test_without_postgres_to_count_failures_a_sign_in_is_refused_with_503_never_let_through(make_client, tmp_path, own_postgres):
    pg, dsn = own_postgres
    client = await make_client(database_url=dsn, web_users_file=users_file(tmp_path))
    assert (await client.get("/api/actions", headers=VIEWER)).status == 200  # signed in, remembered
    await asyncio.to_thread(pg.stop)
    try:
        for headers in (OPERATOR, basic("vera", "a guess")):  # the right password, and a wrong one
            refused = await client.get("/", headers=headers)
            assert refused.status == 503 and refused.headers["Retry-After"] == "1"
            assert "database is unreachable" in await refused.text()
        assert client.app[AUTHENTICATOR].checked == 1  # neither was checked
        assert (await client.get("/healthz")).status == 200
    finally:
        await asyncio.to_thread(pg.start)


async def test_a_flood_of_wrong_passwords_never_delays_health_signed_in_pages_or_the_live_feed(make_client, tmp_path, js, subjects):
    # Every guess is really hashed here (a limit no single address reaches, as from many addresses),
    # at a cost that makes the flood long; what is asserted is order, never time.
    client = await make_client(web_users_file=users_file(tmp_path, iterations=200_000), web_login_failures=1_000_000)
    auth = client.app[AUTHENTICATOR]
    assert (await client.get("/", headers=VIEWER)).status == 200
    feed = await client.get("/events/runs", headers=VIEWER)
    await hello(feed)

    flood = [asyncio.create_task(client.get("/", headers=basic("vera", f"guess {i}"))) for i in range(60)]

    async def flood_in_flight() -> bool:  # queued for or inside the password threads (on the loop, never 40 at once)
        return auth.waiting >= 40

    await eventually(flood_in_flight, interval=0.01)

    health = await client.get("/healthz")
    page = await client.get("/runs/20261129083000", headers=VIEWER)
    await publish(js, subjects, run_events(name="20261129083000")[:1])
    [(kind, update)] = await sse_events(feed, 1)
    answered_during_flood = sum(task.done() for task in flood)
    still_waiting = auth.waiting

    assert health.status == 200 and page.status == 404  # answered (no such run yet), not asked to sign in
    assert kind == "run" and update["name"] == "20261129083000"
    assert answered_during_flood < 60 and still_waiting > 0  # all of that while the flood was still being checked
    assert {r.status for r in await asyncio.gather(*flood)} == {401}
    feed.close()


async def test_remembered_credentials_are_kept_by_a_keyed_hash_never_in_clear(make_client, tmp_path):
    client = await make_client(web_users_file=users_file(tmp_path))
    assert (await client.get("/", headers=VIEWER)).status == 200
    remembered = client.app[AUTHENTICATOR]._accepted
    assert len(remembered) == 1
    [key] = remembered
    assert isinstance(key, bytes) and len(key) == 32
    assert VIEWER["Authorization"].encode() not in key and b"look only" not in key


async def test_notices_come_from_a_fixed_set_and_unknown_or_free_text_shows_nothing(client):
    shown = await (await client.get("/monitor", params={"notice": "triggered", "job": "sync_open_orders"})).text()
    assert "Triggered sync_open_orders. The new run appears" in shown
    deleted = await (await client.get("/", params={"notice": "run_deleted", "run": "20261129083000"})).text()
    assert "Run 20261129083000 is being deleted." in deleted
    for query in ({"notice": "Your password expired: call 555-0100"}, {"notice": "triggered", "job": "evil job!"},
                  {"notice": "run_deleted", "run": "20261129083000\n<b>"}, {"notice": "runs_deleted"}):
        html = await (await client.get("/monitor", params=query)).text()
        assert 'class="notice"' not in html and "555-0100" not in html and "evil" not in html, query


async def test_when_the_check_queue_is_full_a_new_sign_in_is_refused_at_once_with_503(make_client, tmp_path):
    client = await make_client(web_users_file=users_file(tmp_path, iterations=200_000), web_login_failures=1_000_000)
    auth = client.app[AUTHENTICATOR]
    auth.most_waiting = 5
    guesses = await asyncio.gather(*(client.get("/", headers=basic("vera", f"guess {i}")) for i in range(20)))
    statuses = [r.status for r in guesses]
    assert 503 in statuses and set(statuses) <= {401, 503}
    assert auth.checked == statuses.count(401)
    assert all(r.headers.get("Retry-After") == "1" for r in guesses if r.status == 503)
